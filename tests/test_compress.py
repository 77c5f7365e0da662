"""lmlib.compress (chapter 6): quantization, pruning, distillation, model size; and its checkers."""

import copy

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from lmlib import compress as C
from lmlib import exercises
from lmlib.model import GPT, GPTConfig


def small_gpt(**kw):
    torch.manual_seed(0)
    return GPT(GPTConfig(vocab_size=17, n_layer=2, n_head=2, n_embd=16, block_size=8, **kw)).eval()


def test_int8_round_trip_error_is_at_most_half_a_step():
    w = torch.randn(33, 20) * torch.rand(33, 1) * 5
    q, scale = C.quantize_int8(w)
    assert q.dtype == torch.int8 and scale.shape == (33, 1)
    assert q.abs().max() <= 127 and (q.abs().amax(1) == 127).all()  # each row uses the full range
    assert ((C.dequantize(q, scale) - w).abs() <= scale / 2 + 1e-6).all()
    q1, s1 = C.quantize_int8(w, per_channel=False)
    assert s1.shape == (1, 1) and torch.isclose(s1, w.abs().max() / 127).all()
    # per-channel is never worse than one scale for the matrix
    assert (C.dequantize(q, scale) - w).abs().max() <= (C.dequantize(q1, s1) - w).abs().max() + 1e-6


def test_int8_handles_zero_rows_and_rejects_bad_input():
    w = torch.zeros(3, 4)
    q, s = C.quantize_int8(w)
    assert torch.equal(C.dequantize(q, s), w)
    with pytest.raises(ValueError, match="2-D"):
        C.quantize_int8(torch.randn(4))
    with pytest.raises(ValueError, match="floating"):
        C.quantize_int8(torch.ones(2, 2, dtype=torch.long))


