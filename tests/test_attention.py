"""lmlib.attention pinned against PyTorch's own attention on random shapes (chapter 2)."""
import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from lmlib import attention as A


def _qkv(B, H, Tq, Tk, D, Dv=None, dtype=torch.float32, seed=0, Hkv=None):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(B, H, Tq, D, generator=g, dtype=dtype)
    k = torch.randn(B, Hkv or H, Tk, D, generator=g, dtype=dtype)
    v = torch.randn(B, Hkv or H, Tk, Dv or D, generator=g, dtype=dtype)
    return q, k, v


# --- softmax ---------------------------------------------------------------------------------------

def test_softmax_matches_torch_and_is_stable():
    x = torch.randn(4, 7, 9, dtype=torch.float64) * 10
    torch.testing.assert_close(A.softmax(x), torch.softmax(x, -1))
    torch.testing.assert_close(A.softmax(x, dim=1), torch.softmax(x, 1))
    big = torch.tensor([1000.0, 999.0, -1000.0])
    assert torch.isfinite(A.softmax(big)).all()
    torch.testing.assert_close(A.softmax(big), torch.softmax(big, -1))
    assert torch.isnan(big.exp() / big.exp().sum()).any()  # the naive formula overflows


def test_softmax_of_fully_masked_row_is_zero_not_nan():
    x = torch.tensor([[float("-inf")] * 3, [0.0, float("-inf"), 1.0]])
    out = A.softmax(x)
    assert not torch.isnan(out).any()
    torch.testing.assert_close(out[0], torch.zeros(3))
    torch.testing.assert_close(out[1].sum(), torch.tensor(1.0))


def test_two_token_worked_example():
    # the chapter's example: softmax([1, 0]) = (0.7311, 0.2689), not (0.6667, 0.3333)
    w = A.softmax(torch.tensor([1.0, 0.0], dtype=torch.float64))
    torch.testing.assert_close(w, torch.tensor([math.e / (math.e + 1), 1 / (math.e + 1)], dtype=torch.float64))
    assert abs(w[0].item() - 0.7311) < 1e-4


# --- scaled dot-product attention -------------------------------------------------------------------

@settings(max_examples=40, deadline=None)
@given(
    B=st.integers(1, 3), H=st.integers(1, 4), Tq=st.integers(1, 13), Tk=st.integers(1, 13),
    D=st.integers(1, 9), Dv=st.integers(1, 9), seed=st.integers(0, 10_000),
)
def test_sdpa_matches_torch_on_random_shapes(B, H, Tq, Tk, D, Dv, seed):
    q, k, v = _qkv(B, H, Tq, Tk, D, Dv, seed=seed)
    torch.testing.assert_close(A.scaled_dot_product_attention(q, k, v), F.scaled_dot_product_attention(q, k, v))
    mask = torch.rand(B, 1, Tq, Tk, generator=torch.Generator().manual_seed(seed)) > 0.3
    torch.testing.assert_close(
        A.scaled_dot_product_attention(q, k, v, mask=mask), F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    )


@pytest.mark.parametrize("T", [1, 2, 7, 16, 33])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_causal_matches_torch(T, dtype):
    q, k, v = _qkv(2, 3, T, T, 8, dtype=dtype, seed=T)
    ours = A.scaled_dot_product_attention(q, k, v, is_causal=True)
    torch.testing.assert_close(ours, F.scaled_dot_product_attention(q, k, v, is_causal=True))
    assert ours.dtype == dtype


def test_causal_with_more_keys_is_bottom_right_aligned():
    q, k, v = _qkv(1, 2, 3, 8, 4)
    # the last 3 queries of an 8-token causal attention
    full_q = torch.cat([torch.randn(1, 2, 5, 4), q], dim=2)
    full = A.scaled_dot_product_attention(full_q, k, v, is_causal=True)
    torch.testing.assert_close(A.scaled_dot_product_attention(q, k, v, is_causal=True), full[:, :, 5:])
    torch.testing.assert_close(
        A.scaled_dot_product_attention(q, k, v, is_causal=True),
        F.scaled_dot_product_attention(q, k, v, attn_mask=A.causal_mask(3, 8)),
    )


