"""The API summaries in lmlib's module docstrings agree with the code.

Each module opens with a hand-written summary of its API (``API summary`` or ``API::``). Prose
drifts; this test reads every entry of those summaries and checks it against the code:

- ``name(a, b=1, *, c)`` at the start of an entry must be a function or class of the module (or,
  indented under a class, a method of that class), and the listed parameters must be its
  parameters, in order, with the same ``*`` marker; a listed default must equal the real one
  (defaults may be left out; ``...`` at the end says "and more parameters follow").
- ``.name(...)`` and ``.name`` after a class are its methods and attributes.
- Several entries can share a line, separated by ``;``.

A summary line whose parentheses hold prose rather than parameters (``softmax(q k^T) v``) is
read as prose and skipped.
"""
from __future__ import annotations

import ast
import importlib
import importlib.util
import inspect
import re
import sys
import textwrap
import types

import pytest
import torch

import lmlib

MODULES = [m for names in lmlib.LAYERS.values() for m in names]
IDENT = re.compile(r"[A-Za-z_]\w*")


def _api_block(doc: str) -> list[str]:
    """The lines of the API summary, continuation lines (open parentheses) joined."""
    match = re.search(r"^API(?: summary\n-+|::)\n", doc, re.M)
    if not match:
        return []
    lines, current, depth = [], "", 0
    for raw in doc[match.end():].split("\n"):
        if depth > 0:
            current += " " + raw.strip()
        else:
            if current:
                lines.append(current)
            current = raw
        depth = max(0, depth + raw.count("(") + raw.count("[") - raw.count(")") - raw.count("]"))
    if current:
        lines.append(current)
    return lines


def _split_top(text: str, sep: str) -> list[str]:
    """Split ``text`` on ``sep`` outside parentheses, brackets and quotes."""
    parts, depth, quote, start = [], 0, None, 0
    for i, ch in enumerate(text):
        if quote:
            quote = None if ch == quote else quote
        elif ch in "\"'":
            quote = ch
        elif ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth -= 1
        elif depth == 0 and text.startswith(sep, i):
            parts.append(text[start:i])
            start = i + len(sep)
    parts.append(text[start:])
    return parts


def _call(text: str) -> tuple[str, str | None, str] | None:
    """``name(args) rest`` -> (name, args or None, rest), for text that starts with a name."""
    m = IDENT.match(text)
    if not m:
        return None
    name, rest = m.group(), text[m.end():]
    if not rest.startswith("("):
        return name, None, rest
    depth = 0
    for i, ch in enumerate(rest):
        depth += ch == "("
        depth -= ch == ")"
        if depth == 0:
            return name, rest[1:i], rest[i + 1:]
    return name, rest[1:], ""


def _parse_params(args: str) -> list[tuple[str, str | None]] | None:
    """[(name or marker, default text or None)], or None when the parentheses hold prose."""
    out = []
    for item in (a.strip() for a in _split_top(args, ",")):
        if not item:
            continue
        if item in ("*", "...") or re.fullmatch(r"\*\*?[A-Za-z_]\w*", item):
            out.append((item, None))
            continue
        pieces = _split_top(item, "=")
        name, default = pieces[0].strip(), ("=".join(pieces[1:]).strip() if len(pieces) > 1 else None)
        name = re.sub(r"\s*:.*$", "", name)  # an annotation
        name = re.sub(r"\s*\(.*\)$", "", name)  # a shape written after the name: x (B, T)
        if not IDENT.fullmatch(name):
            return None
        out.append((name, default))
    return out


def _signature_items(obj) -> list[tuple[str, object]]:
    items, starred = [], False
    for p in inspect.signature(obj).parameters.values():
        if p.name in ("self", "cls"):
            continue
        if p.kind is p.VAR_POSITIONAL:
            items.append(("*" + p.name, p.empty))
            starred = True
        elif p.kind is p.VAR_KEYWORD:
            items.append(("**" + p.name, p.empty))
        else:
            if p.kind is p.KEYWORD_ONLY and not starred:
                items.append(("*", p.empty))
                starred = True
            items.append((p.name, p.default))
    return items


def _same_default(text: str, real, namespace: dict) -> bool | None:
    try:
        listed = eval(text, {"torch": torch, **namespace, "float32": torch.float32})  # noqa: S307
    except Exception:
        return None  # not an expression we can evaluate: not checked
    if isinstance(listed, (list, tuple)) and isinstance(real, (list, tuple)):
        return list(listed) == list(real)
    try:
        return bool(listed == real)
    except Exception:
        return None


def check_signature(where: str, obj, args: str, namespace: dict) -> list[str]:
    listed = _parse_params(args)
    if listed is None:
        return []
    try:
        real = _signature_items(obj)
    except (TypeError, ValueError):
        return []  # a builtin without a signature
    names = [n for n, _ in listed]
    cut = names.index("...") if "..." in names else None
    real_names = [n for n, _ in real]
    if cut is None and names != real_names or cut is not None and names[:cut] != real_names[:cut]:
        return [f"{where}: the summary lists ({', '.join(names)}) but the code has ({', '.join(real_names)})"]
    problems = []
    real_defaults = dict(real)
    for name, default in listed:
        if default in (None, "...") or name not in real_defaults:
            continue  # no default given, or an abbreviated one
        if real_defaults[name] is inspect.Parameter.empty:
            problems.append(f"{where}: the summary gives {name} a default ({default}) but it is required")
        elif _same_default(default, real_defaults[name], namespace) is False:
            problems.append(f"{where}: the summary says {name}={default} but the default is {real_defaults[name]!r}")
    return problems


