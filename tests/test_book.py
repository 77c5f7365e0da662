"""The website builds with warnings as errors, every notebook executed, numbers glued in."""
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.book
def test_site_has_every_page(site):
    assert (site / "index.html").exists()
    for nb in (ROOT / "chapters").rglob("*.ipynb"):
        assert (site / nb.relative_to(ROOT).with_suffix(".html")).exists(), nb


@pytest.mark.book
def test_notebook_pages_show_outputs_figures_and_glued_numbers(site):
    for nb in (ROOT / "chapters").rglob("*.ipynb"):
        html = (site / nb.relative_to(ROOT).with_suffix(".html")).read_text()
        assert "cell_output" in html, f"{nb.name}: no executed outputs on the page"
        assert "Traceback" not in html, f"{nb.name}: a traceback is on the page"
        assert not re.search(r"\{glue:\w+\}", html), f"{nb.name}: an unresolved glue reference"
        text = re.sub(r"<[^>]+>", "", html)
        assert "Running this page" in text and "on a laptop CPU" in text, f"{nb.name}: no cost box"


@pytest.mark.book
def test_first_notebook_page(site):
    html = (site / "chapters/01_background/01_language_models.html").read_text()
    assert html.count("<img") >= 2  # heatmap and smoothing curve
    assert "dropdown" in html and "solution" in html  # solutions collapsed
    text = re.sub(r"<[^>]+>", "", html)
    match = re.search(r"to\s+(\d+\.\d\d): one character of context", text)
    assert match and 5 < float(match.group(1)) < 65, "glued bigram perplexity missing or implausible"


@pytest.mark.book
def test_no_build_leftovers_on_the_pages(site):
    title = "Large Language Models, from the attention formula to a trained GPT"
    for page in sorted(site.rglob("*.html")):
        if "_static" in page.parts:
            continue
        html = page.read_text()
        rel = page.relative_to(site).as_posix()
        assert "binder-examples" not in html, f"{rel}: thebe still points at a sample repository"
        text = re.sub(r"<[^>]+>", " ", html)
        assert not re.search(r"/tmp/|[A-Z]:\\\\Users\\\\|/home/\w+/", text), f"{rel}: a path of the build machine"
        assert not re.search(r"\b(?:took|ran in|executed in) 0(?:\.0)? (?:s|seconds|minutes)\b", text), \
            f"{rel}: a zero timing left over from a small preset"
        sidebar = html.split('id="pst-primary-sidebar"', 1)[-1].split("</nav>", 1)[0]
        assert sidebar.count(title) <= 1, f"{rel}: the book's title twice in the sidebar"
    execution = re.sub(r"<[^>]+>", " ", (site / "chapters/appendix/execution.html").read_text())
    assert "measured (min)" in execution and "all notebooks" in execution
