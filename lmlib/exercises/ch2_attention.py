"""Exercise checkers for chapter 2, Attention math.

Notebook 01 (attention by hand): ``check_softmax``; notebook 02 (masks and multi-head), where the
reader builds attention and then multi-head attention on top of it: ``check_attention``,
``check_multi_head``; notebook 03 (positions): ``check_rope``; notebook 04 (efficient attention):
``check_online_softmax``.
"""
from __future__ import annotations

import math
from collections.abc import Callable

import torch

from lmlib.attention import (
    MultiHeadAttention,
    RotaryEmbedding,
    causal_mask,
    padding_mask,
    scaled_dot_product_attention,
    softmax,
)
from lmlib.exercises.core import MISSING_SCALE, Case, Mistake, Result, check, f64, randint

__all__ = [
    "check_softmax", "reference_softmax",
    "check_attention", "reference_attention",
    "check_multi_head", "reference_multi_head",
    "check_rope", "reference_rope",
    "check_online_softmax", "reference_online_softmax",
]

INF = float("inf")


def reference_softmax(x: torch.Tensor) -> torch.Tensor:
    return softmax(x, dim=-1)


def check_softmax(fn: Callable[[torch.Tensor], torch.Tensor], **options) -> Result:
    """``fn(x) -> softmax over the last axis``; the cases include scores large enough to overflow exp."""

    def make_case(gen: torch.Generator) -> Case:
        shape = (randint(gen, 1, 4), randint(gen, 1, 9))
        scale = (1.0, 30.0, 1000.0)[randint(gen, 0, 3)]
        return (torch.randn(shape, generator=gen) * scale,)

    return check(
        fn, reference_softmax, make_case,
        hint="subtract each row's maximum before exponentiating (exp(1000) overflows to inf and "
        "inf/inf is NaN), then divide by the row's sum; work along the last axis (dim=-1, keepdim=True).",
        edge_cases=(
            (torch.tensor([1.0, 0.0]),),  # one row: weights e/(e+1) and 1/(e+1)
            (torch.tensor([[2.0, 2.0, 2.0], [0.5, -1.0, 3.0]]),),  # a tie, and a plain row
            (torch.tensor([[1000.0, 999.0, 0.0]]),),  # large scores
            (torch.tensor([[-1000.0, -1001.0]]),),  # large negative scores: exp underflows to 0
            (torch.tensor([[0.7], [-3.0]]),),  # rows of length 1
            (torch.tensor([[0.0, -INF, 1.0]]),),  # a masked score
        ),
        mistakes=(
            Mistake("you normalised the raw scores without exponentiating: softmax is "
                    "exp(x) / sum(exp(x))", lambda x: x / x.sum(-1, keepdim=True)),
        ),
        **options,
    )


def reference_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    return scaled_dot_product_attention(q, k, v, mask=mask)


def _random_mask(gen: torch.Generator, B: int, Tq: int, Tk: int) -> torch.Tensor | None:
    """None, a causal mask (bottom-right aligned), a padding mask or a random mask, each with some
    chance of a query that may see no key at all."""
    kind = randint(gen, 0, 4)
    if kind == 0:
        return None
    if kind == 1:
        return causal_mask(Tq, Tk)
    if kind == 2:  # padding: (B, 1, 1, Tk), one sequence may be all padding
        lengths = torch.randint(0, Tk + 1, (B,), generator=gen)
        return padding_mask(lengths, Tk)
    return torch.rand(B, 1, Tq, Tk, generator=gen) < 0.6


def _attend(q, k, v, mask=None, *, scale=None, fill=float("-inf"), axis=-1, invert=False, nan_rows=False):
    """Attention written out, with switches for the usual slips."""
    scale = 1 / math.sqrt(q.shape[-1]) if scale is None else scale
    scores = q @ k.transpose(-2, -1) * scale
    if mask is not None:
        allowed = ~mask if invert else mask
        scores = scores.masked_fill(~allowed, fill)
    weights = torch.softmax(scores, dim=axis) if nan_rows or axis != -1 else softmax(scores, dim=axis)
    return weights @ v


