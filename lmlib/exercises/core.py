"""Checkers for the book's exercises: your function against the reference, on fresh random inputs.

Every chapter ends with exercises; each code exercise calls one ``check_*`` function here. A
checker runs the reader's function on several random cases (new ones on every call, so a
hard-coded answer does not pass), compares with the reference implementation, and prints either a
pass line or the first failing case with a hint. It returns True or False so tests can use it.

Adding a checker: write a reference, a case generator ``make_case(gen) -> tuple of args`` and call
:func:`check`. Each chapter keeps its checkers in its own module of this package.
"""
from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import torch

Case = tuple[Any, ...]


def check(
    fn: Callable,
    reference: Callable,
    make_case: Callable[[torch.Generator], Case],
    *,
    name: str,
    hint: str,
    trials: int = 5,
    fixed_cases: tuple[Case, ...] = (),
    rtol: float = 1e-5,
    atol: float = 1e-6,
    seed: int | None = None,
    verbose: bool = True,
) -> bool:
    """Compare ``fn`` with ``reference`` on ``fixed_cases`` plus ``trials`` random cases."""
    gen = torch.Generator().manual_seed(seed if seed is not None else int.from_bytes(os.urandom(4), "little"))
    cases = list(fixed_cases) + [make_case(gen) for _ in range(trials)]
    for number, args in enumerate(cases, 1):
        expected = reference(*_clone(args))
        try:
            got = fn(*_clone(args))
        except Exception as err:  # the reader's code may raise anything; report it, don't crash
            return _fail(name, number, args, f"your function raised {type(err).__name__}: {err}", hint, verbose)
        problem = _compare(got, expected, rtol, atol)
        if problem:
            return _fail(name, number, args, problem, hint, verbose)
    if verbose:
        print(f"PASS {name}: your function matches the reference on {len(cases)} cases.")
    return True


def _clone(args: Case) -> Case:
    return tuple(a.clone() if isinstance(a, torch.Tensor) else a for a in args)


def _compare(got: Any, expected: Any, rtol: float, atol: float) -> str | None:
    if isinstance(expected, torch.Tensor):
        if not isinstance(got, torch.Tensor):
            return f"expected a tensor, got {type(got).__name__}"
        if got.shape != expected.shape:
            return f"expected shape {tuple(expected.shape)}, got {tuple(got.shape)}"
        try:
            torch.testing.assert_close(got.to(expected.dtype), expected, rtol=rtol, atol=atol)
        except AssertionError as err:
            return str(err).split("\n\n")[0]
        return None
    if isinstance(expected, float):
        try:
            got = float(got)
        except (TypeError, ValueError):
            return f"expected a number, got {type(got).__name__}"
        if not abs(got - expected) <= atol + rtol * abs(expected):
            return f"expected {expected:.6g}, got {got:.6g}"
        return None
    return None if got == expected else f"expected {expected!r}, got {got!r}"


def _fail(name: str, number: int, args: Case, problem: str, hint: str, verbose: bool) -> bool:
    if verbose:
        shown = ", ".join(_short(a) for a in args)
        print(f"FAIL {name}, case {number} with inputs ({shown}):\n  {problem}\n  Hint: {hint}")
    return False


def _short(value: Any) -> str:
    if isinstance(value, torch.Tensor):
        if value.numel() <= 8:
            return f"tensor({value.tolist()})"
        return f"tensor of shape {tuple(value.shape)}"
    return repr(value)
