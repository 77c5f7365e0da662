"""Execution times on the website, from runs rather than prose: ``{chapter-times}`` and ``{notebook-cost}``.

myst-nb records how long each notebook took to execute (the data behind ``{nb-exec-table}``).
``{chapter-times}`` adds those run times up per chapter folder, so the course map in ``intro.md``
states the cost of each chapter as measured when the site you read was built, at the scale
preset of that build (``LMLIB_SCALE``), never as a number typed by hand.

``{notebook-cost}`` (with ``:cpu-budget: MINUTES``) sits near the top of every notebook. It states
the notebook's budget at the ``cpu`` preset on a 2-core CPU, the time measured there by
``benchmarks/notebook_times.py`` (``benchmarks/results/cpu_notebook_times.json``) and the time
the page took in this build. ``tests/test_notebook_budgets.py`` checks the measurements against
the budgets.
"""
from __future__ import annotations

import json
import os
import platform
from collections import defaultdict
from pathlib import Path

from docutils import nodes
from docutils.parsers.rst import directives
from myst_nb.sphinx_ import NbMetadataCollector
from sphinx.transforms.post_transforms import SphinxPostTransform
from sphinx.util.docutils import SphinxDirective

from lmlib.presets import scale

_KEY = "has_chapter_times"


class ChapterTimesNode(nodes.General, nodes.Element):
    """Placeholder, replaced once every notebook has been executed."""


class ChapterTimes(SphinxDirective):
    def run(self):
        NbMetadataCollector.set_doc_data(self.env, self.env.docname, _KEY, True)
        return [ChapterTimesNode()]


def _update(app, env):
    """Re-render the pages holding the table whenever notebooks were executed again."""
    if not NbMetadataCollector.new_exec_data(env):
        return None
    return [doc for doc, data in NbMetadataCollector.get_doc_data(env).items() if data.get(_KEY)]


def chapter_totals(metadata) -> dict[str, dict]:
    """{chapter folder: {"notebooks": n, "seconds": total, "failed": n}} from myst-nb's exec data."""
    totals: dict[str, dict] = defaultdict(lambda: {"notebooks": 0, "seconds": 0.0, "failed": 0})
    for docname, data in metadata.items():
        exec_data = data.get("exec_data")
        if not exec_data or not docname.startswith("chapters/"):
            continue
        chapter = docname.split("/")[1]
        totals[chapter]["notebooks"] += 1
        totals[chapter]["seconds"] += exec_data.get("runtime") or 0.0
        totals[chapter]["failed"] += exec_data.get("succeeded") is False
    return dict(sorted(totals.items()))


def _table(rows: list[list[str]]) -> nodes.table:
    """A docutils table: the first row is the header."""
    table = nodes.table(classes=["colwidths-auto"])
    group = nodes.tgroup(cols=len(rows[0]))
    table += group
    group += [nodes.colspec(colwidth=1) for _ in rows[0]]
    head, body = nodes.thead(), nodes.tbody()
    group += [head, body]
    for i, cells in enumerate(rows):
        row = nodes.row()
        row += [nodes.entry("", nodes.paragraph(text=cell)) for cell in cells]
        (head if i == 0 else body).append(row)
    return table


class ChapterTimesTransform(SphinxPostTransform):
    default_priority = 8

    def run(self, **kwargs) -> None:
        for node in list(self.document.findall(ChapterTimesNode)):
            totals = chapter_totals(NbMetadataCollector.get_doc_data(self.env))
            preset = scale()
            if not totals:
                node.replace_self(nodes.paragraph(text="No notebook was executed in this build."))
                continue
            rows = [["chapter", "notebooks", f"minutes at the {preset} preset"]]
            for chapter, t in totals.items():
                note = f" ({t['failed']} failed)" if t["failed"] else ""
                rows.append([chapter, str(t["notebooks"]), f"{t['seconds'] / 60:.1f}{note}"])
            total = sum(t["seconds"] for t in totals.values())
            rows.append(["whole book", str(sum(t["notebooks"] for t in totals.values())), f"{total / 60:.1f}"])
            caption = nodes.paragraph(text=(
                f"Measured while this site was built ({platform.machine()}, {os.cpu_count()} CPU cores, "
                f"preset {preset}); per-notebook times are in the appendix's execution table."))
            node.replace_self([_table(rows), caption])


class NotebookCostNode(nodes.General, nodes.Element):
    """Placeholder for a notebook's cost box, filled in once the page has been executed."""


