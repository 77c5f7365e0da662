"""Every notebook states a budget at the cpu preset, and the last measured run kept to it.

The budgets are in the ``{notebook-cost}`` directive of each notebook; the measurements are in
``benchmarks/results/cpu_notebook_times.json``, written by ``benchmarks/notebook_times.py`` on a
2-core CPU (re-run it after changing a notebook's cpu preset: the test below then says which page
is stale or over budget).
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
sys.path.insert(0, str(ROOT / "_ext"))

import chapter_times  # noqa: E402
import notebook_times  # noqa: E402

NOTEBOOKS = notebook_times.toc_notebooks()
TIMES = json.loads((ROOT / "benchmarks" / "results" / "cpu_notebook_times.json").read_text())


def test_the_toc_lists_every_notebook_of_the_chapters():
    on_disk = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "chapters").rglob("*.ipynb")
                     if ".ipynb_checkpoints" not in p.parts)
    assert sorted(NOTEBOOKS) == on_disk


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_budget_is_stated_once_near_the_top(name):
    cells = json.loads((ROOT / name).read_text())["cells"]
    markdown = ["".join(c["source"]) for c in cells if c["cell_type"] == "markdown"]
    assert sum(m.count("{notebook-cost}") for m in markdown) == 1, f"{name}: one {{notebook-cost}} box"
    assert "{notebook-cost}" in "".join(markdown[:2]), f"{name}: put the cost box in the opening cells"
    assert notebook_times.budget_minutes(ROOT / name) >= 1


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_the_measured_cpu_run_kept_to_the_budget(name):
    assert TIMES["preset"] == "cpu"
    run = TIMES["notebooks"].get(name)
    assert run is not None, f"{name}: not measured; run benchmarks/notebook_times.py --only {name}"
    assert run["ok"], f"{name}: the measured run failed: {run['error']}"
    budget = notebook_times.budget_minutes(ROOT / name)
    assert run["seconds"] <= 60 * budget, f"{name}: {run['seconds']:.0f} s at the cpu preset, budget {budget:g} min"


def test_cost_box_wording():
    run = {"ok": True, "seconds": 95.0, "measured": "2026-11-23T18:30:00+00:00"}
    text = " ".join(chapter_times.cost_text(2, run, 4.2, "cpu"))
    assert text == ("Running this page takes about 1.5 minutes on a laptop CPU with 2 cores (within its budget "
                    "of 2 minutes); a GPU runs the larger gpu preset. When this site was built (cpu preset), "
                    "the page ran in about 5 seconds.")
    assert "site was built" not in " ".join(chapter_times.cost_text(2, run, 4.2, "smoke"))  # no "0 s" at smoke
    over = " ".join(chapter_times.cost_text(1, run, None, "cpu"))
    assert "OVER its budget of 1 minute)" in over and "site was built" not in over
    assert "failed" in " ".join(chapter_times.cost_text(1, dict(run, ok=False), None, "cpu"))
    assert "not been timed" in " ".join(chapter_times.cost_text(1, None, None, "cpu"))
    assert [chapter_times.about(s) for s in (3, 41, 58, 80, 100, 600)] == [
        "about 5 seconds", "about 40 seconds", "about 1 minute", "about 1.5 minutes", "about 1.5 minutes", "about 10 minutes"]
