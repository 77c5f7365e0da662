"""lmlib: the one source of the course's reusable code.

Each module holds one idea and names the chapter that derives it. Notebooks build a piece in the
open, then check it against the module here, so the book and the library cannot drift apart.
Submodules load on first use (``lmlib.attention`` imports ``lmlib/attention.py``), so
``import lmlib`` stays fast.
"""
import importlib

from lmlib.book import glue

__version__ = "0.1.0"


def __getattr__(name: str):
    if name.startswith("_"):
        raise AttributeError(name)
    try:
        module = importlib.import_module(f"lmlib.{name}")
    except ModuleNotFoundError as err:
        if err.name != f"lmlib.{name}":
            raise  # a real missing dependency inside the module, not a wrong name
        raise AttributeError(f"module 'lmlib' has no submodule or attribute {name!r}") from None
    globals()[name] = module
    return module