class NotebookCost(SphinxDirective):
    option_spec = {"cpu-budget": directives.positive_int}

    def run(self):
        if "cpu-budget" not in self.options:
            raise self.error("notebook-cost needs :cpu-budget: MINUTES (wall time at the cpu preset on 2 cores).")
        return [NotebookCostNode(budget=self.options["cpu-budget"], docname=self.env.docname)]


class MeasuredTimes(SphinxDirective):
    """``{measured-times}``: the table behind every cost box, with the machine and the date."""

    def run(self):
        times = measured_times(self.env.srcdir)
        self.env.note_dependency(str(measured_times_path(self.env.srcdir)))
        runs = times.get("notebooks", {})
        if not runs:
            return [nodes.paragraph(text="No notebook has been timed at the cpu preset yet.")]
        rows = [["notebook", "budget (min)", "measured (min)", "measured on"]]
        for name, run in runs.items():
            took = f"{run['seconds'] / 60:.1f}" if run["ok"] else "failed"
            rows.append([name.removeprefix("chapters/").removesuffix(".ipynb"), f"{run['budget_minutes']:g}",
                         took, run["measured"][:10]])
        total = sum(r["seconds"] for r in runs.values() if r["ok"])
        rows.append(["all notebooks", f"{sum(r['budget_minutes'] for r in runs.values()):g}", f"{total / 60:.1f}", ""])
        caption = nodes.paragraph(text=(
            f"Machine: {times.get('machine', 'unknown CPU')}, {times.get('cpu_count', '?')} cores, Python "
            f"{times.get('python', '?')}; each notebook executed in a fresh kernel at the cpu preset by "
            "benchmarks/notebook_times.py."))
        return [_table(rows), caption]


def measured_times_path(srcdir: str | Path) -> Path:
    """Where ``benchmarks/notebook_times.py`` writes its ``cpu`` measurements."""
    return Path(srcdir) / "benchmarks" / "results" / "cpu_notebook_times.json"


def measured_times(srcdir: str | Path) -> dict:
    """``benchmarks/results/cpu_notebook_times.json`` (``{}`` if the script has not been run)."""
    path = measured_times_path(srcdir)
    return json.loads(path.read_text()) if path.is_file() else {}


def about(seconds: float) -> str:
    """A duration as a reader says it: ``about 40 seconds``, ``about 1 minute``, ``about 2.5 minutes``."""
    if seconds < 55:
        return f"about {max(5, 5 * round(seconds / 5))} seconds"
    minutes = round(seconds / 30) / 2
    return "about 1 minute" if minutes == 1 else f"about {minutes:g} minutes"


def cost_text(budget: int, measured: dict | None, this_build: float | None, preset: str) -> list[str]:
    """The sentences of a cost box, in a reader's words (kept apart from docutils to be tested).

    The machine and the date of the measurement are in the appendix (chapters/appendix/execution).
    """
    unit = "minute" if budget == 1 else "minutes"
    if measured is None:
        out = [f"Running this page on a laptop CPU is budgeted at {budget} {unit}; it has not been timed yet."]
    elif not measured["ok"]:
        out = [f"Running this page on a laptop CPU is budgeted at {budget} {unit}; its last timed run failed."]
    else:
        within = measured["seconds"] <= 60 * budget
        out = [f"Running this page takes {about(measured['seconds'])} on a laptop CPU with 2 cores "
               f"({'within' if within else 'OVER'} its budget of {budget} {unit}); a GPU runs the larger "
               f"gpu preset."]
    if this_build is not None and preset != "smoke":
        out.append(f"When this site was built ({preset} preset), the page ran in {about(this_build)}.")
    return out


class NotebookCostTransform(SphinxPostTransform):
    default_priority = 8

    def run(self, **kwargs) -> None:
        for node in list(self.document.findall(NotebookCostNode)):
            times = measured_times(self.env.srcdir)
            measured = times.get("notebooks", {}).get(node["docname"] + ".ipynb")
            exec_data = NbMetadataCollector.get_exec_data(self.env, node["docname"])
            runtime = exec_data.get("runtime") if exec_data else None
            text = cost_text(node["budget"], measured, runtime, scale())
            box = nodes.admonition(classes=["note", "notebook-cost"])
            box += nodes.title(text="Cost")
            box += nodes.paragraph(text=" ".join(text))
            node.replace_self(box)


def setup(app):
    app.add_node(ChapterTimesNode)
    app.add_directive("chapter-times", ChapterTimes)
    app.connect("env-updated", _update)
    app.add_post_transform(ChapterTimesTransform)
    app.add_node(NotebookCostNode)
    app.add_directive("notebook-cost", NotebookCost)
    app.add_directive("measured-times", MeasuredTimes)
    app.add_post_transform(NotebookCostTransform)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
