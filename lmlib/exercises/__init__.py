"""Checkers for the book's exercises: your function against the reference, on fresh random inputs.

``lmlib.exercises.check_<name>(your_function)`` prints PASS, or the first failing case with a hint,
and returns True or False. The framework is in ``core``; each chapter's checkers are in the
module named after the chapter, and all of them are available from this package.
"""
from lmlib.exercises.core import check
from lmlib.exercises.background import *  # noqa: F401,F403  chapter 1