@pytest.mark.parametrize("cols", [6, 7])
def test_int4_packs_two_values_per_byte(cols):
    w = torch.randn(5, cols)
    packed, scale = C.quantize_int4(w)
    assert packed.dtype == torch.uint8 and packed.shape == (5, (cols + 1) // 2)
    back = C.dequantize_int4(packed, scale, cols)
    assert back.shape == w.shape and ((back - w).abs() <= scale / 2 + 1e-6).all()
    assert torch.allclose(back.abs().amax(1, keepdim=True), w.abs().amax(1, keepdim=True), atol=1e-6)


def test_quantized_linear_matches_dequantized_float_layer():
    lin = nn.Linear(12, 5)
    for bits in (8, 4):
        ql = C.QuantizedLinear.from_linear(lin, bits)
        x = torch.randn(3, 12)
        torch.testing.assert_close(ql(x), F.linear(x, ql.weight(), lin.bias.detach()))
    with pytest.raises(ValueError, match="bits"):
        C.QuantizedLinear(3, 4, bits=2)
    assert isinstance(C.quantize_model(lin), C.QuantizedLinear)
    with pytest.raises(ValueError, match="no nn.Linear"):
        C.quantize_model(nn.Sequential(nn.ReLU()))


def test_quantize_model_keeps_tied_weights_and_shrinks():
    model = small_gpt()
    x = torch.randint(0, 17, (2, 8))
    ref = model(x)[0]
    q8, q4 = C.quantize_model(model, 8), C.quantize_model(model, 4)
    assert not any(isinstance(m, nn.Linear) for m in q8.modules())
    assert any(isinstance(m, nn.Linear) for m in model.modules())  # the original is untouched
    assert q8.wte.head[0] is q8.lm_head  # embedding reads the quantized head
    torch.testing.assert_close(q8.wte(x), C.dequantize(q8.lm_head.qweight, q8.lm_head.scale)[x])
    torch.testing.assert_close(q4.wte(x), q4.lm_head.weight()[x])
    err8, err4 = (q8(x)[0] - ref).abs().max(), (q4(x)[0] - ref).abs().max()
    assert err8 < 0.05 and err8 < err4
    size, s8, s4 = (C.model_size_bytes(m) for m in (model, q8, q4))
    assert s4 < s8 < size / 2.5


def test_model_size_counts_shared_storage_once():
    model = small_gpt()
    expected = sum(p.numel() for p in model.parameters()) * 4  # parameters() lists a tied weight once
    assert C.model_size_bytes(model) == expected
    untied = small_gpt(tie_weights=False)
    assert C.model_size_bytes(untied) == expected + 17 * 16 * 4


@pytest.mark.parametrize("scope", ["global", "layer"])
def test_magnitude_prune(scope):
    model = small_gpt()
    head = model.lm_head.weight.clone()
    masks = C.magnitude_prune(model, 0.6, scope=scope)
    assert "lm_head.weight" not in masks and torch.equal(model.lm_head.weight, head)  # tied head kept
    assert abs(C.sparsity(model) - 0.6) < 0.01
    for name, mask in masks.items():
        w = model.get_parameter(name)
        assert torch.equal(w == 0, ~mask)
        if scope == "layer":
            assert abs((~mask).float().mean().item() - 0.6) < 0.02
    kept = torch.cat([model.get_parameter(n)[m].abs() for n, m in masks.items()])
    if scope == "global":  # every kept weight is at least as large as every removed one had been
        assert kept.min() > 0
    with pytest.raises(ValueError, match="sparsity"):
        C.magnitude_prune(model, 1.0)
    with pytest.raises(ValueError, match="scope"):
        C.magnitude_prune(model, 0.1, scope="row")


def test_drop_blocks_keeps_the_other_layers():
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=17, n_layer=3, n_head=2, n_embd=16, block_size=8)).eval()
    x = torch.randint(0, 17, (2, 8))
    ref = model(x)[0]
    student = C.drop_blocks(model, [1])
    assert len(student.blocks) == 2 and student.config.n_layer == 2
    assert len(model.blocks) == 3 and model.config.n_layer == 3  # the original is untouched
    torch.testing.assert_close(student.blocks[1].mlp.fc.weight, model.blocks[2].mlp.fc.weight)
    assert student.blocks[1].mlp.fc.weight is not model.blocks[2].mlp.fc.weight  # a copy, not shared
    assert student.lm_head.weight is student.wte.weight  # tying survives the copy
    assert C.model_size_bytes(student) < C.model_size_bytes(model)

    class Skip(nn.Module):  # a block that passes its input through
        def forward(self, x, cache=None):
            return x

    by_hand = copy.deepcopy(model)
    by_hand.blocks[1] = Skip()
    torch.testing.assert_close(student(x)[0], by_hand(x)[0])
    assert not torch.allclose(student(x)[0], ref)
    torch.testing.assert_close(C.drop_blocks(model, [])(x)[0], ref)
    with pytest.raises(ValueError, match="out of range"):
        C.drop_blocks(model, [3])
    with pytest.raises(ValueError, match="keep at least one"):
        C.drop_blocks(model, [0, 1, 2])
    with pytest.raises(ValueError, match="blocks"):
        C.drop_blocks(nn.Linear(2, 2), [0])


def test_distillation_loss_limits():
    torch.manual_seed(0)
    s, t = torch.randn(2, 5, 11), torch.randn(2, 5, 11)
    y = torch.randint(0, 11, (2, 5))
    ce = F.cross_entropy(s.flatten(0, 1), y.flatten())
    torch.testing.assert_close(C.distillation_loss(s, t, y, 2.0, 0.0), ce)
    assert C.distillation_loss(t, t, y, 3.0, 1.0).abs() < 1e-6  # imitating perfectly costs nothing
    kl = F.kl_div(F.log_softmax(s.flatten(0, 1), -1), F.softmax(t.flatten(0, 1), -1), reduction="batchmean")
    torch.testing.assert_close(C.distillation_loss(s, t, y, 1.0, 1.0), kl)
    with pytest.raises(ValueError, match="same shape"):
        C.distillation_loss(s, t[..., :5], y)
    with pytest.raises(ValueError, match="alpha"):
        C.distillation_loss(s, t, y, 2.0, 1.5)


