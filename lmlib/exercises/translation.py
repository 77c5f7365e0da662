"""Exercise checkers for chapter 5, notebook 02 (machine translation): the pieces of BLEU.

BLEU {Papineni et al. 2002} scores a translation by its modified n-gram precisions (each n-gram
of the candidate counts at most as often as it occurs in a single reference) and a brevity
penalty. The references here are sacrebleu's own numbers.
"""
from __future__ import annotations

from collections import Counter
from collections.abc import Callable

import torch

from lmlib.exercises.core import Case, check

__all__ = [
    "check_modified_precision",
    "reference_modified_precision",
    "check_corpus_bleu",
    "reference_corpus_bleu",
]


def _ngrams(tokens: list, n: int) -> Counter:
    return Counter(tuple(tokens[i: i + n]) for i in range(len(tokens) - n + 1))


def reference_modified_precision(candidate: list[int], references: list[list[int]], n: int) -> tuple[int, int]:
    """(clipped matches, candidate n-grams): each n-gram counts at most its largest count in one reference."""
    counts = _ngrams(candidate, n)
    best: Counter = Counter()
    for ref in references:
        best |= _ngrams(ref, n)  # element-wise maximum over the references
    return sum(min(c, best[g]) for g, c in counts.items()), sum(counts.values())


def _token_list(gen: torch.Generator, vocab: int, lo: int, hi: int) -> list[int]:
    return torch.randint(vocab, (int(torch.randint(lo, hi, (1,), generator=gen)),), generator=gen).tolist()


def check_modified_precision(fn: Callable[[list[int], list[list[int]], int], tuple[int, int]], **kwargs) -> bool:
    """``fn(candidate, references, n) -> (clipped matches, total n-grams)`` for lists of token ids."""

    def make_case(gen: torch.Generator) -> Case:
        vocab = int(torch.randint(2, 6, (1,), generator=gen))  # few distinct tokens: many repeats
        n_refs = int(torch.randint(1, 4, (1,), generator=gen))
        refs = [_token_list(gen, vocab, 1, 12) for _ in range(n_refs)]
        return _token_list(gen, vocab, 0, 12), refs, int(torch.randint(1, 5, (1,), generator=gen))

    return check(
        fn,
        reference_modified_precision,
        make_case,
        name="modified_precision",
        hint="count the candidate's n-grams; for each one, the matches are min(its count in the candidate, "
        "the MAXIMUM of its counts over the references), not the sum over references and not unclipped. "
        "The total is the number of candidate n-grams (len - n + 1, or 0 when shorter than n).",
        fixed_cases=(([7, 7, 7, 7], [[7, 3, 7], [3, 7]], 1),  # the "the the the" example: 2 of 4
                     ([1, 2], [[1, 2, 3]], 3), ([1, 2, 1, 2], [[1, 2], [2, 1, 2]], 2)),
        **kwargs,
    )


def reference_corpus_bleu(candidates: list[list[int]], references: list[list[int]]) -> float:
    """Corpus BLEU (0-100, one reference per sentence, no smoothing) as sacrebleu computes it."""
    import sacrebleu

    hyps = [" ".join(map(str, c)) for c in candidates]
    refs = [[" ".join(map(str, r)) for r in references]]
    return float(sacrebleu.corpus_bleu(hyps, refs, tokenize="none", smooth_method="none").score)


def check_corpus_bleu(fn: Callable[[list[list[int]], list[list[int]]], float], **kwargs) -> bool:
    """``fn(candidates, references) -> BLEU`` in [0, 100]; one reference per candidate, max order 4."""

    def make_case(gen: torch.Generator) -> Case:
        vocab = int(torch.randint(5, 12, (1,), generator=gen))
        refs, cands = [], []
        for _ in range(int(torch.randint(2, 8, (1,), generator=gen))):
            ref = _token_list(gen, vocab, 4, 15)
            cand = [t for t in ref if torch.rand(1, generator=gen) > 0.2]  # drop some words
            cand = [t if torch.rand(1, generator=gen) > 0.2 else int(torch.randint(vocab, (1,), generator=gen))
                    for t in cand]  # and change some
            refs.append(ref)
            cands.append(cand + ref[:int(torch.randint(0, 4, (1,), generator=gen))])  # sometimes longer
        return cands, refs

    return check(
        fn,
        reference_corpus_bleu,
        make_case,
        name="corpus_bleu",
        hint="sum clipped matches and candidate n-grams over the WHOLE corpus for each n = 1..4 before "
        "dividing (no per-sentence averages); BLEU = 100 * BP * exp(mean of the 4 log precisions), with "
        "BP = 1 if c > r else exp(1 - r / c), c and r the total candidate and reference lengths; any "
        "zero precision gives 0.",
        fixed_cases=(([[1, 2, 3, 4, 5]], [[1, 2, 3, 4, 5]]), ([[1, 2, 3, 4]], [[1, 2, 3, 4, 5, 6]]),
                     ([[1, 2, 3]], [[3, 2, 1]])),
        rtol=1e-6,
        atol=1e-6,
        **kwargs,
    )

