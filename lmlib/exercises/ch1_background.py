"""Exercise checkers for chapter 1, Background.

Notebook 01 (language models): ``check_perplexity``, ``check_bigram_probs``; notebook 02 (n-gram
models): ``check_ngram_counts``, ``check_continuation_counts``, ``check_kneser_ney_bigram``;
notebook 03 (neural language models): ``check_bigram_logit_gradient`` (the count model as a
minimum), ``check_perplexity_from_logits``,
``check_lstm_parameter_count``; notebook 04 (timeline): ``check_doubling_time``.
"""
from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F

from lmlib.exercises.core import Case, Mistake, Result, check, randint
from lmlib.metrics import perplexity, perplexity_from_logits
from lmlib.model import num_params
from lmlib.ngram import NGramCounts, NGramLM, bigram_count_matrix, count_nll_gradient
from lmlib.rnn import RNNLM

__all__ = [
    "check_perplexity", "reference_perplexity",
    "check_bigram_probs", "reference_bigram_probs",
    "check_ngram_counts", "reference_ngram_counts",
    "check_continuation_counts", "reference_continuation_counts",
    "check_kneser_ney_bigram", "reference_kneser_ney_bigram",
    "check_bigram_logit_gradient", "reference_bigram_logit_gradient",
    "check_perplexity_from_logits", "reference_perplexity_from_logits",
    "check_lstm_parameter_count", "reference_lstm_parameter_count",
    "check_doubling_time", "reference_doubling_time",
]


def _f64(values) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float64)


# --- notebook 01 --------------------------------------------------------------------------------

def reference_perplexity(target_probs: torch.Tensor) -> float:
    return perplexity(target_probs)


def check_perplexity(fn: Callable[[torch.Tensor], float], **options) -> Result:
    """``fn(target_probs) -> float``: perplexity from the probabilities of the tokens that occurred."""

    def make_case(gen: torch.Generator) -> Case:
        n = randint(gen, 1, 50)
        return (torch.rand(n, generator=gen, dtype=torch.float64) * 0.99 + 0.01,)

    return check(
        fn, reference_perplexity, make_case,
        hint="perplexity = exp(mean(-log p)): average the negative log-probabilities first, then exponentiate.",
        edge_cases=((_f64([1.0, 1.0]),), (_f64([0.25] * 4),), (_f64([0.5]),),
                    (torch.full((2000,), 0.01, dtype=torch.float64),)),  # the product of the p underflows to 0
        mistakes=(
            Mistake("you returned the average negative log-probability (the cross-entropy); the "
                    "perplexity is exp of it", lambda p: float(-p.log().mean())),
            Mistake("you inverted the average probability; average the log-probabilities instead: "
                    "exp(mean(-log p))", lambda p: float(1 / p.mean())),
            Mistake("you averaged the inverse probabilities 1/p; the perplexity is a geometric mean: "
                    "exp(mean(-log p))", lambda p: float((1 / p).mean())),
        ),
        **options,
    )


def reference_bigram_probs(ids: torch.Tensor, vocab_size: int, k: float) -> torch.Tensor:
    model = NGramLM(ids, 2, vocab_size, smoothing="add-k", k=k)
    return torch.stack([model.next_token_probs([a]) for a in range(vocab_size)])


