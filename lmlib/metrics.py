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