def test_fully_masked_rows_give_zero_output_like_torch():
    q, k, v = _qkv(2, 2, 5, 6, 4)
    mask = torch.ones(2, 2, 5, 6, dtype=torch.bool)
    mask[0, 1, 2] = False
    mask[1, :, 4] = False
    out, w = A.scaled_dot_product_attention(q, k, v, mask=mask, return_weights=True)
    assert not torch.isnan(out).any() and not torch.isnan(w).any()
    torch.testing.assert_close(out[0, 1, 2], torch.zeros(4))
    torch.testing.assert_close(w[1, :, 4], torch.zeros(2, 6))
    torch.testing.assert_close(out, F.scaled_dot_product_attention(q, k, v, attn_mask=mask))
    # gradients through a fully masked row are finite too
    q.requires_grad_(True)
    A.scaled_dot_product_attention(q, k, v, mask=mask).sum().backward()
    assert torch.isfinite(q.grad).all()


def test_float_mask_and_scale_and_weights():
    q, k, v = _qkv(2, 2, 4, 5, 3, dtype=torch.float64)
    bias = torch.randn(4, 5, dtype=torch.float64)
    out, w = A.scaled_dot_product_attention(q, k, v, mask=bias, scale=0.3, return_weights=True)
    torch.testing.assert_close(out, F.scaled_dot_product_attention(q, k, v, attn_mask=bias, scale=0.3))
    torch.testing.assert_close(w.sum(-1), torch.ones(2, 2, 4, dtype=torch.float64))


def test_gqa_matches_torch():
    q, k, v = _qkv(2, 6, 5, 5, 4, Hkv=2)
    ours = A.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
    torch.testing.assert_close(ours, F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True))


def test_dropout_only_when_asked():
    q, k, v = _qkv(1, 1, 6, 6, 4)
    torch.manual_seed(0)
    _, w = A.scaled_dot_product_attention(q, k, v, dropout_p=0.5, return_weights=True)
    assert (w == 0).any() and ((w == 0) | (w > 0)).all()
    a = A.scaled_dot_product_attention(q, k, v)
    torch.testing.assert_close(a, A.scaled_dot_product_attention(q, k, v))


def test_bad_inputs_raise_clear_errors():
    q, k, v = _qkv(1, 2, 3, 4, 5)
    with pytest.raises(ValueError, match="head dimension"):
        A.scaled_dot_product_attention(q, k[..., :4], v)
    with pytest.raises(ValueError, match="same number of positions"):
        A.scaled_dot_product_attention(q, k, v[..., :3, :])
    with pytest.raises(ValueError, match="does not broadcast"):
        A.scaled_dot_product_attention(q, k, v, mask=torch.ones(3, 3, dtype=torch.bool))
    with pytest.raises(ValueError, match="does not broadcast"):  # would broadcast the scores up: refused
        A.scaled_dot_product_attention(q, k, v, mask=torch.ones(5, 2, 3, 4, dtype=torch.bool))
    with pytest.raises(TypeError, match="bool"):
        A.scaled_dot_product_attention(q, k, v, mask=torch.ones(3, 4, dtype=torch.long))
    with pytest.raises(ValueError, match="enable_gqa"):
        A.scaled_dot_product_attention(q, k[:, :1], v[:, :1])
    with pytest.raises(ValueError, match="multiple"):
        A.scaled_dot_product_attention(torch.randn(1, 3, 3, 5), k, v, enable_gqa=True)
    with pytest.raises(ValueError, match="dropout_p"):
        A.scaled_dot_product_attention(q, k, v, dropout_p=1.5)


# --- masks and heads ---------------------------------------------------------------------------------

def test_masks():
    assert torch.equal(A.causal_mask(3), torch.tensor([[1, 0, 0], [1, 1, 0], [1, 1, 1]], dtype=torch.bool))
    assert torch.equal(A.causal_mask(2, 4), torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1]], dtype=torch.bool))
    pm = A.padding_mask([2, 0, 3], 3)
    assert pm.shape == (3, 1, 1, 3)
    assert pm[:, 0, 0].tolist() == [[True, True, False], [False, False, False], [True, True, True]]
    with pytest.raises(ValueError):
        A.causal_mask(4, 2)
    with pytest.raises(ValueError, match="length"):
        A.padding_mask([4], 3)