def check_bigram_probs(fn: Callable[[torch.Tensor, int, float], torch.Tensor], **options) -> Result:
    """``fn(ids, vocab_size, k) -> (V, V)`` add-k smoothed bigram table, row = previous token."""

    def make_case(gen: torch.Generator) -> Case:
        vocab = randint(gen, 2, 12)
        ids = torch.randint(vocab, (randint(gen, 2, 200),), generator=gen)
        return ids, vocab, float(torch.rand(1, generator=gen)) + 0.1

    def seen_only(ids, v, k):
        counts = bigram_count_matrix(ids, v)
        counts[counts > 0] += k
        return counts / counts.sum(1, keepdim=True).clamp(min=1e-300)

    return check(
        fn, reference_bigram_probs, make_case,
        hint="count every (previous, next) pair, add k to every cell (also the zeros), then divide "
        "each row by its own sum so that each row is a distribution over the next token.",
        edge_cases=((torch.tensor([0, 1, 0, 1]), 3, 1.0), (torch.tensor([1, 1]), 2, 0.5)),
        mistakes=(
            Mistake("you added k only to the pairs that occurred; add-k adds k to every cell, also "
                    "to the pairs never seen (that is the point of smoothing)", seen_only),
            Mistake("you added k after normalising; add k to the counts, then divide each row by its "
                    "new sum", lambda ids, v, k: (lambda c: c / c.sum(1, keepdim=True).clamp(min=1) + k)(
                        bigram_count_matrix(ids, v))),
        ),
        **options,
    )


# --- notebook 02 --------------------------------------------------------------------------------

def reference_ngram_counts(ids: list[int], n: int) -> dict[tuple[int, ...], int]:
    counts: dict[tuple[int, ...], int] = {}
    for t in range(len(ids) - n + 1):
        gram = tuple(ids[t: t + n])
        counts[gram] = counts.get(gram, 0) + 1
    return counts


def check_ngram_counts(fn: Callable[[list[int], int], dict], **options) -> Result:
    """``fn(ids, n) -> {n-gram tuple: count}`` for a list of token ids."""

    def make_case(gen: torch.Generator) -> Case:
        vocab, length = randint(gen, 2, 6), randint(gen, 1, 40)
        return torch.randint(vocab, (length,), generator=gen).tolist(), randint(gen, 1, 5)

    return check(
        fn, reference_ngram_counts, make_case,
        hint="a text of L tokens has L - n + 1 n-grams (none if L < n): slide a window of n tokens "
        "one step at a time, including the last window, and use tuples as dictionary keys.",
        edge_cases=(([0, 1, 0, 1], 2), ([3, 3, 3], 3), ([1, 2], 3), ([5], 1)),
        mistakes=(
            Mistake("you missed the last window: a text of L tokens has L - n + 1 n-grams, so the "
                    "loop runs over range(len(ids) - n + 1)", lambda ids, n: reference_ngram_counts(ids[:-1], n)),
            Mistake("you counted (n-1)-grams: each key should hold n ids",
                    lambda ids, n: reference_ngram_counts(ids, n - 1) if n > 1 else None),
        ),
        **options,
    )


def reference_continuation_counts(ids: torch.Tensor, vocab_size: int) -> torch.Tensor:
    return NGramCounts(ids, 2, vocab_size).order(1).continuation


def check_continuation_counts(fn: Callable[[torch.Tensor, int], torch.Tensor], **options) -> Result:
    """``fn(ids, vocab_size) -> (V,)`` N1+(. w): how many distinct words occur right before w."""

    def make_case(gen: torch.Generator) -> Case:
        vocab = randint(gen, 2, 10)
        return torch.randint(vocab, (randint(gen, 2, 60),), generator=gen), vocab

    def seen(ids, v):
        table = torch.zeros(v, v, dtype=torch.bool)
        table[ids[:-1], ids[1:]] = True
        return table

    return check(
        fn, reference_continuation_counts, make_case,
        hint="count distinct predecessors, not occurrences: the pair (v, w) counts once for w however "
        "often it occurs. The result has one entry per vocabulary word (zeros included).",
        edge_cases=((torch.tensor([0, 1, 0, 1, 2, 1]), 4), (torch.tensor([1, 1]), 2)),
        mistakes=(
            Mistake("you counted occurrences; N1+(. w) counts distinct predecessors: the pair (v, w) "
                    "counts once however often it occurs", lambda ids, v: torch.bincount(ids[1:], minlength=v)),
            Mistake("you counted the distinct words that FOLLOW w (the rows of the pair table); "
                    "N1+(. w) counts the distinct words right before w (its column)",
                    lambda ids, v: seen(ids, v).sum(1)),
        ),
        **options,
    )


