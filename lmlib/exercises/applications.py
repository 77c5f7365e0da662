"""Exercise checkers for chapter 5, Applications (text classification: metrics and pooling)."""
from __future__ import annotations

from collections.abc import Callable

import torch

from lmlib.exercises.core import Case, check

__all__ = [
    "check_f1_from_confusion",
    "reference_f1_from_confusion",
    "check_last_token_pool",
    "reference_last_token_pool",
]


def reference_f1_from_confusion(cm: torch.Tensor, positive: int) -> float:
    """F1 of class ``positive`` from a confusion matrix (row = true class, column = predicted)."""
    cm = cm.double()
    tp = cm[positive, positive]
    predicted, actual = cm[:, positive].sum(), cm[positive].sum()
    if tp == 0:
        return 0.0
    precision, recall = tp / predicted, tp / actual
    return float(2 * precision * recall / (precision + recall))


def check_f1_from_confusion(fn: Callable[[torch.Tensor, int], float], **kwargs) -> bool:
    """``fn(cm, positive) -> float``: F1 of one class from an (n, n) confusion matrix of counts."""

    def make_case(gen: torch.Generator) -> Case:
        n = int(torch.randint(2, 5, (1,), generator=gen))
        cm = torch.randint(0, 30, (n, n), generator=gen)
        return cm, int(torch.randint(n, (1,), generator=gen))

    return check(
        fn,
        reference_f1_from_confusion,
        make_case,
        name="f1_from_confusion",
        hint="rows are the true classes and columns the predictions: precision = TP / (column sum), "
        "recall = TP / (row sum), F1 = 2 P R / (P + R); define F1 = 0 when TP = 0.",
        fixed_cases=(
            (torch.tensor([[50, 10], [5, 35]]), 1),
            (torch.tensor([[50, 10], [5, 35]]), 0),
            (torch.tensor([[9, 0], [3, 0]]), 1),
        ),
        **kwargs,
    )


def reference_last_token_pool(h: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The hidden state (B, C) of the last True position of each row of ``mask`` (B, T)."""
    positions = torch.arange(mask.shape[1])
    last = torch.where(mask, positions, -1).max(dim=1).values
    return h[torch.arange(h.shape[0]), last]


def check_last_token_pool(fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], **kwargs) -> bool:
    """``fn(h, mask) -> (B, C)``: pick each row's hidden state at its last real (unpadded) token."""

    def make_case(gen: torch.Generator) -> Case:
        B, T, C = (int(torch.randint(lo, hi, (1,), generator=gen)) for lo, hi in ((2, 7), (2, 12), (1, 9)))
        lengths = torch.randint(1, T + 1, (B,), generator=gen)
        lengths[0] = max(1, T - 1)  # at least one padded row when T > 1
        mask = torch.arange(T)[None, :] < lengths[:, None]
        return torch.randn(B, T, C, generator=gen), mask

    return check(
        fn,
        reference_last_token_pool,
        make_case,
        name="last_token_pool",
        hint="padding is on the right, so the last real token of row b is at position mask[b].sum() - 1; "
        "h[:, -1] would read a padding position. Index with torch.arange(B) and those positions.",
        fixed_cases=((torch.arange(12.0).view(2, 3, 2), torch.tensor([[True, True, False], [True, False, False]])),),
        **kwargs,
    )
