"""Chapter 1's checkers: the references and independent solutions pass; typical mistakes are named."""
import math
from collections import Counter

import torch
import torch.nn.functional as F

import lmlib.exercises as ex
from checker_asserts import passes, rejects


def counts_of(ids, v):
    counts = torch.zeros(v, v, dtype=torch.float64)
    counts.index_put_((ids[:-1], ids[1:]), torch.ones(len(ids) - 1, dtype=torch.float64), accumulate=True)
    return counts


# --- notebook 01 --------------------------------------------------------------------------------

def test_perplexity():
    passes(ex.check_perplexity, ex.reference_perplexity)
    passes(ex.check_perplexity, lambda p: math.exp(-p.log().mean().item()))
    rejects(ex.check_perplexity, lambda p: -p.log().mean().item(), "cross-entropy")
    rejects(ex.check_perplexity, lambda p: 1 / p.mean().item(), "inverted the average probability")
    rejects(ex.check_perplexity, lambda p: (1 / p).mean().item(), "inverse probabilities")
    rejects(ex.check_perplexity, lambda p: float(p.prod() ** (-1 / len(p))), "overflowed")  # 0.01 ** 2000 is 0


def test_bigram_probs():
    def mine(ids, v, k):
        counts = counts_of(ids, v) + k
        return counts / counts.sum(1, keepdim=True)

    def whole_table(ids, v, k):
        counts = counts_of(ids, v) + k
        return counts / counts.sum()

    def seen_only(ids, v, k):
        counts = counts_of(ids, v)
        counts[counts > 0] += k
        return counts / counts.sum(1, keepdim=True).clamp(min=1)

    passes(ex.check_bigram_probs, ex.reference_bigram_probs)
    passes(ex.check_bigram_probs, mine)
    rejects(ex.check_bigram_probs, lambda ids, v, k: mine(ids, v, k).T, "transpose")
    rejects(ex.check_bigram_probs, whole_table, "whole tensor")
    rejects(ex.check_bigram_probs, seen_only, "only to the pairs that occurred")


# --- notebook 02 --------------------------------------------------------------------------------

def test_ngram_counts():
    passes(ex.check_ngram_counts, ex.reference_ngram_counts)
    passes(ex.check_ngram_counts, lambda ids, n: dict(Counter(tuple(ids[t:t + n]) for t in range(len(ids) - n + 1))))
    rejects(ex.check_ngram_counts, lambda ids, n: ex.reference_ngram_counts(ids[:-1], n), "last window")
    rejects(ex.check_ngram_counts, lambda ids, n: {str(ids[t:t + n]): 1 for t in range(len(ids) - n + 1)},
            "keys should be of type tuple")
    rejects(ex.check_ngram_counts, lambda ids, n: Counter(ids[t:t + n] for t in range(len(ids) - n + 1)),
            "raised TypeError", "tuple(...)")


def test_continuation_counts():
    def mine(ids, v):
        pairs = torch.unique(ids[:-1] * v + ids[1:])
        return torch.bincount(pairs % v, minlength=v)

    passes(ex.check_continuation_counts, ex.reference_continuation_counts)
    passes(ex.check_continuation_counts, mine)
    rejects(ex.check_continuation_counts, lambda ids, v: torch.bincount(ids[1:], minlength=v), "occurrences")
    rejects(ex.check_continuation_counts, lambda ids, v: (counts_of(ids, v) > 0).sum(1), "FOLLOW w")
    rejects(ex.check_continuation_counts, lambda ids, v: mine(ids, v).float(), "integer tensor")


def test_kneser_ney_bigram():
    def kn(ids, v, d, lower="continuation", unseen="p1"):
        counts = counts_of(ids, v)
        if lower == "continuation":
            cont = (counts > 0).sum(0).double()
            p1 = (cont - d).clamp(min=0) / cont.sum() + d * (cont > 0).sum() / cont.sum() / v
        else:  # how often each word occurs
            p1 = torch.bincount(ids, minlength=v).double() / len(ids)
        den = counts.sum(1, keepdim=True)
        types = (counts > 0).sum(1, keepdim=True)
        table = (counts - d).clamp(min=0) / den + d * types / den * p1
        return table if unseen == "nan" else torch.where(den > 0, table, p1.expand(v, v))

    passes(ex.check_kneser_ney_bigram, ex.reference_kneser_ney_bigram)
    passes(ex.check_kneser_ney_bigram, kn)
    rejects(ex.check_kneser_ney_bigram, lambda i, v, d: kn(i, v, d, lower="frequency"), "continuation counts")
    rejects(ex.check_kneser_ney_bigram, lambda i, v, d: kn(i, v, d, unseen="nan"), "NaN (0 / 0)")
    rejects(ex.check_kneser_ney_bigram, lambda i, v, d: kn(i, v, d).T, "transpose")


