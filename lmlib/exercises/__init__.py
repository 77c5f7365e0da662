"""Checkers for the book's exercises: your function against the reference, on fresh random inputs.

``lmlib.exercises.check_<name>(your_function)`` prints PASS, or the first failing case with a hint,
and returns True or False. The framework is in ``core``; each chapter keeps its checkers in a
module of this package named after the chapter (listing them in its ``__all__``), and every one
of them is available from here.
"""
import importlib
import pkgutil

from lmlib.exercises.core import check

__all__ = ["check"]
for _info in pkgutil.iter_modules(__path__):
    if _info.name != "core":
        _module = importlib.import_module(f"{__name__}.{_info.name}")
        for _name in _module.__all__:
            globals()[_name] = getattr(_module, _name)
        __all__ += list(_module.__all__)
