"""Glue between notebooks and the website: numbers quoted in the prose come from the run.

Used in every chapter. In the book build, myst-nb's ``glue`` stores a value under a name and the
text cites it with ``{glue:text}`name:.2f```. Outside the build (Colab, plain Jupyter) myst-nb may
be absent; then nothing is recorded, and the reader sees the value in the cell's printed output.
"""
from __future__ import annotations

from typing import Any


def glue(name: str, value: Any, display: bool = False) -> None:
    """Record ``value`` under ``name`` for the book's prose (shown in place only if ``display``)."""
    try:
        from myst_nb import glue as _glue
    except ImportError:
        return
    _glue(name, value, display=display)


RESULTS_URL = "https://raw.githubusercontent.com/lmcourse/lmcourse/main/benchmarks/results/{name}.json"


def benchmark_results(name: str, url: str | None = None) -> dict:
    """The JSON a script in ``benchmarks/`` wrote, e.g. ``benchmark_results("cpu_char_gpt")``.

    Chapters 3, 4 and 6 quote measured performance from these files rather than typing figures.
    In a clone of the repository (the book build) the file is read from ``benchmarks/results/``;
    in an installed package (Colab) it is fetched from the repository on GitHub.
    """
    import json
    import urllib.error
    import urllib.request
    from pathlib import Path

    if not name or "/" in name or name.endswith(".json"):
        raise ValueError(f"name is a results file's stem such as 'cpu_char_gpt', got {name!r}.")
    here = Path(__file__).resolve().parents[1] / "benchmarks" / "results" / f"{name}.json"
    if here.is_file():
        return json.loads(here.read_text())
    url = url or RESULTS_URL.format(name=name)
    try:
        with urllib.request.urlopen(url, timeout=30) as response:
            return json.loads(response.read())
    except (urllib.error.URLError, OSError, ValueError) as err:
        raise FileNotFoundError(
            f"No benchmark results {name!r}: not in {here.parent} and {url} could not be read ({err}). "
            f"Run the matching script in benchmarks/ to produce them."
        ) from err
