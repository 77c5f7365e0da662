"""The speedrun options of lmlib.model (chapter 4): ReLU², QK-norm, zero-initialised projections and
logit soft-capping, each against a hand-written forward pass; counts, validation and old checkpoints."""
import math

import pytest
import torch
import torch.nn.functional as F

from lmlib import checkpoint
from lmlib.attention import MultiHeadAttention
from lmlib.model import GPT, MLP, GPTConfig, count_params
from lmlib.train import muon_groups


def tiny(**kw) -> GPTConfig:
    base = dict(vocab_size=37, block_size=16, n_layer=2, n_head=4, n_embd=32)
    base.update(kw)
    return GPTConfig(**base)


def test_relu2_mlp_is_the_square_of_relu():
    torch.manual_seed(0)
    mlp = MLP(8, 32, activation="relu2")
    x = torch.randn(2, 5, 8)
    hidden = x @ mlp.fc.weight.T + mlp.fc.bias
    expected = torch.where(hidden > 0, hidden * hidden, torch.zeros_like(hidden)) @ mlp.proj.weight.T + mlp.proj.bias
    torch.testing.assert_close(mlp(x), expected)
    with pytest.raises(ValueError, match="relu3"):
        MLP(8, 32, activation="relu3")


@pytest.mark.parametrize("fast", [False, True])
def test_qk_norm_attention_by_hand(fast):
    torch.manual_seed(0)
    d, H, T = 16, 2, 5
    mha = MultiHeadAttention(d, H, causal=True, fast=fast, qk_norm=True)
    with torch.no_grad():
        mha.q_norm.weight.uniform_(0.5, 2.0)
        mha.k_norm.weight.uniform_(0.5, 2.0)
    x = torch.randn(3, T, d)

    def heads(t):
        return t.view(3, T, H, d // H).transpose(1, 2)

    def rms(t, gain):
        return t / torch.sqrt(t.pow(2).mean(-1, keepdim=True) + 1e-6) * gain

    q = rms(heads(mha.q_proj(x)), mha.q_norm.weight)
    k = rms(heads(mha.k_proj(x)), mha.k_norm.weight)
    v = heads(mha.v_proj(x))
    scores = q @ k.transpose(-1, -2) / math.sqrt(d // H)
    scores = scores.masked_fill(torch.ones(T, T, dtype=torch.bool).triu(1), float("-inf"))
    out = (scores.softmax(-1) @ v).transpose(1, 2).reshape(3, T, d)
    torch.testing.assert_close(mha(x), mha.out_proj(out), rtol=1e-5, atol=1e-5)


def test_qk_norm_bounds_the_scores_whatever_the_projection_scale():
    torch.manual_seed(0)
    mha = MultiHeadAttention(16, 2, causal=True, qk_norm=True, bias=False)
    x = torch.randn(1, 6, 16)
    _, small = mha(x, return_weights=True)
    with torch.no_grad():
        mha.q_proj.weight.mul_(100)
        mha.k_proj.weight.mul_(100)
    _, large = mha(x, return_weights=True)
    torch.testing.assert_close(small, large, rtol=1e-4, atol=1e-5)  # without the norm they would saturate


def test_qk_norm_model_with_cache_matches_full_forward():
    torch.manual_seed(0)
    model = GPT(tiny(qk_norm=True, pos="rope")).eval()
    idx = torch.randint(0, 37, (1, 9))
    full, _ = model(idx)
    cache = model.new_cache()
    steps = [model(idx[:, i:i + 1], cache=cache)[0] for i in range(9)]
    torch.testing.assert_close(torch.cat(steps, 1), full, rtol=1e-5, atol=1e-5)


def test_zero_init_makes_every_block_the_identity_and_the_untied_head_uniform():
    torch.manual_seed(0)
    model = GPT(tiny(zero_init=True, tie_weights=False, dropout=0.0))
    idx = torch.randint(0, 37, (2, 8))
    x = model.wpe(model.wte(idx), 0)
    torch.testing.assert_close(model.hidden_states(idx), model.ln_f(x))
    logits, loss = model(idx, idx)
    assert torch.count_nonzero(logits) == 0
    assert loss.item() == pytest.approx(math.log(37), rel=1e-6)
    assert torch.count_nonzero(model.blocks[0].attn.out_proj.weight) == 0
    assert torch.count_nonzero(model.blocks[1].mlp.proj.weight) == 0
    assert torch.count_nonzero(model.blocks[0].attn.q_proj.weight) > 0  # only the writing projections
    tied = GPT(tiny(zero_init=True))
    assert tied.lm_head.weight is tied.wte.weight and torch.count_nonzero(tied.wte.weight) > 0


def test_zero_init_blocks_still_learn():
    torch.manual_seed(0)
    model = GPT(tiny(zero_init=True))
    idx = torch.randint(0, 37, (4, 12))
    model(idx, idx)[1].backward()
    # the zero projections get gradients from the first step; the matrices behind them get theirs a step later
    assert model.blocks[0].attn.out_proj.weight.grad.abs().sum() > 0
    assert model.blocks[0].mlp.proj.weight.grad.abs().sum() > 0


def test_logit_softcap_squashes_the_logits_by_tanh():
    torch.manual_seed(0)
    plain = GPT(tiny())
    capped = GPT(tiny(logit_softcap=2.0))
    capped.load_state_dict(plain.state_dict())
    with torch.no_grad():
        plain.wte.weight.mul_(30)  # large logits, so the cap matters
        capped.wte.weight.mul_(30)
    idx = torch.randint(0, 37, (2, 8))
    raw, _ = plain(idx)
    logits, loss = capped(idx, idx)
    torch.testing.assert_close(logits, 2.0 * torch.tanh(raw / 2.0))
    assert logits.abs().max() <= 2.0 < raw.abs().max()
    torch.testing.assert_close(loss, F.cross_entropy(logits.flatten(0, 1), idx.flatten()))


@pytest.mark.parametrize("options", [dict(qk_norm=True), dict(mlp="relu2"), dict(mlp="relu2", bias=False),
                                     dict(qk_norm=True, n_kv_heads=2, norm="rms", bias=False, tie_weights=False)])
def test_counts_with_the_options(options):
    config = tiny(**options)
    assert count_params(config) == GPT(config).num_params()


def test_invalid_options_are_named():
    with pytest.raises(ValueError, match="logit_softcap"):
        tiny(logit_softcap=0.0)
    with pytest.raises(ValueError, match="mlp"):
        tiny(mlp="relu3")
    with pytest.raises(ValueError, match="qk_norm"):
        tiny(qk_norm="yes")


def test_qk_norm_gains_go_to_adamw_under_muon():
    model = GPT(tiny(qk_norm=True))
    groups = muon_groups(model, weight_decay=0.1, lr=1e-3, muon_lr=0.02)
    muon = {id(p) for g in groups if g.get("algorithm") != "adamw" for p in g["params"]}
    gains = [p for n, p in model.named_parameters() if n.endswith(("q_norm.weight", "k_norm.weight"))]
    assert gains and all(id(p) not in muon for p in gains)


def test_a_checkpoint_written_before_the_options_existed_still_loads(tmp_path):
    model = GPT(tiny())
    saved = checkpoint.model_config(model)
    for name in ("qk_norm", "zero_init", "logit_softcap"):
        del saved["fields"][name]  # what an older course release wrote
    checkpoint.check_model_config(saved, model)
    with pytest.raises(checkpoint.CheckpointError, match="qk_norm"):
        checkpoint.check_model_config(saved, GPT(tiny(qk_norm=True)))
