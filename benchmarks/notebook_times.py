"""How long every notebook of the book takes to execute at a scale preset, against its stated budget.

Each notebook states its budget at the ``cpu`` preset in a ``{notebook-cost}`` directive near its
top (``:cpu-budget: 3`` means 3 minutes of wall time on a 2-core CPU). This script executes the
notebooks of ``_toc.yml`` one by one, each in a fresh kernel started in the notebook's folder (as
the book build does), and records the wall time and the CPU time of the kernel process. The
website's cost boxes and ``tests/test_notebook_budgets.py`` read the results file, so the
budgets are checked against a real run, never against a number typed into the prose.

    LMLIB_DATA=<mirror> .venv/bin/python benchmarks/notebook_times.py          # cpu preset, ~25 min
    LMLIB_DATA=<mirror> .venv/bin/python benchmarks/notebook_times.py \\
        --only chapters/04_pretraining/03_training_a_gpt.ipynb                        # one notebook, merged in

Results: ``benchmarks/results/<preset>_notebook_times.json`` and stdout; ``--keep FOLDER`` also
writes each executed notebook there, outputs included, to read the figures a run produced.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import resource
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

from common import RESULTS, cpu_name, write_results

ROOT = Path(__file__).resolve().parents[1]
BUDGET = re.compile(r"```\{notebook-cost\}\s*\n:cpu-budget:\s*([0-9.]+)")


def toc_notebooks(root: Path = ROOT) -> list[str]:
    """The notebooks of ``_toc.yml``, in book order, as paths relative to the repository."""
    files = re.findall(r"file:\s*(\S+)", (root / "_toc.yml").read_text())
    return [f + ".ipynb" for f in files if (root / (f + ".ipynb")).is_file()]


def budget_minutes(notebook: Path) -> float | None:
    """The ``:cpu-budget:`` of the notebook's ``{notebook-cost}`` directive (minutes), if it has one."""
    cells = json.loads(notebook.read_text())["cells"]
    for cell in cells:
        if cell["cell_type"] == "markdown":
            found = BUDGET.search("".join(cell["source"]))
            if found:
                return float(found.group(1))
    return None


def execute(notebook: Path, timeout: int, keep: Path | None = None) -> dict:
    """Run ``notebook`` in a fresh kernel; wall seconds, kernel CPU seconds and whether every cell ran.

    ``keep``: a folder that receives the executed copy (outputs included), to read what the run printed.
    """
    import nbformat
    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError

    nb = nbformat.read(notebook, as_version=4)
    client = NotebookClient(nb, timeout=timeout, kernel_name="python3",
                            resources={"metadata": {"path": str(notebook.parent)}})
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    error = None
    try:
        client.execute()
    except CellExecutionError as err:  # the run still counts: the time says how far it got
        error = str(err).strip().splitlines()[-1][:300]
    seconds = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)  # the kernel has exited and been waited for
    cpu = (after.ru_utime + after.ru_stime) - (children.ru_utime + children.ru_stime)
    if keep is not None:
        keep.mkdir(parents=True, exist_ok=True)
        nbformat.write(nb, keep / notebook.name)
    return {"seconds": seconds, "cpu_seconds": cpu, "ok": error is None, "error": error,
            "slowest_cells": slowest_cells(nb)}


def slowest_cells(nb, n: int = 3) -> list[dict]:
    """The ``n`` code cells that took longest, from the timestamps nbclient records in each cell:
    where to look first when a page runs over its budget."""
    timed = []
    for index, cell in enumerate(nb.cells):
        stamps = cell.get("metadata", {}).get("execution", {})
        if cell.cell_type == "code" and "iopub.execute_input" in stamps and "shell.execute_reply" in stamps:
            took = (datetime.fromisoformat(stamps["shell.execute_reply"].replace("Z", "+00:00"))
                    - datetime.fromisoformat(stamps["iopub.execute_input"].replace("Z", "+00:00"))).total_seconds()
            first_line = next((line for line in cell.source.splitlines() if line.strip()), "")
            timed.append({"cell": index, "seconds": round(took, 1), "starts": first_line[:80]})
    return sorted(timed, key=lambda t: -t["seconds"])[:n]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--preset", default="cpu", choices=["smoke", "cpu", "gpu"])
    parser.add_argument("--only", nargs="+", default=None, help="these notebooks only; merged into the existing file")
    parser.add_argument("--timeout", type=int, default=1800, help="seconds per cell")
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--keep", type=Path, default=None, help="a folder for the executed copies (with outputs)")
    args = parser.parse_args()
    os.environ["LMLIB_SCALE"] = args.preset
    out = args.out or RESULTS / f"{args.preset}_notebook_times.json"
    previous = json.loads(out.read_text())["notebooks"] if args.only and out.is_file() else {}
    notebooks = args.only or toc_notebooks()

    rows = dict(previous)
    print(f"{'notebook':<58}{'wall':>9}{'CPU':>9}{'budget':>9}")
    for name in notebooks:
        path = (ROOT / name).resolve()
        if not path.is_file():
            sys.exit(f"{name}: no such notebook (give paths relative to the repository, e.g. chapters/...ipynb)")
        row = execute(path, args.timeout, args.keep)
        row.update(budget_minutes=budget_minutes(path), measured=datetime.now(timezone.utc).isoformat(timespec="seconds"),
                   load_average=os.getloadavg()[0])
        rows[name] = row
        budget = "-" if row["budget_minutes"] is None else f"{row['budget_minutes']:g} min"
        flag = "" if row["ok"] else f"  FAILED: {row['error']}"
        if row["ok"] and row["budget_minutes"] is not None and row["seconds"] > 60 * row["budget_minutes"]:
            flag = "  OVER BUDGET"
        print(f"{name:<58}{row['seconds']:>8.1f}s{row['cpu_seconds']:>8.1f}s{budget:>9}{flag}", flush=True)

    total = sum(r["seconds"] for r in rows.values())
    print(f"{'all':<58}{total:>8.1f}s")
    result = {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "preset": args.preset,
              "machine": cpu_name(), "cpu_count": os.cpu_count(), "python": sys.version.split()[0],
              "notebooks": rows, "total_seconds": total,
              "command": "python benchmarks/notebook_times.py " + " ".join(sys.argv[1:])}
    write_results(result, out)
    if not all(r["ok"] for r in rows.values()):
        sys.exit("some notebooks failed (see above)")


if __name__ == "__main__":
    main()
