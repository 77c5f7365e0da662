"""Exercise checkers for chapter 3, Build the Transformer.

The reader builds a GPT piece by piece, each piece allowed to call the earlier ones. Notebook 01
(blocks): ``check_layer_norm``, ``check_block``; notebook 02 (GPT): ``check_param_count``,
``check_gpt_forward``; notebook 03 (generation): ``check_kv_cache_step``, ``check_sample``.
"""
from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F

from lmlib.attention import KVCache, merge_heads, scaled_dot_product_attention, split_heads
from lmlib.data import IGNORE_INDEX
from lmlib.exercises.core import MISSING_SCALE, Case, Mistake, Result, check, randint
from lmlib.generate import generate, top_k_filter
from lmlib.model import GPT, Block, BlockConfig, GPTConfig, LayerNorm, count_params

__all__ = [
    "check_layer_norm", "reference_layer_norm",
    "check_block", "reference_block",
    "check_param_count", "reference_param_count",
    "check_gpt_forward", "reference_gpt_forward",
    "check_kv_cache_step", "reference_kv_cache_step",
    "check_sample", "reference_sample",
]


def reference_layer_norm(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, eps: float) -> torch.Tensor:
    norm = LayerNorm(x.shape[-1], eps=eps)
    with torch.no_grad():
        norm.weight.copy_(weight)
        norm.bias.copy_(bias)
        return norm(x)


def _layer_norm(x, w, b, eps, *, unbiased=False, eps_outside=False, centre=True, dims=(-1,), shift=True):
    """LayerNorm written out, with switches for the usual slips."""
    mu = x.mean(dim=dims, keepdim=True) if centre else torch.zeros_like(x)
    var = (x - mu).pow(2).sum(dim=dims, keepdim=True) / max(1, _count(x, dims) - (1 if unbiased else 0))
    if unbiased and _count(x, dims) == 1:
        var = var * float("nan")
    spread = var.sqrt() + eps if eps_outside else torch.sqrt(var + eps)
    return (x - mu) / spread * w + (b if shift else 0)


def _count(x: torch.Tensor, dims) -> int:
    return math.prod(x.shape[d] for d in dims)


def check_layer_norm(fn: Callable[..., torch.Tensor], **options) -> Result:
    """``fn(x (..., d), weight (d,), bias (d,), eps) -> (..., d)``: LayerNorm over the last axis.

    (x - mean) / sqrt(var + eps) * weight + bias, with the mean and the (biased, divide-by-d)
    variance of each vector along the last axis.
    """

    def make_case(gen: torch.Generator) -> Case:
        d = randint(gen, 2, 33)
        shape = (randint(gen, 1, 4), randint(gen, 1, 6), d)
        scale = (0.01, 1.0, 100.0)[randint(gen, 0, 3)]
        eps = (1e-5, 1e-6, 0.1)[randint(gen, 0, 3)]
        x = torch.randn(shape, generator=gen) * scale + torch.randn(1, generator=gen) * scale
        return x, torch.rand(d, generator=gen) + 0.5, torch.randn(d, generator=gen), eps

    return check(
        fn, reference_layer_norm, make_case,
        hint="mean = x.mean(-1, keepdim=True); var = ((x - mean) ** 2).mean(-1, keepdim=True) (divide by d, "
        "not d - 1: x.var(-1, unbiased=False)); (x - mean) / sqrt(var + eps) * weight + bias.",
        edge_cases=(
            # small inputs with a large eps: where eps sits (inside or outside the root) shows
            (torch.tensor([[[0.01, -0.02, 0.03, 0.0]]]), torch.tensor([1.0, 2.0, 0.5, 1.0]),
             torch.tensor([0.0, 0.5, -1.0, 0.25]), 0.1),
            (torch.tensor([[[1.0, 3.0], [2.0, 2.0]]]), torch.tensor([1.5, 0.5]), torch.tensor([0.1, -0.1]), 1e-5),  # a constant row
            (torch.tensor([[[1.0, 2.0, 6.0], [4.0, -8.0, 1.0]]]), torch.tensor([1.0, 0.5, 2.0]),
             torch.tensor([0.0, 1.0, 0.0]), 1e-5),
        ),
        mistakes=(
            Mistake("you used the unbiased variance (divide by d - 1, torch's default for x.var()); LayerNorm "
                    "divides by d: x.var(-1, unbiased=False, keepdim=True)",
                    lambda x, w, b, eps: _layer_norm(x, w, b, eps, unbiased=True)),
            Mistake("eps sits outside the square root; it goes inside: sqrt(var + eps)",
                    lambda x, w, b, eps: _layer_norm(x, w, b, eps, eps_outside=True)),
            Mistake("you did not subtract the mean: that is RMSNorm; LayerNorm centres each vector first",
                    lambda x, w, b, eps: _layer_norm(x, w, b, eps, centre=False)),
            Mistake("you took the mean and variance over the whole tensor; they run over the last axis "
                    "only (dim=-1, keepdim=True), one pair per vector",
                    lambda x, w, b, eps: _layer_norm(x, w, b, eps, dims=tuple(range(x.dim())))),
            Mistake("you left out the shift: add bias at the end",
                    lambda x, w, b, eps: _layer_norm(x, w, b, eps, shift=False)),
            Mistake("you left out the gain: multiply by weight before adding bias",
                    lambda x, w, b, eps: _layer_norm(x, torch.ones_like(w), b, eps)),
        ),
        rtol=1e-4,
        atol=1e-5,
        **options,
    )