def test_padding_mask_equals_running_each_sequence_alone():
    B, T, D = 3, 6, 4
    lengths = [6, 2, 4]
    q, k, v = _qkv(B, 2, T, T, D)
    out = A.scaled_dot_product_attention(q, k, v, mask=A.padding_mask(lengths, T))
    for b, n in enumerate(lengths):
        alone = A.scaled_dot_product_attention(q[b:b + 1], k[b:b + 1, :, :n], v[b:b + 1, :, :n])
        torch.testing.assert_close(out[b:b + 1], alone)


def test_split_merge_roundtrip_and_layout():
    x = torch.arange(2 * 3 * 12).float().view(2, 3, 12)
    h = A.split_heads(x, 4)
    assert h.shape == (2, 4, 3, 3)
    torch.testing.assert_close(h[1, 2, 0], x[1, 0, 6:9])  # head 2 = features 6..8
    torch.testing.assert_close(A.merge_heads(h), x)
    with pytest.raises(ValueError, match="divisible"):
        A.split_heads(x, 5)
    with pytest.raises(ValueError):
        A.merge_heads(x)


# --- MultiHeadAttention -------------------------------------------------------------------------------

def _copy_from_torch(ours: A.MultiHeadAttention, ref: torch.nn.MultiheadAttention) -> None:
    wq, wk, wv = ref.in_proj_weight.chunk(3)
    bq, bk, bv = ref.in_proj_bias.chunk(3)
    with torch.no_grad():
        for lin, w, b in ((ours.q_proj, wq, bq), (ours.k_proj, wk, bk), (ours.v_proj, wv, bv)):
            lin.weight.copy_(w)
            lin.bias.copy_(b)
        ours.out_proj.weight.copy_(ref.out_proj.weight)
        ours.out_proj.bias.copy_(ref.out_proj.bias)


@pytest.mark.parametrize("d_model,n_heads,T", [(8, 1, 5), (12, 3, 7), (16, 4, 1), (16, 8, 11)])
@pytest.mark.parametrize("causal", [False, True])
def test_mha_matches_torch_multiheadattention(d_model, n_heads, T, causal):
    torch.manual_seed(d_model + T)
    ref = torch.nn.MultiheadAttention(d_model, n_heads, batch_first=True).eval()
    ours = A.MultiHeadAttention(d_model, n_heads, causal=causal).eval()
    _copy_from_torch(ours, ref)
    x = torch.randn(2, T, d_model)
    attn_mask = ~A.causal_mask(T) if causal else None  # torch's bool mask is True = blocked
    expected, w_ref = ref(x, x, x, attn_mask=attn_mask, need_weights=True, average_attn_weights=False)
    got, w = ours(x, return_weights=True)
    torch.testing.assert_close(got, expected)
    torch.testing.assert_close(w, w_ref)
    ours.fast = True
    torch.testing.assert_close(ours(x), expected)


def test_mha_padding_and_cross_attention_match_torch():
    torch.manual_seed(1)
    ref = torch.nn.MultiheadAttention(12, 3, batch_first=True).eval()
    ours = A.MultiHeadAttention(12, 3).eval()
    _copy_from_torch(ours, ref)
    x, ctx = torch.randn(2, 4, 12), torch.randn(2, 6, 12)
    lengths = torch.tensor([6, 3])
    expected, _ = ref(x, ctx, ctx, key_padding_mask=~A.padding_mask(lengths, 6)[:, 0, 0])
    torch.testing.assert_close(ours(x, context=ctx, mask=A.padding_mask(lengths, 6)), expected)


@pytest.mark.parametrize("n_kv_heads", [1, 2, 4])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_fast_path_equals_explicit_path(n_kv_heads, dtype):
    torch.manual_seed(n_kv_heads)
    m = A.MultiHeadAttention(16, 4, n_kv_heads=n_kv_heads, causal=True, bias=False).to(dtype).eval()
    x = torch.randn(3, 9, 16, dtype=dtype)
    pad = A.padding_mask([9, 5, 1], 9)
    slow = m(x, mask=pad)
    m.fast = True
    torch.testing.assert_close(m(x, mask=pad), slow)
    assert m.k_proj.out_features == n_kv_heads * 4
    assert not torch.isnan(slow).any()


