"""lmlib.model (chapter 3): norms, blocks, the GPT against Hugging Face's GPT-2, counts, errors."""
import math

import pytest
import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from lmlib.model import GPT, MLP, Block, GPTConfig, LayerNorm, RMSNorm, SwiGLU, count_params
from lmlib.pretrained import config_from_hf, gpt_from_hf_state_dict


def tiny(**kw) -> GPTConfig:
    base = dict(vocab_size=37, block_size=16, n_layer=2, n_head=4, n_embd=32)
    base.update(kw)
    return GPTConfig(**base)


def test_layernorm_matches_torch():
    x = torch.randn(3, 5, 16)
    ln = LayerNorm(16)
    with torch.no_grad():
        ln.weight.uniform_(0.5, 1.5)
        ln.bias.normal_()
    ref = F.layer_norm(x, (16,), ln.weight, ln.bias, 1e-5)
    torch.testing.assert_close(ln(x), ref)
    assert LayerNorm(16, bias=False).bias is None


def test_rmsnorm_matches_torch():
    x = torch.randn(3, 5, 16)
    ours, ref = RMSNorm(16, eps=1e-5), torch.nn.RMSNorm(16, eps=1e-5)
    with torch.no_grad():
        ours.weight.uniform_(0.5, 1.5)
        ref.weight.copy_(ours.weight)
    torch.testing.assert_close(ours(x), ref(x))


def test_mlp_and_swiglu_shapes_and_formula():
    x = torch.randn(2, 3, 8)
    mlp = MLP(8, 32)
    torch.testing.assert_close(mlp(x), mlp.proj(F.gelu(mlp.fc(x), approximate="tanh")))
    sw = SwiGLU(8, 24)
    torch.testing.assert_close(sw(x), sw.proj(F.silu(sw.gate(x)) * sw.up(x)))


