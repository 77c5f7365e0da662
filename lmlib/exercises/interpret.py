"""Exercise checkers for chapter 6, Interpretability (logit lens, attention patterns, probes)."""
from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from lmlib.exercises.core import Case, check

__all__ = [
    "check_logit_lens_layer",
    "reference_logit_lens_layer",
    "check_previous_token_score",
    "reference_previous_token_score",
    "check_ridge_probe_accuracy",
    "reference_ridge_probe_accuracy",
]


def reference_logit_lens_layer(stream: torch.Tensor, norm_weight: torch.Tensor, norm_bias: torch.Tensor,
                               unembed: torch.Tensor) -> torch.Tensor:
    normed = F.layer_norm(stream, stream.shape[-1:], norm_weight, norm_bias, eps=1e-5)
    return normed @ unembed.T


def check_logit_lens_layer(fn: Callable[..., torch.Tensor], **kwargs) -> bool:
    """``fn(stream (B, T, C), norm_weight (C,), norm_bias (C,), unembed (V, C)) -> logits (B, T, V)``.

    The logit lens for one layer: the final LayerNorm (eps 1e-5), then the unembedding matrix.
    """

    def make_case(gen: torch.Generator) -> Case:
        B, T, C, V = (int(torch.randint(lo, hi, (1,), generator=gen)) for lo, hi in ((1, 4), (1, 9), (2, 17), (2, 30)))
        stream = torch.randn(B, T, C, generator=gen, dtype=torch.float64) * 4 + 2
        weight = torch.rand(C, generator=gen, dtype=torch.float64) + 0.5
        bias = torch.randn(C, generator=gen, dtype=torch.float64) * 0.3
        return stream, weight, bias, torch.randn(V, C, generator=gen, dtype=torch.float64)

    return check(
        fn,
        reference_logit_lens_layer,
        make_case,
        name="logit_lens_layer",
        hint="normalise each position's vector over the feature axis (subtract its mean, divide by "
        "sqrt(variance + 1e-5), biased variance), scale by norm_weight, add norm_bias, then multiply "
        "by unembed transposed: (B, T, C) @ (C, V). Skipping the norm reads the wrong scale.",
        **kwargs,
    )


def reference_previous_token_score(weights: torch.Tensor) -> torch.Tensor:
    return weights.diagonal(offset=-1, dim1=-2, dim2=-1).mean(-1)


def check_previous_token_score(fn: Callable[[torch.Tensor], torch.Tensor], **kwargs) -> bool:
    """``fn(weights (H, T, T)) -> (H,)``: each head's mean weight from query i on key i - 1, i >= 1."""

    def make_case(gen: torch.Generator) -> Case:
        H, T = int(torch.randint(1, 6, (1,), generator=gen)), int(torch.randint(2, 12, (1,), generator=gen))
        scores = torch.randn(H, T, T, generator=gen, dtype=torch.float64) * 2
        scores = scores.masked_fill(~torch.ones(T, T, dtype=torch.bool).tril(), float("-inf"))
        return (scores.softmax(-1),)

    return check(
        fn,
        reference_previous_token_score,
        make_case,
        name="previous_token_score",
        hint="the weight query i puts on key i - 1 lies just below the diagonal (offset -1); average "
        "it over the T - 1 queries that have a previous token (i = 1 ... T-1), separately per head.",
        **kwargs,
    )


def reference_ridge_probe_accuracy(x_train: torch.Tensor, y_train: torch.Tensor, x_test: torch.Tensor,
                                   y_test: torch.Tensor, ridge: float) -> float:
    K = int(max(y_train.max(), y_test.max())) + 1

    def design(x: torch.Tensor) -> torch.Tensor:
        return torch.cat([x.double(), torch.ones(len(x), 1, dtype=torch.float64)], dim=1)

    X = design(x_train)
    Y = F.one_hot(y_train.long(), K).double()
    W = torch.linalg.solve(X.T @ X + ridge * torch.eye(X.shape[1], dtype=torch.float64), X.T @ Y)
    return float((design(x_test) @ W).argmax(-1).eq(y_test).double().mean())


def check_ridge_probe_accuracy(fn: Callable[..., float], **kwargs) -> bool:
    """``fn(x_train, y_train, x_test, y_test, ridge) -> float``: held-out accuracy of a ridge probe.

    Append a column of ones to the features, regress the one-hot labels (K = largest label + 1
    columns) with ``W = (X^T X + ridge * I)^-1 X^T Y``, predict the argmax of ``X_test W``.
    """

    def make_case(gen: torch.Generator) -> Case:
        K, D = int(torch.randint(2, 5, (1,), generator=gen)), int(torch.randint(8, 40, (1,), generator=gen))
        n_train, n_test = int(torch.randint(20, 60, (1,), generator=gen)), 200
        centers = torch.randn(K, D, generator=gen, dtype=torch.float64)
        y = torch.randint(K, (n_train + n_test,), generator=gen)
        x = centers[y] + torch.randn(n_train + n_test, D, generator=gen, dtype=torch.float64) * 1.5 + 3.0
        ridge = float(torch.rand(1, generator=gen)) * 10 + 0.5
        return x[:n_train], y[:n_train], x[n_train:], y[n_train:], ridge

    return check(
        fn,
        reference_ridge_probe_accuracy,
        make_case,
        name="ridge_probe_accuracy",
        hint="report accuracy on the TEST points (training accuracy of a probe with as many weights "
        "as points is close to 1 and says nothing); add the ones column before solving, put ridge "
        "on the diagonal of X^T X (all D + 1 entries), and take the argmax over classes.",
        atol=1e-9,
        rtol=0.0,
        **kwargs,
    )