def check_attention(fn: Callable[..., torch.Tensor], **options) -> Result:
    """``fn(q, k, v, mask=None) -> (..., Tq, Dv)``: softmax(q k^T / sqrt(D), masked) v.

    ``mask`` is None or a bool tensor that broadcasts to (..., Tq, Tk), True where a query may
    attend to a key. A query that may attend to no key at all gets a zero output (all-zero
    weights), never NaN: the convention of ``lmlib.attention`` and PyTorch's fused attention.
    """

    def make_case(gen: torch.Generator) -> Case:
        B, H, Tq, D, Dv = randint(gen, 1, 3), randint(gen, 1, 4), randint(gen, 1, 7), randint(gen, 2, 9), randint(gen, 1, 6)
        Tk = Tq + randint(gen, 0, 3)  # sometimes more keys than queries, as with a KV cache
        q, k = (torch.randn(B, H, n, D, generator=gen) for n in (Tq, Tk))
        return q * 2, k, torch.randn(B, H, Tk, Dv, generator=gen), _random_mask(gen, B, Tq, Tk)

    gen = torch.Generator().manual_seed(0)
    q3, k3, v3 = (torch.randn(1, 3, 4, generator=gen) * 2 for _ in range(3))
    q5, k5, v5 = (torch.randn(2, 1, 5, 8, generator=gen) for _ in range(3))
    return check(
        fn, reference_attention, make_case,
        hint="scores = q @ k.transpose(-2, -1) / sqrt(D), with D = q.shape[-1]; where the mask is False "
        "set the score to float('-inf'); softmax over the keys (dim=-1); multiply by v. A row whose "
        "scores are all -inf must give weights 0 (not NaN): replace NaN weights by 0, or take the "
        "softmax you wrote in notebook 01 with the maximum of such a row set to 0.",
        edge_cases=(
            (q3, k3, v3, None),  # no mask
            (q3, k3, v3, causal_mask(3)),  # causal
            (q5, k5, v5, padding_mask(torch.tensor([3, 0]), 5)),  # the second sequence is all padding
        ),
        mistakes=(
            Mistake(MISSING_SCALE, lambda q, k, v, mask=None: _attend(q, k, v, mask, scale=1.0)),
            Mistake("you divided the scores by D, not by sqrt(D)",
                    lambda q, k, v, mask=None: _attend(q, k, v, mask, scale=1 / q.shape[-1])),
            Mistake("the mask is the wrong way round: True means the query MAY attend, so hide the "
                    "positions where it is False (masked_fill(~mask, ...))",
                    lambda q, k, v, mask=None: _attend(q, k, v, mask, invert=True)),
            Mistake("masked scores were set to 0, not to -inf: after the softmax a score of 0 still gets "
                    "weight; use float('-inf')", lambda q, k, v, mask=None: _attend(q, k, v, mask, fill=0.0)),
            Mistake("a query that may attend to no key gets NaN: its row of scores is all -inf and the "
                    "softmax computes 0/0. Define its weights as 0 (so its output is 0): replace the NaN "
                    "weights by 0, or shift such a row by 0 instead of by its maximum",
                    lambda q, k, v, mask=None: _attend(q, k, v, mask, nan_rows=True)),
            Mistake("a query that may attend to no key should output zeros, but yours averages every value "
                    "evenly: a large finite fill (like -1e9) leaves such a row's scores all equal. Fill "
                    "with float('-inf') and give an all -inf row the weights 0",
                    lambda q, k, v, mask=None: _attend(q, k, v, mask, fill=-1e9)),
            Mistake("the softmax ran over the queries (dim=-2); each query's weights over the keys "
                    "should sum to 1, so take it over the last axis (dim=-1)",
                    lambda q, k, v, mask=None: _attend(q, k, v, mask, axis=-2)),
            Mistake("the mask was ignored: hide the positions where it is False before the softmax",
                    lambda q, k, v, mask=None: _attend(q, k, v, None)),
        ),
        rtol=1e-4,
        atol=1e-5,
        **options,
    )


def reference_multi_head(x: torch.Tensor, params: dict, n_heads: int, mask: torch.Tensor | None = None) -> torch.Tensor:
    d_model = x.shape[-1]
    mha = MultiHeadAttention(d_model, n_heads, bias="q_proj.bias" in params)
    mha.load_state_dict(params)
    with torch.no_grad():
        return mha(x, mask=mask)


def _multi_head(x, params, n_heads, mask=None, *, transpose=True, split="view", scale_dim="head", project=True):
    """Multi-head attention written out, with switches for the usual slips."""
    B, T, C = x.shape
    D = C // n_heads

    def linear(h, name):
        W = params[f"{name}.weight"]
        return h @ (W.T if transpose else W) + params.get(f"{name}.bias", 0)

    def heads(h):
        if split == "direct":
            return h.reshape(B, n_heads, T, D)
        return h.view(B, T, n_heads, D).transpose(1, 2)

    q, k, v = (heads(linear(x, name)) for name in ("q_proj", "k_proj", "v_proj"))
    out = _attend(q, k, v, mask, scale=1 / math.sqrt(C if scale_dim == "model" else D))
    out = out.transpose(1, 2).reshape(B, T, C)
    return linear(out, "out_proj") if project else out


