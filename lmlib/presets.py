"""The scale presets: how big every run of the course is, chosen once per build or notebook run.

Derived in the appendix page "Setting up" (chapters/appendix/setup.md). A preset changes sizes and
step counts, never the code path:

- ``smoke``: seconds per notebook, for the tests and CI (checks that the code runs);
- ``cpu``: minutes per notebook on a laptop, with meaningful results;
- ``gpu``: the full results, on a CUDA GPU.

``LMLIB_SCALE`` picks one; the default is ``gpu`` when CUDA is present, else ``cpu``. Every notebook
that trains opens with one configuration cell whose values come from :func:`scaled`, so the three
presets of each knob stand side by side in one visible place.

API summary
-----------
SCALES = ("smoke", "cpu", "gpu")
scale() -> str                                     the preset in force
scaled(*, smoke, cpu, gpu)                         the value for the preset in force
recipe_for(recipes, scale=None) -> dict            a copy of a release recipe (smoke/cpu/full) for a scale
"""
from __future__ import annotations

import os
from typing import TypeVar

import torch

SCALES = ("smoke", "cpu", "gpu")
T = TypeVar("T")

__all__ = ["SCALES", "scale", "scaled", "recipe_for"]


def scale() -> str:
    """The scale preset: ``LMLIB_SCALE`` if set, else ``gpu`` with CUDA present, else ``cpu``."""
    value = os.environ.get("LMLIB_SCALE")
    if not value:
        return "gpu" if torch.cuda.is_available() else "cpu"
    value = value.strip().lower()
    if value not in SCALES:
        raise ValueError(f"LMLIB_SCALE={value!r} is not a scale preset: use one of {', '.join(SCALES)}.")
    return value


def scaled(*, smoke: T, cpu: T, gpu: T) -> T:
    """The value for the preset in force, e.g. ``steps=scaled(smoke=20, cpu=1200, gpu=5000)``."""
    return {"smoke": smoke, "cpu": cpu, "gpu": gpu}[scale()]


def recipe_for(recipes: dict[str, dict], scale: str | None = None) -> dict:
    """A copy of ``recipes[scale]``, for the recipes of a released model (``smoke``, ``cpu``, ``full``).

    Without ``scale``: the recipe for the preset in force, where the ``gpu`` preset means ``full``.
    """
    if scale is None:
        scale = scaled(smoke="smoke", cpu="cpu", gpu="full")
    if scale not in recipes:
        raise ValueError(f"scale must be one of {sorted(recipes)}, got {scale!r}.")
    return dict(recipes[scale])