def _block_config(params: dict, n_head: int) -> BlockConfig:
    return BlockConfig(n_embd=params["ln_1.weight"].shape[0], n_head=n_head, fast=False)


def reference_block(x: torch.Tensor, params: dict, n_head: int) -> torch.Tensor:
    block = Block(_block_config(params, n_head))
    block.load_state_dict(params)
    with torch.no_grad():
        return block.eval()(x)


def _block(x, p, n_head, *, residual=True, prenorm=True, gelu="tanh", causal=True, same_norm=False):
    """A GPT-2 block written out, with switches for the usual slips."""
    B, T, d = x.shape

    def lin(h, name):
        return h @ p[f"{name}.weight"].T + p[f"{name}.bias"]

    def norm(h, name):
        return F.layer_norm(h, (d,), p[f"{name}.weight"], p[f"{name}.bias"], 1e-5)

    def attn(h):
        q, k, v = (split_heads(lin(h, f"attn.{n}_proj"), n_head) for n in "qkv")
        out = scaled_dot_product_attention(q, k, v, is_causal=causal)
        return lin(merge_heads(out), "attn.out_proj")

    def mlp(h):
        return lin(F.gelu(lin(h, "mlp.fc"), approximate=gelu), "mlp.proj")

    second = "ln_1" if same_norm else "ln_2"
    if not prenorm:
        x = norm(x + attn(x), "ln_1")
        return norm(x + mlp(x), second)
    x = (x if residual else 0) + attn(norm(x, "ln_1"))
    return (x if residual else 0) + mlp(norm(x, second))


def _random_block_params(gen: torch.Generator, d: int) -> dict:
    """A GPT-2 block's state dict with random weights of a size that keeps every branch visible."""
    block = Block(BlockConfig(n_embd=d, n_head=1))
    params = {}
    for name, t in block.state_dict().items():
        if name.endswith("weight") and t.dim() == 2:
            params[name] = torch.randn(t.shape, generator=gen) / math.sqrt(t.shape[1])
        elif name.endswith("weight"):
            params[name] = 1 + 0.3 * torch.randn(t.shape, generator=gen)
        else:
            params[name] = 0.3 * torch.randn(t.shape, generator=gen)
    return params


