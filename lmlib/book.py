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
