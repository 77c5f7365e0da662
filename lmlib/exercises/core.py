"""The machinery every exercise checker shares: cases, comparison, diagnoses and the result.

A checker runs the reader's function on a few edge cases and on fresh random cases (a new seed
from the operating system at every call, so an answer typed in by hand does not pass), compares
each answer with a reference solution and stops at the first difference. It then tries to name
the mistake instead of printing "not close": first the checker's own :class:`Mistake` list (known
wrong solutions, matched by their output), then the recognisers below, which every checker gets
for free:

- the function raised ``NotImplementedError`` (a starter stub): "not done yet";
- it returned ``None`` (no ``return``), a wrong type, a wrong length, a wrong shape (axes swapped,
  an axis of size 1 too many, one position too many along an axis) or dtype;
- the parts of a tuple in the wrong order;
- NaN or inf where the answer is finite: an overflow (subtract the maximum before ``exp``);
- the transpose of the expected matrix;
- rows that should sum to one but do not, or that sum to one along another axis;
- True and False swapped in a boolean mask; no mask at all; a mask off by one position per row;
  masked entries filled with a finite number instead of ``-inf`` (or ``-100``, the ignore index);
- a constant factor, named when it is a known one: sqrt(d) (the 1/sqrt(d) attention scale), the
  number of items (a sum for a mean), ln 2 (a different logarithm), 3600 (seconds against hours),
  100 (percent), -1 (the sign);
- a whole number off by one.

The result is a :class:`Result`: truthy when every check passed, and shown in a notebook as one
line (``✓ my_softmax passes 12 checks``, ``not done yet: write my_softmax above``) or, on a
failure, the diagnosis with the failing input, the expected output and the reader's. Nothing is
printed.

Adding a checker: write the reference (calling ``lmlib`` where the library has the idea), a case
generator ``make_case(gen) -> tuple of arguments``, the edge cases, and the known mistakes, and
return :func:`check`'s result. Each chapter keeps its checkers in ``ch<N>_<chapter>.py``.
"""
from __future__ import annotations

import copy
import inspect
import itertools
import linecache
import math
import numbers
import os
import random
import traceback
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from lmlib.data import IGNORE_INDEX

__all__ = ["check", "Mistake", "Result"]

Case = tuple[Any, ...]

# --- the diagnoses' wording, shared by every checker ---------------------------------------------

OVERFLOW = ("NaN or inf where the expected values are finite: a number overflowed (exp(1000) is inf, "
            "and inf/inf is NaN) or was divided by zero. Subtract the maximum before exponentiating, "
            "or stay with logarithms")
TRANSPOSED = ("your result is the transpose of the expected one: rows and columns are swapped "
              "(which index is the row?)")
WRONG_AXIS = ("normalised over the wrong axis: your values sum to 1 along dim {dim}, but each row "
              "along the last axis (dim=-1) should sum to 1")
WHOLE_TENSOR = ("normalised over the whole tensor: all your values together sum to 1, but each row "
                "along the last axis (dim=-1) should sum to 1 on its own")
NOT_NORMALISED = ("rows that should sum to 1 do not: each row along the last axis is a probability "
                  "distribution (divide by its own sum, dim=-1, keepdim=True)")
INVERTED = "True and False are the wrong way round: every entry of your mask is the opposite of the expected one"
NO_MASK = ("nothing is masked: the positions that should hold {value} keep their values; "
           "apply the mask")
MASK_OFF_BY_ONE = ("the mask is off by one: it hides one position too {which} in {where} (check < against "
                   "<=, or the index or diagonal where the mask starts)")
WRONG_FILL = "masked positions hold {got} instead of {expected}: {why}"
MISSING_SCALE = ("the 1/sqrt(d) scale is missing: divide the scores q . k by sqrt(D), the size of one "
                 "head's vectors, before the softmax")
EXTRA_SCALE = "everything is divided by sqrt(d) = {c:.4g} once too often"
LOG_BASE = ("off by a factor of ln 2 (yours is {c:.4g} times the expected): a different logarithm base; "
            "bits and doublings use log2, not the natural log (or the other way round)")