def check_block(fn: Callable[..., torch.Tensor], **options) -> Result:
    """``fn(x (B, T, d), params, n_head) -> (B, T, d)``: one pre-norm GPT-2 block.

    ``params`` is the state dict of an ``lmlib.model.Block`` (GPT-2's choices: LayerNorm with
    eps 1e-5, causal multi-head self-attention, a GELU MLP of width 4d with GPT-2's tanh GELU):
    ``ln_1.*``, ``attn.{q,k,v,out}_proj.*``, ``ln_2.*``, ``mlp.fc.*``, ``mlp.proj.*``.
    """

    def make_case(gen: torch.Generator) -> Case:
        H, D = randint(gen, 1, 4), randint(gen, 1, 5)
        d = H * D
        x = torch.randn(randint(gen, 1, 3), randint(gen, 1, 7), d, generator=gen)
        return x, _random_block_params(gen, d), H

    def fixed(seed: int, B: int, T: int, H: int, D: int) -> Case:
        gen = torch.Generator().manual_seed(seed)
        return torch.randn(B, T, H * D, generator=gen), _random_block_params(gen, H * D), H

    return check(
        fn, reference_block, make_case,
        hint="h = layer_norm(x, ln_1); x = x + attention(h) (causal multi-head self-attention with "
        "attn.q_proj ... attn.out_proj, y = h @ W.T + b); h = layer_norm(x, ln_2); x = x + "
        "mlp.proj(gelu(mlp.fc(h), approximate='tanh')). The norms read the stream, the branches add to it.",
        edge_cases=(fixed(1, 1, 4, 2, 2), fixed(2, 2, 3, 1, 3)),
        mistakes=(
            Mistake("the residual connections are missing: each branch ADDS to the stream, x = x + attn(ln_1(x)), "
                    "then x = x + mlp(ln_2(x))", lambda x, p, h: _block(x, p, h, residual=False)),
            Mistake("that is a post-norm block (norm after each addition); GPT-2's block is pre-norm: "
                    "x = x + attn(ln_1(x)), the stream itself is not normalised",
                    lambda x, p, h: _block(x, p, h, prenorm=False)),
            Mistake("the attention is not causal: position i may only attend to positions 0 ... i",
                    lambda x, p, h: _block(x, p, h, causal=False)),
            Mistake("you used the exact GELU; GPT-2 (and lmlib.model.MLP) uses its tanh approximation: "
                    "F.gelu(h, approximate='tanh')", lambda x, p, h: _block(x, p, h, gelu="none")),
            Mistake("both branches read ln_1; the MLP branch has its own norm, ln_2",
                    lambda x, p, h: _block(x, p, h, same_norm=True)),
        ),
        rtol=1e-4,
        atol=1e-5,
        **options,
    )


def reference_gpt_forward(params: dict, idx: torch.Tensor, targets: torch.Tensor, n_head: int):
    n_layer = 1 + max(int(name.split(".")[1]) for name in params if name.startswith("blocks."))
    V, d = params["wte.weight"].shape
    config = GPTConfig(vocab_size=V, block_size=params["wpe.table.weight"].shape[0], n_layer=n_layer,
                       n_head=n_head, n_embd=d, fast=False)
    model = GPT(config).to(params["wte.weight"].dtype)
    model.load_state_dict(params)
    with torch.no_grad():
        return model.eval()(idx, targets)


def _gpt_forward(params, idx, targets, n_head, *, positions=True, final_norm=True, shift=False):
    """GPT-2's forward pass written out, with switches for the usual slips."""
    T = idx.shape[1]
    x = params["wte.weight"][idx] + (params["wpe.table.weight"][:T] if positions else 0)
    n_layer = 1 + max(int(name.split(".")[1]) for name in params if name.startswith("blocks."))
    for i in range(n_layer):
        prefix = f"blocks.{i}."
        x = _block(x, {k[len(prefix):]: v for k, v in params.items() if k.startswith(prefix)}, n_head)
    if final_norm:
        x = F.layer_norm(x, x.shape[-1:], params["ln_f.weight"], params["ln_f.bias"], 1e-5)
    logits = x @ params["wte.weight"].T
    if shift:
        loss = F.cross_entropy(logits[:, :-1].flatten(0, 1), targets[:, 1:].flatten(), ignore_index=IGNORE_INDEX)
    else:
        loss = F.cross_entropy(logits.flatten(0, 1), targets.flatten(), ignore_index=IGNORE_INDEX)
    return logits, loss


def _loss_as_number(out):
    if not isinstance(out, (tuple, list)) or len(out) != 2:
        raise TypeError("return the pair (logits, loss)")
    logits, loss = out
    if isinstance(loss, torch.Tensor):
        if loss.numel() != 1:
            raise ValueError(f"the loss should be one number (the mean over the tokens), got a tensor of shape "
                             f"{tuple(loss.shape)}")
        loss = loss.item()
    return logits, loss