def check_multi_head(fn: Callable[..., torch.Tensor], **options) -> Result:
    """``fn(x (B, T, d), params, n_heads, mask=None) -> (B, T, d)``: multi-head self-attention.

    ``params`` is the state dict of an ``lmlib.attention.MultiHeadAttention``: ``q_proj.weight``,
    ``q_proj.bias``, ``k_proj.*``, ``v_proj.*``, ``out_proj.*``, each weight (d, d) stored as
    ``nn.Linear`` stores it (y = x @ W.T + b). ``mask`` as for ``check_attention``.
    """

    def make_case(gen: torch.Generator) -> Case:
        H, D = randint(gen, 1, 5), randint(gen, 1, 5)
        d, B, T = H * D, randint(gen, 1, 3), randint(gen, 1, 7)
        params = {f"{name}.{kind}": (torch.randn(d, d, generator=gen) / math.sqrt(d) if kind == "weight"
                                     else torch.randn(d, generator=gen) * 0.5)
                  for name in ("q_proj", "k_proj", "v_proj", "out_proj") for kind in ("weight", "bias")}
        mask = _random_mask(gen, B, T, T)
        return torch.randn(B, T, d, generator=gen) * 2, params, H, mask

    def fixed(seed: int, B: int, T: int, H: int, D: int, mask) -> Case:
        gen = torch.Generator().manual_seed(seed)
        d = H * D
        params = {f"{name}.{kind}": torch.randn(*((d, d) if kind == "weight" else (d,)), generator=gen) / 2
                  for name in ("q_proj", "k_proj", "v_proj", "out_proj") for kind in ("weight", "bias")}
        return torch.randn(B, T, d, generator=gen) * 2, params, H, mask

    return check(
        fn, reference_multi_head, make_case,
        hint="q = x @ params['q_proj.weight'].T + params['q_proj.bias'] (likewise k and v); split each "
        "into heads, (B, T, H*D) -> view (B, T, H, D) -> transpose(1, 2) -> (B, H, T, D); attend with "
        "your my_attention (scale 1/sqrt(D), D the size of ONE head); merge back with transpose(1, 2) "
        "and reshape (B, T, H*D); finish with the output projection out_proj.",
        edge_cases=(
            fixed(1, 1, 3, 2, 2, None),
            fixed(2, 2, 4, 3, 2, causal_mask(4)),
            fixed(3, 2, 3, 2, 3, padding_mask(torch.tensor([0, 2]), 3)),  # the first sequence is all padding
        ),
        mistakes=(
            Mistake("you multiplied by the weights as stored, x @ W; nn.Linear stores W as (out, in) and "
                    "computes x @ W.T + b", lambda x, p, h, mask=None: _multi_head(x, p, h, mask, transpose=False)),
            Mistake("you reshaped straight to (B, H, T, D): the shape is right, but each head now holds "
                    "pieces of several positions; view as (B, T, H, D), then transpose(1, 2)",
                    lambda x, p, h, mask=None: _multi_head(x, p, h, mask, split="direct")),
            Mistake("the scores were divided by sqrt(d_model); each head attends with its own vectors "
                    "of size D = d_model / n_heads, so divide by sqrt(D)",
                    lambda x, p, h, mask=None: _multi_head(x, p, h, mask, scale_dim="model")),
            Mistake("the output projection is missing: after merging the heads, apply out_proj "
                    "(x @ W.T + b)", lambda x, p, h, mask=None: _multi_head(x, p, h, mask, project=False)),
        ),
        rtol=1e-4,
        atol=1e-5,
        **options,
    )


def reference_rope(x: torch.Tensor, offset: int) -> torch.Tensor:
    return RotaryEmbedding(x.shape[-1]).rotate(x, offset)


