"""The prose of every page, read like a reviewer would: no typed timings, and every notebook ends
with what it taught and where to go next.

A timing typed into the prose goes stale the first time the code changes ("about a minute" for a
page that now takes 13 s), so durations of the course's own runs are glued from the run or left
out. A sentence may still give a duration that is someone else's published figure (with a
``{cite}``) or an explicit estimate for hardware the course could not measure (it says
"estimate").
"""
import json
import re
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted(ROOT.glob("chapters/*/*.ipynb"))

DURATION = re.compile(
    r"(?<![\w{.])(?!(?:1[89]|20)\d0s\b)\d[\d,.]*\s*(?:ms|s|sec|seconds?|minutes?|min|hours?)\b"  # not "the 1990s"
    r"|\b(?:about|under|over|a few|several|half)\s+(?:a\s+|an\s+)?(?:minute|minutes|second|seconds|hour|hours)\b",
    re.I,
)
ALLOWED = re.compile(r"\{cite[:\w]*\}|\bestimat", re.I)


def _markdown_cells(path: Path) -> list[str]:
    if path.suffix == ".ipynb":
        return ["".join(c["source"]) for c in json.loads(path.read_text())["cells"] if c["cell_type"] == "markdown"]
    return [path.read_text()]


def _sentences(text: str) -> list[str]:
    text = re.sub(r"```.*?```", " ", text, flags=re.S)      # code blocks and directives' bodies stay
    text = re.sub(r"\{glue[:\w]*\}`[^`]*`", "<glued>", text)  # glued values are from the run
    text = re.sub(r"`[^`]*`", "<code>", text)
    text = re.sub(r"\$\$.*?\$\$|\$[^$]*\$", "<math>", text, flags=re.S)
    return re.split(r"(?<=[.!?])\s+|\n\s*\n", text)


def typed_durations(text: str) -> list[str]:
    """Sentences of ``text`` that type a duration without a citation or the word 'estimate'."""
    return [s.strip() for s in _sentences(text) if DURATION.search(s) and not ALLOWED.search(s)]


def test_the_scan_finds_typed_timings_and_spares_glued_cited_and_estimated_ones():
    assert typed_durations("Training takes about a minute on two cores.")
    assert typed_durations("The run took 40 s. Then we plot it.") == ["The run took 40 s."]
    assert not typed_durations("The run took {glue:text}`secs:.0f` s on this machine.")
    assert not typed_durations("It trained in 3 minutes on an A100 {cite}`nanogpt`.")
    assert not typed_durations("We estimate 10 minutes on a recent GPU, not measured.")
    assert not typed_durations("Use `--max-seconds 60` to stop early.")
    assert not typed_durations("The window holds 256 tokens and 4 heads.")
    assert not typed_durations("It was the workhorse of the 2000s and of the 1990s.")


@pytest.mark.parametrize("path", [*NOTEBOOKS, *sorted(ROOT.glob("chapters/*/index.md")), ROOT / "intro.md"],
                         ids=lambda p: p.relative_to(ROOT).as_posix())
def test_no_typed_timings_in_the_prose(path):
    found = [s for cell in _markdown_cells(path) for s in typed_durations(cell)]
    assert not found, "typed durations (glue them from the run, or cite / say 'estimate'):\n" + "\n".join(found)


def _toc_order() -> list[str]:
    toc = yaml.safe_load((ROOT / "_toc.yml").read_text())
    order = []
    for part in toc["parts"]:
        for chapter in part["chapters"]:
            order.append(chapter["file"])
            order += [s["file"] for s in chapter.get("sections", [])]
    return order


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_ends_with_what_we_learned_and_a_pointer_to_the_next_page(path):
    cells = _markdown_cells(path)
    headings = [(i, l) for i, c in enumerate(cells) for l in c.splitlines() if l.startswith("## ")]
    names = [l[3:].strip() for _, l in headings]
    assert "What we learned" in names, f"{path.name}: no '## What we learned' section"
    assert names.index("What we learned") == names.index("Exercises") - 1, \
        f"{path.name}: 'What we learned' must come right before 'Exercises' (headings: {names[-4:]})"
    order = _toc_order()
    me = path.relative_to(ROOT).with_suffix("").as_posix()
    following = order[order.index(me) + 1] if order.index(me) + 1 < len(order) else None
    if following is None or following.startswith("chapters/appendix"):
        return
    start = headings[names.index("What we learned")][0]
    end = headings[names.index("Exercises")][0]
    summary = "\n".join(cells[start:end + 1]).split("## Exercises")[0]
    target = Path(following).name
    assert re.search(rf"\]\((?:\.\./[\w]+/)?{re.escape(target)}\.(?:ipynb|md)\)", summary), \
        f"{path.name}: the summary does not link the next page ({following})"


def test_every_figure_file_exists_and_each_diagram_describes_itself():
    """A diagram the prose shows is in the repository, and has the <title> and <desc> a screen
    reader announces (CONTRIBUTING's "Diagrams")."""
    import xml.etree.ElementTree as ET

    shown = set()
    for path in NOTEBOOKS:
        for cell in _markdown_cells(path):
            for target in re.findall(r"```\{figure\}\s+(\S+)", cell):
                file = (path.parent / target).resolve()
                assert file.is_file(), f"{path.name}: figure {target} does not exist"
                shown.add(file)
    diagrams = sorted((ROOT / "images" / "diagrams").glob("*.svg"))
    assert diagrams and set(diagrams) <= shown, f"diagrams no page shows: {set(diagrams) - shown}"
    ns = "{http://www.w3.org/2000/svg}"
    for svg in diagrams:
        root = ET.parse(svg).getroot()
        tags = [child.tag for child in root][:2]
        assert tags == [f"{ns}title", f"{ns}desc"], f"{svg.name}: <title> and <desc> must come first, got {tags}"
        assert root.get("viewBox", "").startswith("0 0 680 "), f"{svg.name}: the canvas is 680 units wide"
