"""The chapter 3 exercise checkers accept the reference solutions and reject known-wrong ones."""
import math

import torch

from lmlib import exercises
from lmlib.model import GPT, GPTConfig


def gpt2_formula(V, T, L, d):
    return V * d + T * d + L * (12 * d * d + 13 * d) + 2 * d


def test_param_count_checker():
    assert exercises.check_param_count(exercises.reference_param_count, verbose=False)
    assert exercises.check_param_count(gpt2_formula, verbose=False)
    assert exercises.reference_param_count(50257, 1024, 12, 768) == 124_439_808  # GPT-2 small
    model = GPT(GPTConfig(vocab_size=50, block_size=10, n_layer=3, n_head=2, n_embd=24))
    assert exercises.reference_param_count(50, 10, 3, 24) == model.num_params()
    untied = lambda V, T, L, d: gpt2_formula(V, T, L, d) + V * d  # noqa: E731
    no_bias = lambda V, T, L, d: V * d + T * d + L * (12 * d * d + 4 * d) + 2 * d  # noqa: E731
    assert not exercises.check_param_count(untied, verbose=False)
    assert not exercises.check_param_count(no_bias, verbose=False)


def test_top_k_filter_checker():
    def mine(logits, k):
        k = min(k, logits.shape[-1])
        kth = logits.topk(k, dim=-1).values[..., -1:]
        return logits.masked_fill(logits < kth, float("-inf"))

    assert exercises.check_top_k_filter(exercises.reference_top_k_filter, verbose=False)
    assert exercises.check_top_k_filter(mine, verbose=False)
    off_by_one = lambda x, k: mine(x, k + 1) if k < x.shape[-1] else mine(x, k)  # noqa: E731
    assert not exercises.check_top_k_filter(off_by_one, verbose=False)
    zeros = lambda x, k: x.masked_fill(x < x.topk(min(k, x.shape[-1]), -1).values[..., -1:], 0.0)  # noqa: E731
    assert not exercises.check_top_k_filter(zeros, verbose=False)
    no_clamp = lambda x, k: x.masked_fill(x < x.topk(k, -1).values[..., -1:], float("-inf"))  # noqa: E731
    assert not exercises.check_top_k_filter(no_clamp, verbose=False)


def test_kv_cache_step_checker():
    def via_sdpa(q, k_new, v_new, k_cache, v_cache):
        k, v = torch.cat([k_cache, k_new], -2), torch.cat([v_cache, v_new], -2)
        return torch.nn.functional.scaled_dot_product_attention(q, k, v)

    def only_new(q, k_new, v_new, k_cache, v_cache):
        return torch.softmax(q @ k_new.transpose(-2, -1) / math.sqrt(q.shape[-1]), -1) @ v_new

    def unscaled(q, k_new, v_new, k_cache, v_cache):
        k, v = torch.cat([k_cache, k_new], -2), torch.cat([v_cache, v_new], -2)
        return torch.softmax(q @ k.transpose(-2, -1), -1) @ v

    assert exercises.check_kv_cache_step(exercises.reference_kv_cache_step, verbose=False)
    assert exercises.check_kv_cache_step(via_sdpa, verbose=False)
    assert not exercises.check_kv_cache_step(only_new, verbose=False)
    assert not exercises.check_kv_cache_step(unscaled, verbose=False)


def test_rms_norm_checker():
    def mine(x, w, eps):
        return x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + eps) * w

    def layer_norm(x, w, eps):  # subtracts the mean: not RMSNorm
        return torch.nn.functional.layer_norm(x, x.shape[-1:], w, None, eps)

    def eps_outside(x, w, eps):
        return x / (torch.sqrt(x.pow(2).mean(-1, keepdim=True)) + eps) * w

    assert exercises.check_rms_norm(exercises.reference_rms_norm, verbose=False)
    assert exercises.check_rms_norm(mine, verbose=False)
    assert not exercises.check_rms_norm(layer_norm, verbose=False)
    assert not exercises.check_rms_norm(eps_outside, verbose=False)
    assert not exercises.check_rms_norm(lambda x, w, eps: x / torch.sqrt(x.pow(2).mean() + eps) * w, verbose=False)