SECONDS = ("yours is {c:.4g} times the expected: seconds where hours were asked for (or the reverse); "
           "there are 3600 s in an hour")
PERCENT = "yours is {c:.4g} times the expected: a fraction against a percentage (a factor of 100)"
SIGN = "the sign is flipped: yours is minus the expected value"
SUM_NOT_MEAN = ("yours is {n} times the expected, and {n} items came in: a sum where the mean was asked for "
                "(divide by the number of items)")
MEAN_NOT_SUM = "yours is 1/{n} of the expected, and {n} items came in: a mean where the sum was asked for"
FACTOR = "every value is {c:.4g} times the expected one: a constant factor is missing or extra"
OFF_BY_ONE = "off by one: yours is {got}, the expected {expected}"
SWAPPED = "the parts of the result are in the wrong order: return them as ({order})"
RETURNED_NONE = "it returned None: the function has no `return` (or does not reach it for this input)"
NOT_CALLABLE = "pass the function itself, check_...(my_function), not the result of calling it"


@dataclass(frozen=True)
class Mistake:
    """A known wrong solution: when the reader's answer equals ``fn``'s on the failing case, the
    diagnosis is ``says``."""

    says: str
    fn: Callable


class Result:
    """What a checker found: truthy when every check passed, falsy otherwise.

    In a notebook it shows as one line, ``✓ my_f passes 9 checks`` or ``not done yet: write my_f
    above``, or, on a failure, the diagnosis followed by the failing input, the expected output,
    the reader's output and a hint. ``status`` is ``"passed"``, ``"not done"`` or ``"failed"``;
    ``diagnosis`` is the one-sentence finding and ``checks`` the number of cases that ran.
    """

    def __init__(self, function: str, status: str, checks: int, diagnosis: str = "",
                 details: Sequence[tuple[str, str]] = ()) -> None:
        self.function = function
        self.status = status
        self.checks = checks
        self.diagnosis = diagnosis
        self.details = tuple(details)

    @property
    def passed(self) -> bool:
        return self.status == "passed"

    def __bool__(self) -> bool:
        return self.passed

    def __str__(self) -> str:
        if self.status == "passed":
            return f"✓ {self.function} passes {self.checks} check{'s' if self.checks != 1 else ''}"
        if self.status == "not done":
            return f"not done yet: write {self.function} above"
        lines = [f"✗ {self.function}: {self.diagnosis}"]
        width = max((len(label) for label, _ in self.details), default=0) + 1
        for label, text in self.details:
            pad = " " * (4 + width + 1)
            lines.append(f"    {label + ':':<{width}} " + text.replace("\n", "\n" + pad))
        return "\n".join(lines)

    __repr__ = __str__

    def _repr_pretty_(self, p, cycle: bool) -> None:  # IPython's plain-text display
        p.text(str(self))


