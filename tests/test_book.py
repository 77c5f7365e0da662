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
        assert "Budget at the cpu preset" in text and "the page executed in" in text, f"{nb.name}: no cost box"


@pytest.mark.book
def test_first_notebook_page(site):
    html = (site / "chapters/01_background/01_language_models.html").read_text()
    assert html.count("<img") >= 2  # heatmap and smoothing curve
    assert "dropdown" in html and "solution" in html  # solutions collapsed
    text = re.sub(r"<[^>]+>", "", html)
    match = re.search(r"to\s+(\d+\.\d\d): one character of context", text)
    assert match and 5 < float(match.group(1)) < 65, "glued bigram perplexity missing or implausible"