def reference_kneser_ney_bigram(ids: torch.Tensor, vocab_size: int, discount: float) -> torch.Tensor:
    model = NGramLM(ids, 2, vocab_size, smoothing="kneser-ney", discount=discount)
    return torch.stack([model.next_token_probs([a]) for a in range(vocab_size)])


def _kn_with_lower_order(ids: torch.Tensor, V: int, D: float, p1: torch.Tensor, unseen_rows: str = "p1"):
    counts = bigram_count_matrix(ids, V)
    den = counts.sum(1, keepdim=True)
    types = (counts > 0).sum(1, keepdim=True)
    table = (counts - D).clamp(min=0) / den + D * types / den * p1
    if unseen_rows == "p1":
        return torch.where(den > 0, table, p1.expand(V, V))
    return table if unseen_rows == "nan" else torch.where(den > 0, table, torch.zeros_like(table))


def _kn_p1(ids: torch.Tensor, V: int, D: float) -> torch.Tensor:
    cont = (bigram_count_matrix(ids, V) > 0).sum(0).double()
    return (cont - D).clamp(min=0) / cont.sum() + D * (cont > 0).sum() / cont.sum() / V


def check_kneser_ney_bigram(fn: Callable[[torch.Tensor, int, float], torch.Tensor], **options) -> Result:
    """``fn(ids, vocab_size, discount) -> (V, V)`` interpolated Kneser-Ney bigram table, row = previous word."""

    def make_case(gen: torch.Generator) -> Case:
        vocab = randint(gen, 2, 10)
        ids = torch.randint(vocab, (randint(gen, 3, 80),), generator=gen)
        return ids, vocab + randint(gen, 0, 2), float(torch.rand(1, generator=gen)) * 0.8 + 0.1

    def raw_unigram(ids, V, D):
        uni = torch.bincount(ids, minlength=V).double()
        return _kn_with_lower_order(ids, V, D, uni / uni.sum())

    return check(
        fn, reference_kneser_ney_bigram, make_case,
        hint="lower order: P1(w) = max(N1+(. w) - D, 0) / N1+(. .) + D * #{w: N1+(. w) > 0} / N1+(. .) / V; "
        "row a: max(c(a w) - D, 0) / c(a) + D * #{w: c(a w) > 0} / c(a) * P1(w); a row whose word never "
        "precedes anything (c(a) = 0) is P1 itself.",
        edge_cases=((torch.tensor([0, 1, 2, 1, 0, 1]), 3, 0.5), (torch.tensor([0, 1, 2, 1, 0, 1]), 4, 0.5),
                    (torch.tensor([2, 2, 2]), 3, 0.75)),
        mistakes=(
            Mistake("your lower order uses how often each word occurs; Kneser-Ney's P1 uses continuation "
                    "counts N1+(. w), the number of distinct words before w", raw_unigram),
            Mistake("rows of words that never precede anything are NaN (0 / 0); such a row is P1 itself",
                    lambda ids, V, D: _kn_with_lower_order(ids, V, D, _kn_p1(ids, V, D), "nan")),
            Mistake("rows of words that never precede anything are zeros; such a row is P1 itself, so "
                    "that it still sums to 1",
                    lambda ids, V, D: _kn_with_lower_order(ids, V, D, _kn_p1(ids, V, D), "zeros")),
        ),
        **options,
    )


# --- notebook 03 --------------------------------------------------------------------------------

