"""Exercise checkers for chapter 4, Pretraining: the training loop and published weights.

Notebook ``03_training_a_gpt`` checks the learning-rate schedule (reference
:func:`lmlib.train.lr_at`) and clipping by the global norm (``torch.nn.utils.clip_grad_norm_``'s
rule); notebook ``04_pretrained_weights`` the split of GPT-2's fused query/key/value projection;
notebook ``05_scaling`` the compute-optimal split of a FLOP budget (C = 6 N D, D = 20 N).
"""
from __future__ import annotations

from collections.abc import Callable

import torch

from lmlib.exercises.core import Case, check
from lmlib.train import lr_at

__all__ = [
    "check_lr_schedule",
    "reference_lr_schedule",
    "check_clip_by_global_norm",
    "reference_clip_by_global_norm",
    "check_split_qkv",
    "reference_split_qkv",
    "check_chinchilla_split",
    "reference_chinchilla_split",
]


def reference_lr_schedule(step: int, lr: float, min_lr: float, warmup_steps: int, max_steps: int) -> float:
    return lr_at(step, lr, min_lr, warmup_steps, max_steps)


def check_lr_schedule(fn: Callable[[int, float, float, int, int], float], **kwargs) -> bool:
    """``fn(step, lr, min_lr, warmup_steps, max_steps) -> float``: linear warmup, then cosine to ``min_lr``."""

    def make_case(gen: torch.Generator) -> Case:
        max_steps = int(torch.randint(20, 2000, (1,), generator=gen))
        warmup = int(torch.randint(0, max_steps // 4 + 1, (1,), generator=gen))
        lr = float(10 ** (-4 + 2 * torch.rand(1, generator=gen)))
        min_lr = lr * float(torch.rand(1, generator=gen)) * 0.2
        step = int(torch.randint(0, max_steps + 10, (1,), generator=gen))
        return (step, lr, min_lr, warmup, max_steps)

    return check(
        fn,
        reference_lr_schedule,
        make_case,
        name="lr schedule",
        hint=(
            "Warmup: lr * (step + 1) / warmup_steps while step < warmup_steps. Then the progress "
            "p = (step - warmup_steps) / (max_steps - 1 - warmup_steps), capped at 1, gives "
            "min_lr + 0.5 * (lr - min_lr) * (1 + cos(pi * p))."
        ),
        fixed_cases=((0, 1e-3, 1e-4, 100, 2000), (99, 1e-3, 1e-4, 100, 2000), (100, 1e-3, 1e-4, 100, 2000),
                     (1999, 1e-3, 1e-4, 100, 2000), (2500, 1e-3, 1e-4, 100, 2000), (5, 1e-3, 0.0, 0, 10)),
        trials=20,
        rtol=1e-9,
        atol=1e-12,
        **kwargs,
    )


def reference_clip_by_global_norm(grads: list[torch.Tensor], max_norm: float) -> list[torch.Tensor]:
    total = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))
    scale = torch.clamp(max_norm / (total + 1e-6), max=1.0)
    return [g * scale for g in grads]


def check_clip_by_global_norm(fn: Callable[[list[torch.Tensor], float], list[torch.Tensor]], **kwargs) -> bool:
    """``fn(grads, max_norm) -> list of tensors``: scale all gradients together so their joint norm is at most ``max_norm``."""

    def make_case(gen: torch.Generator) -> Case:
        n = int(torch.randint(1, 5, (1,), generator=gen))
        grads = [torch.randn(int(torch.randint(1, 6, (1,), generator=gen)), 3, generator=gen, dtype=torch.float64)
                 * float(torch.rand(1, generator=gen) * 4) for _ in range(n)]
        return (grads, float(torch.rand(1, generator=gen) * 3 + 0.1))

    def as_tensor(f):
        return lambda grads, max_norm: torch.cat([g.flatten() for g in f([g.clone() for g in grads], max_norm)])

    return check(
        as_tensor(fn),
        as_tensor(reference_clip_by_global_norm),
        make_case,
        name="clip by global norm",
        hint=(
            "Take the norm of ALL gradients together (sqrt of the sum of every squared entry), then "
            "multiply every gradient by min(1, max_norm / (norm + 1e-6)); gradients already small stay unchanged."
        ),
        fixed_cases=(([torch.tensor([3.0, 4.0], dtype=torch.float64)], 1.0),
                     ([torch.tensor([0.3, 0.4], dtype=torch.float64)], 1.0)),
        trials=10,
        **kwargs,
    )


def reference_split_qkv(weight: torch.Tensor, bias: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
    d = weight.shape[0]
    return [(weight[:, i * d:(i + 1) * d].t(), bias[i * d:(i + 1) * d]) for i in range(3)]


def check_split_qkv(fn: Callable[[torch.Tensor, torch.Tensor], list], **kwargs) -> bool:
    """``fn(c_attn_weight (d, 3d), c_attn_bias (3d,)) -> [(W_q, b_q), (W_k, b_k), (W_v, b_v)]`` in ``nn.Linear`` layout (notebook 04)."""

    def make_case(gen: torch.Generator) -> Case:
        d = int(torch.randint(1, 9, (1,), generator=gen))
        return (torch.randn(d, 3 * d, generator=gen), torch.randn(3 * d, generator=gen))

    def flat(f):
        def run(weight, bias):
            parts = f(weight, bias)
            if len(parts) != 3:
                raise ValueError(f"expected 3 (weight, bias) pairs for q, k, v, got {len(parts)}")
            return torch.cat([t.flatten() for pair in parts for t in pair] +
                             [torch.tensor([float(s) for pair in parts for s in pair[0].shape])])
        return run

    return check(
        flat(fn),
        flat(reference_split_qkv),
        make_case,
        name="split c_attn into q, k, v",
        hint=(
            "GPT-2's Conv1D weight is (in, out) = (d, 3d): the columns [0, d) are the query, [d, 2d) the "
            "key, [2d, 3d) the value. nn.Linear stores (out, in), so transpose each slice."
        ),
        **kwargs,
    )


def reference_chinchilla_split(compute: float, tokens_per_param: float = 20.0) -> tuple[float, float]:
    params = (compute / (6 * tokens_per_param)) ** 0.5
    return params, tokens_per_param * params


def check_chinchilla_split(fn: Callable[[float, float], tuple[float, float]], **kwargs) -> bool:
    """``fn(compute, tokens_per_param) -> (params, tokens)`` with ``compute = 6 * params * tokens`` and ``tokens = tokens_per_param * params``."""

    def make_case(gen: torch.Generator) -> Case:
        return (float(10 ** (15 + 10 * torch.rand(1, generator=gen, dtype=torch.float64))),
                float(5 + 30 * torch.rand(1, generator=gen, dtype=torch.float64)))

    def as_tensor(f):
        return lambda c, r: torch.tensor([float(v) for v in f(c, r)], dtype=torch.float64)

    return check(
        as_tensor(fn),
        as_tensor(reference_chinchilla_split),
        make_case,
        name="compute-optimal split",
        hint="Substitute D = r N into C = 6 N D: C = 6 r N^2, so N = sqrt(C / (6 r)) and D = r N.",
        fixed_cases=((5.76e23, 20.0),),
        rtol=1e-6,
        **kwargs,
    )