# --- notebook 03 --------------------------------------------------------------------------------

def test_perplexity_from_logits():
    def mine(logits, y):
        return math.exp(F.cross_entropy(logits, y).item())

    def naive(logits, y):  # a softmax without the max subtracted
        p = logits.exp() / logits.exp().sum(-1, keepdim=True)
        return math.exp(-p[torch.arange(len(y)), y].log().mean().item())

    passes(ex.check_perplexity_from_logits, ex.reference_perplexity_from_logits)
    passes(ex.check_perplexity_from_logits, mine)
    rejects(ex.check_perplexity_from_logits, lambda lg, y: math.exp(-lg[torch.arange(len(y)), y].mean().item()),
            "raw logits")
    rejects(ex.check_perplexity_from_logits,
            lambda lg, y: math.exp(-F.log_softmax(lg, 0)[torch.arange(len(y)), y].mean().item()), "batch axis")
    rejects(ex.check_perplexity_from_logits, naive, "overflowed")
    rejects(ex.check_perplexity_from_logits, lambda lg, y: F.cross_entropy(lg, y).item(), "cross-entropy")


def test_lstm_parameter_count():
    def count(V, E, H, L, biases=2, out_bias=True):
        layers = sum(4 * H * ((E if i == 0 else H) + H) + biases * 4 * H for i in range(L))
        return V * E + layers + H * V + (V if out_bias else 0)

    passes(ex.check_lstm_parameter_count, ex.reference_lstm_parameter_count)
    passes(ex.check_lstm_parameter_count, count)
    rejects(ex.check_lstm_parameter_count, lambda V, E, H, L: count(V, E, H, L, biases=1), "two (b_ih and b_hh)")
    rejects(ex.check_lstm_parameter_count, lambda V, E, H, L: count(V, E, H, L, out_bias=False), "output layer's bias")
    rejects(ex.check_lstm_parameter_count,
            lambda V, E, H, L: V * E + L * (4 * H * (E + H) + 8 * H) + H * V + V, "only the first layer")


# --- notebook 04 --------------------------------------------------------------------------------

def test_doubling_time():
    def mine(years, params):
        x, y = years - years.mean(), params.log2()
        return float((x * x).sum() / (x * (y - y.mean())).sum())

    def natural_log(years, params):
        x, y = years - years.mean(), params.log()
        return float((x * x).sum() / (x * (y - y.mean())).sum())

    passes(ex.check_doubling_time, ex.reference_doubling_time)
    passes(ex.check_doubling_time, mine)
    rejects(ex.check_doubling_time, natural_log, "ln 2", "logarithm base")
    rejects(ex.check_doubling_time, lambda years, params: 1 / mine(years, params), "returned the slope")
    rejects(ex.check_doubling_time,
            lambda years, params: float((years[-1] - years[0]) / torch.log2(params[-1] / params[0])),
            "first and the last")


def test_bigram_logit_gradient():
    def mine(logits, counts):
        probs = torch.exp(logits - logits.logsumexp(1, keepdim=True))
        return (counts.sum(1, keepdim=True) * probs - counts) / counts.sum()

    def by_autograd(logits, counts):
        z = logits.clone().requires_grad_(True)
        (-(counts * torch.log_softmax(z, 1)).sum() / counts.sum()).backward()
        return z.grad

    passes(ex.check_bigram_logit_gradient, ex.reference_bigram_logit_gradient)
    passes(ex.check_bigram_logit_gradient, mine)
    passes(ex.check_bigram_logit_gradient, by_autograd)
    rejects(ex.check_bigram_logit_gradient, lambda z, c: mine(z, c) * c.sum(), "divide by N")
    rejects(ex.check_bigram_logit_gradient, lambda z, c: (torch.softmax(z, 1) - c) / c.sum(), "row's total")
    rejects(ex.check_bigram_logit_gradient, lambda z, c: -mine(z, c), "sign")