def _rope(x: torch.Tensor, offset: int, *, pairs: str = "half", sign: float = 1.0, exponent: float = 2.0):
    """RoPE written out, with switches for the usual slips."""
    T, D = x.shape[-2:]
    theta = 10000.0 ** (-exponent * torch.arange(D // 2, dtype=torch.float64) / D)
    angle = torch.arange(offset, offset + T, dtype=torch.float64)[:, None] * theta
    cos, sin = angle.cos().to(x.dtype), sign * angle.sin().to(x.dtype)
    if pairs == "half":
        a, b = x[..., : D // 2], x[..., D // 2:]
        return torch.cat([a * cos - b * sin, a * sin + b * cos], dim=-1)
    a, b = x[..., 0::2], x[..., 1::2]
    out = torch.empty_like(x)
    out[..., 0::2], out[..., 1::2] = a * cos - b * sin, a * sin + b * cos
    return out


def check_rope(fn: Callable[[torch.Tensor, int], torch.Tensor], **options) -> Result:
    """``fn(x, offset)``: rotate x (..., T, D) by RoPE at positions offset ... offset+T-1.

    Dimension i pairs with i + D/2 and turns by angle p * 10000^(-2i/D).
    """

    def make_case(gen: torch.Generator) -> Case:
        D = 2 * randint(gen, 1, 9)
        x = torch.randn(randint(gen, 1, 3), randint(gen, 1, 12), D, generator=gen, dtype=torch.float64)
        return x, randint(gen, 0, 50)

    ramp = torch.arange(1.0, 9.0, dtype=torch.float64)
    return check(
        fn, reference_rope, make_case,
        hint="theta_i = 10000 ** (-2i / D) for i < D/2; angle = position * theta_i with positions "
        "offset, offset+1, ...; x1 = x[..., :D/2], x2 = x[..., D/2:]; return "
        "cat([x1*cos - x2*sin, x1*sin + x2*cos], -1).",
        edge_cases=((ramp.view(1, 2, 4), 0), (ramp.view(1, 1, 8), 7), (ramp[:2].view(1, 1, 2), 1000)),
        mistakes=(
            Mistake("you ignored the offset: the positions are offset, offset+1, ..., not 0, 1, ...",
                    lambda x, offset: _rope(x, 0)),
            Mistake("you paired neighbouring features (0, 1), (2, 3), ...; this course pairs feature i "
                    "with i + D/2 (the rotate-half layout)", lambda x, offset: _rope(x, offset, pairs="adjacent")),
            Mistake("you rotated the wrong way: the pair (a, b) becomes (a cos - b sin, a sin + b cos)",
                    lambda x, offset: _rope(x, offset, sign=-1.0)),
            Mistake("the frequencies are off: theta_i = 10000 ** (-2i / D), with 2i, not i",
                    lambda x, offset: _rope(x, offset, exponent=1.0)),
        ),
        **options,
    )


def reference_online_softmax(m1: torch.Tensor, l1: torch.Tensor, m2: torch.Tensor, l2: torch.Tensor):
    """Merge (max, sum of exp(x - max)) statistics of two blocks into those of their union."""
    m = torch.maximum(m1, m2)
    return m, l1 * torch.exp(m1 - m) + l2 * torch.exp(m2 - m)


def _stats(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    m = x.amax(-1)
    return m, (x - m[..., None]).exp().sum(-1)


def check_online_softmax(fn: Callable, **options) -> Result:
    """``fn(m1, l1, m2, l2) -> (m, l)``: merge the softmax statistics of two blocks of scores.

    For a block x, m = max(x) and l = sum(exp(x - m)); the merged pair must describe both blocks.
    The cases include scores near 1000, where exp(m) itself overflows.
    """

    def make_case(gen: torch.Generator) -> Case:
        rows, scale = randint(gen, 1, 6), (1.0, 10.0, 500.0)[randint(gen, 0, 3)]
        a = torch.randn(rows, randint(gen, 1, 8), generator=gen, dtype=torch.float64) * scale
        b = torch.randn(rows, randint(gen, 1, 8), generator=gen, dtype=torch.float64) * scale + scale
        return (*_stats(a), *_stats(b))

    return check(
        fn, reference_online_softmax, make_case,
        hint="the new maximum is m = max(m1, m2); each old sum was taken relative to its own maximum, "
        "so rescale it: l = l1 * exp(m1 - m) + l2 * exp(m2 - m). Return the pair (m, l).",
        edge_cases=(
            (*_stats(f64([[0.0, 1.0], [2.0, -1.0]])), *_stats(f64([[3.0], [-2.0]]))),
            (*_stats(f64([[1.0, 0.0]])), *_stats(f64([[1.0, 0.5]]))),  # equal maxima
            (*_stats(f64([[1000.0, 999.0]])), *_stats(f64([[0.0, 1.0]]))),  # exp(1000) overflows
        ),
        mistakes=(
            Mistake("you added the two sums without rescaling them: each l was computed relative to its "
                    "own maximum, so multiply l1 by exp(m1 - m) and l2 by exp(m2 - m)",
                    lambda m1, l1, m2, l2: (torch.maximum(m1, m2), l1 + l2)),
        ),
        parts=("m", "l"),
        **options,
    )
