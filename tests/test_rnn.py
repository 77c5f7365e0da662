"""lmlib.rnn (chapter 1): shapes, exact probabilities, state carrying, batching and bad input."""
import math

import pytest
import torch
import torch.nn.functional as F

from lmlib import rnn
from lmlib.model import num_params


@pytest.mark.parametrize("cell", ["rnn", "lstm", "gru"])
@pytest.mark.parametrize("cutoffs", [None, [5, 20]])
def test_log_probs_are_distributions(cell, cutoffs):
    torch.manual_seed(0)
    model = rnn.RNNLM(50, 8, 16, num_layers=2, cell=cell, cutoffs=cutoffs).eval()
    x = torch.randint(50, (3, 7))
    h, state = model.features(x)
    assert h.shape == (3, 7, 16)
    logp = model.log_probs(h)
    assert logp.shape == (3, 7, 50)
    torch.testing.assert_close(logp.exp().sum(-1), torch.ones(3, 7))
    y = torch.randint(50, (3, 7))
    torch.testing.assert_close(model.target_log_probs(h, y), logp.gather(-1, y.unsqueeze(-1)).squeeze(-1))
    loss, _ = model(x, y)
    torch.testing.assert_close(loss, -logp.gather(-1, y.unsqueeze(-1)).mean())


def test_full_softmax_matches_cross_entropy():
    torch.manual_seed(0)
    model = rnn.RNNLM(30, 6, 6).eval()
    x, y = torch.randint(30, (2, 5)), torch.randint(30, (2, 5))
    h, _ = model.features(x)
    loss, _ = model(x, y)
    torch.testing.assert_close(loss, F.cross_entropy(model.head(h).flatten(0, 1), y.flatten()))


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_carrying_state_equals_one_long_window(cell):
    """Truncated BPTT changes gradients, never the forward computation: two windows with the
    carried state give the same outputs as one window over both."""
    torch.manual_seed(0)
    model = rnn.RNNLM(40, 8, 8, cell=cell).eval()
    x = torch.randint(40, (2, 10))
    whole, _ = model.features(x)
    first, state = model.features(x[:, :4])
    second, _ = model.features(x[:, 4:], rnn.detach_state(state))
    torch.testing.assert_close(torch.cat([first, second], 1), whole)


def test_batchify_and_windows():
    ids = torch.arange(23)
    rows = rnn.batchify(ids, 4)
    assert rows.shape == (4, 5) and rows[1].tolist() == [5, 6, 7, 8, 9]
    windows = list(rnn.bptt_windows(rows, 3))
    assert [tuple(x.shape) for x, _ in windows] == [(4, 3), (4, 1)]
    for x, y in windows:
        assert torch.equal(y, x + 1)  # targets are the inputs shifted by one
    assert sum(x.shape[1] for x, _ in windows) == rows.shape[1] - 1


def test_evaluate_equals_manual_nll():
    torch.manual_seed(0)
    model = rnn.RNNLM(25, 5, 7, cutoffs=[10])
    rows = rnn.batchify(torch.randint(25, (61,)), 3)
    got = rnn.evaluate(model, rows, bptt=4)
    assert model.training  # evaluate restores the mode
    model.eval()
    h, _ = model.features(rows[:, :-1])
    assert got == pytest.approx(-model.target_log_probs(h, rows[:, 1:]).mean().item(), rel=1e-5)


def test_gradient_by_distance():
    torch.manual_seed(0)
    model = rnn.RNNLM(20, 6, 6, cell="rnn")
    g = rnn.gradient_by_distance(model, torch.randint(20, (4, 30)))
    assert g.shape == (29,) and (g >= 0).all()
    assert g[0] > g[-1]  # an untrained tanh RNN forgets: near inputs matter more than far ones


def test_parameter_count_formula():
    V, E, H, L = 100, 8, 16, 2
    model = rnn.RNNLM(V, E, H, L)
    lstm = 4 * H * (E + H) + 8 * H + (L - 1) * (4 * H * (H + H) + 8 * H)
    assert num_params(model) == V * E + lstm + H * V + V


def test_bad_inputs():
    with pytest.raises(ValueError, match="cell"):
        rnn.RNNLM(10, cell="transformer")
    with pytest.raises(ValueError, match="positive"):
        rnn.RNNLM(0)
    with pytest.raises(ValueError, match="cutoffs"):
        rnn.RNNLM(10, cutoffs=[5, 3])
    with pytest.raises(ValueError, match="cutoffs"):
        rnn.RNNLM(10, cutoffs=[10])
    with pytest.raises(ValueError, match="narrow"):
        rnn.RNNLM(100, 8, 8, cutoffs=[10, 20])
    model = rnn.RNNLM(10, 4, 4)
    with pytest.raises(ValueError, match="batch, time"):
        model.features(torch.zeros(5, dtype=torch.long))
    with pytest.raises(ValueError, match="shape of x"):
        model(torch.zeros(2, 3, dtype=torch.long), torch.zeros(2, 4, dtype=torch.long))
    with pytest.raises(ValueError, match="too few"):
        rnn.batchify(torch.arange(5), 4)
    with pytest.raises(ValueError, match="bptt"):
        list(rnn.bptt_windows(torch.zeros(2, 5), 0))
    assert rnn.uniform_nll(100) == pytest.approx(math.log(100))