def check(
    fn: Callable,
    reference: Callable,
    make_case: Callable[[torch.Generator], Case],
    *,
    hint: str,
    edge_cases: Sequence[Case] = (),
    mistakes: Sequence[Mistake] = (),
    trials: int = 5,
    rtol: float = 1e-5,
    atol: float = 1e-6,
    parts: Sequence[str] = (),
    prepare: Callable[[Any], Any] | None = None,
    judge: Callable[[Any, Any, Case], str | None] | None = None,
    verbose: bool = False,
) -> Result:
    """Run ``fn`` and ``reference`` on ``edge_cases`` and ``trials`` fresh random cases.

    ``parts`` names the members of a tuple result in the messages; ``prepare`` brings both outputs
    to a comparable form (and raises TypeError or ValueError, with a message for the reader, when
    the reader's output cannot be); ``judge(got, expected, args)`` replaces the comparison for
    outputs that are random, returning a diagnosis or None. ``verbose`` also prints the result.
    """
    who = _name_of(fn)
    if not callable(fn):
        return _finish(Result("your answer", "failed", 0, NOT_CALLABLE), verbose)
    gen = torch.Generator().manual_seed(int.from_bytes(os.urandom(8), "little") >> 1)
    cases = itertools.chain(edge_cases, (make_case(gen) for _ in range(trials)))  # drawn as they are needed
    names = _parameter_names(reference)
    number = 0
    for number, args in enumerate(cases, 1):
        expected = reference(*copy.deepcopy(args))
        if prepare is not None:
            expected = prepare(expected)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                got = fn(*copy.deepcopy(args))
        except NotImplementedError:
            return _finish(Result(who, "not done", number - 1), verbose)
        except Exception as err:  # the reader's code may raise anything: report it, never crash
            said = f"it raised {type(err).__name__}: {_first_line(err)}{_where(err)}"
            return _finish(_failure(who, number, said, args, names, None, None, hint, shown=False), verbose)
        if prepare is not None and got is not None:
            try:
                got = prepare(got)
            except (TypeError, ValueError, IndexError, AttributeError, RuntimeError) as err:
                return _finish(_failure(who, number, str(err), args, names, expected, got, hint), verbose)
        if judge is not None:
            said = RETURNED_NONE if got is None else judge(got, expected, args)
        else:
            said = diagnose(got, expected, args, mistakes=mistakes, parts=parts, rtol=rtol, atol=atol,
                            prepare=prepare)
        if said:
            return _finish(_failure(who, number, said, args, names, None if judge else expected, got, hint), verbose)
    return _finish(Result(who, "passed", number), verbose)


def _finish(result: Result, verbose: bool) -> Result:
    if verbose:
        print(result)
    return result


def _failure(who: str, number: int, said: str, args: Case, names: list[str], expected: Any, got: Any,
             hint: str, shown: bool = True) -> Result:
    details = [("input", _show_args(args, names))]
    if shown:
        if expected is not None:
            details.append(("expected", show(expected)))
        details.append(("yours", show(got)))
        where = _first_difference(got, expected) if expected is not None else None
        if where:
            details.append(("differs", where))
    details.append(("hint", hint))
    return Result(who, "failed", number, said, details)


def f64(rows) -> torch.Tensor:
    """A float64 tensor from nested lists: the edge cases' building block."""
    return torch.tensor(rows, dtype=torch.float64)


def randint(gen: torch.Generator, low: int, high: int) -> int:
    """One random integer in [low, high) from ``gen``: the case generators' building block."""
    return int(torch.randint(low, high, (1,), generator=gen))


# --- comparing ----------------------------------------------------------------------------------

def difference(got: Any, expected: Any, rtol: float = 1e-5, atol: float = 1e-6) -> str | None:
    """None when ``got`` matches ``expected`` (tensors, numbers, strings, tuples, lists, dicts),
    else what differs, in words."""
    if isinstance(expected, torch.Tensor):
        return _tensor_difference(got, expected, rtol, atol)
    if isinstance(expected, bool) or expected is None:
        return None if got == expected else f"expected {expected!r}, got {_kind(got)}"
    if isinstance(expected, int):
        number = _as_number(got)
        if number is None:
            return f"expected a whole number, got {_kind(got)}"
        return None if number == expected else f"expected {expected}, got {_number_text(number)}"
    if isinstance(expected, float):
        number = _as_number(got)
        if number is None:
            return f"expected a number (a Python float), got {_kind(got)}"
        if math.isnan(expected):
            return None if math.isnan(number) else f"expected NaN, got {number:.6g}"
        if number == expected or (math.isfinite(expected) and abs(number - expected) <= atol + rtol * abs(expected)):
            return None
        return f"expected {expected:.6g}, got {_number_text(number)}"
    if isinstance(expected, str):
        if not isinstance(got, str):
            return f"expected a string, got {_kind(got)}"
        return None if got == expected else "the text differs from the expected one"
    if isinstance(expected, (tuple, list)):
        if not isinstance(got, (tuple, list)):
            what = "tuple" if isinstance(expected, tuple) else "list"
            return f"expected a {what} of {len(expected)}, got {_kind(got)}"
        if len(got) != len(expected):
            return f"expected {len(expected)} items, got {len(got)}"
        for i, (g, e) in enumerate(zip(got, expected)):
            problem = difference(g, e, rtol, atol)
            if problem:
                return f"item {i}: {problem}"
        return None
    if isinstance(expected, dict):
        if not isinstance(got, dict):
            return f"expected a dictionary, got {_kind(got)}"
        return _dict_difference(got, expected, rtol, atol)
    return None if got == expected else f"expected {expected!r}, got {got!r}"