def test_distiller_trains_only_the_student():
    teacher, student = small_gpt(), small_gpt()
    d = C.Distiller(student, teacher, temperature=2.0, alpha=0.7).train()
    assert not teacher.training
    x, y = torch.randint(0, 17, (2, 8)), torch.randint(0, 17, (2, 8))
    _, loss = d(x, y)
    loss.backward()
    assert all(p.grad is None for p in teacher.parameters())
    assert all(p.grad is not None for p in student.parameters())
    d.eval()
    torch.testing.assert_close(d(x, y)[1], student(x, y)[1])  # eval: the plain cross-entropy


def test_quantize_int8_checker():
    assert exercises.check_quantize_int8(exercises.reference_quantize_int8, verbose=False)
    assert exercises.check_quantize_int8(lambda w: C.quantize_int8(w), verbose=False)
    assert not exercises.check_quantize_int8(lambda w: C.quantize_int8(w, per_channel=False), verbose=False)

    def by_column(w):
        scale = w.abs().amax(0, keepdim=True) / 127
        return torch.round(w / scale).clamp(-127, 127).to(torch.int8), scale.T

    def float_q(w):
        q, s = C.quantize_int8(w)
        return q.float(), s

    def truncated(w):
        s = w.abs().amax(1, keepdim=True) / 127
        return (w / s).to(torch.int8), s

    for wrong in (by_column, float_q, truncated):
        assert not exercises.check_quantize_int8(wrong, verbose=False)


def test_prune_mask_checker():
    assert exercises.check_prune_mask(exercises.reference_prune_mask, verbose=False)

    def signed(w, s):  # ranks w instead of |w|
        k = int(s * w.numel())
        m = torch.ones(w.numel(), dtype=torch.bool)
        m[w.flatten().argsort()[:k]] = False
        return m.reshape(w.shape)

    def inverted(w, s):
        return ~exercises.reference_prune_mask(w, s)

    for wrong in (signed, inverted, lambda w, s: exercises.reference_prune_mask(w, s).float()):
        assert not exercises.check_prune_mask(wrong, verbose=False)


@pytest.mark.parametrize("cols, group", [(12, 4), (12, 5), (10, 4), (14, 6), (7, 3), (16, 16)])
def test_group_wise_scales_cover_their_own_weights(cols, group):
    torch.manual_seed(0)
    w = torch.randn(5, cols)
    w[2, 1] = 40.0  # an outlier: only its own group's scale should grow
    q, scale = C.quantize_int8(w, group_size=group)
    assert scale.shape == (5, -(-cols // group))
    full = C.expand_scale(scale, cols, group)
    assert ((C.dequantize(q, scale, group) - w).abs() <= full / 2 + 1e-6).all()
    _, per_row = C.quantize_int8(w)
    assert (full <= per_row + 1e-7).all() and (full[2, group:] < per_row[2, 0]).all()
    packed, scale4 = C.quantize_int4(w, group_size=group)
    back = C.dequantize_int4(packed, scale4, cols, group)
    assert ((back - w).abs() <= C.expand_scale(scale4, cols, group) / 2 + 1e-6).all()
    if scale.shape[1] > 1:  # several groups: the group size must be given, never guessed
        with pytest.raises(ValueError, match="group_size"):
            C.dequantize(q, scale)


def test_a_group_as_wide_as_the_row_is_per_channel_quantization():
    w = torch.randn(4, 8)
    for a, b in zip(C.quantize_int8(w, group_size=8), C.quantize_int8(w)):
        assert torch.equal(a, b)
    with pytest.raises(ValueError, match="group_size"):
        C.quantize_int8(w, group_size=0)


def test_a_group_wise_quantized_gpt_stays_close_and_keeps_its_tied_embedding():
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=50, block_size=16, n_layer=2, n_head=2, n_embd=32)).eval()
    x = torch.randint(50, (2, 16))
    with torch.no_grad():
        ref = model(x)[0]
        errors = {}
        for group in (None, 8):
            small = C.quantize_model(model, bits=4, group_size=group)
            assert isinstance(small.wte, C.QuantizedEmbedding)
            errors[group] = (small(x)[0] - ref).abs().mean().item()
    assert errors[8] < errors[None]  # smaller groups, smaller rounding error
    assert "group_size=8" in repr(C.quantize_model(model, bits=8, group_size=8))
