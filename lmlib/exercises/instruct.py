"""Exercise checkers for chapter 5, notebook 03 (instruction tuning): the response-only loss mask and LoRA."""
from __future__ import annotations

from collections.abc import Callable

import torch

from lmlib.exercises.core import Case, check
from lmlib.instruct import sft_targets
from lmlib.lora import lora_forward

__all__ = [
    "check_sft_targets",
    "reference_sft_targets",
    "check_lora_forward",
    "reference_lora_forward",
]


def reference_sft_targets(ids: torch.Tensor, prompt_len: int) -> torch.Tensor:
    """The targets ``y`` of :func:`lmlib.instruct.sft_targets` (the inputs are ``ids[:-1]``)."""
    return sft_targets(ids, prompt_len)[1]


def check_sft_targets(fn: Callable[[torch.Tensor, int], torch.Tensor], **kwargs) -> bool:
    """``fn(ids, prompt_len) -> y``: next-token targets of ``ids`` with -100 where the target is a prompt token."""

    def make_case(gen: torch.Generator) -> Case:
        n = int(torch.randint(2, 40, (1,), generator=gen))
        ids = torch.randint(0, 100, (n,), generator=gen)
        prompt_len = int(torch.randint(1, n, (1,), generator=gen))
        return ids, prompt_len

    return check(
        fn,
        reference_sft_targets,
        make_case,
        name="sft_targets",
        hint="y = ids[1:]: y[t] is the token after position t. It belongs to the prompt when t + 1 < prompt_len, "
        "so mask y[:prompt_len - 1] with -100 (not y[:prompt_len]: the last prompt position predicts the "
        "first response token, which must stay in the loss). The result has len(ids) - 1 entries.",
        fixed_cases=((torch.tensor([5, 6, 7, 8]), 1), (torch.tensor([5, 6, 7, 8]), 3), (torch.tensor([1, 2]), 1)),
        **kwargs,
    )


def reference_lora_forward(x: torch.Tensor, W: torch.Tensor, A: torch.Tensor, B: torch.Tensor,
                           scale: float) -> torch.Tensor:
    return lora_forward(x, W, A, B, scale)


def check_lora_forward(fn: Callable[..., torch.Tensor], **kwargs) -> bool:
    """``fn(x, W, A, B, scale) -> x @ W^T + scale * x @ A^T @ B^T`` for x (..., in), W (out, in), A (r, in), B (out, r)."""

    def make_case(gen: torch.Generator) -> Case:
        d_in, d_out, r = (int(torch.randint(2, 12, (1,), generator=gen)) for _ in range(3))
        lead = tuple(int(torch.randint(1, 4, (1,), generator=gen)) for _ in range(int(torch.randint(1, 3, (1,), generator=gen))))
        x = torch.randn(*lead, d_in, generator=gen, dtype=torch.float64)
        W = torch.randn(d_out, d_in, generator=gen, dtype=torch.float64)
        A = torch.randn(r, d_in, generator=gen, dtype=torch.float64)
        B = torch.randn(d_out, r, generator=gen, dtype=torch.float64)
        scale = float(torch.rand(1, generator=gen)) * 4 + 0.25
        return x, W, A, B, scale

    return check(
        fn,
        reference_lora_forward,
        make_case,
        name="lora_forward",
        hint="weights are stored (out, in), so a linear layer computes x @ W.T; the low-rank path is "
        "(x @ A.T) @ B.T, multiplied by scale (alpha / r), then added to the base output. Work on the last "
        "axis of x only, so batch and sequence axes pass through.",
        fixed_cases=((torch.eye(3, dtype=torch.float64), torch.eye(3, dtype=torch.float64),
                      torch.ones(1, 3, dtype=torch.float64), torch.ones(3, 1, dtype=torch.float64), 2.0),),
        **kwargs,
    )