def check_gpt_forward(fn: Callable[..., tuple], **options) -> Result:
    """``fn(params, idx (B, T), targets (B, T), n_head) -> (logits (B, T, V), loss)``: GPT-2's forward pass.

    ``params`` is the state dict of an ``lmlib.model.GPT`` with GPT-2's choices (learned positions,
    pre-norm blocks as in ``check_block``, a final LayerNorm, the output layer tied to the token
    table): ``wte.weight`` (V, d), ``wpe.table.weight`` (block_size, d), ``blocks.<i>.*``,
    ``ln_f.*`` and ``lm_head.weight`` (the same tensor as ``wte.weight``). ``targets`` holds the next
    token of every position, or -100 where the loss skips it; the loss is the mean cross-entropy.
    """

    def make_case(gen: torch.Generator) -> Case:
        H, D, L = randint(gen, 1, 3), randint(gen, 1, 4), randint(gen, 1, 3)
        d, V, block_size = H * D, randint(gen, 3, 20), randint(gen, 4, 10)
        B, T = randint(gen, 1, 3), randint(gen, 1, block_size + 1)
        params = {"wte.weight": torch.randn(V, d, generator=gen),
                  "wpe.table.weight": torch.randn(block_size, d, generator=gen)}
        for i in range(L):
            params.update({f"blocks.{i}.{k}": v for k, v in _random_block_params(gen, d).items()})
        params["ln_f.weight"] = 1 + 0.3 * torch.randn(d, generator=gen)
        params["ln_f.bias"] = 0.3 * torch.randn(d, generator=gen)
        # float64: LayerNorm over as few as 2 features magnifies float32 rounding past the tolerance
        params = {name: t.double() for name, t in params.items()}
        params["lm_head.weight"] = params["wte.weight"]
        idx = torch.randint(0, V, (B, T), generator=gen)
        targets = torch.randint(0, V, (B, T), generator=gen)
        targets[torch.rand(B, T, generator=gen) < 0.2] = IGNORE_INDEX
        targets.view(-1)[0] = 0  # never all ignored
        return params, idx, targets, H

    return check(
        fn, reference_gpt_forward, make_case,
        hint="x = wte[idx] + wpe[:T]; run every block (blocks.0. ..., blocks.1. ..., with your my_block "
        "on the entries of params that start with the block's prefix, the prefix cut off); "
        "x = layer_norm(x, ln_f); logits = x @ wte.weight.T; loss = F.cross_entropy(logits.flatten(0, 1), "
        "targets.flatten(), ignore_index=-100). The targets are already the next tokens: do not shift them.",
        mistakes=(
            Mistake("the position embeddings are missing: add wpe.table.weight[:T] to the token embeddings",
                    lambda p, i, t, h: _gpt_forward(p, i, t, h, positions=False)),
            Mistake("the final LayerNorm (ln_f) is missing: the stream is normalised once more after the last "
                    "block, before the output layer", lambda p, i, t, h: _gpt_forward(p, i, t, h, final_norm=False)),
            Mistake("you shifted the targets again; they are already the next token of each position, so "
                    "compare logits[:, t] with targets[:, t]", lambda p, i, t, h: _gpt_forward(p, i, t, h, shift=True)),
        ),
        parts=("logits", "loss"),
        prepare=_loss_as_number,
        trials=4,
        rtol=1e-4,
        atol=1e-4,
        **options,
    )


def reference_param_count(vocab_size: int, block_size: int, n_layer: int, n_embd: int) -> int:
    return count_params(GPTConfig(vocab_size=vocab_size, block_size=block_size, n_layer=n_layer, n_head=1, n_embd=n_embd))


def check_param_count(fn: Callable[[int, int, int, int], int], **options) -> Result:
    """``fn(vocab_size, block_size, n_layer, n_embd) -> int``: parameters of a GPT-2 shaped GPT.

    GPT-2's choices: learned positions, LayerNorm with bias, biases in every linear layer, a GELU MLP
    of width 4 * n_embd, the output head tied to the token embedding.
    """

    def make_case(gen: torch.Generator) -> Case:
        return randint(gen, 2, 60000), randint(gen, 1, 2048), randint(gen, 1, 48), 8 * randint(gen, 1, 200)

    def formula(V, T, L, d, *, head=0, linear_bias=13, norm=2, final=True):
        per_block = 12 * d * d + (linear_bias - 4 + 2 * norm) * d
        return V * d + T * d + L * per_block + (norm * d if final else 0) + head * V * d

    return check(
        fn, reference_param_count, make_case,
        hint="per block: attention 4 d^2 + 4 d (q, k, v, out with biases), MLP 8 d^2 + 5 d, two LayerNorms "
        "2 * 2d; then token table V d, position table block_size d, the final LayerNorm 2d, and no extra "
        "head (tied to the token table).",
        edge_cases=((50257, 1024, 12, 768), (10, 4, 1, 8)),  # GPT-2 small: 124,439,808
        mistakes=(
            Mistake("you counted a separate output layer (V d); it is tied to the token table and shares "
                    "its weights", lambda V, T, L, d: formula(V, T, L, d, head=1)),
            Mistake("you left out the biases of the linear layers (q, k, v, out: 4 d; the MLP: 4d + d "
                    "per block)", lambda V, T, L, d: formula(V, T, L, d, linear_bias=4)),
            Mistake("your LayerNorms have only a gain; GPT-2's also have a shift (2 d each)",
                    lambda V, T, L, d: formula(V, T, L, d, norm=1)),
            Mistake("you left out the final LayerNorm after the last block (2 d)",
                    lambda V, T, L, d: formula(V, T, L, d, final=False)),
        ),
        **options,
    )