def test_gqa_with_one_kv_group_per_head_equals_mha():
    torch.manual_seed(0)
    gqa = A.MultiHeadAttention(16, 4, n_kv_heads=2).eval()
    mha = A.MultiHeadAttention(16, 4).eval()
    with torch.no_grad():
        for name in ("q_proj", "out_proj"):
            getattr(mha, name).load_state_dict(getattr(gqa, name).state_dict())
        # kv head g serves query heads 2g and 2g+1: duplicate its projection rows
        for name in ("k_proj", "v_proj"):
            src, dst = getattr(gqa, name), getattr(mha, name)
            dst.weight.copy_(src.weight.view(2, 1, 4, 16).expand(2, 2, 4, 16).reshape(16, 16))
            dst.bias.copy_(src.bias.view(2, 1, 4).expand(2, 2, 4).reshape(16))
    x = torch.randn(2, 5, 16)
    torch.testing.assert_close(gqa(x), mha(x))


@pytest.mark.parametrize("fast", [False, True])
@pytest.mark.parametrize("rope", [False, True])
def test_kv_cache_decoding_equals_full_pass(fast, rope):
    torch.manual_seed(2)
    pos_fn = A.RotaryEmbedding(4) if rope else None
    m = A.MultiHeadAttention(16, 4, n_kv_heads=2, causal=True, fast=fast, pos_fn=pos_fn).eval()
    x = torch.randn(2, 10, 16)
    full = m(x)
    cache = A.KVCache()
    parts = [m(x[:, :6], cache=cache)]  # prompt
    parts += [m(x[:, t: t + 1], cache=cache) for t in range(6, 8)]  # one token at a time
    parts.append(m(x[:, 8:], cache=cache))  # two at once (needs the bottom-right causal mask)
    torch.testing.assert_close(torch.cat(parts, dim=1), full)
    assert cache.length == 10 and cache.k.shape == (2, 2, 10, 4)


def test_mha_bad_configs_and_inputs():
    with pytest.raises(ValueError, match="divisible"):
        A.MultiHeadAttention(10, 3)
    with pytest.raises(ValueError, match="multiple"):
        A.MultiHeadAttention(12, 4, n_kv_heads=3)
    m = A.MultiHeadAttention(12, 4)
    with pytest.raises(ValueError, match="batch, seq, 12"):
        m(torch.randn(2, 5, 8))
    with pytest.raises(ValueError, match="does not broadcast"):
        m(torch.randn(2, 5, 12), mask=torch.ones(2, 1, 1, 4, dtype=torch.bool))
    with pytest.raises(ValueError, match="context"):
        m(torch.randn(2, 5, 12), context=torch.randn(2, 5, 8))


def test_kv_cache_bytes():
    # GPT-2 small-like: 12 layers, 12 heads of 64, 1024 positions, fp16: 2*12*12*64*1024*2 bytes
    assert A.kv_cache_bytes(12, 12, 64, 1024) == 2 * 12 * 12 * 64 * 1024 * 2
    assert A.kv_cache_bytes(12, 3, 64, 1024, dtype=torch.float32) == 2 * 12 * 3 * 64 * 1024 * 4


# --- positions -----------------------------------------------------------------------------------------

def test_sinusoidal_positions():
    pe = A.sinusoidal_positions(50, 16)
    assert pe.shape == (50, 16)
    torch.testing.assert_close(pe[0, 0::2], torch.zeros(8))
    torch.testing.assert_close(pe[0, 1::2], torch.ones(8))
    p, i = 7, 3
    torch.testing.assert_close(pe[p, 2 * i], torch.tensor(math.sin(p / 10000 ** (2 * i / 16))))
    torch.testing.assert_close(A.sinusoidal_positions(5, 16, offset=45), pe[45:])
    with pytest.raises(ValueError, match="even"):
        A.sinusoidal_positions(4, 7)


def test_learned_positions():
    lp = A.LearnedPositions(8, 4)
    x = torch.zeros(2, 5, 4)
    torch.testing.assert_close(lp(x)[1], lp.table.weight[:5])
    torch.testing.assert_close(lp(x[:, :2], offset=6)[0], lp.table.weight[6:])
    with pytest.raises(ValueError, match="exceed"):
        lp(x, offset=4)


