"""Course conventions that every notebook keeps (checked statically, without running them)."""
import json
import re
import tomllib
from pathlib import Path

import pytest
import yaml

import lmlib.data

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "chapters").rglob("*.ipynb"))
NOTEBOOKS = [nb for nb in NOTEBOOKS if ".ipynb_checkpoints" not in nb.parts]
REPO_URL = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["urls"]["Homepage"]


def _cells(nb: Path):
    return json.loads(nb.read_text())["cells"]


def _toc_files():
    toc = yaml.safe_load((ROOT / "_toc.yml").read_text())
    found = {toc["root"]}

    def walk(entries):
        for e in entries or []:
            if "file" in e:
                found.add(e["file"])
            walk(e.get("sections"))
            walk(e.get("chapters"))

    for part in toc.get("parts", []):
        walk(part.get("chapters"))
    return found


def test_there_are_notebooks():
    assert NOTEBOOKS, "no notebooks found under chapters/"


@pytest.mark.parametrize("nb", NOTEBOOKS, ids=lambda p: p.stem)
def test_stored_without_outputs(nb):
    for cell in _cells(nb):
        if cell["cell_type"] == "code":
            assert not cell.get("outputs") and cell.get("execution_count") is None, (
                f"{nb.name} has stored outputs; clear them (the book executes notebooks at build time)"
            )


@pytest.mark.parametrize("nb", NOTEBOOKS, ids=lambda p: p.stem)
def test_first_code_cell_installs_the_course_package(nb):
    first = next(c for c in _cells(nb) if c["cell_type"] == "code")
    src = "".join(first["source"])
    assert "import lmlib" in src and "except ImportError" in src
    assert f"git+{REPO_URL}" in src, f"the setup cell must install from {REPO_URL} (pyproject's Homepage)"
    assert "hide-input" in first.get("metadata", {}).get("tags", []), "tag the setup cell hide-input"


@pytest.mark.parametrize("nb", NOTEBOOKS, ids=lambda p: p.stem)
def test_reports_device_and_ends_with_exercises(nb):
    code = "".join("".join(c["source"]) for c in _cells(nb) if c["cell_type"] == "code")
    text = "".join("".join(c["source"]) for c in _cells(nb) if c["cell_type"] == "markdown")
    assert "lmlib.device.report()" in code, "print the device/precision/scale report at the top"
    assert "## Exercises" in text, "every notebook ends with exercises"


@pytest.mark.parametrize("nb", NOTEBOOKS, ids=lambda p: p.stem)
def test_every_dataset_used_is_credited(nb):
    code = "".join("".join(c["source"]) for c in _cells(nb) if c["cell_type"] == "code")
    used = set(re.findall(r"lmlib\.data\.(?:path|read_text)\(\s*[\"']([\w.\-]+)[\"']", code))
    credited = set(re.findall(r"credit\(\s*[\"']([\w.\-]+)[\"']", code))
    for name in used:
        lmlib.data.dataset(name)  # a registered name
    assert used <= credited, f"credit these data sets with lmlib.data.credit(): {sorted(used - credited)}"


def configuration_problems(cells: list[dict]) -> list[str]:
    """What breaks the one-configuration-cell convention (CONTRIBUTING.md) in a notebook's cells."""
    code = ["".join(c["source"]) for c in cells if c["cell_type"] == "code"]
    problems = []
    with_scaled = [i for i, src in enumerate(code) if re.search(r"\bscaled\(", src)]
    if len(with_scaled) > 1:
        problems.append(f"scaled(...) is called in {len(with_scaled)} code cells; keep every preset value in "
                        "the one configuration cell (cfg = dict(...)) and read cfg elsewhere")
    if with_scaled and not re.search(r"^cfg = ", code[with_scaled[0]], re.M):
        problems.append("the cell that calls scaled(...) must build the configuration: cfg = dict(...)")
    for i, src in enumerate(code):
        if re.search(r"=\s*(lmlib\.presets\.)?scaled\s*$", src, re.M):
            problems.append(f"code cell {i} aliases scaled (S = scaled): call scaled(...) by its name")
        if re.search(r"presets\.scale\(\)\s*[!=]=", src):
            problems.append(f"code cell {i} branches on the preset's name: make the branch a cfg value")
        if re.search(r"log_every=max\(|warmup_steps=min\(", src):
            problems.append(f"code cell {i} computes log_every or warmup_steps: TrainConfig's defaults do that")
    return problems


@pytest.mark.parametrize("nb", NOTEBOOKS, ids=lambda p: p.stem)
def test_one_configuration_cell(nb):
    problems = configuration_problems(_cells(nb))
    assert not problems, f"{nb.name}: " + "; ".join(problems)


def test_the_configuration_check_catches_scattered_presets():
    def cells(*sources):
        return [{"cell_type": "code", "source": [src]} for src in sources]

    good = cells("from lmlib.presets import scaled", "cfg = dict(\n    steps=scaled(smoke=2, cpu=9, gpu=99),\n)\ncfg",
                 "Trainer(model, TrainConfig(max_steps=cfg['steps']), batches)")
    assert configuration_problems(good) == []
    assert configuration_problems(good + cells("n = scaled(smoke=1, cpu=2, gpu=3)"))
    assert configuration_problems(cells("S = lmlib.presets.scaled\ncfg = dict(steps=S(smoke=1, cpu=2, gpu=3))"))
    assert configuration_problems(cells("if lmlib.presets.scale() == 'smoke':\n    pass"))
    assert configuration_problems(cells("TrainConfig(max_steps=n, log_every=max(1, n // 20))"))


def test_every_page_is_in_the_toc_and_every_toc_entry_exists():
    toc = _toc_files()
    pages = {str(p.relative_to(ROOT).with_suffix("")) for p in NOTEBOOKS}
    pages |= {str(p.relative_to(ROOT).with_suffix("")) for p in (ROOT / "chapters").rglob("*.md")}
    assert pages <= toc, f"pages missing from _toc.yml: {sorted(pages - toc)}"
    for entry in toc:
        assert any((ROOT / f"{entry}{ext}").exists() for ext in (".md", ".ipynb")), f"_toc.yml names missing {entry}"


def test_config_has_colab_launch_button_and_matching_repository():
    config = yaml.safe_load((ROOT / "_config.yml").read_text())
    assert config["launch_buttons"]["colab_url"] == "https://colab.research.google.com"
    assert config["repository"]["url"] == REPO_URL
