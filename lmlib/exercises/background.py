"""Exercise checkers for chapter 1, Background (language models, perplexity, n-grams)."""
from __future__ import annotations

from collections.abc import Callable

import torch

from lmlib.exercises.core import Case, check
from lmlib.metrics import perplexity, perplexity_from_logits
from lmlib.model import num_params
from lmlib.rnn import RNNLM

__all__ = [
    "check_perplexity",
    "check_bigram_probs",
    "reference_perplexity",
    "reference_bigram_probs",
    "check_ngram_counts",
    "reference_ngram_counts",
    "check_continuation_counts",
    "reference_continuation_counts",
    "check_kneser_ney_bigram",
    "reference_kneser_ney_bigram",
    "check_perplexity_from_logits",
    "reference_perplexity_from_logits",
    "check_lstm_parameter_count",
    "reference_lstm_parameter_count",
    "check_doubling_time",
    "reference_doubling_time",
]


def reference_perplexity(target_probs: torch.Tensor) -> float:
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


def reference_ngram_counts(ids: list[int], n: int) -> dict[tuple[int, ...], int]:
    counts: dict[tuple[int, ...], int] = {}
    for t in range(len(ids) - n + 1):
        gram = tuple(ids[t : t + n])
        counts[gram] = counts.get(gram, 0) + 1
    return counts


def check_ngram_counts(fn: Callable[[list[int], int], dict], **kwargs) -> bool:
    """``fn(ids, n) -> {n-gram tuple: count}`` for a list of token ids (chapter 1, n-gram models)."""

    def make_case(gen: torch.Generator) -> Case:
        vocab = int(torch.randint(2, 6, (1,), generator=gen))
        length = int(torch.randint(1, 40, (1,), generator=gen))
        return torch.randint(vocab, (length,), generator=gen).tolist(), int(torch.randint(1, 5, (1,), generator=gen))

    return check(
        fn,
        reference_ngram_counts,
        make_case,
        name="ngram_counts",
        hint="a text of L tokens has L - n + 1 n-grams (none if L < n): slide a window of n tokens "
        "one step at a time, including the last window, and use tuples as dictionary keys.",
        fixed_cases=(([0, 1, 0, 1], 2), ([3, 3, 3], 3), ([1, 2], 3)),
        **kwargs,
    )


def reference_continuation_counts(ids: torch.Tensor, vocab_size: int) -> torch.Tensor:
    seen = torch.zeros(vocab_size, vocab_size, dtype=torch.bool)
    seen[ids[:-1], ids[1:]] = True
    return seen.sum(dim=0)


def check_continuation_counts(fn: Callable[[torch.Tensor, int], torch.Tensor], **kwargs) -> bool:
    """``fn(ids, vocab_size) -> (V,)`` N1+(. w): how many distinct words occur right before w."""

    def make_case(gen: torch.Generator) -> Case:
        vocab = int(torch.randint(2, 10, (1,), generator=gen))
        return torch.randint(vocab, (int(torch.randint(2, 60, (1,), generator=gen)),), generator=gen), vocab

    return check(
        fn,
        reference_continuation_counts,
        make_case,
        name="continuation_counts",
        hint="count distinct predecessors, not occurrences: the pair (v, w) counts once for w however "
        "often it occurs. The result has one entry per vocabulary word (zeros included).",
        fixed_cases=((torch.tensor([0, 1, 0, 1, 2, 1]), 4),),
        **kwargs,
    )


def reference_kneser_ney_bigram(ids: torch.Tensor, vocab_size: int, discount: float) -> torch.Tensor:
    V, D = vocab_size, discount
    counts = torch.zeros(V, V, dtype=torch.float64)
    counts.index_put_((ids[:-1], ids[1:]), torch.ones(len(ids) - 1, dtype=torch.float64), accumulate=True)
    cont = (counts > 0).sum(dim=0).double()
    p1 = (cont - D).clamp(min=0) / cont.sum() + D * (cont > 0).sum() / cont.sum() / V
    den = counts.sum(dim=1, keepdim=True)
    types = (counts > 0).sum(dim=1, keepdim=True)
    safe = den.clamp(min=1)
    table = (counts - D).clamp(min=0) / safe + D * types / safe * p1
    return torch.where(den > 0, table, p1.expand(V, V))


