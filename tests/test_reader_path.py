"""A reader's path, as on Colab: install the course from its repository, download the data over HTTP.

A fresh virtual environment gets the packages a Colab image already has (this environment's, by
symbolic links) but not the course. A real notebook then runs with its setup cell as written, except
that the repository URL points at this checkout (``git+file://``): the cell pip-installs the course,
and every data file the notebook needs comes from a loopback HTTP server that serves the mirror's
files under their public-home paths (``LMLIB_MIRROR_URL``), checked by sha256 and cached. A second
run reads the cache and sends no request. Takes about a minute (mostly pip building the package).
"""
import json
import os
import shutil
import subprocess
import sys
import sysconfig
import urllib.parse
from pathlib import Path

import pytest

from lmlib import book, data

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK = ROOT / "chapters" / "01_background" / "01_language_models.ipynb"
pytestmark = pytest.mark.reader


class _PublicHomes:
    """Routes of the loopback server: ``/<host>/<path>`` of every registered URL -> the file's bytes."""

    def __init__(self, mirror: Path):
        self.files = {}
        for ds in data.registry().values():
            for spec in ds.files.values():
                if spec.member is None:  # archives are not in the mirror, only their members
                    url = urllib.parse.urlsplit(spec.url)
                    local = mirror / ds.name / spec.name
                    self.files[f"/{url.netloc}{url.path}"] = local if local.is_file() else ROOT / "models" / ds.name / spec.name

    def get(self, route: str) -> bytes | None:
        f = self.files.get(route)
        return f.read_bytes() if f is not None and f.is_file() else None


@pytest.fixture(scope="module")
def colab(tmp_path_factory) -> Path:
    """A virtual environment with this one's packages (torch included) but not the course; its python."""
    if shutil.which("git") is None:
        pytest.skip("git is needed to install the course from a git URL")
    env = tmp_path_factory.mktemp("colab") / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(env)], check=True)
    python = env / "bin" / "python"
    target = Path(subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                                 capture_output=True, text=True, check=True).stdout.strip())
    for entry in Path(sysconfig.get_paths()["purelib"]).iterdir():
        if not entry.name.lower().startswith(("lmcourse", "__editable__", "_lmcourse", "__pycache__")):
            (target / entry.name).symlink_to(entry)
    return python


def _run_notebook(python: Path, notebook: Path, env: dict) -> None:
    script = ("import nbformat, nbclient, sys; nb = nbformat.read(sys.argv[1], as_version=4); "
              "nbclient.NotebookClient(nb, timeout=600, kernel_name='python3').execute()")
    done = subprocess.run([str(python), "-c", script, str(notebook)], cwd=notebook.parent, env=env,
                          capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, f"{notebook.name} failed in the Colab-like environment:\n{done.stderr[-4000:]}"


def test_a_notebook_as_a_reader_runs_it(colab, mirror, server, tmp_path):
    base, handler = server
    handler.routes = _PublicHomes(mirror)
    nb = json.loads(NOTEBOOK.read_text())
    setup = next(c for c in nb["cells"] if c["cell_type"] == "code")
    src = "".join(setup["source"])
    assert f"git+{book.REPOSITORY_URL}" in src
    setup["source"] = src.replace(f"git+{book.REPOSITORY_URL}", f"git+file://{ROOT}")
    work = tmp_path / "work"
    work.mkdir()
    (work / NOTEBOOK.name).write_text(json.dumps(nb))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LMLIB_", "PYTHON", "VIRTUAL_ENV", "JUPYTER"))}
    env.update(LMLIB_SCALE="smoke", LMLIB_CACHE=str(tmp_path / "cache"), LMLIB_MIRROR_URL=base,
               MPLBACKEND="Agg", PATH=f"{colab.parent}{os.pathsep}{env.get('PATH', '')}")

    _run_notebook(colab, work / NOTEBOOK.name, env)
    installed = subprocess.run([str(colab), "-c", "import lmlib; print(lmlib.__file__)"], env=env, cwd=work,
                               capture_output=True, text=True, check=True).stdout
    assert str(ROOT) not in installed, "the notebook must use the course installed by its setup cell"
    fetched = [route for route, _ in handler.requests]
    assert fetched and all(route in handler.routes.files for route in fetched), fetched
    assert any("tinyshakespeare" in route for route in fetched)
    assert (tmp_path / "cache" / "tinyshakespeare" / "input.txt").is_file()

    handler.requests.clear()
    _run_notebook(colab, work / NOTEBOOK.name, env)
    assert handler.requests == [], "a second run must read the cache"
