"""The course's repository URL lives in _config.yml; every other copy agrees (lmlib.book.sync_repository)."""
import json
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from lmlib import book
from lmlib.assistant import ASSISTANT_RELEASE
from lmlib.recipes import registry_entry

ROOT = Path(__file__).resolve().parents[1]


def test_every_copy_agrees_with_config():
    assert book.sync_repository(ROOT, check=True) == []
    assert book._configured(ROOT) == (book.REPOSITORY_URL, book.BRANCH)


def test_the_places_that_hold_a_copy():
    assert tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["urls"]["Homepage"] == book.REPOSITORY_URL
    assert f'"lmcourse @ git+{book.REPOSITORY_URL}"' in (ROOT / "README.md").read_text()
    registry = tomllib.loads((ROOT / "lmlib" / "datasets.toml").read_text())
    for name, spec in registry["course-gpt"]["files"].items():
        assert spec["url"] == book.raw_url(f"models/course-gpt/{name}")
    assert book.RESULTS_URL == book.raw_url("benchmarks/results/{name}.json")


def test_raw_url_needs_github():
    assert book.raw_url("a/b.json", "https://github.com/o/r", "dev") == "https://raw.githubusercontent.com/o/r/dev/a/b.json"
    with pytest.raises(ValueError, match="GitHub"):
        book.raw_url("a", "https://gitlab.com/o/r")


def _course_copy(tmp_path: Path) -> Path:
    """A small checkout-like tree with the files that hold the URL (not a git repository)."""
    root = tmp_path / "course"
    (root / "lmlib").mkdir(parents=True)
    (root / "chapters").mkdir()
    shutil.copy(ROOT / "_config.yml", root)
    shutil.copy(ROOT / "lmlib" / "book.py", root / "lmlib")
    shutil.copy(ROOT / "README.md", root)
    shutil.copy(ROOT / "pyproject.toml", root)
    shutil.copy(ROOT / "lmlib" / "datasets.toml", root / "lmlib")
    shutil.copy(next((ROOT / "chapters").rglob("*.ipynb")), root / "chapters" / "nb.ipynb")
    return root


def test_moving_the_course_is_one_line_and_one_command(tmp_path):
    root = _course_copy(tmp_path)
    config = root / "_config.yml"
    config.write_text(config.read_text().replace(book.REPOSITORY_URL, "https://github.com/someone/llm-course")
                      .replace(f"branch: {book.BRANCH}", "branch: trunk"))
    flagged = book.sync_repository(root, check=True)
    assert {line.split(":")[0] for line in flagged} == {"README.md", "pyproject.toml", "lmlib/book.py",
                                                        "lmlib/datasets.toml", "chapters/nb.ipynb"}
    assert book.REPOSITORY_URL in (root / "README.md").read_text()  # check mode writes nothing
    cli = [sys.executable, "-m", "lmlib.book", "sync-repository", "--root", str(root)]
    check = subprocess.run([*cli, "--check"], capture_output=True, text=True)
    assert check.returncode == 1 and "run python -m lmlib.book sync-repository" in check.stdout
    before = sorted(p.relative_to(root) for p in root.rglob("*"))
    assert subprocess.run(cli, capture_output=True, text=True).returncode == 0
    assert book.sync_repository(root, check=True) == []
    assert sorted(p.relative_to(root) for p in root.rglob("*")) == before  # files rewritten in place, none added
    text = "".join(f.read_text() for f in [root / "README.md", root / "pyproject.toml", root / "lmlib" / "book.py",
                                           root / "lmlib" / "datasets.toml", root / "chapters" / "nb.ipynb"])
    assert "lmcourse/lmcourse" not in text
    assert 'BRANCH = "trunk"' in (root / "lmlib" / "book.py").read_text()
    assert "https://raw.githubusercontent.com/someone/llm-course/trunk/models/course-gpt/" in text
    json.loads((root / "chapters" / "nb.ipynb").read_text())  # still a valid notebook
    assert subprocess.run([*cli, "--check"], capture_output=True, text=True).returncode == 0


def test_a_config_without_repository_is_named(tmp_path):
    root = _course_copy(tmp_path)
    (root / "_config.yml").write_text("title: x\n")
    with pytest.raises(ValueError, match="_config.yml has no repository.url"):
        book.sync_repository(root, check=True)


def test_registry_entry_points_at_the_repository(tmp_path):
    for name in ("model.safetensors", "tokenizer.json", "config.json", "train_log.json"):
        (tmp_path / name).write_bytes(b"x")
    entry = tomllib.loads(registry_entry(tmp_path))["course-gpt"]
    assert entry["homepage"] == book.REPOSITORY_URL
    assert entry["files"]["config.json"]["url"] == book.raw_url("models/course-gpt/config.json")
    entry = tomllib.loads(registry_entry(tmp_path, ASSISTANT_RELEASE))["course-assistant"]
    assert entry["licence"] == ASSISTANT_RELEASE["licence"] and "lmlib.assistant" in entry["citation"]
    assert entry["files"]["model.safetensors"]["url"] == book.raw_url("models/course-assistant/model.safetensors")