def _has_attribute(cls, name: str) -> bool:
    if hasattr(cls, name):
        return True
    try:
        return f"self.{name}" in inspect.getsource(cls)
    except (OSError, TypeError):
        return False


def api_problems(module: types.ModuleType) -> list[str]:
    """Every disagreement between ``module``'s API summary and its code."""
    label = module.__name__
    namespace = vars(module)
    problems, current = [], None
    for line in _api_block(module.__doc__ or ""):
        for entry in (e.strip() for e in _split_top(line, ";")):
            # an entry, then maybe ".method(...)" / ".attr" pieces after white space
            pieces = [p for p in re.split(r"\s+(?=\.[A-Za-z_])", entry) if p]
            for k, piece in enumerate(pieces):
                method = piece.startswith(".")
                parsed = _call(piece[1:] if method else piece)
                if parsed is None:
                    break
                name, args, _ = parsed
                if method:
                    if current is None:
                        break
                    if not _has_attribute(current, name):
                        problems.append(f"{label}: {current.__name__}.{name} is listed but does not exist")
                    elif args is not None:
                        problems += check_signature(f"{label}: {current.__name__}.{name}", getattr(current, name),
                                                    args, namespace)
                    continue
                if k > 0:
                    break  # words after an entry: its description
                indented = line[:1] in (" ", "\t")
                if indented and current is not None and args is not None and hasattr(current, name):
                    problems += check_signature(f"{label}: {current.__name__}.{name}", getattr(current, name),
                                                args, namespace)
                elif name in namespace and (args is not None or not indented or inspect.isclass(namespace[name])):
                    obj = namespace[name]
                    if inspect.isclass(obj):
                        current = obj
                    if args is not None and callable(obj):
                        problems += check_signature(f"{label}: {name}", obj, args, namespace)
                elif args is not None and _parse_params(args) is not None and not indented:
                    problems.append(f"{label}: {name} is listed but the module has no such name")
    return problems


@pytest.mark.parametrize("name", MODULES)
def test_api_summary_matches_the_code(name):
    module = importlib.import_module(f"lmlib.{name}")
    problems = api_problems(module)
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("name", MODULES)
def test_api_summary_lists_every_public_name(name):
    """A module with a summary lists every name of its ``__all__`` there (and has an ``__all__``)."""
    module = importlib.import_module(f"lmlib.{name}")
    block = "\n".join(_api_block(module.__doc__ or ""))
    if not block:
        return
    assert hasattr(module, "__all__"), f"lmlib.{name} has an API summary but no __all__ to check it against"
    missing = [n for n in module.__all__ if not re.search(r"(?<![\w.])" + re.escape(n) + r"\b", block)]
    assert not missing, f"lmlib.{name}: public names missing from the API summary: {missing}"
    absent = [n for n in module.__all__ if not hasattr(module, n)]
    assert not absent, f"lmlib.{name}.__all__ names what the module does not define: {absent}"


def _module_from_source(source: str, folder, monkeypatch) -> types.ModuleType:
    path = folder / "fake_api.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location("fake_api", path)
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "fake_api", module)  # inspect.getsource finds a class through it
    spec.loader.exec_module(module)
    return module


def test_the_checker_catches_a_wrong_summary(tmp_path, monkeypatch):
    source = textwrap.dedent('''
        """A module.

        API summary
        -----------
        add(a, b=2) -> int
        Box(width, height=1)   .area(scale=1.0) .width .depth
        gone(x) -> int
        """


        def add(a, b=3):
            return a + b


        class Box:
            def __init__(self, width, height=1, *, color="red"):
                self.width = width

            def area(self, scale=1.0):
                return 0
        ''')
    module = _module_from_source(source, tmp_path, monkeypatch)
    problems = api_problems(module)
    assert any("b=2" in p for p in problems)  # a wrong default
    assert any("Box" in p and "color" in p for p in problems)  # a missing keyword-only parameter
    assert any("Box.depth" in p for p in problems)  # an attribute that does not exist
    assert any("gone" in p for p in problems)  # a function that does not exist
    assert not any("area" in p or "Box.width" in p for p in problems), problems  # right entries pass
    module.__doc__ = module.__doc__.replace("b=2", "b=3").replace("height=1)", "height=1, *, color='red')")
    module.__doc__ = module.__doc__.replace(" .depth", "").replace("gone(x) -> int\n", "")
    assert api_problems(module) == []


def test_parameter_lists_are_read_like_the_summaries_write_them():
    assert _parse_params("x (B, T), offset=0") == [("x", None), ("offset", "0")]
    assert _parse_params("base: nn.Linear, r, *, alpha=None, ...") == [
        ("base", None), ("r", None), ("*", None), ("alpha", "None"), ("...", None)]
    assert _parse_params("q k^T * scale + mask") is None  # prose, not parameters
    assert ast.literal_eval(_parse_params('norm="layer"')[0][1]) == "layer"
