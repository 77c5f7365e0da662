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


def _static_outputs():
    sys.path.insert(0, str(ROOT / "_ext"))
    try:
        import static_outputs
    finally:
        sys.path.remove(str(ROOT / "_ext"))
    return static_outputs


def test_static_bar_prints_only_its_finished_line(capsys):
    bar_class = _static_outputs().StaticBar
    for _ in bar_class(range(20), desc="training"):
        pass
    with bar_class(total=5, desc="hidden", leave=False) as bar:
        bar.update(5)
    out = capsys.readouterr().out
    assert out.count("\n") == 1 and out.startswith("training: 100%") and "20/20" in out
    assert " 0/20" not in out and "hidden" not in out


def test_alt_text_comes_from_the_description_of_the_output():
    import base64
    import hashlib

    from matplotlib.figure import Figure

    from lmlib.plot import describe_figure

    fig = Figure()
    ax = fig.add_subplot()
    ax.plot([0, 1], [1, 0], label="train")
    ax.set(title="Loss", xlabel="step", ylabel="loss")
    ax.legend()
    assert describe_figure(fig) == "Line plot \u201cLoss\u201d of loss against step showing train."
    png = b"\x89PNG fake bytes"
    digest = hashlib.sha256(png).hexdigest()
    notebook = {"cells": [{"outputs": [{"data": {"image/png": base64.b64encode(png).decode(),
                                                 "text/plain": ["Line plot \u201cLoss\u201d", " of <loss>"]}}]},
                          {"outputs": [{"data": {"image/png": "AAAA", "text/plain": "<Figure size 640x480>"}}]}]}
    outputs = _static_outputs()
    with __import__("tempfile").TemporaryDirectory() as tmp:
        path = Path(tmp) / "page.ipynb"
        path.write_text(json.dumps(notebook))
        found = outputs.image_descriptions([path])
    assert found == {digest: "Line plot \u201cLoss\u201d of <loss>"}  # a bare repr is no description
    html = f'<p><img alt="../_images/{digest}.png" src="../_images/{digest}.png" /><img src="x.png"></p>'
    fixed = outputs.add_alt_text(html, found)
    assert f'<img alt="Line plot \u201cLoss\u201d of &lt;loss&gt;" src="../_images/{digest}.png" />' in fixed
    assert '<img src="x.png">' in fixed
