"""Exercise checkers for chapter 6, "Privacy and memorization" (canaries and exposure)."""
from __future__ import annotations

from collections.abc import Callable

import torch

from lmlib.exercises.core import Case, check
from lmlib.privacy import estimated_exposure, exposure, plant, rank_of

__all__ = [
    "check_exposure",
    "reference_exposure",
    "check_estimated_exposure",
    "reference_estimated_exposure",
    "check_plant_canary",
    "reference_plant_canary",
]


def reference_exposure(log_perplexities: torch.Tensor, index: int) -> float:
    return exposure(rank_of(log_perplexities, index), len(log_perplexities))


def check_exposure(fn: Callable[[torch.Tensor, int], float], **kwargs) -> bool:
    """``fn(log_perplexities (N,), index) -> float``: exposure in bits of candidate ``index`` among all N."""

    def make_case(gen: torch.Generator) -> Case:
        n = int(torch.randint(2, 300, (1,), generator=gen))
        # rounded to one decimal, so ties occur
        lps = (torch.rand(n, generator=gen, dtype=torch.float64) * 20).round(decimals=1)
        return lps, int(torch.randint(n, (1,), generator=gen))

    ties = torch.tensor([3.0, 1.0, 3.0, 2.0, 3.0, 5.0], dtype=torch.float64)
    return check(
        fn,
        reference_exposure,
        make_case,
        name="exposure",
        hint="rank = how many candidates have a log-perplexity <= the canary's (itself included, so rank >= 1, "
        "and ties count against the canary); exposure = log2(N) - log2(rank), in bits (base 2).",
        fixed_cases=((ties, 0), (ties, 1), (ties, 5)),
        **kwargs,
    )


def reference_estimated_exposure(canary_log_perplexity: float, sample_log_perplexities: torch.Tensor) -> float:
    return estimated_exposure(canary_log_perplexity, sample_log_perplexities)


def check_estimated_exposure(fn: Callable[[float, torch.Tensor], float], **kwargs) -> bool:
    """``fn(canary_log_perplexity, sample_log_perplexities (m,)) -> float``: the sampling estimate of exposure."""

    def make_case(gen: torch.Generator) -> Case:
        m = int(torch.randint(1, 500, (1,), generator=gen))
        sample = torch.randn(m, generator=gen, dtype=torch.float64) * 3 + 20
        return float(torch.randn(1, generator=gen, dtype=torch.float64) * 4 + 14), sample

    return check(
        fn,
        reference_estimated_exposure,
        make_case,
        name="estimated_exposure",
        hint="count the k sampled candidates with log-perplexity <= the canary's; the canary itself makes "
        "the fraction (k + 1) / (m + 1), so the estimate is log2(m + 1) - log2(k + 1) and never infinite.",
        fixed_cases=((1.0, torch.tensor([2.0, 3.0, 4.0], dtype=torch.float64)),
                     (3.0, torch.tensor([2.0, 3.0, 4.0], dtype=torch.float64))),
        **kwargs,
    )


def reference_plant_canary(docs: list[str], text: str, k: int) -> list[str]:
    return plant(docs, [text], [k], seed=0)


def _summary(fn: Callable[[list[str], str, int], list[str]]) -> Callable:
    """What any correct answer shares (insertion places are random): length, copies, order of the rest."""

    def run(docs: list[str], text: str, k: int) -> tuple:
        original = list(docs)
        out = fn(list(docs), text, k)
        if not isinstance(out, list) or not all(isinstance(d, str) for d in out):
            raise TypeError(f"return a list of strings (documents), got {type(out).__name__}")
        return len(out), out.count(text), [d for d in out if d != text] == original

    return run


def check_plant_canary(fn: Callable[[list[str], str, int], list[str]], **kwargs) -> bool:
    """``fn(docs, text, k) -> list of documents``: ``docs`` in order with ``k`` copies of ``text`` inserted."""

    def make_case(gen: torch.Generator) -> Case:
        n = int(torch.randint(1, 40, (1,), generator=gen))
        docs = [f"document {int(i)}" for i in torch.randint(1000, (n,), generator=gen)]
        return docs, "my number is 0451", int(torch.randint(0, 30, (1,), generator=gen))

    return check(
        _summary(fn),
        _summary(reference_plant_canary),
        make_case,
        name="plant_canary",
        hint="return a new list with every original document, in its original order, plus exactly k "
        "copies of the canary text as separate documents (k = 0 plants nothing).",
        fixed_cases=((["a", "b", "c"], "SECRET", 0), (["a"], "SECRET", 5)),
        **kwargs,
    )
