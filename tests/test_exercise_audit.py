"""The exercises as a system: every checker in lmlib.exercises is used, tested and strict.

Each chapter's own test file runs its checkers on the reference and on specific wrong answers;
this audit makes sure none is forgotten: every checker is called from a notebook's exercise
(where the notebook's solution cell asserts that it passes), has a test that shows it rejecting
a wrong solution, and rejects a stub that raises and a function that returns nothing, with a hint.
"""
import inspect
import re
from pathlib import Path

import pytest

from lmlib import exercises

ROOT = Path(__file__).resolve().parents[1]
CHECKERS = sorted(n for n in exercises.__all__ if n.startswith("check_"))
NOTEBOOKS = {nb: nb.read_text() for nb in ROOT.glob("chapters/*/*.ipynb")}
TESTS = "\n".join(p.read_text() for p in (ROOT / "tests").glob("test_*.py") if p.name != Path(__file__).name)


def test_there_are_checkers_for_every_chapter():
    modules = {inspect.getmodule(getattr(exercises, n)).__name__.rsplit(".", 1)[-1] for n in CHECKERS}
    assert len(CHECKERS) >= 12 and len(modules) >= 6, (CHECKERS, modules)


@pytest.mark.parametrize("name", CHECKERS)
def test_checker_is_used_by_a_notebook_solution(name):
    users = [nb for nb, text in NOTEBOOKS.items() if re.search(rf"assert\s+(lmlib\.)?(exercises\.)?{name}\(", text)]
    assert users, f"{name} is never asserted by a notebook's solution cell"


@pytest.mark.parametrize("name", CHECKERS)
def test_checker_has_a_known_wrong_test(name):
    assert re.search(rf"not\s+[\w.]*{name}\(", TESTS), f"no test shows {name} rejecting a wrong solution"


def _raises(*args, **kwargs):
    raise NotImplementedError("exercise stub")


def _nothing(*args, **kwargs):
    return None


@pytest.mark.parametrize("name", CHECKERS)
@pytest.mark.parametrize("wrong", [_raises, _nothing], ids=["stub", "returns-None"])
def test_checker_rejects_stubs_with_a_hint(name, wrong, capsys):
    assert getattr(exercises, name)(wrong) is False
    out = capsys.readouterr().out
    assert "FAIL" in out and "Hint" in out, out
