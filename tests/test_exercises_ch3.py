"""Chapter 3's checkers: the references and independent solutions pass; typical mistakes are named."""
import math

import torch
import torch.nn.functional as F

import lmlib.exercises as ex
from checker_asserts import passes, rejects
from lmlib.generate import generate
from lmlib.model import GPT, GPTConfig


def layer_norm(x, w, b, eps, unbiased=False, eps_outside=False, centre=True, shift=True):
    mu = x.mean(-1, keepdim=True) if centre else 0
    var = (x - mu).pow(2).mean(-1, keepdim=True) if not unbiased else x.var(-1, keepdim=True)
    spread = var.sqrt() + eps if eps_outside else (var + eps).sqrt()
    return (x - mu) / spread * w + (b if shift else 0)


def test_layer_norm():
    passes(ex.check_layer_norm, ex.reference_layer_norm)
    passes(ex.check_layer_norm, layer_norm)
    passes(ex.check_layer_norm, lambda x, w, b, eps: F.layer_norm(x, x.shape[-1:], w, b, eps))
    rejects(ex.check_layer_norm, lambda x, w, b, eps: layer_norm(x, w, b, eps, unbiased=True), "unbiased variance")
    rejects(ex.check_layer_norm, lambda x, w, b, eps: layer_norm(x, w, b, eps, eps_outside=True), "outside the square root")
    rejects(ex.check_layer_norm, lambda x, w, b, eps: layer_norm(x, w, b, eps, centre=False), "RMSNorm")
    rejects(ex.check_layer_norm, lambda x, w, b, eps: layer_norm(x, w, b, eps, shift=False), "shift")
    rejects(ex.check_layer_norm, lambda x, w, b, eps: F.layer_norm(x, x.shape, None, None, eps) * w + b, "whole tensor")


def block(x, p, n_head, residual=True, prenorm=True, causal=True, gelu="tanh"):
    B, T, d = x.shape
    D = d // n_head

    def lin(h, name):
        return h @ p[name + ".weight"].T + p[name + ".bias"]

    def norm(h, name):
        return layer_norm(h, p[name + ".weight"], p[name + ".bias"], 1e-5)

    def attn(h):
        q, k, v = (lin(h, f"attn.{n}_proj").view(B, T, n_head, D).transpose(1, 2) for n in "qkv")
        scores = q @ k.transpose(-2, -1) / math.sqrt(D)
        if causal:
            scores = scores.masked_fill(~torch.ones(T, T, dtype=torch.bool).tril(), float("-inf"))
        return lin((scores.softmax(-1) @ v).transpose(1, 2).reshape(B, T, d), "attn.out_proj")

    def mlp(h):
        return lin(F.gelu(lin(h, "mlp.fc"), approximate=gelu), "mlp.proj")

    if not prenorm:
        x = norm(x + attn(x), "ln_1")
        return norm(x + mlp(x), "ln_2")
    x = (x if residual else 0) + attn(norm(x, "ln_1"))
    return (x if residual else 0) + mlp(norm(x, "ln_2"))


def test_block():
    passes(ex.check_block, ex.reference_block)
    passes(ex.check_block, block)
    rejects(ex.check_block, lambda x, p, h: block(x, p, h, residual=False), "residual connections are missing")
    rejects(ex.check_block, lambda x, p, h: block(x, p, h, prenorm=False), "post-norm")
    rejects(ex.check_block, lambda x, p, h: block(x, p, h, causal=False), "not causal")
    rejects(ex.check_block, lambda x, p, h: block(x, p, h, gelu="none"), "tanh approximation")


def gpt2_formula(V, T, L, d, head=False, linear_bias=True, final_norm=True):
    per_block = 12 * d * d + (13 if linear_bias else 4) * d
    return V * d + T * d + L * per_block + (2 * d if final_norm else 0) + (V * d if head else 0)


def test_param_count():
    assert ex.reference_param_count(50257, 1024, 12, 768) == 124_439_808  # GPT-2 small
    model = GPT(GPTConfig(vocab_size=50, block_size=10, n_layer=3, n_head=2, n_embd=24))
    assert ex.reference_param_count(50, 10, 3, 24) == model.num_params()
    passes(ex.check_param_count, ex.reference_param_count)
    passes(ex.check_param_count, gpt2_formula)
    rejects(ex.check_param_count, lambda V, T, L, d: gpt2_formula(V, T, L, d, head=True), "tied to the token table")
    rejects(ex.check_param_count, lambda V, T, L, d: gpt2_formula(V, T, L, d, linear_bias=False), "biases")
    rejects(ex.check_param_count, lambda V, T, L, d: gpt2_formula(V, T, L, d, final_norm=False), "final LayerNorm")


