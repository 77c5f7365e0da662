"""lmlib.metrics perplexity helpers (chapter 1) on hand-computed cases, and chapter 1's checkers."""
import math

import pytest
import torch

from lmlib import exercises, metrics


def test_perplexity_by_hand():
    # probabilities 1/2 and 1/8: mean NLL = (ln 2 + ln 8) / 2 = 2 ln 2, perplexity 4
    assert metrics.perplexity(torch.tensor([0.5, 0.125])) == pytest.approx(4.0)
    assert metrics.perplexity_from_log_probs(torch.tensor([0.5, 0.125]).log()) == pytest.approx(4.0)
    assert metrics.bits_per_token(2 * math.log(2)) == pytest.approx(2.0)  # 2 bits = perplexity 4


def test_perplexity_from_logits_by_hand():
    # equal logits over V words: every model is uniform, perplexity V
    assert metrics.perplexity_from_logits(torch.zeros(3, 7), torch.tensor([0, 4, 6])) == pytest.approx(7.0)
    # logits (ln 3, 0): P = (3/4, 1/4); targets 0 and 1: perplexity = 1 / sqrt(3/16) = 4 / sqrt(3)
    logits = torch.tensor([[math.log(3), 0.0], [math.log(3), 0.0]])
    assert metrics.perplexity_from_logits(logits, torch.tensor([0, 1])) == pytest.approx(4 / math.sqrt(3))


def test_perplexity_helpers_reject_bad_input():
    with pytest.raises(ValueError, match="logits"):
        metrics.perplexity_from_log_probs(torch.tensor([0.5]))  # positive: not a log-probability
    with pytest.raises(ValueError, match="none"):
        metrics.perplexity_from_log_probs(torch.tensor([]))
    with pytest.raises(ValueError, match="flatten"):
        metrics.perplexity_from_logits(torch.zeros(2, 3, 4), torch.zeros(2, 3, dtype=torch.long))
    with pytest.raises(ValueError, match="token ids"):
        metrics.perplexity_from_logits(torch.zeros(2, 3), torch.tensor([0, 3]))
    assert metrics.perplexity_from_log_probs(torch.tensor([-1000.0])) == math.inf


def test_ngram_counts_checker():
    assert exercises.check_ngram_counts(exercises.reference_ngram_counts, verbose=False)

    def misses_last(ids, n):
        return exercises.reference_ngram_counts(ids[:-1], n)

    def lists_as_keys(ids, n):
        return {str(ids[t : t + n]): 1 for t in range(len(ids) - n + 1)}

    assert not exercises.check_ngram_counts(misses_last, verbose=False)
    assert not exercises.check_ngram_counts(lists_as_keys, verbose=False)


def test_continuation_counts_checker():
    assert exercises.check_continuation_counts(exercises.reference_continuation_counts, verbose=False)

    def occurrences(ids, v):
        return torch.bincount(ids[1:], minlength=v)

    def successors(ids, v):
        return exercises.reference_continuation_counts(ids.flip(0), v)

    assert not exercises.check_continuation_counts(occurrences, verbose=False)
    assert not exercises.check_continuation_counts(successors, verbose=False)


def test_kneser_ney_checker():
    assert exercises.check_kneser_ney_bigram(exercises.reference_kneser_ney_bigram, verbose=False)

    def raw_unigram_lower_order(ids, v, d):  # the classic mistake: counts instead of continuation counts
        counts = torch.zeros(v, v, dtype=torch.float64)
        counts.index_put_((ids[:-1], ids[1:]), torch.ones(len(ids) - 1, dtype=torch.float64), accumulate=True)
        uni = torch.bincount(ids, minlength=v).double() + 0.01
        p1 = uni / uni.sum()
        den = counts.sum(1, keepdim=True)
        types = (counts > 0).sum(1, keepdim=True)
        table = (counts - d).clamp(min=0) / den.clamp(min=1) + d * types / den.clamp(min=1) * p1
        return torch.where(den > 0, table, p1.expand(v, v))

    assert not exercises.check_kneser_ney_bigram(raw_unigram_lower_order, verbose=False)
    assert not exercises.check_kneser_ney_bigram(lambda i, v, d: exercises.reference_bigram_probs(i, v, d), verbose=False)


def test_perplexity_from_logits_checker():
    assert exercises.check_perplexity_from_logits(exercises.reference_perplexity_from_logits, verbose=False)

    def softmax_over_batch(logits, y):
        return math.exp(torch.nn.functional.cross_entropy(logits.T, torch.zeros(logits.shape[1], dtype=torch.long)).item())

    def no_normalisation(logits, y):
        return math.exp(-logits[torch.arange(len(y)), y].mean().item())

    assert not exercises.check_perplexity_from_logits(softmax_over_batch, verbose=False)
    assert not exercises.check_perplexity_from_logits(no_normalisation, verbose=False)


def test_lstm_parameter_count_checker():
    assert exercises.check_lstm_parameter_count(exercises.reference_lstm_parameter_count, verbose=False)

    def one_bias(v, e, h, layers):
        lstm = 4 * h * (e + h) + 4 * h + (layers - 1) * (4 * h * 2 * h + 4 * h)
        return v * e + lstm + h * v + v

    assert not exercises.check_lstm_parameter_count(one_bias, verbose=False)


def test_doubling_time_checker():
    assert exercises.check_doubling_time(exercises.reference_doubling_time, verbose=False)

    def first_to_last(years, params):
        return float((years[-1] - years[0]) / torch.log2(params[-1] / params[0]))

    def natural_log(years, params):
        x = years - years.mean()
        y = params.log()
        return float((x * x).sum() / (x * (y - y.mean())).sum())

    assert not exercises.check_doubling_time(first_to_last, verbose=False)
    assert not exercises.check_doubling_time(natural_log, verbose=False)
