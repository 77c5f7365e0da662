"""Exercise checkers for chapter 6, Challenges and frontiers (quantization, pruning, cost)."""
from __future__ import annotations

from collections.abc import Callable

import torch

from lmlib.compress import quantize_int8
from lmlib.cost import gpu_hours, training_flops
from lmlib.exercises.core import Case, check

__all__ = [
    "check_quantize_int8",
    "reference_quantize_int8",
    "check_prune_mask",
    "reference_prune_mask",
    "check_gpu_hours",
    "reference_gpu_hours",
]


def reference_quantize_int8(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return quantize_int8(weight, per_channel=True)


def _as_one_tensor(fn: Callable) -> Callable:
    """Turn ``fn(weight) -> (q, scale)`` into one float tensor [q | scale] the checker can compare."""

    def run(weight: torch.Tensor) -> torch.Tensor:
        out = fn(weight)
        if not (isinstance(out, tuple) and len(out) == 2):
            raise TypeError(f"return a tuple (q, scale), got {type(out).__name__}")
        q, scale = out
        if not isinstance(q, torch.Tensor) or q.dtype != torch.int8:
            raise TypeError(f"q must be an int8 tensor, got {getattr(q, 'dtype', type(q).__name__)}")
        scale = torch.as_tensor(scale, dtype=torch.float32)
        if scale.numel() != weight.shape[0]:
            raise ValueError(f"need one scale per output row ({weight.shape[0]}), got {scale.numel()}")
        return torch.cat([q.float(), scale.reshape(-1, 1)], dim=1)

    return run


def check_quantize_int8(fn: Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]], **kwargs) -> bool:
    """``fn(weight) -> (q int8, scale)``: symmetric int8 quantization with one scale per output row."""

    def make_case(gen: torch.Generator) -> Case:
        out, inp = (int(v) for v in torch.randint(1, 12, (2,), generator=gen))
        return (torch.randn(out, inp, generator=gen) * float(torch.rand(1, generator=gen) * 3 + 0.1),)

    return check(
        _as_one_tensor(fn),
        _as_one_tensor(reference_quantize_int8),
        make_case,
        name="quantize_int8",
        hint="per row: scale = max|w| / 127 (a row's largest weight maps to +-127), q = round(w / scale) as int8.",
        fixed_cases=((torch.tensor([[1.0, -2.0, 0.5], [0.1, 0.2, -0.4]]),),),
        rtol=1e-5,
        atol=1e-6,
        **kwargs,
    )


def reference_prune_mask(weight: torch.Tensor, sparsity: float) -> torch.Tensor:
    """True where a weight is kept: all but the ``int(sparsity * numel)`` smallest magnitudes."""
    k = int(sparsity * weight.numel())
    mask = torch.ones(weight.numel(), dtype=torch.bool)
    mask[weight.abs().flatten().argsort()[:k]] = False
    return mask.reshape(weight.shape)


def check_prune_mask(fn: Callable[[torch.Tensor, float], torch.Tensor], **kwargs) -> bool:
    """``fn(weight, sparsity) -> bool mask``: keep all but the fraction ``sparsity`` of smallest |w|."""

    def make_case(gen: torch.Generator) -> Case:
        out, inp = (int(v) for v in torch.randint(2, 12, (2,), generator=gen))
        return torch.randn(out, inp, generator=gen), round(float(torch.rand(1, generator=gen)) * 0.95, 2)

    def as_float(f: Callable) -> Callable:
        def run(weight, s):
            mask = f(weight, s)
            if not isinstance(mask, torch.Tensor) or mask.dtype != torch.bool:
                raise TypeError(f"return a bool tensor (True = kept), got {getattr(mask, 'dtype', type(mask).__name__)}")
            return mask.float()
        return run

    return check(
        as_float(fn),
        as_float(reference_prune_mask),
        make_case,
        name="prune_mask",
        hint="rank |w| (not w), remove the int(sparsity * numel) smallest; True marks the weights that stay.",
        fixed_cases=((torch.tensor([[0.5, -3.0], [0.1, 2.0]]), 0.5), (torch.randn(3, 3), 0.0)),
        **kwargs,
    )


def reference_gpu_hours(n_params: float, n_tokens: float, peak_flops: float, mfu: float) -> float:
    return gpu_hours(training_flops(n_params, n_tokens), peak_flops, mfu)


def check_gpu_hours(fn: Callable[[float, float, float, float], float], **kwargs) -> bool:
    """``fn(n_params, n_tokens, peak_flops, mfu) -> hours`` of training on one accelerator."""

    def make_case(gen: torch.Generator) -> Case:
        u = torch.rand(4, generator=gen, dtype=torch.float64).tolist()
        return 10 ** (6 + 5 * u[0]), 10 ** (9 + 4 * u[1]), 10 ** (13 + 2 * u[2]), 0.1 + 0.5 * u[3]

    return check(
        fn,
        reference_gpu_hours,
        make_case,
        name="gpu_hours",
        hint="FLOPs = 6 N D; divide by the achieved FLOP/s (peak x MFU) for seconds, then by 3600.",
        fixed_cases=((1e9, 1e10, 1e14, 0.5),),
        rtol=1e-6,
        **kwargs,
    )