def gpt_forward(params, idx, targets, n_head, positions=True, final_norm=True, shift=False, loss_sum=False):
    T = idx.shape[1]
    x = F.embedding(idx, params["wte.weight"])
    if positions:
        x = x + params["wpe.table.weight"][:T]
    i = 0
    while f"blocks.{i}.ln_1.weight" in params:
        prefix = f"blocks.{i}."
        x = block(x, {k.removeprefix(prefix): v for k, v in params.items() if k.startswith(prefix)}, n_head)
        i += 1
    if final_norm:
        x = layer_norm(x, params["ln_f.weight"], params["ln_f.bias"], 1e-5)
    logits = x @ params["wte.weight"].T
    if shift:
        logits, targets = logits[:, :-1], targets[:, 1:]
    loss = F.cross_entropy(logits.flatten(0, 1), targets.flatten(), reduction="sum" if loss_sum else "mean")
    return logits if not shift else x @ params["wte.weight"].T, loss


def test_gpt_forward():
    passes(ex.check_gpt_forward, ex.reference_gpt_forward)
    passes(ex.check_gpt_forward, gpt_forward)
    passes(ex.check_gpt_forward, lambda *args: list(gpt_forward(*args)))
    rejects(ex.check_gpt_forward, lambda *args: gpt_forward(*args, positions=False), "position embeddings are missing")
    rejects(ex.check_gpt_forward, lambda *args: gpt_forward(*args, final_norm=False), "final LayerNorm")
    rejects(ex.check_gpt_forward, lambda *args: gpt_forward(*args, shift=True), "shifted the targets again")
    rejects(ex.check_gpt_forward, lambda *args: gpt_forward(*args)[0], "(logits, loss)")


def test_kv_cache_step():
    def attend(q, k, v, scale):
        return torch.softmax(q @ k.transpose(-2, -1) * scale, -1) @ v

    def mine(q, k_new, v_new, k_cache, v_cache, scale=None):
        k, v = torch.cat([k_cache, k_new], -2), torch.cat([v_cache, v_new], -2)
        return attend(q, k, v, 1 / math.sqrt(q.shape[-1]) if scale is None else scale)

    def via_sdpa(q, k_new, v_new, k_cache, v_cache):
        return F.scaled_dot_product_attention(q, torch.cat([k_cache, k_new], -2), torch.cat([v_cache, v_new], -2))

    passes(ex.check_kv_cache_step, ex.reference_kv_cache_step)
    passes(ex.check_kv_cache_step, mine)
    passes(ex.check_kv_cache_step, via_sdpa)
    rejects(ex.check_kv_cache_step, lambda q, kn, vn, kc, vc: attend(q, kn, vn, 1 / math.sqrt(q.shape[-1])),
            "only to the newest token")
    rejects(ex.check_kv_cache_step, lambda q, kn, vn, kc, vc: attend(q, kc, vc, 1 / math.sqrt(q.shape[-1])),
            "only to the cache")
    rejects(ex.check_kv_cache_step, lambda *args: mine(*args, scale=1.0), "1/sqrt(d) scale is missing")


def sample(model, idx, steps, temperature=1.0, top_k=None, top_p=None, generator=None,
           crop=True, times=False, p_after=False, k_extra=0, greedy=False):
    n = model.config.block_size
    for _ in range(steps):
        with torch.no_grad():
            logits = model(idx[:, -n:] if crop else idx)[0][:, -1]
        logits = logits * temperature if times else logits / temperature
        if top_k is not None:
            kth = logits.topk(min(top_k + k_extra, logits.shape[-1]), -1).values[:, -1:]
            logits = logits.masked_fill(logits < kth, float("-inf"))
        if top_p is not None:
            probs, order = logits.softmax(-1).sort(-1, descending=True)
            above = probs.cumsum(-1) - (0 if p_after else probs)
            keep = torch.zeros_like(logits, dtype=torch.bool).scatter(-1, order, above < top_p)
            logits = logits.masked_fill(~keep, float("-inf"))
        probs = logits.softmax(-1)
        nxt = probs.argmax(-1, keepdim=True) if greedy else torch.multinomial(probs, 1, generator=generator)
        idx = torch.cat([idx, nxt], 1)
    return idx


def test_sample():
    passes(ex.check_sample, ex.reference_sample)
    passes(ex.check_sample, sample)
    passes(ex.check_sample, lambda *args: generate(*args[:3], temperature=args[3], top_k=args[4], top_p=args[5],
                                                   generator=args[6]))  # with the KV cache: the same draws
    rejects(ex.check_sample, lambda *args: sample(*args, times=True), "multiplied the logits by the temperature")
    rejects(ex.check_sample, lambda *args: sample(*args, p_after=True), "top-p keeps one token too few")
    rejects(ex.check_sample, lambda *args: sample(*args, greedy=True), "argmax")
    rejects(ex.check_sample, lambda *args: sample(*args, crop=False), "raised ValueError", "crop")
