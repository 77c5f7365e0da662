"""Glue between notebooks and the website: numbers quoted in the prose come from the run.

Used in every chapter. In the book build, myst-nb's ``glue`` stores a value under a name and the
text cites it with ``{glue:text}`name:.2f```. Outside the build (Colab, plain Jupyter) myst-nb may
be absent; then nothing is recorded, and the reader sees the value in the cell's printed output.
"""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path
from typing import Any


def glue(name: str, value: Any, display: bool = False) -> None:
    """Record ``value`` under ``name`` for the book's prose (shown in place only if ``display``)."""
    try:
        from myst_nb import glue as _glue
    except ImportError:
        return
    _glue(name, value, display=display)


#: The course repository and branch. ``_config.yml`` (``repository.url``, ``repository.branch``) is
#: the one place to change them; ``python -m lmlib.book sync-repository`` then rewrites every copy
#: (these two lines, pyproject.toml, the README, every notebook's setup cell, the registry's URLs
#: of the course's own files), and ``--check`` lists copies that disagree.
REPOSITORY_URL = "https://github.com/lmcourse/lmcourse"
BRANCH = "main"


def raw_url(path: str, repository: str = REPOSITORY_URL, branch: str = BRANCH) -> str:
    """The download URL of ``path`` in the course repository (GitHub's raw file host)."""
    if not repository.startswith("https://github.com/"):
        raise ValueError(f"raw_url knows GitHub's file host only; {repository!r} is not a https://github.com/ URL.")
    return repository.replace("https://github.com/", "https://raw.githubusercontent.com/", 1) + f"/{branch}/{path}"


RESULTS_URL = raw_url("benchmarks/results/{name}.json")


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
    from lmlib.data import download_url  # lazy: `import lmlib` loads this module and must not load torch

    url = url or download_url(RESULTS_URL.format(name=name))
    try:
        with urllib.request.urlopen(url, timeout=30) as response:
            return json.loads(response.read())
    except (urllib.error.URLError, OSError, ValueError) as err:
        raise FileNotFoundError(
            f"No benchmark results {name!r}: not in {here.parent} and {url} could not be read ({err}). "
            f"Run the matching script in benchmarks/ to produce them."
        ) from err


# --- one repository URL: _config.yml is the source, every other file holds a copy -----------------

_TEXT_SUFFIXES = {".md", ".py", ".toml", ".ipynb", ".yml", ".yaml", ".cfg", ".txt", ".rst"}


def _tracked_text_files(root: Path) -> list[Path]:
    try:
        names = subprocess.run(["git", "ls-files", "-z"], cwd=root, capture_output=True, text=True,
                               check=True).stdout.split("\0")  # -z: names with spaces stay whole
        files = [root / n for n in names if n]
    except (OSError, subprocess.CalledProcessError):  # not a git checkout: walk it
        skip = {".git", ".venv", "_build", "data", "node_modules"}
        files = [f for f in root.rglob("*") if not skip & set(f.relative_to(root).parts)]
    return [f for f in files if f.suffix in _TEXT_SUFFIXES and f.is_file()]


def _configured(root: Path) -> tuple[str, str]:
    import yaml

    config = root / "_config.yml"
    repo = (yaml.safe_load(config.read_text()) or {}).get("repository") or {}
    if not repo.get("url"):
        raise ValueError(f"{config} has no repository.url; it is the one place the course's URL is set.")
    return repo["url"].rstrip("/"), repo.get("branch", "main")


def _copied(root: Path) -> tuple[str, str]:
    text = (root / "lmlib" / "book.py").read_text()
    url, branch = (re.search(rf'^{key} = "([^"]+)"', text, re.M) for key in ("REPOSITORY_URL", "BRANCH"))
    if not (url and branch):
        raise ValueError(f"{root / 'lmlib' / 'book.py'} lost its REPOSITORY_URL or BRANCH line.")
    return url.group(1), branch.group(1)


def sync_repository(root: str | Path = ".", check: bool = False) -> list[str]:
    """Make every copy of the course's repository URL agree with ``_config.yml``.

    The copies are found by the URL they hold now (``lmlib/book.py``'s :data:`REPOSITORY_URL`
    and :data:`BRANCH`, in both the repository form and the raw-file form). With ``check`` nothing
    is written. Returns one line per file that disagrees (or was rewritten).
    """
    root = Path(root)
    (new, new_branch), (old, old_branch) = _configured(root), _copied(root)
    if (new, new_branch) == (old, old_branch):
        return []
    pairs = [(raw_url("", old, old_branch), raw_url("", new, new_branch)), (old, new),
             (f'BRANCH = "{old_branch}"', f'BRANCH = "{new_branch}"')]
    changed = []
    for f in _tracked_text_files(root):
        if f.name == "_config.yml":
            continue
        text = f.read_text(encoding="utf-8")
        hits = sum(text.count(a) for a, _ in pairs[:2])
        if f == root / "lmlib" / "book.py" or hits:
            for a, b in pairs:
                text = text.replace(a, b)
            changed.append(f"{f.relative_to(root)}: {hits or 1} cop{'y' if hits <= 1 else 'ies'} of {old} ({old_branch})")
            if not check:
                f.write_text(text, encoding="utf-8")
    return changed


def main(argv: list[str] | None = None) -> int:
    """``python -m lmlib.book sync-repository [--check] [--root DIR]``"""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m lmlib.book", description="Keep the course's repository URL in one place.")
    parser.add_argument("command", choices=["sync-repository"])
    parser.add_argument("--check", action="store_true", help="list the copies that disagree with _config.yml; write nothing")
    parser.add_argument("--root", default=".", help="the course checkout (default: here)")
    args = parser.parse_args(argv)
    lines = sync_repository(args.root, check=args.check)
    for line in lines:
        print(line)
    if args.check and lines:
        print("These files disagree with _config.yml's repository: run python -m lmlib.book sync-repository.")
        return 1
    print(f"{len(lines)} files rewritten." if lines else "Every copy of the repository URL agrees with _config.yml.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