def reference_kv_cache_step(q: torch.Tensor, k_new: torch.Tensor, v_new: torch.Tensor,
                            k_cache: torch.Tensor, v_cache: torch.Tensor) -> torch.Tensor:
    cache = KVCache()
    cache.update(k_cache, v_cache)
    k, v = cache.update(k_new, v_new)
    return scaled_dot_product_attention(q, k, v)


def check_kv_cache_step(fn: Callable[..., torch.Tensor], **options) -> Result:
    """``fn(q, k_new, v_new, k_cache, v_cache) -> out``: one decoding step with a KV cache.

    q, k_new, v_new are (B, H, 1, D) for the newest token; k_cache, v_cache (B, H, S, D) hold the
    S earlier tokens. The output (B, H, 1, D) is the new token's attention over all S + 1 tokens.
    """

    def make_case(gen: torch.Generator) -> Case:
        B, H, S, D = randint(gen, 1, 3), randint(gen, 1, 4), randint(gen, 1, 12), 2 * randint(gen, 1, 8)
        new = [torch.randn(B, H, 1, D, generator=gen) for _ in range(3)]
        return (*new, torch.randn(B, H, S, D, generator=gen), torch.randn(B, H, S, D, generator=gen))

    def small(gen_seed: int, S: int, D: int) -> Case:
        gen = torch.Generator().manual_seed(gen_seed)
        return (*(torch.randn(1, 1, 1, D, generator=gen) * 2 for _ in range(3)),
                torch.randn(1, 1, S, D, generator=gen) * 2, torch.randn(1, 1, S, D, generator=gen))

    def attend(q, k, v, scale=None):
        return scaled_dot_product_attention(q, k, v, scale=scale)

    return check(
        fn, reference_kv_cache_step, make_case,
        hint="append the new key and value to the cache along the sequence axis (dim=-2) first, then "
        "attend: softmax(q k^T / sqrt(D)) v. No causal mask is needed: the newest token may see every key.",
        edge_cases=(small(1, 2, 4), small(2, 1, 2)),
        mistakes=(
            Mistake("you attended only to the newest token; append k_new and v_new to the cache "
                    "(torch.cat along dim=-2) and attend over all S + 1 positions",
                    lambda q, kn, vn, kc, vc: attend(q, kn, vn)),
            Mistake("you attended only to the cache; the newest token may also see itself, so append "
                    "k_new and v_new first", lambda q, kn, vn, kc, vc: attend(q, kc, vc)),
            Mistake(MISSING_SCALE, lambda q, kn, vn, kc, vc: attend(q, torch.cat([kc, kn], -2),
                                                                    torch.cat([vc, vn], -2), scale=1.0)),
        ),
        rtol=1e-4,
        atol=1e-5,
        **options,
    )


def reference_sample(model: torch.nn.Module, idx: torch.Tensor, steps: int, temperature: float = 1.0,
                     top_k: int | None = None, top_p: float | None = None,
                     generator: torch.Generator | None = None) -> torch.Tensor:
    return generate(model, idx, steps, temperature=temperature, top_k=top_k, top_p=top_p,
                    use_cache=False, generator=generator)


