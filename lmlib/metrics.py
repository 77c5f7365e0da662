"""Evaluation metrics.

Perplexity is derived in chapter 1 ("What a language model is"); chapter 5 adds classification,
translation and span metrics.
"""
from __future__ import annotations

import math

import torch


def perplexity(target_probs: torch.Tensor) -> float:
    """exp of the average negative log-probability that a model gave the tokens that occurred.

    ``target_probs`` holds, for each position, the probability of the token that actually came
    next. A single zero makes the perplexity infinite: that is why unsmoothed n-gram models
    cannot be evaluated on text with unseen n-grams.
    """
    target_probs = torch.as_tensor(target_probs, dtype=torch.float64)
    if target_probs.numel() == 0:
        raise ValueError("perplexity needs at least one token probability, got none.")
    if ((target_probs < 0) | (target_probs > 1)).any():
        raise ValueError("perplexity takes probabilities in [0, 1]; got values outside that range.")
    return perplexity_from_nll(-torch.log(target_probs).mean().item())


def perplexity_from_nll(mean_nll: float) -> float:
    """Perplexity from a mean negative log-likelihood in nats (a cross-entropy loss)."""
    return math.exp(mean_nll) if mean_nll < 709 else math.inf  # exp overflows float64 past ~709


def perplexity_from_log_probs(target_log_probs: torch.Tensor) -> float:
    """Perplexity from natural-log probabilities of the tokens that occurred (chapter 1).

    Neural models give log-probabilities directly (``log_softmax``); working in logs avoids the
    underflow of multiplying many small probabilities.
    """
    target_log_probs = torch.as_tensor(target_log_probs, dtype=torch.float64)
    if target_log_probs.numel() == 0:
        raise ValueError("perplexity needs at least one token log-probability, got none.")
    if (target_log_probs > 1e-9).any() or target_log_probs.isnan().any():
        raise ValueError("log-probabilities must be <= 0 (and not NaN); did you pass logits or probabilities?")
    return perplexity_from_nll(-target_log_probs.mean().item())


def perplexity_from_logits(logits: torch.Tensor, targets: torch.Tensor) -> float:
    """Perplexity of unnormalised scores ``logits`` (N, V) for next tokens ``targets`` (N,) (chapter 1)."""
    if logits.dim() != 2 or targets.dim() != 1 or logits.shape[0] != targets.shape[0]:
        raise ValueError(
            f"Expected logits (N, V) and targets (N,), got {tuple(logits.shape)} and {tuple(targets.shape)}; "
            "flatten batch and time first, e.g. logits.flatten(0, 1) and targets.flatten()."
        )
    if targets.numel() == 0:
        raise ValueError("perplexity needs at least one target token, got none.")
    if targets.min() < 0 or targets.max() >= logits.shape[1]:
        raise ValueError(f"targets must be token ids in [0, {logits.shape[1]}), the width of logits.")
    nll = torch.nn.functional.cross_entropy(logits.double(), targets)
    return perplexity_from_nll(nll.item())


def bits_per_token(mean_nll: float) -> float:
    """A cross-entropy in nats converted to bits (divide by ln 2); perplexity = 2 ** bits (chapter 1)."""
    return mean_nll / math.log(2)


# --- Chapter 5: classification metrics -----------------------------------------------------------

def _as_labels(y: torch.Tensor, name: str) -> torch.Tensor:
    y = torch.as_tensor(y)
    if y.dim() != 1 or y.dtype.is_floating_point or y.dtype == torch.bool:
        raise ValueError(f"{name} must be a 1-D tensor of integer class ids, got shape {tuple(y.shape)} "
                         f"and dtype {y.dtype}; take logits.argmax(-1) first.")
    return y.long()


def confusion_matrix(y_true: torch.Tensor, y_pred: torch.Tensor, n_classes: int | None = None) -> torch.Tensor:
    """Counts (n_classes, n_classes): row = true class, column = predicted class (chapter 5)."""
    y_true, y_pred = _as_labels(y_true, "y_true"), _as_labels(y_pred, "y_pred")
    if y_true.shape != y_pred.shape or y_true.numel() == 0:
        raise ValueError(f"y_true and y_pred must be non-empty and the same length, got {len(y_true)} and {len(y_pred)}.")
    if n_classes is None:
        n_classes = int(max(y_true.max(), y_pred.max())) + 1
    if min(y_true.min(), y_pred.min()) < 0 or max(y_true.max(), y_pred.max()) >= n_classes:
        raise ValueError(f"class ids must be in [0, {n_classes}).")
    return torch.bincount(y_true * n_classes + y_pred, minlength=n_classes * n_classes).view(n_classes, n_classes)


def accuracy(y_true: torch.Tensor, y_pred: torch.Tensor) -> float:
    """Fraction of predictions equal to the true class (chapter 5)."""
    cm = confusion_matrix(y_true, y_pred)
    return cm.diag().sum().item() / cm.sum().item()


def precision_recall_f1(y_true: torch.Tensor, y_pred: torch.Tensor, positive: int = 1,
                        n_classes: int | None = None) -> tuple[float, float, float]:
    """Precision, recall and F1 of class ``positive``, from the confusion matrix (chapter 5).

    precision = TP / (TP + FP), recall = TP / (TP + FN), F1 = their harmonic mean. A ratio whose
    denominator is zero (no positive predicted, or none present) is defined as 0.
    """
    cm = confusion_matrix(y_true, y_pred, n_classes).double()
    if not 0 <= positive < cm.shape[0]:
        raise ValueError(f"positive={positive} is not a class id in [0, {cm.shape[0]}).")
    tp = cm[positive, positive].item()
    predicted, actual = cm[:, positive].sum().item(), cm[positive].sum().item()
    precision = tp / predicted if predicted else 0.0
    recall = tp / actual if actual else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return precision, recall, f1


@torch.no_grad()
def stream_nll(model: torch.nn.Module, tokens: torch.Tensor, block_size: int, batch_size: int = 16) -> float:
    """Mean next-token loss (nats) of a language model over a whole 1-D token stream.

    The stream is cut into non-overlapping windows of ``block_size + 1`` tokens, so every token
    after a window's first is scored exactly once (the tail shorter than a window is left out);
    this is the held-out perplexity of chapter 4, comparable with an n-gram model's on the same
    tokens. ``model(x)`` must return logits ``(B, T, V)`` (or a tuple that starts with them).
    """
    tokens = torch.as_tensor(tokens).long().flatten()
    n = (len(tokens) - 1) // block_size
    if n < 1:
        raise ValueError(f"stream_nll needs more than block_size={block_size} tokens, got {len(tokens)}.")
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    starts = torch.arange(n) * block_size
    offsets = torch.arange(block_size)
    for i in range(0, n, batch_size):
        s = starts[i:i + batch_size, None] + offsets
        x, y = tokens[s].to(device), tokens[s + 1].to(device)
        out = model(x)
        logits = out[0] if isinstance(out, tuple) else out
        total += torch.nn.functional.cross_entropy(logits.float().flatten(0, 1), y.flatten(), reduction="sum").item()
        count += y.numel()
    model.train(was_training)
    return total / count
