"""Every exercise checker accepts its reference solution and rejects known-wrong ones."""
import math

import pytest
import torch

from lmlib import exercises


def test_perplexity_checker():
    assert exercises.check_perplexity(lambda p: math.exp(-p.log().mean().item()), verbose=False)
    assert not exercises.check_perplexity(lambda p: 1 / p.mean().item(), verbose=False)
    assert not exercises.check_perplexity(lambda p: (1 / p).mean().item(), verbose=False)
    assert not exercises.check_perplexity(lambda p: -p.log().mean().item(), verbose=False)  # forgot exp


def test_bigram_checker():
    assert exercises.check_bigram_probs(exercises.reference_bigram_probs, verbose=False)

    def no_smoothing_of_zeros(ids, v, k):
        counts = torch.zeros(v, v, dtype=torch.float64)
        counts.index_put_((ids[:-1], ids[1:]), torch.ones(len(ids) - 1, dtype=torch.float64), accumulate=True)
        counts[counts > 0] += k
        return counts / counts.sum(1, keepdim=True).clamp(min=1)

    def transposed(ids, v, k):
        return exercises.reference_bigram_probs(ids, v, k).T

    assert not exercises.check_bigram_probs(no_smoothing_of_zeros, verbose=False)
    assert not exercises.check_bigram_probs(transposed, verbose=False)


def test_checker_reports_exceptions_and_hints(capsys):
    def broken(p):
        raise NotImplementedError("your code here")

    assert not exercises.check_perplexity(broken)
    out = capsys.readouterr().out
    assert "FAIL perplexity" in out and "NotImplementedError" in out and "Hint:" in out


def test_checker_uses_fresh_inputs_each_call():
    seen = []
    exercises.check_perplexity(lambda p: seen.append(p.clone()) or math.exp(-p.log().mean().item()), verbose=False)
    first = seen[2:]
    seen.clear()
    exercises.check_perplexity(lambda p: seen.append(p.clone()) or math.exp(-p.log().mean().item()), verbose=False)
    assert any(a.shape != b.shape or not torch.equal(a, b) for a, b in zip(first, seen[2:]))


@pytest.mark.parametrize("bad", [[], [0.5, 1.5]])
def test_perplexity_rejects_bad_input(bad):
    from lmlib.metrics import perplexity

    with pytest.raises(ValueError):
        perplexity(torch.tensor(bad))


def test_perplexity_of_a_zero_is_infinite():
    from lmlib.metrics import perplexity

    assert perplexity(torch.tensor([0.5, 0.0])) == math.inf
