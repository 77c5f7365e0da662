"""Print pip constraints that pin every runtime dependency of the course at its declared floor.

Reads ``[project].dependencies`` from pyproject.toml and turns each ``name>=X`` into ``name==X``,
so that ``pip install -c <output> .`` installs the oldest versions the package claims to support
(``make test-oldest`` does this, then runs the tests). A floor must therefore name a release that
exists on PyPI (``regex>=2022.1.18``, not ``regex>=2022.1``). A dependency without a ``>=`` floor
stops the script: the floors are what is being tested.

    python .ci/floor_pins.py [--skip NAME ...] [--pyproject PATH] > constraints.txt

``--skip`` leaves a dependency out (``make test-oldest`` skips torch, which it installs itself).
Needs only the standard library (Python 3.11+, for tomllib).
"""
from __future__ import annotations

import argparse
import re
import sys
import tomllib
from collections.abc import Iterable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# name[extras] >= version [, other clauses] [; marker]
FLOOR = re.compile(r"^\s*(?P<name>[A-Za-z0-9][A-Za-z0-9._-]*)\s*(?:\[[^\]]*\])?\s*>=\s*(?P<version>[^,;\s]+)")


def normalise(name: str) -> str:
    """PEP 503's normalised project name: case and runs of -, _ and . do not matter."""
    return re.sub(r"[-_.]+", "-", name).lower()


def floor_pins(pyproject: Path, skip: Iterable[str] = ()) -> list[str]:
    """``name==floor`` for each runtime dependency of `pyproject` not named in `skip`."""
    dependencies = tomllib.loads(pyproject.read_text())["project"]["dependencies"]
    skipped = {normalise(name) for name in skip}
    pins = []
    for requirement in dependencies:
        match = FLOOR.match(requirement)
        if match is None:
            raise SystemExit(f"{pyproject}: the dependency {requirement!r} declares no '>=' floor; "
                             "give it one (the oldest version the course supports)")
        if normalise(match["name"]) not in skipped:
            pins.append(f"{match['name']}=={match['version']}")
    return pins


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--skip", action="append", default=[], metavar="NAME",
                        help="leave this dependency out (repeatable)")
    parser.add_argument("--pyproject", type=Path, default=ROOT / "pyproject.toml")
    args = parser.parse_args(argv)
    sys.stdout.write("".join(f"{pin}\n" for pin in floor_pins(args.pyproject, args.skip)))


if __name__ == "__main__":
    main()
