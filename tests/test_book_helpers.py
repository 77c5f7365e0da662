"""Book plumbing: benchmark results for the prose, widgets' static fallback, time per chapter."""
import json
import sys
from pathlib import Path

import pytest
import torch

import lmlib.book
import lmlib.widgets

ROOT = Path(__file__).resolve().parents[1]


def test_benchmark_results_read_from_the_repository():
    local = json.loads((ROOT / "benchmarks" / "results" / "cpu_char_gpt.json").read_text())
    assert lmlib.book.benchmark_results("cpu_char_gpt") == local


def test_benchmark_results_fetched_when_not_in_a_clone(server):
    base, handler = server
    handler.routes["/r/extra.json"] = b'{"speedup": 5.5}'
    assert lmlib.book.benchmark_results("no_such_local_file", url=f"{base}/r/extra.json") == {"speedup": 5.5}


def test_benchmark_results_missing_names_the_script_to_run(server):
    base, _ = server
    with pytest.raises(FileNotFoundError, match="benchmarks/"):
        lmlib.book.benchmark_results("no_such_local_file", url=f"{base}/missing.json")
    with pytest.raises(ValueError, match="stem"):
        lmlib.book.benchmark_results("cpu_char_gpt.json")


def test_explorers_carry_their_first_drawing_as_png():
    pytest.importorskip("ipywidgets")
    weights = torch.softmax(torch.randn(2, 3, 3), -1)
    bundle = lmlib.widgets.attention_explorer(list("abc"), weights)._repr_mimebundle_()
    assert "application/vnd.jupyter.widget-view+json" in bundle  # Jupyter still gets the live widget
    png = __import__("base64").b64decode(bundle["image/png"])
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 1000


def test_book_hides_widget_views_in_favour_of_the_png():
    config = (ROOT / "_config.yml").read_text()
    assert '["html", "application/vnd.jupyter.widget-view+json", null]' in config


def test_chapter_totals_add_up_per_chapter():
    pytest.importorskip("myst_nb")
    sys.path.insert(0, str(ROOT / "_ext"))
    try:
        from chapter_times import chapter_totals
    finally:
        sys.path.remove(str(ROOT / "_ext"))
    meta = {
        "chapters/01_background/01_a": {"exec_data": {"runtime": 30.0, "succeeded": True}},
        "chapters/01_background/02_b": {"exec_data": {"runtime": 12.5, "succeeded": False}},
        "chapters/02_attention/01_c": {"exec_data": {"runtime": 6.0, "succeeded": True}},
        "chapters/02_attention/index": {},
        "intro": {"exec_data": {"runtime": 99.0, "succeeded": True}},
    }
    assert chapter_totals(meta) == {
        "01_background": {"notebooks": 2, "seconds": 42.5, "failed": 1},
        "02_attention": {"notebooks": 1, "seconds": 6.0, "failed": 0},
    }