def reference_bigram_logit_gradient(logits: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
    return count_nll_gradient(logits, counts)


def check_bigram_logit_gradient(fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], **options) -> Result:
    """``fn(logits (V, V), counts (V, V)) -> (V, V)``: the gradient of the mean count-weighted NLL."""

    def make_case(gen: torch.Generator) -> Case:
        v = randint(gen, 2, 8)
        counts = torch.randint(0, 6, (v, v), generator=gen).double()
        counts[randint(gen, 0, v)] = 0.0  # a token never followed by anything
        counts[0, 0] += 1  # at least one pair
        return torch.randn(v, v, generator=gen, dtype=torch.float64), counts

    def unnormalised(logits, counts):
        return counts.sum(1, keepdim=True) * torch.softmax(logits, 1) - counts

    return check(
        fn, reference_bigram_logit_gradient, make_case,
        hint="loss = -sum(counts * log_softmax(logits, rows)) / N; the derivative of log_softmax(z)_b with "
        "respect to z_c is [b == c] - softmax(z)_c, so the gradient of row a is (total_a * softmax(row a) - "
        "counts[a]) / N, with total_a the row's count and N all the counts.",
        edge_cases=((torch.zeros(2, 2, dtype=torch.float64), torch.tensor([[1.0, 3.0], [0.0, 0.0]], dtype=torch.float64)),
                    (torch.log(torch.tensor([[0.25, 0.75], [0.5, 0.5]], dtype=torch.float64)),
                     torch.tensor([[1.0, 3.0], [2.0, 2.0]], dtype=torch.float64))),
        mistakes=(
            Mistake("you did not divide by N, the total number of counted pairs: the loss is a mean",
                    unnormalised),
            Mistake("the softmax term must be weighted by each row's total count (how often the previous "
                    "token occurs), not added once per row",
                    lambda logits, counts: (torch.softmax(logits, 1) - counts) / counts.sum()),
            Mistake("the sign is flipped: the gradient of a loss points uphill, (total * softmax - counts) / N",
                    lambda logits, counts: -count_nll_gradient(logits, counts)),
        ),
        **options,
    )


def reference_perplexity_from_logits(logits: torch.Tensor, targets: torch.Tensor) -> float:
    return perplexity_from_logits(logits, targets)


def check_perplexity_from_logits(fn: Callable[[torch.Tensor, torch.Tensor], float], **options) -> Result:
    """``fn(logits (N, V), targets (N,)) -> float``: perplexity of a neural model's raw scores."""

    def make_case(gen: torch.Generator) -> Case:
        n, vocab = randint(gen, 1, 30), randint(gen, 2, 50)
        logits = torch.randn(n, vocab, generator=gen, dtype=torch.float64) * 3 + 5
        return logits, torch.randint(vocab, (n,), generator=gen)

    def picked(logits, y):
        return logits[torch.arange(len(y)), y]

    return check(
        fn, reference_perplexity_from_logits, make_case,
        hint="turn logits into log-probabilities with log_softmax over the vocabulary (dim=-1), pick "
        "each target's entry, average the negatives, exponentiate (F.cross_entropy does the first three).",
        edge_cases=((torch.zeros(4, 10, dtype=torch.float64), torch.tensor([0, 3, 9, 1])),
                    (_f64([[1000.0, 999.0, 0.0]]), torch.tensor([1])),  # exp(1000) overflows
                    (_f64([[2.0, 0.5, -1.0], [0.0, 3.0, 1.0]]), torch.tensor([0, 2]))),
        mistakes=(
            Mistake("you used the raw logits as log-probabilities; normalise each row with "
                    "log_softmax(dim=-1) first", lambda lg, y: math.exp(-float(picked(lg, y).mean()))),
            Mistake("you normalised over the batch axis (dim=0); each row's softmax runs over the "
                    "vocabulary (dim=-1)", lambda lg, y: math.exp(-float(picked(F.log_softmax(lg, 0), y).mean()))),
            Mistake("you returned the cross-entropy (the mean negative log-probability); the perplexity "
                    "is exp of it", lambda lg, y: float(F.cross_entropy(lg, y))),
        ),
        **options,
    )