def _sample(model, idx, steps, temperature=1.0, top_k=None, top_p=None, generator=None, *,
            crop=True, tempered="divide", order="temperature first", k_extra=0, p_rule="before", greedy=False):
    """The sampling loop written out, with switches for the usual slips."""
    block_size = model.config.block_size
    with torch.no_grad():
        for _ in range(steps):
            context = idx[:, -block_size:] if crop else idx
            logits = model(context)[0][:, -1, :].float()
            if order == "temperature first":
                logits = logits / temperature if tempered == "divide" else logits * temperature
            if top_k is not None:
                logits = top_k_filter(logits, top_k + k_extra)
            if top_p is not None:
                ranked, where = torch.sort(logits, dim=-1, descending=True)
                probs = torch.softmax(ranked, dim=-1)
                mass = probs.cumsum(-1) - (probs if p_rule == "before" else 0)
                drop = torch.zeros_like(mass, dtype=torch.bool).scatter(-1, where, mass >= top_p)
                logits = logits.masked_fill(drop, float("-inf"))
            if order != "temperature first":
                logits = logits / temperature
            probs = torch.softmax(logits, dim=-1)
            if greedy:
                nxt = probs.argmax(-1, keepdim=True)
            else:
                nxt = torch.multinomial(probs, 1, generator=generator)
            idx = torch.cat([idx, nxt], dim=1)
    return idx


def check_sample(fn: Callable[..., torch.Tensor], **options) -> Result:
    """``fn(model, idx (B, T), steps, temperature, top_k, top_p, generator) -> (B, T + steps)`` ids.

    The sampling loop of ``lmlib.generate.generate``, without a cache: at every step run the model
    on the last ``block_size`` tokens, take the last position's logits (B, V), divide by the
    temperature, keep the top_k (if not None), then the top_p nucleus (if not None), softmax, and
    draw with ONE call ``torch.multinomial(probs, 1, generator=generator)`` for the whole batch.
    Both sides get generators in the same state, so the same rule draws the same tokens.
    """

    def make_case(gen: torch.Generator) -> Case:
        V, block_size = randint(gen, 5, 30), randint(gen, 3, 9)
        config = GPTConfig(vocab_size=V, block_size=block_size, n_layer=1, n_head=2, n_embd=8, fast=False)
        model = GPT(config).eval()
        with torch.no_grad():  # peaked distributions, so that the filters matter
            for p in model.parameters():
                p.copy_(torch.randn(p.shape, generator=gen) * (1.5 if p.dim() == 2 else 0.3))
        idx = torch.randint(0, V, (randint(gen, 1, 3), randint(gen, 1, block_size + 1)), generator=gen)
        temperature = (0.5, 1.0, 1.7)[randint(gen, 0, 3)]
        top_k = (None, randint(gen, 1, V + 2))[randint(gen, 0, 2)]
        top_p = (None, 0.5, 0.8, 0.95)[randint(gen, 0, 4)]
        seed = randint(gen, 0, 2**31 - 1)
        return model, idx, randint(gen, 1, block_size + 3), temperature, top_k, top_p, torch.Generator().manual_seed(seed)

    def with_(**slip):
        return lambda *args: _sample(*args, **slip)

    gen = torch.Generator().manual_seed(7)
    model, idx, _, _, _, _, generator = make_case(gen)
    long = model.config.block_size + 2  # longer than the context: the loop must crop
    edge = (model, idx, long, 1.0, None, None, generator)
    return check(
        fn, reference_sample, make_case,
        hint="for each step: logits = model(idx[:, -block_size:])[0][:, -1, :]; logits = logits / temperature; "
        "then top_k and top_p filters (set the others to -inf; top-p keeps a token while the probability "
        "of the tokens ranked above it is still below p); probs = softmax(logits, -1); "
        "nxt = torch.multinomial(probs, 1, generator=generator); idx = torch.cat([idx, nxt], dim=1).",
        edge_cases=(edge, edge[:3] + (0.7, 3, 0.8, generator)),
        mistakes=(
            Mistake("top-p keeps one token too few: keep a token while the probability of the tokens ranked "
                    "ABOVE it is below p (cumsum - probs < p), so the token that crosses p stays",
                    with_(p_rule="after")),
            Mistake("top-k kept one token too many", with_(k_extra=1)),
            Mistake("the temperature was applied after the filters: divide by the temperature first, then "
                    "filter, as lmlib.generate does (top-p's nucleus depends on the temperature)",
                    with_(order="filters first")),
            Mistake("you multiplied the logits by the temperature; divide by it (a temperature below 1 sharpens)",
                    with_(tempered="multiply")),
            Mistake("you took the argmax; the loop should sample: torch.multinomial(probs, 1, generator=generator)",
                    with_(greedy=True)),
        ),
        trials=4,
        **options,
    )