def test_rope_relative_property_and_norms():
    rope = A.RotaryEmbedding(8).double()
    g = torch.Generator().manual_seed(0)
    q, k = torch.randn(8, generator=g, dtype=torch.float64), torch.randn(8, generator=g, dtype=torch.float64)
    dots = {}
    for m, n in [(3, 1), (10, 8), (52, 50), (5, 9), (104, 108)]:
        qm = rope.rotate(q.view(1, 1, 8), offset=m)[0, 0]
        kn = rope.rotate(k.view(1, 1, 8), offset=n)[0, 0]
        dots.setdefault(m - n, []).append((qm @ kn).item())
        torch.testing.assert_close(qm.norm(), q.norm())  # a rotation keeps lengths
    for values in dots.values():
        assert max(values) - min(values) < 1e-10
    x = torch.randn(2, 3, 6, 8, dtype=torch.float64)
    torch.testing.assert_close(rope.rotate(x)[:, :, 0], x[:, :, 0])  # position 0 is not rotated
    torch.testing.assert_close(rope.rotate(x, offset=2)[:, :, :4], rope.rotate(torch.cat([x[:, :, :2], x], 2))[:, :, 2:6])
    with pytest.raises(ValueError, match="even"):
        A.RotaryEmbedding(5)
    with pytest.raises(ValueError, match="head_dim"):
        rope.rotate(torch.randn(3, 6))


def test_rope_matches_the_complex_number_form():
    # pair (x_i, x_{i+D/2}) as a complex number, multiplied by e^{i p theta_i}
    D, T = 6, 5
    rope = A.RotaryEmbedding(D).double()
    x = torch.randn(T, D, dtype=torch.float64)
    z = torch.complex(x[:, : D // 2], x[:, D // 2:])
    theta = torch.arange(T, dtype=torch.float64)[:, None] * 10000 ** (-torch.arange(0, D, 2, dtype=torch.float64) / D)
    zr = z * torch.polar(torch.ones_like(theta), theta)
    torch.testing.assert_close(rope.rotate(x), torch.cat([zr.real, zr.imag], -1))


def test_attention_without_positions_is_permutation_equivariant():
    torch.manual_seed(3)
    m = A.MultiHeadAttention(12, 3).eval()
    x = torch.randn(1, 7, 12)
    perm = torch.randperm(7)
    torch.testing.assert_close(m(x[:, perm]), m(x)[:, perm])
    m.pos_fn = A.RotaryEmbedding(4)
    assert not torch.allclose(m(x[:, perm]), m(x)[:, perm], atol=1e-4)


# --- flash attention ---------------------------------------------------------------------------------

@settings(max_examples=40, deadline=None)
@given(
    B=st.integers(1, 2), H=st.integers(1, 3), Tq=st.integers(1, 40), extra=st.integers(0, 9),
    D=st.integers(1, 8), block=st.integers(1, 17), causal=st.booleans(), seed=st.integers(0, 10_000),
)
def test_flash_matches_sdpa(B, H, Tq, extra, D, block, causal, seed):
    q, k, v = _qkv(B, H, Tq, Tq + extra, D, seed=seed)
    ours = A.flash_attention(q, k, v, block_size=block, is_causal=causal)
    ref = A.scaled_dot_product_attention(q, k, v, is_causal=causal)
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-5)
    if extra == 0:
        torch.testing.assert_close(ours, F.scaled_dot_product_attention(q, k, v, is_causal=causal), rtol=1e-5, atol=1e-5)


def test_flash_float64_and_large_scores():
    q, k, v = _qkv(2, 2, 37, 37, 16, dtype=torch.float64)
    torch.testing.assert_close(A.flash_attention(q * 30, k * 30, v, 8, True), F.scaled_dot_product_attention(q * 30, k * 30, v, is_causal=True))
    with pytest.raises(ValueError, match="block_size"):
        A.flash_attention(q, k, v, block_size=0)
    with pytest.raises(ValueError, match="head dimension"):
        A.flash_attention(q, k[..., :3], v)


# --- the explorer and its static twin ------------------------------------------------------------------

def test_attention_explorer_and_static_figure():
    import matplotlib

    matplotlib.use("Agg")
    from lmlib import plot, widgets

    tokens = ["the", " cat", " sat"]
    w = A.softmax(torch.randn(2, 3, 3).masked_fill(~A.causal_mask(3), float("-inf")))
    box = widgets.attention_explorer(tokens, w)
    assert len(box.children[0].children) == 3  # layer, head, query controls
    fig = plot.attention_heads(w, tokens)
    assert len(fig.axes) == 2
    with pytest.raises(ValueError, match="len\\(tokens\\)"):
        widgets.attention_explorer(tokens[:2], w)
    with pytest.raises(ValueError, match="len\\(tokens\\)"):
        plot.attention_heads(w, tokens[:2])