def hf_tiny():
    transformers = pytest.importorskip("transformers")
    cfg = transformers.GPT2Config(vocab_size=50, n_positions=24, n_embd=32, n_layer=2, n_head=4,
                                  resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    torch.manual_seed(0)
    hf = transformers.GPT2LMHeadModel(cfg).eval()
    with torch.no_grad():  # random biases and norm gains too, so a mis-copied one shows
        for name, p in hf.named_parameters():
            if name.endswith("bias") or "ln_" in name:
                p.normal_(0.0, 0.1).add_(1.0 if "ln_" in name and name.endswith("weight") else 0.0)
    return cfg, hf


def test_gpt_equals_hugging_face_gpt2():
    cfg, hf = hf_tiny()
    model = gpt_from_hf_state_dict(hf.state_dict(), config_from_hf(cfg))
    idx = torch.randint(0, cfg.vocab_size, (3, 20), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref = hf(idx).logits
        ours, loss = model(idx)
    assert loss is None
    torch.testing.assert_close(ours, ref, rtol=1e-4, atol=1e-4)
    # also the loss: HF shifts inside, we take targets already shifted
    with torch.no_grad():
        ref_loss = hf(idx, labels=idx).loss
        _, our_loss = model(idx[:, :-1], targets=idx[:, 1:])
    torch.testing.assert_close(our_loss, ref_loss, rtol=1e-4, atol=1e-4)
    assert model.num_params() == sum(p.numel() for p in hf.parameters())


def test_hf_conversion_rejects_bad_input():
    cfg, hf = hf_tiny()
    sd = hf.state_dict()
    with pytest.raises(ValueError, match="config does not match"):
        gpt_from_hf_state_dict(sd, GPTConfig(vocab_size=50, block_size=24, n_layer=2, n_head=4, n_embd=64))
    del sd["transformer.h.1.mlp.c_fc.weight"]
    with pytest.raises(KeyError, match="lacks"):
        gpt_from_hf_state_dict(sd, config_from_hf(cfg))
    with pytest.raises(ValueError, match="GPT-2 shaped"):
        gpt_from_hf_state_dict(hf.state_dict(), tiny(norm="rms"))


@pytest.mark.parametrize("kw", [dict(), dict(pos="rope", norm="rms", mlp="swiglu", bias=False),
                                dict(n_kv_heads=2, prenorm=False), dict(tie_weights=False)])
def test_fast_and_explicit_attention_agree(kw):
    torch.manual_seed(0)
    fast = GPT(tiny(fast=True, **kw)).eval()
    slow = GPT(tiny(fast=False, **kw)).eval()
    slow.load_state_dict(fast.state_dict())
    idx = torch.randint(0, 37, (2, 16))
    with torch.no_grad():
        torch.testing.assert_close(fast(idx)[0], slow(idx)[0], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kw", [dict(), dict(pos="rope", norm="rms", mlp="swiglu", n_kv_heads=1)])
def test_kv_cache_equals_full_forward(kw):
    torch.manual_seed(0)
    model = GPT(tiny(**kw)).eval()
    idx = torch.randint(0, 37, (2, 12))
    with torch.no_grad():
        full, _ = model(idx)
        cache = model.new_cache()
        first, _ = model(idx[:, :5], cache=cache)  # a prompt, then one token at a time
        steps = [first] + [model(idx[:, t:t + 1], cache=cache)[0] for t in range(5, 12)]
    torch.testing.assert_close(torch.cat(steps, dim=1), full, rtol=1e-5, atol=1e-5)
    assert cache[0].length == 12


def test_causality_future_tokens_do_not_change_the_past():
    torch.manual_seed(0)
    model = GPT(tiny()).eval()
    a = torch.randint(0, 37, (1, 10))
    b = a.clone()
    b[0, 6:] = (b[0, 6:] + 1) % 37
    with torch.no_grad():
        torch.testing.assert_close(model(a)[0][:, :6], model(b)[0][:, :6])


@pytest.mark.parametrize("kw", [dict(), dict(tie_weights=False), dict(bias=False, norm="rms"),
                                dict(mlp="swiglu", pos="rope"), dict(n_kv_heads=2), dict(mlp="swiglu", bias=True),
                                dict(mlp="swiglu", mlp_hidden_dim=43, bias=False, norm="rms"),
                                dict(mlp_hidden_dim=50)])
def test_param_count_formula_matches_module(kw):
    config = tiny(**kw)
    model = GPT(config)
    assert count_params(config) == model.num_params() == sum(p.numel() for p in model.parameters())
    assert count_params(config, non_embedding=True) == model.num_params(non_embedding=True)
    if config.tie_weights:
        assert model.lm_head.weight is model.wte.weight


@pytest.mark.parametrize("kw", [dict(fast=False), dict(fast=False, mlp="swiglu", n_kv_heads=2, tie_weights=False)])
def test_flops_per_token_matches_flop_counter(kw):
    config = tiny(**kw)
    model = GPT(config).eval()
    T = config.block_size
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(torch.zeros(1, T, dtype=torch.long))
    assert counter.get_total_flops() == model.flops_per_token(backward=False) * T
    assert model.flops_per_token() == 3 * model.flops_per_token(backward=False)


def test_init_scales_residual_projections():
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=100, block_size=8, n_layer=8, n_head=4, n_embd=256))
    std_out = model.blocks[0].attn.out_proj.weight.std().item()
    std_q = model.blocks[0].attn.q_proj.weight.std().item()
    assert abs(std_q - 0.02) < 0.002
    assert abs(std_out - 0.02 / 4) < 0.001
    assert model.blocks[0].attn.q_proj.bias.abs().max() == 0


def test_loss_and_backward():
    torch.manual_seed(0)
    model = GPT(tiny(dropout=0.1))
    idx = torch.randint(0, 37, (2, 16))
    logits, loss = model(idx, targets=idx)
    assert logits.shape == (2, 16, 37)
    torch.testing.assert_close(loss, F.cross_entropy(logits.reshape(-1, 37), idx.reshape(-1)))
    loss.backward()
    assert all(p.grad is not None for p in model.parameters())
    assert abs(loss.item() - torch.log(torch.tensor(37.0)).item()) < 0.5  # near uniform at init


def test_cross_attention_block():
    config = tiny()
    block = Block(config, cross_attention=True)
    x, ctx = torch.randn(2, 5, 32), torch.randn(2, 7, 32)
    assert block(x, context=ctx).shape == (2, 5, 32)
    with pytest.raises(ValueError, match="context"):
        block(x)


@pytest.mark.parametrize("kw, match", [
    (dict(n_embd=30, n_head=4), "not divisible by n_head"),
    (dict(n_kv_heads=3), "multiple of n_kv_heads"),
    (dict(norm="batch"), "norm must be one of"),
    (dict(mlp="relu"), "mlp must be one of"),
    (dict(pos="sinusoid"), "pos must be one of"),
    (dict(dropout=1.0), "dropout"),
    (dict(vocab_size=0), "vocab_size"),
    (dict(n_embd=20, n_head=4, pos="rope"), "even head_dim"),
    (dict(mlp_hidden_dim=0), "mlp_hidden_dim"),
    (dict(mlp_hidden_dim=12.5), "mlp_hidden_dim"),
])
def test_config_errors(kw, match):
    with pytest.raises(ValueError, match=match):
        tiny(**kw)


def test_input_errors_before_compute():
    model = GPT(tiny())
    with pytest.raises(ValueError, match="longer than the context"):
        model(torch.zeros(1, 17, dtype=torch.long))
    with pytest.raises(ValueError, match=r"token ids must be in \[0, 37\)"):
        model(torch.tensor([[1, 2, 37]]))
    with pytest.raises(ValueError, match=r"token ids must be in"):
        model(torch.tensor([[-1, 2]]))
    with pytest.raises(ValueError, match="batch axis"):
        model(torch.tensor([1, 2, 3]))
    with pytest.raises(TypeError, match="integer token ids"):
        model(torch.zeros(1, 3))
    with pytest.raises(ValueError, match="targets must have the shape"):
        model(torch.zeros(1, 3, dtype=torch.long), targets=torch.zeros(1, 2, dtype=torch.long))
    cache = model.new_cache()
    model(torch.zeros(1, 10, dtype=torch.long), cache=cache)
    with pytest.raises(ValueError, match="cache 10"):
        model(torch.zeros(1, 7, dtype=torch.long), cache=cache)


def test_mlp_hidden_dim_overrides_the_width_rule():
    assert tiny(mlp="swiglu").mlp_hidden == 8 * math.ceil(8 * tiny().n_embd / 3 / 8)
    config = tiny(mlp="swiglu", mlp_hidden_dim=43)
    assert config.mlp_hidden == 43
    assert GPT(config).blocks[0].mlp.gate.weight.shape == (43, config.n_embd)


def test_grow_vocab_keeps_old_logits_and_starts_new_rows_at_the_mean():
    torch.manual_seed(0)
    for tie in (True, False):
        model = GPT(GPTConfig(vocab_size=50, block_size=8, n_layer=1, n_embd=16, n_head=2, tie_weights=tie)).eval()
        ids = torch.randint(0, 50, (2, 8))
        before = model(ids)[0]
        model.grow_vocab(53)
        after = model(ids)[0]
        assert after.shape == (2, 8, 53) and model.config.vocab_size == 53
        torch.testing.assert_close(after[..., :50], before)
        torch.testing.assert_close(model.wte.weight[50], model.wte.weight[:50].mean(0))
        assert (model.lm_head.weight is model.wte.weight) == tie
        model(torch.tensor([[52]]))  # the new ids are accepted
        assert model.wte.weight.grad is None and model.wte.weight.requires_grad
    with pytest.raises(ValueError, match="at least the current 53"):
        model.grow_vocab(10)
