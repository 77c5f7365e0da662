"""Exercise checkers for chapter 1, Background (language models, perplexity, n-grams)."""
from __future__ import annotations

from collections.abc import Callable

import torch

from lmlib.exercises.core import Case, check

__all__ = ["check_perplexity", "check_bigram_probs", "reference_perplexity", "reference_bigram_probs"]


def reference_perplexity(target_probs: torch.Tensor) -> float:
    from lmlib.metrics import perplexity

    return perplexity(target_probs)


def check_perplexity(fn: Callable[[torch.Tensor], float], **kwargs) -> bool:
    """``fn(target_probs) -> float``: perplexity from the probabilities of the tokens that occurred."""

    def make_case(gen: torch.Generator) -> Case:
        n = int(torch.randint(1, 50, (1,), generator=gen))
        return (torch.rand(n, generator=gen, dtype=torch.float64) * 0.99 + 0.01,)

    return check(
        fn,
        reference_perplexity,
        make_case,
        name="perplexity",
        hint="perplexity = exp(mean(-log p)): average the negative log-probabilities first, then exponentiate.",
        fixed_cases=((torch.tensor([1.0, 1.0], dtype=torch.float64),), (torch.tensor([0.25] * 4, dtype=torch.float64),)),
        **kwargs,
    )


def reference_bigram_probs(ids: torch.Tensor, vocab_size: int, k: float) -> torch.Tensor:
    counts = torch.zeros(vocab_size, vocab_size, dtype=torch.float64)
    counts.index_put_((ids[:-1], ids[1:]), torch.ones(len(ids) - 1, dtype=torch.float64), accumulate=True)
    counts += k
    return counts / counts.sum(dim=1, keepdim=True)


def check_bigram_probs(fn: Callable[[torch.Tensor, int, float], torch.Tensor], **kwargs) -> bool:
    """``fn(ids, vocab_size, k) -> (V, V)`` add-k smoothed bigram table, row = previous token."""

    def make_case(gen: torch.Generator) -> Case:
        vocab = int(torch.randint(2, 12, (1,), generator=gen))
        ids = torch.randint(vocab, (int(torch.randint(2, 200, (1,), generator=gen)),), generator=gen)
        k = float(torch.rand(1, generator=gen)) + 0.1
        return ids, vocab, k

    return check(
        fn,
        reference_bigram_probs,
        make_case,
        name="bigram_probs",
        hint="count every (previous, next) pair, add k to every cell (also the zeros), "
        "then divide each row by its own sum so that each row is a distribution over the next token.",
        fixed_cases=((torch.tensor([0, 1, 0, 1]), 3, 1.0),),
        **kwargs,
    )
