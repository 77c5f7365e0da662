"""Exercise checkers for chapter 2, Attention math (softmax, causal mask, head split, RoPE, online softmax)."""
from __future__ import annotations

from collections.abc import Callable

import torch

from lmlib.attention import RotaryEmbedding, causal_mask, softmax, split_heads
from lmlib.exercises.core import Case, check

__all__ = [
    "check_softmax", "check_causal_mask", "check_split_heads", "check_rope", "check_online_softmax",
    "reference_softmax", "reference_causal_mask", "reference_split_heads", "reference_rope",
    "reference_online_softmax",
]


def _randint(gen: torch.Generator, low: int, high: int) -> int:
    return int(torch.randint(low, high, (1,), generator=gen))


def reference_softmax(x: torch.Tensor) -> torch.Tensor:
    return softmax(x, dim=-1)


def check_softmax(fn: Callable[[torch.Tensor], torch.Tensor], **kwargs) -> bool:
    """``fn(x) -> softmax over the last axis``; the cases include scores large enough to overflow exp."""

    def make_case(gen: torch.Generator) -> Case:
        shape = (_randint(gen, 1, 4), _randint(gen, 1, 9))
        scale = float(torch.tensor([1.0, 30.0, 1000.0])[_randint(gen, 0, 3)])
        return (torch.randn(shape, generator=gen) * scale,)

    return check(
        fn,
        reference_softmax,
        make_case,
        name="softmax",
        hint="subtract each row's maximum before exponentiating (exp(1000) overflows to inf and "
        "inf/inf is NaN), then divide by the row's sum; work along the last axis (dim=-1, keepdim=True).",
        fixed_cases=((torch.tensor([1.0, 0.0]),), (torch.tensor([[1000.0, 999.0, 0.0]]),)),
        **kwargs,
    )


def reference_causal_mask(T: int) -> torch.Tensor:
    return causal_mask(T)


def check_causal_mask(fn: Callable[[int], torch.Tensor], **kwargs) -> bool:
    """``fn(T) -> bool (T, T)``, True where query i may attend to key j (j <= i)."""
    return check(
        fn,
        reference_causal_mask,
        lambda gen: (_randint(gen, 1, 20),),
        name="causal_mask",
        hint="row i is a query, column j a key; allowed means j <= i, the lower triangle including the "
        "diagonal (torch.tril of a matrix of ones), as a bool tensor with True = may attend.",
        fixed_cases=((1,), (3,)),
        **kwargs,
    )


def reference_split_heads(x: torch.Tensor, n_heads: int) -> torch.Tensor:
    return split_heads(x, n_heads)


def check_split_heads(fn: Callable[[torch.Tensor, int], torch.Tensor], **kwargs) -> bool:
    """``fn(x, n_heads)``: (B, T, H*D) -> (B, H, T, D), head h holding features h*D ... h*D+D-1."""

    def make_case(gen: torch.Generator) -> Case:
        H, D = _randint(gen, 1, 5), _randint(gen, 1, 6)
        return torch.randn(_randint(gen, 1, 4), _randint(gen, 2, 7), H * D, generator=gen), H

    return check(
        fn,
        reference_split_heads,
        make_case,
        name="split_heads",
        hint="first view the features as (B, T, H, D), then swap the T and H axes with transpose(1, 2); "
        "a direct view(B, H, T, D) has the right shape but mixes positions into heads.",
        fixed_cases=((torch.arange(24.0).view(1, 2, 12), 3),),
        **kwargs,
    )


def reference_rope(x: torch.Tensor, offset: int) -> torch.Tensor:
    return RotaryEmbedding(x.shape[-1]).rotate(x, offset)


def check_rope(fn: Callable[[torch.Tensor, int], torch.Tensor], **kwargs) -> bool:
    """``fn(x, offset)``: rotate x (..., T, D) by RoPE at positions offset ... offset+T-1.

    Dimension i pairs with i + D/2 and turns by angle p * 10000^(-2i/D).
    """

    def make_case(gen: torch.Generator) -> Case:
        D = 2 * _randint(gen, 1, 9)
        x = torch.randn(_randint(gen, 1, 3), _randint(gen, 1, 12), D, generator=gen, dtype=torch.float64)
        return x, _randint(gen, 0, 50)

    return check(
        fn,
        reference_rope,
        make_case,
        name="rope",
        hint="theta_i = 10000 ** (-2i / D) for i < D/2; angle = position * theta_i with positions "
        "offset, offset+1, ...; x1 = x[..., :D/2], x2 = x[..., D/2:]; return "
        "cat([x1*cos - x2*sin, x1*sin + x2*cos], -1).",
        fixed_cases=((torch.ones(1, 2, 4, dtype=torch.float64), 0),),
        **kwargs,
    )


def reference_online_softmax(m1: torch.Tensor, l1: torch.Tensor, m2: torch.Tensor, l2: torch.Tensor):
    """Merge (max, sum of exp(x - max)) statistics of two blocks into those of their union."""
    m = torch.maximum(m1, m2)
    return m, l1 * torch.exp(m1 - m) + l2 * torch.exp(m2 - m)


def check_online_softmax(fn: Callable, **kwargs) -> bool:
    """``fn(m1, l1, m2, l2) -> (m, l)``: merge the softmax statistics of two blocks of scores.

    For a block x, m = max(x) and l = sum(exp(x - m)); the merged pair must describe both blocks.
    The cases include scores near 1000, where exp(m) itself overflows.
    """

    def stats(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        m = x.amax(-1)
        return m, (x - m[..., None]).exp().sum(-1)

    def make_case(gen: torch.Generator) -> Case:
        rows, scale = _randint(gen, 1, 6), float(torch.tensor([1.0, 10.0, 500.0])[_randint(gen, 0, 3)])
        a = torch.randn(rows, _randint(gen, 1, 8), generator=gen, dtype=torch.float64) * scale
        b = torch.randn(rows, _randint(gen, 1, 8), generator=gen, dtype=torch.float64) * scale + scale
        return (*stats(a), *stats(b))

    x = torch.tensor([[1000.0, 999.0]], dtype=torch.float64)
    y = torch.tensor([[0.0, 1.0]], dtype=torch.float64)
    return check(
        lambda *args: torch.stack(tuple(fn(*args))),
        lambda *args: torch.stack(reference_online_softmax(*args)),
        make_case,
        name="online_softmax",
        hint="the new maximum is m = max(m1, m2); each old sum was taken relative to its own maximum, "
        "so rescale it: l = l1 * exp(m1 - m) + l2 * exp(m2 - m). Return the pair (m, l).",
        fixed_cases=((*stats(x), *stats(y)), (*stats(y), *stats(x))),
        **kwargs,
    )
