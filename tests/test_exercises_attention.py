"""The chapter 2 exercise checkers accept the reference solutions and reject known-wrong ones."""
import torch

from lmlib import exercises


def test_softmax_checker():
    def stable(x):
        e = (x - x.amax(-1, keepdim=True)).exp()
        return e / e.sum(-1, keepdim=True)

    assert exercises.check_softmax(exercises.reference_softmax, verbose=False)
    assert exercises.check_softmax(stable, verbose=False)
    assert not exercises.check_softmax(lambda x: x.exp() / x.exp().sum(-1, keepdim=True), verbose=False)  # overflows
    assert not exercises.check_softmax(lambda x: x / x.sum(-1, keepdim=True), verbose=False)
    assert not exercises.check_softmax(lambda x: stable(x.transpose(-1, -2)).transpose(-1, -2) if x.dim() > 1 else stable(x), verbose=False)


def test_causal_mask_checker():
    assert exercises.check_causal_mask(lambda T: torch.ones(T, T, dtype=torch.bool).tril(), verbose=False)
    assert not exercises.check_causal_mask(lambda T: torch.ones(T, T, dtype=torch.bool).triu(), verbose=False)
    assert not exercises.check_causal_mask(lambda T: torch.ones(T, T, dtype=torch.bool).tril(-1), verbose=False)


def test_split_heads_checker():
    assert exercises.check_split_heads(exercises.reference_split_heads, verbose=False)

    def wrong_view(x, h):
        B, T, C = x.shape
        return x.reshape(B, h, T, C // h)

    def heads_strided(x, h):  # head h takes every h-th feature
        B, T, C = x.shape
        return x.view(B, T, C // h, h).permute(0, 3, 1, 2)

    assert not exercises.check_split_heads(wrong_view, verbose=False)
    assert not exercises.check_split_heads(heads_strided, verbose=False)


def test_rope_checker():
    def mine(x, offset):
        D = x.shape[-1]
        theta = 10000.0 ** (-torch.arange(0, D, 2, dtype=torch.float64) / D)
        ang = torch.arange(offset, offset + x.shape[-2], dtype=torch.float64)[:, None] * theta
        x1, x2 = x[..., : D // 2], x[..., D // 2:]
        return torch.cat([x1 * ang.cos() - x2 * ang.sin(), x1 * ang.sin() + x2 * ang.cos()], -1)

    def interleaved(x, offset):  # pairs (0,1), (2,3), ...: a valid RoPE, but not the course's layout
        D = x.shape[-1]
        theta = 10000.0 ** (-torch.arange(0, D, 2, dtype=torch.float64) / D)
        ang = torch.arange(offset, offset + x.shape[-2], dtype=torch.float64)[:, None] * theta
        x1, x2 = x[..., 0::2], x[..., 1::2]
        out = torch.empty_like(x)
        out[..., 0::2], out[..., 1::2] = x1 * ang.cos() - x2 * ang.sin(), x1 * ang.sin() + x2 * ang.cos()
        return out

    assert exercises.check_rope(exercises.reference_rope, verbose=False)
    assert exercises.check_rope(mine, verbose=False)
    assert not exercises.check_rope(lambda x, o: mine(x, 0), verbose=False)  # ignores the offset
    assert not exercises.check_rope(interleaved, verbose=False)
    assert not exercises.check_rope(lambda x, o: mine(x, o).flip(-1), verbose=False)


def test_online_softmax_checker():
    def mine(m1, l1, m2, l2):
        m = torch.maximum(m1, m2)
        return m, l1 * (m1 - m).exp() + l2 * (m2 - m).exp()

    assert exercises.check_online_softmax(exercises.reference_online_softmax, verbose=False)
    assert exercises.check_online_softmax(mine, verbose=False)
    assert not exercises.check_online_softmax(lambda m1, l1, m2, l2: (torch.maximum(m1, m2), l1 + l2), verbose=False)
    # exact in exact arithmetic, but exp(1000) overflows
    assert not exercises.check_online_softmax(
        lambda m1, l1, m2, l2: (torch.maximum(m1, m2), (l1 * m1.exp() + l2 * m2.exp()) / torch.maximum(m1, m2).exp()),
        verbose=False,
    )
    assert not exercises.check_online_softmax(lambda m1, l1, m2, l2: ("m", "l"), verbose=False)  # raises inside: FAIL
