"""Chapter 2's checkers: the references and independent solutions pass; typical mistakes are named."""
import math

import torch
import torch.nn.functional as F

import lmlib.exercises as ex
from checker_asserts import passes, rejects
from lmlib.attention import merge_heads, split_heads


def stable_softmax(x, dim=-1):
    e = (x - x.amax(dim, keepdim=True)).exp()
    return e / e.sum(dim, keepdim=True)


def test_softmax():
    passes(ex.check_softmax, ex.reference_softmax)
    passes(ex.check_softmax, stable_softmax)
    rejects(ex.check_softmax, lambda x: x.exp() / x.exp().sum(-1, keepdim=True), "overflowed", "Subtract the maximum")
    rejects(ex.check_softmax, lambda x: stable_softmax(x, dim=0), "wrong axis", "dim 0")
    rejects(ex.check_softmax, lambda x: x / x.sum(-1, keepdim=True), "without exponentiating")


def attention(q, k, v, mask=None, scale=None, fill=float("-inf"), invert=False, nan_rows=False, dim=-1):
    scale = 1 / math.sqrt(q.shape[-1]) if scale is None else scale
    scores = q @ k.transpose(-2, -1) * scale
    if mask is not None:
        scores = scores.masked_fill(mask if invert else ~mask, fill)
    weights = torch.softmax(scores, dim)
    return (weights if nan_rows else weights.nan_to_num(0.0)) @ v


def attention_via_stable_softmax(q, k, v, mask=None):
    scores = (q @ k.transpose(-2, -1)) / q.shape[-1] ** 0.5
    if mask is not None:
        scores = torch.where(mask, scores, float("-inf"))
    top = scores.amax(-1, keepdim=True)
    e = (scores - torch.where(torch.isfinite(top), top, 0.0)).exp()
    total = e.sum(-1, keepdim=True)
    return e / torch.where(total > 0, total, 1.0) @ v


def test_attention():
    passes(ex.check_attention, ex.reference_attention)
    passes(ex.check_attention, attention)
    passes(ex.check_attention, attention_via_stable_softmax)
    passes(ex.check_attention, lambda q, k, v, mask=None: F.scaled_dot_product_attention(q, k, v, attn_mask=mask))
    rejects(ex.check_attention, lambda q, k, v, mask=None: attention(q, k, v, mask, scale=1.0), "1/sqrt(d) scale is missing")
    rejects(ex.check_attention, lambda q, k, v, mask=None: attention(q, k, v, mask, invert=True), "wrong way round")
    rejects(ex.check_attention, lambda q, k, v, mask=None: attention(q, k, v, mask, nan_rows=True), "no key gets NaN")
    rejects(ex.check_attention, lambda q, k, v, mask=None: attention(q, k, v, mask, fill=-1e9), "averages every value")
    rejects(ex.check_attention, lambda q, k, v, mask=None: attention(q, k, v, mask, fill=0.0), "set to 0, not to -inf")
    rejects(ex.check_attention, lambda q, k, v, mask=None: attention(q, k, v, mask, dim=-2), "over the queries")
    rejects(ex.check_attention, lambda q, k, v, mask=None: attention(q, k, v), "mask was ignored")


def multi_head(x, params, n_heads, mask=None, transpose=True, direct=False, model_scale=False, project=True):
    B, T, C = x.shape
    D = C // n_heads

    def linear(h, name):
        W = params[name + ".weight"]
        return h @ (W.T if transpose else W) + params[name + ".bias"]

    def split(h):
        return h.reshape(B, n_heads, T, D) if direct else h.view(B, T, n_heads, D).transpose(1, 2)

    q, k, v = (split(linear(x, n + "_proj")) for n in "qkv")
    out = attention(q, k, v, mask, scale=1 / math.sqrt(C if model_scale else D))
    out = out.transpose(1, 2).reshape(B, T, C)
    return linear(out, "out_proj") if project else out


def test_multi_head():
    def with_linear_layers(x, params, n_heads, mask=None):
        layers = {n: torch.nn.Linear(x.shape[-1], x.shape[-1]) for n in ("q_proj", "k_proj", "v_proj", "out_proj")}
        for n, layer in layers.items():
            layer.load_state_dict({"weight": params[n + ".weight"], "bias": params[n + ".bias"]})
        with torch.no_grad():
            q, k, v = (split_heads(layers[n + "_proj"](x), n_heads) for n in "qkv")
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
            return layers["out_proj"](merge_heads(out))

    passes(ex.check_multi_head, ex.reference_multi_head)
    passes(ex.check_multi_head, multi_head)
    passes(ex.check_multi_head, with_linear_layers)
    rejects(ex.check_multi_head, lambda *a, **kw: multi_head(*a, **kw, transpose=False), "x @ W.T + b")
    rejects(ex.check_multi_head, lambda *a, **kw: multi_head(*a, **kw, direct=True), "reshaped straight to (B, H, T, D)")
    rejects(ex.check_multi_head, lambda *a, **kw: multi_head(*a, **kw, model_scale=True), "sqrt(d_model)")
    rejects(ex.check_multi_head, lambda *a, **kw: multi_head(*a, **kw, project=False), "output projection is missing")


def rope(x, offset, pairs="half", sign=1.0):
    T, D = x.shape[-2:]
    theta = 10000.0 ** (-torch.arange(0, D, 2, dtype=torch.float64) / D)
    angle = torch.arange(offset, offset + T, dtype=torch.float64)[:, None] * theta
    cos, sin = angle.cos(), sign * angle.sin()
    if pairs == "half":
        a, b = x[..., : D // 2], x[..., D // 2:]
        return torch.cat([a * cos - b * sin, a * sin + b * cos], -1)
    a, b = x[..., 0::2], x[..., 1::2]
    return torch.stack([a * cos - b * sin, a * sin + b * cos], -1).flatten(-2)


def test_rope():
    passes(ex.check_rope, ex.reference_rope)
    passes(ex.check_rope, rope)
    rejects(ex.check_rope, lambda x, offset: rope(x, 0), "ignored the offset")
    rejects(ex.check_rope, lambda x, offset: rope(x, offset, pairs="adjacent"), "neighbouring features")
    rejects(ex.check_rope, lambda x, offset: rope(x, offset, sign=-1.0), "rotated the wrong way")


def test_online_softmax():
    def mine(m1, l1, m2, l2):
        m = torch.maximum(m1, m2)
        return m, l1 * (m1 - m).exp() + l2 * (m2 - m).exp()

    def through_exp_m(m1, l1, m2, l2):  # right in exact arithmetic, but exp(1000) overflows
        m = torch.maximum(m1, m2)
        return m, (l1 * m1.exp() + l2 * m2.exp()) / m.exp()

    passes(ex.check_online_softmax, ex.reference_online_softmax)
    passes(ex.check_online_softmax, mine)
    passes(ex.check_online_softmax, lambda *args: list(mine(*args)))  # a list is as good as a tuple
    rejects(ex.check_online_softmax, lambda m1, l1, m2, l2: (torch.maximum(m1, m2), l1 + l2), "without rescaling")
    rejects(ex.check_online_softmax, through_exp_m, "in l:", "overflowed")
    rejects(ex.check_online_softmax, lambda *args: mine(*args)[::-1], "wrong order", "(m, l)")
    rejects(ex.check_online_softmax, lambda *args: ("m", "l"), "in m:", "expected a tensor")