def _tensor_difference(got: Any, expected: torch.Tensor, rtol: float, atol: float) -> str | None:
    if not isinstance(got, torch.Tensor):
        return f"expected a tensor of shape {tuple(expected.shape)} ({expected.dtype}), got {_kind(got)}"
    if got.shape != expected.shape:
        return _shape_message(got, expected)
    kind = _dtype_message(got, expected)
    if kind:
        return kind
    if expected.dtype == torch.bool or not expected.is_floating_point():
        close = got.to(expected.dtype) == expected
    else:
        close = torch.isclose(got.detach().to(expected.dtype), expected, rtol=rtol, atol=atol, equal_nan=True)
    if bool(close.all()):
        return None
    bad = int((~close).sum())
    return f"{bad} of {close.numel()} values differ from the expected ones"


def _shape_message(got: torch.Tensor, expected: torch.Tensor) -> str:
    message = f"expected shape {tuple(expected.shape)}, got {tuple(got.shape)}"
    if sorted(got.shape) == sorted(expected.shape):
        message += ": the right sizes in another order, so two axes are swapped (transpose or permute)"
    elif [s for s in got.shape if s != 1] == [s for s in expected.shape if s != 1]:
        message += ": an axis of size 1 too many or too few (keepdim, squeeze or unsqueeze)"
    elif got.numel() == expected.numel():
        message += ": the same number of values, so a view or reshape went to the wrong shape"
    elif got.dim() == expected.dim():
        off = [(axis, g - e) for axis, (g, e) in enumerate(zip(got.shape, expected.shape)) if g != e]
        if len(off) == 1 and abs(off[0][1]) == 1:
            message += (f": one position too {'many' if off[0][1] > 0 else 'few'} along axis {off[0][0]} "
                        "(an off-by-one in a slice or range, or a missing shift such as ids[1:])")
    return message


def _dtype_message(got: torch.Tensor, expected: torch.Tensor) -> str | None:
    def family(t: torch.Tensor) -> str:
        if t.dtype == torch.bool:
            return "bool"
        return "floating-point" if t.is_floating_point() else "complex" if t.is_complex() else "integer"

    if family(got) != family(expected):
        what = {"bool": "a bool tensor (True / False)", "integer": "an integer tensor",
                "floating-point": "a floating-point tensor"}.get(family(expected), family(expected))
        return f"expected {what} like {expected.dtype}, got {got.dtype}"
    if expected.dtype in (torch.int8, torch.uint8) and got.dtype != expected.dtype:
        return f"expected {expected.dtype} (the storage type is the point), got {got.dtype}"
    return None


def _dict_difference(got: dict, expected: dict, rtol: float, atol: float) -> str | None:
    if expected and got:
        e_key, g_key = next(iter(expected)), next(iter(got))
        if type(g_key) is not type(e_key):
            return (f"the keys should be of type {type(e_key).__name__}, like {e_key!r}; yours are of type "
                    f"{type(g_key).__name__}, like {g_key!r}")
    missing = [k for k in expected if k not in got]
    extra = [k for k in got if k not in expected]
    if missing:
        return f"{len(missing)} expected key(s) missing, such as {missing[0]!r}"
    if extra:
        return f"{len(extra)} key(s) that should not be there, such as {extra[0]!r}"
    for key, value in expected.items():
        problem = difference(got[key], value, rtol, atol)
        if problem:
            return f"at key {key!r}: {problem}"
    return None


