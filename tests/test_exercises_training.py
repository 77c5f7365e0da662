"""The chapter 4 training-loop checkers accept the references and reject known-wrong solutions."""
import math

import torch

from lmlib import exercises
from lmlib.train import lr_at


def test_lr_schedule_checker():
    assert exercises.check_lr_schedule(exercises.reference_lr_schedule, verbose=False)
    assert exercises.check_lr_schedule(lr_at, verbose=False)
    assert exercises.reference_lr_schedule(0, 1e-3, 1e-4, 100, 2000) == 1e-5
    assert math.isclose(exercises.reference_lr_schedule(1999, 1e-3, 1e-4, 100, 2000), 1e-4)

    def no_warmup_offset(step, lr, min_lr, warmup, max_steps):  # warmup starts at 0, not lr / warmup
        return lr * step / warmup if step < warmup else lr_at(step, lr, min_lr, warmup, max_steps)

    def no_floor(step, lr, min_lr, warmup, max_steps):  # cosine down to 0 instead of min_lr
        return lr_at(step, lr, 0.0, warmup, max_steps)

    def no_cap(step, lr, min_lr, warmup, max_steps):  # keeps following the cosine after max_steps
        if step < warmup:
            return lr * (step + 1) / warmup
        p = (step - warmup) / max(1, max_steps - 1 - warmup)
        return min_lr + 0.5 * (lr - min_lr) * (1 + math.cos(math.pi * p))

    for wrong in (no_warmup_offset, no_floor, no_cap):
        assert not exercises.check_lr_schedule(wrong, verbose=False, seed=0)


def test_clip_by_global_norm_checker():
    def mine(grads, max_norm):
        params = [torch.nn.Parameter(torch.zeros_like(g)) for g in grads]
        for p, g in zip(params, grads):
            p.grad = g.clone()
        torch.nn.utils.clip_grad_norm_(params, max_norm)
        return [p.grad for p in params]

    assert exercises.check_clip_by_global_norm(exercises.reference_clip_by_global_norm, verbose=False)
    assert exercises.check_clip_by_global_norm(mine, verbose=False)

    def per_tensor(grads, max_norm):  # clips each tensor on its own: changes the direction
        return [g * min(1.0, max_norm / (g.norm().item() + 1e-6)) for g in grads]

    def always_rescale(grads, max_norm):  # also scales small gradients up to max_norm
        total = torch.sqrt(sum((g ** 2).sum() for g in grads))
        return [g * max_norm / (total + 1e-6) for g in grads]

    assert not exercises.check_clip_by_global_norm(per_tensor, verbose=False, seed=0)
    assert not exercises.check_clip_by_global_norm(always_rescale, verbose=False, seed=0)


def test_split_qkv_checker():
    assert exercises.check_split_qkv(exercises.reference_split_qkv, verbose=False)

    def no_transpose(w, b):
        d = w.shape[0]
        return [(w[:, i * d:(i + 1) * d], b[i * d:(i + 1) * d]) for i in range(3)]

    def rows_not_columns(w, b):  # slices the wrong axis of the transposed weight
        d = w.shape[0]
        wt = w.t()
        return [(wt[i * d:(i + 1) * d].t(), b[i * d:(i + 1) * d]) for i in range(3)]

    def swapped_kq(w, b):
        q, k, v = exercises.reference_split_qkv(w, b)
        return [k, q, v]

    for wrong in (no_transpose, swapped_kq):
        assert not exercises.check_split_qkv(wrong, verbose=False, seed=0)
    assert not exercises.check_split_qkv(rows_not_columns, verbose=False, seed=0)


def test_chinchilla_split_checker():
    assert exercises.check_chinchilla_split(exercises.reference_chinchilla_split, verbose=False)
    n, d = exercises.reference_chinchilla_split(5.76e23, 20.0)  # Chinchilla's budget: ~70B params, ~1.4T tokens
    assert 6.5e10 < n < 7.2e10 and math.isclose(d, 20 * n) and math.isclose(6 * n * d, 5.76e23)

    def forgot_six(c, r):
        n = (c / r) ** 0.5
        return n, r * n

    def swapped(c, r):
        n, d = exercises.reference_chinchilla_split(c, r)
        return d, n

    assert not exercises.check_chinchilla_split(forgot_six, verbose=False, seed=0)
    assert not exercises.check_chinchilla_split(swapped, verbose=False, seed=0)
