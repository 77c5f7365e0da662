"""The package's layout: three layers (lmlib.LAYERS), imports at the top, no private names shared.

A core module (the language-model engine) imports only core modules; an application module imports
the core and other applications, never the book plumbing. Every module belongs to exactly one
layer, so a new module has to be placed. Imports of lmlib sit at module level, except the one
listed in ``LAZY`` with the reason next to it in the code.
"""
import ast
from pathlib import Path

import pytest

import lmlib

PACKAGE = Path(lmlib.__file__).parent
MODULES = sorted(p.stem for p in PACKAGE.glob("*.py") if p.stem != "__init__") + ["exercises"]
LAYER_OF = {m: layer for layer, names in lmlib.LAYERS.items() for m in names}
ALLOWED = {"core": {"core"}, "applications": {"core", "applications"}, "book": {"core", "applications", "book"}}
#: (importing module, imported module): in-function imports with a reason written beside them.
#: ``train.plot_history`` draws with the book's plotting helpers, imported only when called, so a
#: plain training run (a script, a benchmark) needs no matplotlib.
LAZY = {("train", "plot"), ("book", "data")}  # book: `import lmlib` loads book (glue) and must not load torch


def _files(module: str) -> list[Path]:
    path = PACKAGE / module
    return sorted(path.glob("*.py")) if path.is_dir() else [PACKAGE / f"{module}.py"]


def _lmlib_imports(path: Path):
    """(imported lmlib module, imported names, is at module level) for every import of lmlib."""
    tree = ast.parse(path.read_text())
    top = {id(node) for node in tree.body}
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "lmlib":
            parts = node.module.split(".")
            if len(parts) > 1:
                yield parts[1], [a.name for a in node.names], id(node) in top
            else:  # from lmlib import data, model
                for alias in node.names:
                    yield alias.name, [], id(node) in top
        elif isinstance(node, ast.Import):
            for alias in node.names:
                parts = alias.name.split(".")
                if parts[0] == "lmlib" and len(parts) > 1:
                    yield parts[1], [], id(node) in top


def test_every_module_has_exactly_one_layer():
    listed = [m for names in lmlib.LAYERS.values() for m in names]
    assert len(listed) == len(set(listed)), "a module is listed in two layers"
    assert set(listed) == set(MODULES), (
        f"modules without a layer: {sorted(set(MODULES) - set(listed))}; "
        f"listed but missing: {sorted(set(listed) - set(MODULES))} (edit lmlib.LAYERS)"
    )


@pytest.mark.parametrize("module", MODULES)
def test_imports_respect_the_layers(module):
    for path in _files(module):
        for imported, names, at_top in _lmlib_imports(path):
            if imported == module or imported not in LAYER_OF:
                continue  # a package's own submodules (lmlib.exercises.core) or lmlib itself
            if (module, imported) in LAZY and not at_top:
                continue  # the documented exception: train draws its loss curves with the book's plots
            assert LAYER_OF[imported] in ALLOWED[LAYER_OF[module]], (
                f"{path.name}: the {LAYER_OF[module]} module {module} imports {imported} "
                f"({LAYER_OF[imported]} layer)"
            )
            private = [n for n in names if n.startswith("_")]
            assert not private, f"{path.name} imports private names {private} from lmlib.{imported}"
            assert at_top or (module, imported) in LAZY, (
                f"{path.name} imports lmlib.{imported} inside a function: move it to the top, or add it "
                "to LAZY in this test with the reason as a comment beside the import"
            )


def test_the_layer_test_catches_a_core_module_that_imports_an_application(tmp_path):
    bad = tmp_path / "model.py"
    bad.write_text("from lmlib.classify import GPTClassifier\n\ndef f():\n    from lmlib.data import _private\n")
    found = list(_lmlib_imports(bad))
    assert ("classify", ["GPTClassifier"], True) in found and ("data", ["_private"], False) in found
    assert LAYER_OF["classify"] not in ALLOWED[LAYER_OF["model"]]