def _as_number(value: Any) -> float | int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return value
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        return value.item()
    if isinstance(value, numbers.Real):  # numpy scalars and other number-likes
        return float(value)
    return None


# --- diagnosing ---------------------------------------------------------------------------------

def diagnose(got: Any, expected: Any, args: Case = (), *, mistakes: Sequence[Mistake] = (),
             parts: Sequence[str] = (), rtol: float = 1e-5, atol: float = 1e-6,
             prepare: Callable[[Any], Any] | None = None) -> str | None:
    """None when ``got`` matches ``expected``; else the likeliest mistake, in words."""
    plain = difference(got, expected, rtol, atol)
    if plain is None:
        return None
    if got is None:
        return RETURNED_NONE
    for mistake in mistakes:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                wrong = mistake.fn(*copy.deepcopy(args))
                if prepare is not None:
                    wrong = prepare(wrong)
        except Exception:
            continue
        if difference(got, wrong, rtol, atol) is None:
            return mistake.says
    return _diagnose_parts(got, expected, args, parts, rtol, atol, where="") or plain


def _diagnose_parts(got: Any, expected: Any, args: Case, parts: Sequence[str], rtol: float, atol: float,
                    where: str) -> str | None:
    """The diagnosis of the first differing part of a (nested) tuple or list, or of ``got`` itself."""
    if isinstance(expected, (tuple, list)) and isinstance(got, (tuple, list)) and len(got) == len(expected):
        fixed = isinstance(expected, tuple) or len(parts) == len(expected)  # parts with meanings, not a sequence
        names = list(parts) if len(parts) == len(expected) else [f"{where or 'result'}[{i}]" for i in range(len(expected))]
        if fixed and _swapped(got, expected, rtol, atol):
            return (f"in {where}: " if where else "") + SWAPPED.format(order=", ".join(names))
        for name, g, e in zip(names, got, expected):
            problem = difference(g, e, rtol, atol)
            if problem:
                if not fixed and not isinstance(e, torch.Tensor):
                    return None  # a sequence of plain values: the plain difference says where
                return _diagnose_parts(g, e, args, (), rtol, atol, where=name) or f"in {name}: {problem}"
        return None
    said = _recognise(got, expected, args, rtol, atol)
    return f"in {where}: {said}" if said and where else said



def _recognise(got: Any, expected: Any, args: Case, rtol: float, atol: float) -> str | None:
    if isinstance(expected, torch.Tensor) and isinstance(got, torch.Tensor):
        if got.shape != expected.shape:
            return _transposed(got, expected, rtol, atol) or _shape_message(got, expected)
        if _dtype_message(got, expected):
            return _dtype_message(got, expected)
        for recogniser in (_not_finite, _inverted, _transposed, _wrong_fill, _mask_off_by_one, _not_normalised):
            said = recogniser(got, expected, rtol, atol)
            if said:
                return said
        return _tensor_factor(got, expected, args, rtol, atol)
    number, target = _as_number(got), _as_number(expected) if not isinstance(expected, bool) else None
    if number is not None and target is not None and not isinstance(expected, torch.Tensor):
        if not math.isfinite(number) and math.isfinite(target):
            return OVERFLOW
        if isinstance(expected, int) and abs(number - expected) == 1:
            return OFF_BY_ONE.format(got=_number_text(number), expected=expected)
        if target != 0 and math.isfinite(number):
            return _named_factor(number / target, args, rtol)
    return None


def _swapped(got: Sequence, expected: Sequence, rtol: float, atol: float) -> bool:
    if not 2 <= len(expected) <= 4:
        return False
    for order in itertools.permutations(range(len(expected))):
        if order != tuple(range(len(expected))) and all(
                difference(got[i], expected[j], rtol, atol) is None for i, j in enumerate(order)):
            return True
    return False


def _not_finite(got: torch.Tensor, expected: torch.Tensor, rtol: float, atol: float) -> str | None:
    if not got.is_floating_point():
        return None
    finite = torch.isfinite(expected)
    bad = finite & ~torch.isfinite(got.to(expected.dtype))
    return OVERFLOW if bool(bad.any()) else None


