"""Exercise checkers for chapter 3, Build the Transformer (RMSNorm, parameter count, top-k filter, KV-cache step)."""
from __future__ import annotations

import math
from collections.abc import Callable

import torch

from lmlib.exercises.core import Case, check
from lmlib.generate import top_k_filter
from lmlib.model import GPTConfig, RMSNorm, count_params

__all__ = [
    "check_rms_norm", "reference_rms_norm", "check_param_count", "check_top_k_filter", "check_kv_cache_step",
    "reference_param_count", "reference_top_k_filter", "reference_kv_cache_step",
]


def _randint(gen: torch.Generator, low: int, high: int) -> int:
    return int(torch.randint(low, high, (1,), generator=gen))


def reference_rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    norm = RMSNorm(x.shape[-1], eps=eps)
    with torch.no_grad():
        norm.weight.copy_(weight)
        return norm(x)


def check_rms_norm(fn: Callable[[torch.Tensor, torch.Tensor, float], torch.Tensor], **kwargs) -> bool:
    """``fn(x (..., d), weight (d,), eps) -> (..., d)``: x / sqrt(mean(x^2) + eps) * weight over the last axis."""

    def make_case(gen: torch.Generator) -> Case:
        d = _randint(gen, 1, 33)
        shape = (_randint(gen, 1, 4), _randint(gen, 1, 6), d)
        scale = float(torch.tensor([0.01, 1.0, 100.0])[_randint(gen, 0, 3)])
        eps = float(torch.tensor([1e-5, 1e-6, 0.1])[_randint(gen, 0, 3)])
        return torch.randn(shape, generator=gen) * scale, torch.rand(d, generator=gen) + 0.5, eps

    return check(
        fn,
        reference_rms_norm,
        make_case,
        name="rms_norm",
        hint="the mean of the squares is over the last axis only (dim=-1, keepdim=True); add eps inside "
        "the square root; no mean is subtracted and there is no shift; multiply by weight at the end.",
        rtol=1e-4,
        atol=1e-5,
        # small inputs with a large eps: where eps sits (inside or outside the root) shows every time
        fixed_cases=((torch.full((1, 2, 4), 0.01), torch.ones(4), 0.1),),
        **kwargs,
    )


def reference_param_count(vocab_size: int, block_size: int, n_layer: int, n_embd: int) -> int:
    return count_params(GPTConfig(vocab_size=vocab_size, block_size=block_size, n_layer=n_layer, n_head=1, n_embd=n_embd))


def check_param_count(fn: Callable[[int, int, int, int], int], **kwargs) -> bool:
    """``fn(vocab_size, block_size, n_layer, n_embd) -> int``: parameters of a GPT-2 shaped GPT.

    GPT-2's choices: learned positions, LayerNorm with bias, biases in every linear layer, a GELU MLP
    of width 4 * n_embd, the output head tied to the token embedding.
    """

    def make_case(gen: torch.Generator) -> Case:
        return _randint(gen, 2, 60000), _randint(gen, 1, 2048), _randint(gen, 1, 48), 8 * _randint(gen, 1, 200)

    return check(
        fn,
        reference_param_count,
        make_case,
        name="param_count",
        hint="per block: attention 4 d^2 + 4 d (q, k, v, out with biases), MLP 8 d^2 + 5 d, two LayerNorms "
        "2 * 2d; then token table V d, position table block_size d, the final LayerNorm 2d, and no extra "
        "head (tied to the token table).",
        fixed_cases=((50257, 1024, 12, 768),),  # GPT-2 small: 124,439,808
        **kwargs,
    )


def reference_top_k_filter(logits: torch.Tensor, k: int) -> torch.Tensor:
    return top_k_filter(logits, k)


def check_top_k_filter(fn: Callable[[torch.Tensor, int], torch.Tensor], **kwargs) -> bool:
    """``fn(logits (B, V), k) -> logits`` with all but the k largest of each row set to -inf."""

    def make_case(gen: torch.Generator) -> Case:
        V = _randint(gen, 2, 40)
        return torch.randn(_randint(gen, 1, 5), V, generator=gen) * 3, _randint(gen, 1, V + 3)

    return check(
        fn,
        reference_top_k_filter,
        make_case,
        name="top_k_filter",
        hint="torch.topk(logits, k, dim=-1).values[..., -1:] is each row's k-th largest value; keep "
        "logits >= it and masked_fill the others with float('-inf'). k may exceed the vocabulary: clamp it.",
        fixed_cases=((torch.tensor([[1.0, 4.0, 2.0, 3.0]]), 2), (torch.tensor([[0.5, -1.0, 2.0]]), 5)),
        **kwargs,
    )


def reference_kv_cache_step(q: torch.Tensor, k_new: torch.Tensor, v_new: torch.Tensor,
                            k_cache: torch.Tensor, v_cache: torch.Tensor) -> torch.Tensor:
    k = torch.cat([k_cache, k_new], dim=-2)
    v = torch.cat([v_cache, v_new], dim=-2)
    weights = torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1]), dim=-1)
    return weights @ v


def check_kv_cache_step(fn: Callable[..., torch.Tensor], **kwargs) -> bool:
    """``fn(q, k_new, v_new, k_cache, v_cache) -> out``: one decoding step with a KV cache.

    q, k_new, v_new are (B, H, 1, D) for the newest token; k_cache, v_cache (B, H, S, D) hold the
    S earlier tokens. The output (B, H, 1, D) is the new token's attention over all S + 1 tokens.
    """

    def make_case(gen: torch.Generator) -> Case:
        B, H, S, D = _randint(gen, 1, 3), _randint(gen, 1, 4), _randint(gen, 1, 12), 2 * _randint(gen, 1, 8)
        new = [torch.randn(B, H, 1, D, generator=gen) for _ in range(3)]
        return (*new, torch.randn(B, H, S, D, generator=gen), torch.randn(B, H, S, D, generator=gen))

    return check(
        fn,
        reference_kv_cache_step,
        make_case,
        name="kv_cache_step",
        hint="append the new key and value to the cache along the sequence axis (dim=-2) first, then "
        "attend: softmax(q k^T / sqrt(D)) v. No causal mask is needed: the newest token may see every key.",
        rtol=1e-4,
        atol=1e-5,
        **kwargs,
    )