def check_kneser_ney_bigram(fn: Callable[[torch.Tensor, int, float], torch.Tensor], **kwargs) -> bool:
    """``fn(ids, vocab_size, discount) -> (V, V)`` interpolated Kneser-Ney bigram table, row = previous word."""

    def make_case(gen: torch.Generator) -> Case:
        vocab = int(torch.randint(2, 10, (1,), generator=gen))
        ids = torch.randint(vocab, (int(torch.randint(3, 80, (1,), generator=gen)),), generator=gen)
        return ids, vocab + int(torch.randint(0, 2, (1,), generator=gen)), float(torch.rand(1, generator=gen)) * 0.8 + 0.1

    return check(
        fn,
        reference_kneser_ney_bigram,
        make_case,
        name="kneser_ney_bigram",
        hint="lower order: P1(w) = max(N1+(. w) - D, 0) / N1+(. .) + D * #{w: N1+(. w) > 0} / N1+(. .) / V; "
        "row a: max(c(a w) - D, 0) / c(a) + D * #{w: c(a w) > 0} / c(a) * P1(w); a row whose word never "
        "precedes anything (c(a) = 0) is P1 itself.",
        fixed_cases=((torch.tensor([0, 1, 2, 1, 0, 1]), 3, 0.5), (torch.tensor([0, 1, 2, 1, 0, 1]), 4, 0.5)),
        **kwargs,
    )


def reference_perplexity_from_logits(logits: torch.Tensor, targets: torch.Tensor) -> float:
    return perplexity_from_logits(logits, targets)


def check_perplexity_from_logits(fn: Callable[[torch.Tensor, torch.Tensor], float], **kwargs) -> bool:
    """``fn(logits (N, V), targets (N,)) -> float``: perplexity of a neural model's raw scores."""

    def make_case(gen: torch.Generator) -> Case:
        n, vocab = int(torch.randint(1, 30, (1,), generator=gen)), int(torch.randint(2, 50, (1,), generator=gen))
        logits = torch.randn(n, vocab, generator=gen, dtype=torch.float64) * 3 + 5
        return logits, torch.randint(vocab, (n,), generator=gen)

    return check(
        fn,
        reference_perplexity_from_logits,
        make_case,
        name="perplexity_from_logits",
        hint="turn logits into log-probabilities with log_softmax over the vocabulary (dim=-1), pick "
        "each target's entry, average the negatives, exponentiate (F.cross_entropy does the first three).",
        fixed_cases=((torch.zeros(4, 10, dtype=torch.float64), torch.tensor([0, 3, 9, 1])),),
        **kwargs,
    )


def reference_lstm_parameter_count(vocab_size: int, emb_dim: int, hidden_dim: int, num_layers: int) -> int:
    return num_params(RNNLM(vocab_size, emb_dim, hidden_dim, num_layers, cell="lstm"))


def check_lstm_parameter_count(fn: Callable[[int, int, int, int], int], **kwargs) -> bool:
    """``fn(vocab_size, emb_dim, hidden_dim, num_layers) -> int``: parameters of ``lmlib.rnn.RNNLM`` (LSTM, full softmax)."""

    def make_case(gen: torch.Generator) -> Case:
        return tuple(int(torch.randint(lo, hi, (1,), generator=gen)) for lo, hi in ((5, 300), (1, 40), (1, 40), (1, 4)))

    return check(
        fn,
        reference_lstm_parameter_count,
        make_case,
        name="lstm_parameter_count",
        hint="embedding V*E; each LSTM layer has 4 gates, each with an input matrix (4H x input), a "
        "recurrent matrix (4H x H) and PyTorch's two bias vectors (b_ih and b_hh); layer 1's input "
        "is E, later layers' is H; output layer H*V + V.",
        fixed_cases=((10, 4, 3, 1), (10, 4, 3, 2)),
        **kwargs,
    )


def reference_doubling_time(years: torch.Tensor, params: torch.Tensor) -> float:
    x = years.double() - years.double().mean()
    y = torch.log2(params.double())
    slope = (x * (y - y.mean())).sum() / (x * x).sum()
    return float(1.0 / slope)


def check_doubling_time(fn: Callable[[torch.Tensor, torch.Tensor], float], **kwargs) -> bool:
    """``fn(years, params) -> float``: doubling time in years from a least-squares fit of log2(params) on year."""

    def make_case(gen: torch.Generator) -> Case:
        n = int(torch.randint(3, 12, (1,), generator=gen))
        years = 2000 + torch.randperm(25, generator=gen)[:n].sort().values.double()
        doubling = float(torch.rand(1, generator=gen)) * 2 + 0.3
        noise = torch.randn(n, generator=gen, dtype=torch.float64) * 0.5
        return years, 1e6 * 2 ** ((years - 2000) / doubling + noise)

    return check(
        fn,
        reference_doubling_time,
        make_case,
        name="doubling_time",
        hint="fit a straight line to log2(params) against year by least squares (slope = "
        "cov(year, log2 p) / var(year)); the parameter count doubles every 1 / slope years.",
        fixed_cases=((torch.tensor([2018.0, 2019.0, 2020.0]), torch.tensor([1e8, 4e8, 1.6e9])),),
        rtol=1e-6,
        **kwargs,
    )