def _inverted(got: torch.Tensor, expected: torch.Tensor, rtol: float = 0, atol: float = 0) -> str | None:
    if expected.dtype == torch.bool and got.dtype == torch.bool and expected.numel() and torch.equal(got, ~expected):
        return INVERTED
    return None


def _transposed(got: torch.Tensor, expected: torch.Tensor, rtol: float, atol: float) -> str | None:
    if expected.dim() < 2 or got.dim() != expected.dim():
        return None
    flipped = expected.transpose(-2, -1)
    if got.shape != flipped.shape or _dtype_message(got, expected):
        return None
    if difference(got, flipped.contiguous(), rtol, atol) is None and difference(got, expected, rtol, atol) is not None:
        return TRANSPOSED
    return None


def _masked_positions(t: torch.Tensor, expected: torch.Tensor) -> tuple[torch.Tensor, str] | None:
    """Where ``t`` holds the masking value of ``expected`` (False, -inf or -100), if it has one."""
    if expected.dtype == torch.bool:
        return (~t, "False") if t.dtype == torch.bool else None
    if expected.is_floating_point() and bool((expected == float("-inf")).any()):
        return t == float("-inf"), "-inf"
    if not expected.is_floating_point() and bool((expected == IGNORE_INDEX).any()):
        return t == IGNORE_INDEX, str(IGNORE_INDEX)
    return None


def _mask_off_by_one(got: torch.Tensor, expected: torch.Tensor, rtol: float, atol: float) -> str | None:
    mine, theirs = _masked_positions(got, expected), _masked_positions(expected, expected)
    if mine is None or theirs is None or expected.dim() == 0:
        return None
    g, e = mine[0], theirs[0]
    if torch.equal(g, e):
        return None
    if bool(e.any()) and not bool(g.any()):
        return NO_MASK.format(value=theirs[1])
    if expected.dtype != torch.bool:
        both_open = ~g & ~e
        if difference(got[both_open], expected[both_open], rtol, atol) is not None:
            return None
    rows_g, rows_e = g.reshape(-1, g.shape[-1]), e.reshape(-1, e.shape[-1])
    where = "each row" if expected.dim() > 1 else "the row"
    if not bool((e & ~g).any()):  # yours hides everything expected, and more
        extra = set((rows_g.sum(-1) - rows_e.sum(-1)).tolist())
        if extra <= {0, 1}:
            return MASK_OFF_BY_ONE.format(which="many", where=where if 0 not in extra else "some rows")
    if not bool((g & ~e).any()):  # yours hides only what is expected, but not all of it
        missing = set((rows_e.sum(-1) - rows_g.sum(-1)).tolist())
        if missing <= {0, 1}:
            return MASK_OFF_BY_ONE.format(which="few", where=where if 0 not in missing else "some rows")
    return None


def _wrong_fill(got: torch.Tensor, expected: torch.Tensor, rtol: float, atol: float) -> str | None:
    theirs = _masked_positions(expected, expected)
    if theirs is None or expected.dtype == torch.bool:
        return None
    e, value = theirs
    if not bool(e.any()) or difference(got[~e], expected[~e], rtol, atol) is not None:
        return None
    filled = got[e]
    if filled.numel() and bool((filled == filled.flatten()[0]).all()) and bool(torch.isfinite(filled.float()).all()):
        why = ("after the softmax a finite score still gets some probability; use float('-inf')"
               if value == "-inf" else "-100 is the ignore index the loss skips; any other number is a "
               "real token id that the model would be trained to predict")
        return WRONG_FILL.format(got=_number_text(filled.flatten()[0].item()), expected=value, why=why)
    return None