def reference_lstm_parameter_count(vocab_size: int, emb_dim: int, hidden_dim: int, num_layers: int) -> int:
    return num_params(RNNLM(vocab_size, emb_dim, hidden_dim, num_layers, cell="lstm"))


def _lstm_count(V: int, E: int, H: int, L: int, biases: int = 2, later_input: str = "H", out_bias: bool = True) -> int:
    def layer(i: int) -> int:
        inp = E if i == 0 or later_input == "E" else H
        return 4 * H * (inp + H) + biases * 4 * H

    return V * E + sum(layer(i) for i in range(L)) + H * V + (V if out_bias else 0)


def check_lstm_parameter_count(fn: Callable[[int, int, int, int], int], **options) -> Result:
    """``fn(vocab_size, emb_dim, hidden_dim, num_layers) -> int``: parameters of ``lmlib.rnn.RNNLM``.

    The model is an LSTM with the full softmax output layer.
    """

    def make_case(gen: torch.Generator) -> Case:
        return randint(gen, 5, 300), randint(gen, 1, 40), randint(gen, 1, 40), randint(gen, 1, 4)

    return check(
        fn, reference_lstm_parameter_count, make_case,
        hint="embedding V*E; each LSTM layer has 4 gates, each with an input matrix (4H x input), a "
        "recurrent matrix (4H x H) and PyTorch's two bias vectors (b_ih and b_hh); layer 1's input "
        "is E, later layers' is H; output layer H*V + V.",
        edge_cases=((10, 4, 3, 1), (10, 4, 3, 2), (7, 5, 2, 3)),
        mistakes=(
            Mistake("you counted one bias vector per gate; PyTorch's LSTM has two (b_ih and b_hh), "
                    "so 2 * 4H biases per layer", lambda V, E, H, L: _lstm_count(V, E, H, L, biases=1)),
            Mistake("you gave every layer the embedding as input; only the first layer reads the "
                    "embedding (size E), later layers read the hidden state below (size H)",
                    lambda V, E, H, L: _lstm_count(V, E, H, L, later_input="E")),
            Mistake("you left out the output layer's bias (V numbers)",
                    lambda V, E, H, L: _lstm_count(V, E, H, L, out_bias=False)),
        ),
        **options,
    )


# --- notebook 04 --------------------------------------------------------------------------------

def reference_doubling_time(years: torch.Tensor, params: torch.Tensor) -> float:
    x = years.double() - years.double().mean()
    y = torch.log2(params.double())
    slope = (x * (y - y.mean())).sum() / (x * x).sum()
    return float(1.0 / slope)


def check_doubling_time(fn: Callable[[torch.Tensor, torch.Tensor], float], **options) -> Result:
    """``fn(years, params) -> float``: doubling time in years from a least-squares fit of log2(params) on year."""

    def make_case(gen: torch.Generator) -> Case:
        n = randint(gen, 3, 12)
        years = 2000 + torch.randperm(25, generator=gen)[:n].sort().values.double()
        doubling = float(torch.rand(1, generator=gen)) * 2 + 0.3
        noise = torch.randn(n, generator=gen, dtype=torch.float64) * 0.5
        return years, 1e6 * 2 ** ((years - 2000) / doubling + noise)

    return check(
        fn, reference_doubling_time, make_case,
        hint="fit a straight line to log2(params) against year by least squares (slope = "
        "cov(year, log2 p) / var(year)); the parameter count doubles every 1 / slope years.",
        edge_cases=((_f64([2018.0, 2019.0, 2020.0]), _f64([1e8, 4e8, 1.6e9])),),
        mistakes=(
            Mistake("you returned the slope (doublings per year); the doubling time is 1 / slope years",
                    lambda years, params: 1 / reference_doubling_time(years, params)),
            Mistake("you used only the first and the last model; fit the line to all the points by least squares",
                    lambda years, params: float((years[-1] - years[0]) / torch.log2(params[-1] / params[0]))),
        ),
        rtol=1e-6,
        **options,
    )
