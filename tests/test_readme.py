"""The README's two commands are what the Makefile provides, and CI runs the README's test command."""
import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _readme_commands() -> list[str]:
    text = (ROOT / "README.md").read_text()
    block = re.search(r"## The two commands\s+```bash\n(.*?)```", text, re.S)
    assert block, "README.md lost its '## The two commands' bash block"
    return [line.split("#")[0].strip() for line in block.group(1).splitlines() if line.strip()]


def _dry_run(target: str) -> str:
    """What ``make target`` would run on a fresh checkout (``-B``: as if nothing were installed yet)."""
    done = subprocess.run(["make", "-n", "-B", target], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, f"make -n {target} failed:\n{done.stderr}"
    return done.stdout


def test_the_two_commands_are_make_targets():
    assert _readme_commands() == ["make book", "make test"]
    book, test = _dry_run("book"), _dry_run("test")
    assert "jupyter-book build" in book and "pytest" in test
    for out in (book, test):  # both create the environment and install what they need first
        assert "-m venv" in out and "pip install" in out and "torch==" in out


def test_make_book_says_where_the_site_is():
    out = _dry_run("book")
    assert "_build/html/index.html" in out and "http.server" in out


def test_ci_runs_the_readme_test_command():
    lines = [ln.strip() for ln in (ROOT / ".ci" / "run").read_text().splitlines()
             if ln.strip() and not ln.lstrip().startswith("#")]
    assert lines[-1] == _readme_commands()[1], ".ci/run must end by running the README's test command"