def _not_normalised(got: torch.Tensor, expected: torch.Tensor, rtol: float, atol: float) -> str | None:
    if not expected.is_floating_point() or expected.dim() == 0 or expected.shape[-1] < 2:
        return None
    rows = expected.reshape(-1, expected.shape[-1]).double()
    sums = rows.sum(-1)
    ones = (sums - 1).abs() < 1e-4
    if not bool(ones.any()) or not bool((ones | (sums.abs() < 1e-9)).all()) or bool((rows < -1e-12).any()):
        return None
    mine = got.reshape(-1, got.shape[-1]).double().sum(-1)
    if bool(((mine - 1).abs() < 1e-4)[ones].all()):
        return None
    for dim in range(got.dim() - 1):
        if bool(((got.double().sum(dim) - 1).abs() < 1e-4).all()):
            return WRONG_AXIS.format(dim=dim)
    if abs(float(got.double().sum()) - 1) < 1e-4:
        return WHOLE_TENSOR
    return NOT_NORMALISED


def _tensor_factor(got: torch.Tensor, expected: torch.Tensor, args: Case, rtol: float, atol: float) -> str | None:
    if not expected.is_floating_point() or not got.is_floating_point() or expected.numel() == 0:
        return None
    e, g = expected.double().flatten(), got.double().flatten()
    if not bool(torch.isfinite(e).all() and torch.isfinite(g).all()) or float(e.abs().max()) == 0:
        return None
    c = float((g @ e) / (e @ e))
    if abs(c - 1) < 1e-3 or not bool(torch.isclose(g, c * e, rtol=max(rtol, 1e-4), atol=atol).all()):
        return None
    return _named_factor(c, args, 1e-3) or FACTOR.format(c=c)


def _named_factor(c: float, args: Case, rtol: float) -> str | None:
    """The name of a known constant factor between the reader's answer and the expected one."""
    def near(a: float, b: float) -> bool:
        return abs(a - b) <= max(rtol, 1e-4) * abs(b)

    for d in sorted({a.shape[-1] for a in _tensors(args) if a.dim() and a.shape[-1] > 1}):
        if near(c, math.sqrt(d)):
            return MISSING_SCALE
        if near(c, 1 / math.sqrt(d)):
            return EXTRA_SCALE.format(c=math.sqrt(d))
    for n in sorted({a.shape[0] for a in _tensors(args) if a.dim() and a.shape[0] > 1}):
        if near(c, n):
            return SUM_NOT_MEAN.format(n=n)
        if near(c, 1 / n):
            return MEAN_NOT_SUM.format(n=n)
    if near(c, math.log(2)) or near(c, 1 / math.log(2)):
        return LOG_BASE.format(c=c)
    if near(c, 3600) or near(c, 1 / 3600):
        return SECONDS.format(c=c)
    if near(c, 100) or near(c, 0.01):
        return PERCENT.format(c=c)
    if near(c, -1):
        return SIGN
    return None


def _tensors(args: Any) -> list[torch.Tensor]:
    if isinstance(args, torch.Tensor):
        return [args]
    if isinstance(args, (tuple, list)):
        return [t for a in args for t in _tensors(a)]
    return []


# --- showing ------------------------------------------------------------------------------------

def show(value: Any, limit: int = 24) -> str:
    """A short text for a value: small tensors in full, large ones by shape and a few values."""
    if isinstance(value, torch.Tensor):
        dtype = "" if value.dtype in (torch.float32, torch.int64, torch.bool) else f", dtype={value.dtype}"
        if value.numel() <= limit:
            return f"tensor({_nested(value)}{dtype})"
        head = ", ".join(_scalar_text(v) for v in value.flatten()[:6].tolist())
        return f"tensor of shape {tuple(value.shape)}{dtype}, starting [{head}, ...]"
    if isinstance(value, str):
        return repr(value) if len(value) <= 80 else repr(value[:70]) + f" ... ({len(value)} characters)"
    if isinstance(value, float):
        return _number_text(value)
    if isinstance(value, (list, tuple)):
        open_, close = ("[", "]") if isinstance(value, list) else ("(", ")")
        items = [show(v, limit=8) for v in value[:12]]
        more = f", ... ({len(value)} items)" if len(value) > 12 else ""
        trail = "," if isinstance(value, tuple) and len(value) == 1 else ""
        return open_ + ", ".join(items) + trail + more + close
    if isinstance(value, dict):
        items = [f"{k!r}: {show(v, limit=8)}" for k, v in list(value.items())[:10]]
        more = f", ... ({len(value)} keys)" if len(value) > 10 else ""
        return "{" + ", ".join(items) + more + "}"
    if isinstance(value, torch.nn.Module):
        return f"a {type(value).__name__} with {sum(p.numel() for p in value.parameters()):,} parameters"
    if isinstance(value, random.Random):
        return "a random.Random generator"
    text = " ".join(repr(value).split())
    return text if len(text) <= 120 else text[:110] + " ..."


