"""Attention, written out: the formula, masks, multi-head, positions and tiled (flash-style) attention.

Derived in chapter 2 ("Attention math"): notebook 01 derives ``softmax`` and
``scaled_dot_product_attention``, 02 the masks, head split/merge and ``MultiHeadAttention``, 03 the
positional encodings, 04 ``flash_attention`` and grouped-query attention. Chapter 3's GPT imports
``MultiHeadAttention`` (and ``RotaryEmbedding`` / ``LearnedPositions``) from here.

Conventions: batch first. Per-head tensors have shape ``(batch, heads, seq, head_dim)``; the
functions also accept any number of leading dimensions ``(..., seq, head_dim)``. A boolean mask is
True where a query MAY attend to a key (PyTorch's convention); a float mask is added to the scores.
A query row whose keys are all masked gets all-zero weights and a zero output (never NaN), like
``torch.nn.functional.scaled_dot_product_attention``; ``torch.nn.MultiheadAttention`` returns NaN
there instead.

API summary
-----------
softmax(x, dim=-1) -> Tensor
    Numerically stable softmax; an all ``-inf`` slice gives zeros instead of NaN.
scaled_dot_product_attention(q, k, v, mask=None, is_causal=False, dropout_p=0.0,
                             return_weights=False, scale=None, enable_gqa=False)
    -> out (..., Tq, Dv), or (out, weights (..., Tq, Tk)) if return_weights.
    softmax(q k^T * scale + mask) v with scale = 1/sqrt(head_dim). ``is_causal`` uses
    ``causal_mask(Tq, Tk)`` (aligned bottom-right, see there). ``enable_gqa`` lets k, v have fewer
    heads (dim -3) than q, as in grouped-query attention.
causal_mask(T, S=None, device=None) -> bool (T, S)
    True on and below the diagonal. With S > T keys (a KV cache holding S - T earlier tokens),
    query i sits at position S - T + i. (PyTorch's ``is_causal`` aligns top-left instead; the two
    agree when T == S.)
padding_mask(lengths, T) -> bool (B, 1, 1, T)
    True for the first ``lengths[b]`` key positions of each sequence b (right padding).
split_heads(x, n_heads) -> (B, H, T, D) from (B, T, H*D);  merge_heads(x) -> (B, T, H*D).
repeat_kv(x, n_rep) -> (B, H*n_rep, T, D): each key/value head repeated for its query group.
MultiHeadAttention(d_model, n_heads, n_kv_heads=None, bias=True, dropout=0.0, causal=False,
                   fast=False, pos_fn=None, qk_norm=False)                (nn.Module)
    forward(x, context=None, mask=None, cache=None, return_weights=False) with x (B, T, d_model)
    -> (B, T, d_model), or (out, weights (B, H, T, S)) if return_weights.
    Projections ``q_proj``, ``k_proj``, ``v_proj`` (to n_kv_heads * head_dim: grouped-query attention
    when n_kv_heads < n_heads), ``out_proj``. ``dropout`` drops attention weights while training
    (the caller adds residual dropout). ``fast=True`` computes the same thing with
    ``F.scaled_dot_product_attention`` (equal to float precision; with dropout on, the random
    patterns differ) and falls back to the explicit path when ``return_weights=True``. ``context`` (B, S, d_model) gives cross-attention (keys and
    values from it). ``mask`` broadcasts to (B, H, T, S), True = attend.
    Hooks for a GPT:
      * ``pos_fn(q, k, offset) -> (q, k)``: called on the per-head q (B, H, T, D) and k (B, Hkv, T, D)
        before attention; ``offset`` is the absolute position of the first new token (the cache
        length). A ``RotaryEmbedding`` instance is such a function.
      * ``cache``: a ``KVCache``. Keys and values of the new tokens are appended to it and the
        queries attend to everything it holds (self-attention only).
KVCache()  .update(k, v) -> (k_all, v_all);  .length;  .reset();  .truncate(length)
    Per-layer store of past keys and values, (B, Hkv, S, D); stores un-repeated kv heads, so
    grouped-query attention shrinks it by n_heads / n_kv_heads.
kv_cache_bytes(n_layers, n_kv_heads, head_dim, seq_len, batch=1, dtype=torch.float16) -> int
sinusoidal_positions(T, d_model, base=10000.0, offset=0, *, dtype=float32, device=None) -> (T, d_model)
    Even columns sin, odd columns cos, wavelengths from 2*pi to base*2*pi.
LearnedPositions(max_len, d_model)                                       (nn.Module)
    forward(x (B, T, d_model), offset=0) -> x + table[offset:offset+T].
RotaryEmbedding(head_dim, base=10000.0)                                  (nn.Module)
    forward(q, k, offset=0) -> (q, k) rotated; rotate(x, offset=0) for one tensor.
    Pairs dimension i with i + head_dim/2 (the "rotate half" layout of GPT-NeoX and Llama).
    No parameters or buffers (nothing in a state_dict); one instance can serve every layer.
flash_attention(q, k, v, block_size=64, is_causal=False, scale=None) -> (..., Tq, Dv)
    Tiled attention with an online softmax: never builds the (Tq, Tk) score matrix, only
    (block_size, block_size) tiles. Same result as ``scaled_dot_product_attention``.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

Tensor = torch.Tensor

__all__ = [
    "softmax", "scaled_dot_product_attention", "causal_mask", "padding_mask", "split_heads",
    "merge_heads", "repeat_kv", "MultiHeadAttention", "KVCache", "kv_cache_bytes",
    "sinusoidal_positions", "LearnedPositions", "RotaryEmbedding", "flash_attention",
]


# --- the formula -------------------------------------------------------------------------------

def softmax(x: Tensor, dim: int = -1) -> Tensor:
    """exp(x) / sum(exp(x)), computed as exp(x - max) so large scores cannot overflow.

    A slice that is entirely ``-inf`` (a fully masked attention row) returns zeros, not NaN.
    """
    m = x.amax(dim=dim, keepdim=True)
    m = torch.where(torch.isfinite(m), m, torch.zeros_like(m))  # all -inf (or inf) slices: shift by 0
    e = torch.exp(x - m)
    total = e.sum(dim=dim, keepdim=True)
    return e / torch.where(total == 0, torch.ones_like(total), total)


def _check_qkv(q: Tensor, k: Tensor, v: Tensor, enable_gqa: bool) -> None:
    for name, t in (("q", q), ("k", k), ("v", v)):
        if t.dim() < 2:
            raise ValueError(f"{name} must have shape (..., seq, head_dim), got shape {tuple(t.shape)}.")
    if q.shape[-1] != k.shape[-1]:
        raise ValueError(
            f"q and k must have the same head dimension (last axis): got q {tuple(q.shape)} and "
            f"k {tuple(k.shape)}. Project both to the same head_dim."
        )
    if k.shape[-2] != v.shape[-2]:
        raise ValueError(
            f"k and v must have the same number of positions (axis -2): got k {tuple(k.shape)} and "
            f"v {tuple(v.shape)}."
        )
    if k.shape[:-1] != v.shape[:-1]:
        raise ValueError(f"k and v must agree on every axis but the last: got {tuple(k.shape)} and {tuple(v.shape)}.")
    if enable_gqa and q.dim() >= 3:
        hq, hk = q.shape[-3], k.shape[-3]
        if hq % hk or q.shape[:-3] != k.shape[:-3]:
            raise ValueError(
                f"Grouped-query attention needs the same batch axes and q heads ({hq}) a multiple of "
                f"k/v heads ({hk}): got q {tuple(q.shape)} and k {tuple(k.shape)}."
            )
    elif q.shape[:-2] != k.shape[:-2]:
        raise ValueError(
            f"q and k must agree on the leading (batch, heads) axes: got q {tuple(q.shape)} and "
            f"k {tuple(k.shape)}. (Fewer k/v heads than q heads needs enable_gqa=True.)"
        )


def _check_mask(mask: Tensor, shape: Sequence[int]) -> None:
    if not isinstance(mask, torch.Tensor):
        raise TypeError(f"mask must be a tensor (bool: True = attend, or float: added to scores), got {type(mask).__name__}.")
    if mask.dtype != torch.bool and not mask.is_floating_point():
        raise TypeError(f"mask must be bool (True = attend) or float (added to scores), got {mask.dtype}.")
    try:
        ok = torch.broadcast_shapes(mask.shape, tuple(shape)) == tuple(shape)
    except RuntimeError:
        ok = False
    if not ok:
        raise ValueError(
            f"mask of shape {tuple(mask.shape)} does not broadcast to the scores' shape "
            f"{tuple(shape)} (..., queries, keys). Use (queries, keys), (batch, 1, 1, keys) "
            "for padding, or (batch, heads, queries, keys)."
        )


def _mask_scores(scores: Tensor, mask: Tensor | None) -> Tensor:
    if mask is None:
        return scores
    _check_mask(mask, scores.shape)
    if mask.dtype == torch.bool:
        return scores.masked_fill(~mask, float("-inf"))
    return scores + mask.to(scores.dtype)


def scaled_dot_product_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    mask: Tensor | None = None,
    is_causal: bool = False,
    dropout_p: float = 0.0,
    return_weights: bool = False,
    scale: float | None = None,
    enable_gqa: bool = False,
) -> Tensor | tuple[Tensor, Tensor]:
    """softmax(q k^T / sqrt(d_k) + mask) v, one line per step (chapter 2, notebooks 01 and 02).

    Shapes: q (..., Tq, D), k (..., Tk, D), v (..., Tk, Dv) -> (..., Tq, Dv). ``mask`` broadcasts to
    (..., Tq, Tk): bool True = attend, or float added to the scores. ``is_causal`` adds
    ``causal_mask(Tq, Tk)``. Dropout (``dropout_p`` > 0) drops attention weights and rescales the
    rest; pass 0 at evaluation. Fully masked rows give zero weights and a zero output.
    """
    _check_qkv(q, k, v, enable_gqa)
    if not 0.0 <= dropout_p < 1.0:
        raise ValueError(f"dropout_p must be in [0, 1), got {dropout_p}.")
    if enable_gqa and q.dim() >= 3 and q.shape[-3] != k.shape[-3]:
        n_rep = q.shape[-3] // k.shape[-3]
        k, v = k.repeat_interleave(n_rep, dim=-3), v.repeat_interleave(n_rep, dim=-3)
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    scores = (q @ k.transpose(-2, -1)) * scale
    if is_causal:
        scores = _mask_scores(scores, causal_mask(q.shape[-2], k.shape[-2], device=q.device))
    scores = _mask_scores(scores, mask)
    weights = softmax(scores, dim=-1)
    if dropout_p > 0.0:
        weights = F.dropout(weights, p=dropout_p, training=True)
    out = weights @ v
    return (out, weights) if return_weights else out


# --- masks --------------------------------------------------------------------------------------

def causal_mask(T: int, S: int | None = None, device: torch.device | str | None = None) -> Tensor:
    """Boolean (T, S) mask, True where query i may see key j: j <= i + (S - T).

    With S == T (the default) this is the lower triangle. With S > T the T queries are the last T
    of S positions (the rest sit in a KV cache), so the mask is aligned bottom-right.
    """
    S = T if S is None else S
    if T < 0 or S < T:
        raise ValueError(f"causal_mask needs 0 <= T <= S (queries are the last T of S positions), got T={T}, S={S}.")
    return torch.ones(T, S, dtype=torch.bool, device=device).tril(diagonal=S - T)


def padding_mask(lengths: Tensor | Sequence[int], T: int) -> Tensor:
    """Boolean (B, 1, 1, T) key mask: True for the first ``lengths[b]`` positions (right padding).

    Broadcasts against scores (B, H, Tq, T), so no query reads a padding token.
    """
    lengths = torch.as_tensor(lengths)
    if lengths.dim() != 1:
        raise ValueError(f"lengths must be 1-D (one length per sequence), got shape {tuple(lengths.shape)}.")
    if len(lengths) and (lengths.min() < 0 or lengths.max() > T):
        raise ValueError(f"every length must be in [0, {T}], got {lengths.tolist()}.")
    keep = torch.arange(T, device=lengths.device) < lengths[:, None]
    return keep[:, None, None, :]


# --- heads --------------------------------------------------------------------------------------

def split_heads(x: Tensor, n_heads: int) -> Tensor:
    """(B, T, H*D) -> (B, H, T, D): cut the feature axis into ``n_heads`` slices of width D."""
    if x.dim() != 3:
        raise ValueError(f"split_heads expects (batch, seq, features), got shape {tuple(x.shape)}.")
    B, T, C = x.shape
    if C % n_heads:
        raise ValueError(f"the feature size {C} is not divisible by n_heads={n_heads}.")
    return x.view(B, T, n_heads, C // n_heads).transpose(1, 2)


def merge_heads(x: Tensor) -> Tensor:
    """(B, H, T, D) -> (B, T, H*D): the inverse of :func:`split_heads`."""
    if x.dim() != 4:
        raise ValueError(f"merge_heads expects (batch, heads, seq, head_dim), got shape {tuple(x.shape)}.")
    B, H, T, D = x.shape
    return x.transpose(1, 2).reshape(B, T, H * D)


def repeat_kv(x: Tensor, n_rep: int) -> Tensor:
    """(B, Hkv, T, D) -> (B, Hkv*n_rep, T, D): kv head g serves query heads g*n_rep ... g*n_rep+n_rep-1."""
    return x if n_rep == 1 else x.repeat_interleave(n_rep, dim=1)


# --- the module a GPT uses ----------------------------------------------------------------------

class KVCache:
    """Past keys and values of one attention layer, (B, Hkv, S, D), grown as tokens are generated."""

    def __init__(self) -> None:
        self.k: Tensor | None = None
        self.v: Tensor | None = None

    @property
    def length(self) -> int:
        return 0 if self.k is None else self.k.shape[-2]

    def update(self, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """Append the new positions (axis -2) and return all keys and values held so far."""
        if self.k is None:
            self.k, self.v = k, v
        else:
            if k.shape[:-2] != self.k.shape[:-2] or k.shape[-1] != self.k.shape[-1]:
                raise ValueError(
                    f"new keys {tuple(k.shape)} do not match the cached ones {tuple(self.k.shape)}; "
                    "call reset() before starting a new batch."
                )
            self.k, self.v = torch.cat([self.k, k], dim=-2), torch.cat([self.v, v], dim=-2)
        return self.k, self.v

    def reset(self) -> None:
        self.k = self.v = None

    def truncate(self, length: int) -> None:
        """Keep only the first ``length`` positions (speculative decoding drops rejected guesses)."""
        if length < 0:
            raise ValueError(f"length must be >= 0, got {length}.")
        if self.k is not None and self.length > length:
            self.k, self.v = self.k[..., :length, :], self.v[..., :length, :]


def kv_cache_bytes(
    n_layers: int, n_kv_heads: int, head_dim: int, seq_len: int, batch: int = 1, dtype: torch.dtype = torch.float16
) -> int:
    """Bytes a KV cache needs: 2 (keys and values) x layers x kv heads x head_dim x positions x batch."""
    itemsize = torch.empty((), dtype=dtype).element_size()
    return 2 * n_layers * n_kv_heads * head_dim * seq_len * batch * itemsize


class MultiHeadAttention(nn.Module):
    """Multi-head (and grouped-query) attention over (batch, seq, d_model) (chapter 2, notebook 02).

    ``n_kv_heads`` < ``n_heads`` shares each key/value head among n_heads / n_kv_heads query heads
    (1 = multi-query attention). ``fast`` switches to ``F.scaled_dot_product_attention`` (same
    numbers, fused kernels). ``pos_fn(q, k, offset) -> (q, k)`` is the positional hook (e.g. a
    ``RotaryEmbedding``); ``cache`` in ``forward`` is a ``KVCache``. ``qk_norm`` RMS-normalises
    each head's queries and keys (with a learned gain per feature) before positions are applied,
    so the scores q.k / sqrt(d) stay bounded however large the projections grow (QK-norm, Dehghani
    et al. 2023; chapter 4's speedrun section measures it). See the module docstring.
    """

    def __init__(
        self,
        d_model: int,
        n_heads: int,
        n_kv_heads: int | None = None,
        bias: bool = True,
        dropout: float = 0.0,
        causal: bool = False,
        fast: bool = False,
        pos_fn: Callable[[Tensor, Tensor, int], tuple[Tensor, Tensor]] | None = None,
        qk_norm: bool = False,
    ) -> None:
        super().__init__()
        n_kv_heads = n_heads if n_kv_heads is None else n_kv_heads
        if n_heads < 1 or d_model % n_heads:
            raise ValueError(f"d_model={d_model} must be divisible by n_heads={n_heads} (each head gets d_model / n_heads).")
        if n_kv_heads < 1 or n_heads % n_kv_heads:
            raise ValueError(f"n_heads={n_heads} must be a multiple of n_kv_heads={n_kv_heads} (query heads share kv heads in groups).")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}.")
        self.d_model, self.n_heads, self.n_kv_heads = d_model, n_heads, n_kv_heads
        self.head_dim = d_model // n_heads
        self.dropout, self.causal, self.fast, self.pos_fn = dropout, causal, fast, pos_fn
        self.q_proj = nn.Linear(d_model, d_model, bias=bias)
        self.k_proj = nn.Linear(d_model, n_kv_heads * self.head_dim, bias=bias)
        self.v_proj = nn.Linear(d_model, n_kv_heads * self.head_dim, bias=bias)
        self.out_proj = nn.Linear(d_model, d_model, bias=bias)
        # over one head's features, with a learned gain per feature
        self.q_norm = nn.RMSNorm(self.head_dim, eps=1e-6) if qk_norm else None
        self.k_norm = nn.RMSNorm(self.head_dim, eps=1e-6) if qk_norm else None

    def forward(
        self,
        x: Tensor,
        context: Tensor | None = None,
        mask: Tensor | None = None,
        cache: KVCache | None = None,
        return_weights: bool = False,
    ) -> Tensor | tuple[Tensor, Tensor]:
        if x.dim() != 3 or x.shape[-1] != self.d_model:
            raise ValueError(f"x must have shape (batch, seq, {self.d_model}), got {tuple(x.shape)}.")
        if context is not None and (cache is not None or context.dim() != 3 or context.shape[-1] != self.d_model):
            raise ValueError(
                f"context must have shape (batch, seq, {self.d_model}) and cannot be used with a cache; "
                f"got {tuple(context.shape)}."
            )
        source = x if context is None else context
        q = split_heads(self.q_proj(x), self.n_heads)
        k = split_heads(self.k_proj(source), self.n_kv_heads)
        v = split_heads(self.v_proj(source), self.n_kv_heads)
        if self.q_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        offset = cache.length if cache is not None else 0
        if self.pos_fn is not None:
            q, k = self.pos_fn(q, k, offset)
        if cache is not None:
            k, v = cache.update(k, v)
        k, v = repeat_kv(k, self.n_heads // self.n_kv_heads), repeat_kv(v, self.n_heads // self.n_kv_heads)
        T, S = q.shape[-2], k.shape[-2]
        if mask is not None:
            _check_mask(mask, (x.shape[0], self.n_heads, T, S))
        causal = self.causal and context is None
        if causal and mask is not None:  # fold the causal mask into the given one
            allowed = causal_mask(T, S, device=x.device)
            if mask.dtype == torch.bool:
                mask = mask & allowed
            else:
                mask = mask + torch.zeros(T, S, dtype=mask.dtype, device=x.device).masked_fill(~allowed, float("-inf"))
            causal = False
        p = self.dropout if self.training else 0.0
        if self.fast and not return_weights:
            if causal and T != S:  # PyTorch's is_causal aligns top-left; a cache needs bottom-right
                mask, causal = causal_mask(T, S, device=x.device), False
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=p, is_causal=causal)
            weights = None
        else:
            out, weights = scaled_dot_product_attention(q, k, v, mask, causal, p, return_weights=True)
        out = self.out_proj(merge_heads(out))
        return (out, weights) if return_weights else out


# --- positions ----------------------------------------------------------------------------------

def sinusoidal_positions(
    T: int, d_model: int, base: float = 10000.0, offset: int = 0, *, dtype: torch.dtype = torch.float32, device=None
) -> Tensor:
    """The (T, d_model) sinusoidal table of the original Transformer (chapter 2, notebook 03).

    Column 2i holds sin(p / base^(2i/d_model)) and column 2i+1 the cosine of the same angle.
    """
    if d_model % 2:
        raise ValueError(f"d_model must be even (sin/cos pairs), got {d_model}.")
    pos = torch.arange(offset, offset + T, dtype=torch.float64)[:, None]
    freq = base ** (-torch.arange(0, d_model, 2, dtype=torch.float64) / d_model)
    table = torch.empty(T, d_model, dtype=torch.float64)
    table[:, 0::2] = torch.sin(pos * freq)
    table[:, 1::2] = torch.cos(pos * freq)
    return table.to(dtype=dtype, device=device)


class LearnedPositions(nn.Module):
    """A trained vector per position, added to the token embeddings (as in GPT-2)."""

    def __init__(self, max_len: int, d_model: int) -> None:
        super().__init__()
        self.max_len = max_len
        self.table = nn.Embedding(max_len, d_model)
        nn.init.normal_(self.table.weight, std=0.02)

    def forward(self, x: Tensor, offset: int = 0) -> Tensor:
        T = x.shape[-2]
        if offset + T > self.max_len:
            raise ValueError(
                f"positions {offset}..{offset + T - 1} exceed the {self.max_len} learned positions; "
                "crop the input to the model's context length."
            )
        return x + self.table.weight[offset: offset + T]


class RotaryEmbedding(nn.Module):
    """Rotary position embedding (RoPE) {Su et al. 2021}, applied to queries and keys.

    Dimension i and i + head_dim/2 form a pair rotated by angle p * base^(-2i/head_dim) at position
    p, so q_m . k_n depends on positions only through m - n. Usable as ``MultiHeadAttention``'s
    ``pos_fn``.
    """

    def __init__(self, head_dim: int, base: float = 10000.0) -> None:
        super().__init__()
        if head_dim % 2:
            raise ValueError(f"RoPE rotates pairs of dimensions: head_dim must be even, got {head_dim}.")
        self.head_dim, self.base = head_dim, base
        # angles are computed in float64 on the CPU (MPS has no float64), then cast and moved
        self._inv_freq = base ** (-torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim)
        self._cached: tuple[tuple, Tensor, Tensor] | None = None

    def angles(self, T: int, offset: int = 0) -> Tensor:
        """(T, head_dim/2) float64 angles p * base^(-2i/head_dim) for p = offset ... offset+T-1."""
        return torch.arange(offset, offset + T, dtype=torch.float64)[:, None] * self._inv_freq

    def _cos_sin(self, T: int, offset: int, like: Tensor) -> tuple[Tensor, Tensor]:
        key = (T, offset, like.device, like.dtype)
        if self._cached is None or self._cached[0] != key:
            theta = self.angles(T, offset)
            self._cached = (key, theta.cos().to(like.device, like.dtype), theta.sin().to(like.device, like.dtype))
        return self._cached[1], self._cached[2]

    def rotate(self, x: Tensor, offset: int = 0) -> Tensor:
        """Rotate x (..., T, head_dim) as if its positions were offset, offset+1, ..."""
        if x.dim() < 2 or x.shape[-1] != self.head_dim:
            raise ValueError(f"RoPE expects x of shape (..., seq, head_dim={self.head_dim}), got {tuple(x.shape)}.")
        cos, sin = self._cos_sin(x.shape[-2], offset, x)
        x1, x2 = x[..., : self.head_dim // 2], x[..., self.head_dim // 2:]
        return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1)

    def forward(self, q: Tensor, k: Tensor, offset: int = 0) -> tuple[Tensor, Tensor]:
        return self.rotate(q, offset), self.rotate(k, offset)


# --- tiled attention ----------------------------------------------------------------------------

def flash_attention(
    q: Tensor, k: Tensor, v: Tensor, block_size: int = 64, is_causal: bool = False, scale: float | None = None
) -> Tensor:
    """Attention computed tile by tile with an online softmax (chapter 2, notebook 04).

    For each block of queries, walk over blocks of keys keeping a running row maximum ``m``, a
    running denominator ``l`` and an unnormalised output ``acc``; rescale them by exp(m_old - m_new)
    whenever the maximum grows. Peak extra memory is one (block, block) tile per batch and head, never
    the (Tq, Tk) matrix. Causal masking is aligned like :func:`causal_mask`; key blocks entirely in a
    query block's future are skipped. No dropout and no arbitrary masks: this is for teaching.
    """
    _check_qkv(q, k, v, enable_gqa=False)
    if block_size < 1:
        raise ValueError(f"block_size must be a positive integer, got {block_size}.")
    Tq, Tk = q.shape[-2], k.shape[-2]
    if is_causal and Tk < Tq:
        raise ValueError(f"causal attention needs at least as many keys as queries, got Tq={Tq}, Tk={Tk}.")
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    shift = Tk - Tq  # query i sits at absolute position i + shift
    out = torch.empty(*q.shape[:-1], v.shape[-1], dtype=q.dtype, device=q.device)
    for i0 in range(0, Tq, block_size):
        qi = q[..., i0: i0 + block_size, :] * scale
        rows = torch.arange(i0, i0 + qi.shape[-2], device=q.device)[:, None] + shift
        m = torch.full((*qi.shape[:-1], 1), float("-inf"), dtype=q.dtype, device=q.device)
        l = torch.zeros_like(m)
        acc = torch.zeros(*qi.shape[:-1], v.shape[-1], dtype=q.dtype, device=q.device)
        k_end = min(Tk, i0 + qi.shape[-2] + shift) if is_causal else Tk
        for j0 in range(0, k_end, block_size):
            s = qi @ k[..., j0: j0 + block_size, :].transpose(-2, -1)  # one (block, block) tile
            if is_causal:
                cols = torch.arange(j0, j0 + s.shape[-1], device=q.device)[None, :]
                s = s.masked_fill(cols > rows, float("-inf"))
            m_new = torch.maximum(m, s.amax(dim=-1, keepdim=True))
            m_safe = torch.where(torch.isfinite(m_new), m_new, torch.zeros_like(m_new))
            p = torch.exp(s - m_safe)
            correction = torch.exp(torch.where(torch.isfinite(m), m, m_safe) - m_safe)
            l = l * correction + p.sum(dim=-1, keepdim=True)
            acc = acc * correction + p @ v[..., j0: j0 + block_size, :]
            m = m_new
        out[..., i0: i0 + qi.shape[-2], :] = acc / torch.where(l == 0, torch.ones_like(l), l)
    return out