def _nested(t: torch.Tensor) -> str:
    if t.dim() == 0:
        return _scalar_text(t.item())
    return "[" + ", ".join(_nested(row) for row in t) + "]"


def _scalar_text(v: Any) -> str:
    if isinstance(v, bool):
        return str(v)
    if isinstance(v, float):
        return _number_text(v)
    return str(v)


def _number_text(v: float | int) -> str:
    if isinstance(v, int):
        return str(v)
    if v.is_integer() and abs(v) < 1e15:
        return f"{v:.1f}"
    return f"{v:.6g}"


def _show_args(args: Case, names: list[str]) -> str:
    shown = []
    for i, a in enumerate(args):
        label = names[i] if i < len(names) else f"argument {i + 1}"
        shown.append(f"{label} = {show(a)}")
    return "\n".join(shown) if any("\n" in s for s in shown) or sum(map(len, shown)) > 90 else ", ".join(shown)


def _first_difference(got: Any, expected: Any) -> str | None:
    """Where two same-shaped tensors first differ, when that is worth a line of its own."""
    if not (isinstance(got, torch.Tensor) and isinstance(expected, torch.Tensor)) or got.shape != expected.shape:
        return None
    if expected.numel() <= 24 or _dtype_message(got, expected):
        return None
    if expected.is_floating_point():
        same = torch.isclose(got.detach().to(expected.dtype), expected, rtol=1e-5, atol=1e-6, equal_nan=True)
    else:
        same = got.to(expected.dtype) == expected
    if bool(same.all()):
        return None
    index = [int(i) for i in (~same).nonzero()[0]]
    return (f"first at index {index}: expected {_scalar_text(expected[tuple(index)].item())}, "
            f"yours {_scalar_text(got[tuple(index)].item())}")


def _kind(value: Any) -> str:
    if value is None:
        return "None"
    if isinstance(value, torch.Tensor):
        return f"a tensor of shape {tuple(value.shape)}"
    return f"{type(value).__name__} {show(value, limit=8)}"


def _name_of(fn: Any) -> str:
    name = getattr(fn, "__name__", None)
    return name if name and name != "<lambda>" else "your function"


def _parameter_names(fn: Callable) -> list[str]:
    try:
        return list(inspect.signature(fn).parameters)
    except (TypeError, ValueError):
        return []


_HERE = Path(__file__).resolve().parent
_LIBRARY = Path(torch.__file__).resolve().parents[1]


def _first_line(err: BaseException) -> str:
    text = str(err).strip().split("\n")[0]
    if "unhashable type" in text:
        text += " (a list cannot be a dictionary key; use tuple(...))"
    return text


def _where(err: BaseException) -> str:
    """' (line 3: return x.exp())' for the deepest line of the reader's own code, when known."""
    frames = [f for f in traceback.extract_tb(err.__traceback__)
              if not Path(f.filename).resolve().is_relative_to(_HERE)
              and not Path(f.filename).resolve().is_relative_to(_LIBRARY)
              and not Path(f.filename).resolve().is_relative_to(_HERE.parent)]
    if not frames:
        return ""
    frame = frames[-1]
    line = (frame.line or linecache.getline(frame.filename, frame.lineno)).strip()
    return f" (at line {frame.lineno}: {line})" if line else ""
