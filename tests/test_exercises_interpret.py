"""The chapter 6 interpretability checkers accept the reference solutions and reject known-wrong ones."""
import torch
import torch.nn.functional as F

from lmlib import exercises


def test_logit_lens_layer_checker():
    def mine(stream, w, b, unembed):
        mu = stream.mean(-1, keepdim=True)
        var = stream.var(-1, unbiased=False, keepdim=True)
        return ((stream - mu) / (var + 1e-5).sqrt() * w + b) @ unembed.T

    assert exercises.check_logit_lens_layer(exercises.reference_logit_lens_layer, verbose=False)
    assert exercises.check_logit_lens_layer(mine, verbose=False)
    assert not exercises.check_logit_lens_layer(lambda s, w, b, u: s @ u.T, verbose=False)  # no norm
    assert not exercises.check_logit_lens_layer(
        lambda s, w, b, u: F.layer_norm(s, s.shape[-1:]) @ u.T, verbose=False)  # forgets the gain and shift
    assert not exercises.check_logit_lens_layer(
        lambda s, w, b, u: ((s - s.mean(-1, keepdim=True)) / s.std(-1, keepdim=True) * w + b) @ u.T,
        verbose=False)  # unbiased variance, no eps


def test_previous_token_score_checker():
    def loop(weights):
        H, T, _ = weights.shape
        return torch.stack([sum(weights[h, i, i - 1] for i in range(1, T)) / (T - 1) for h in range(H)])

    assert exercises.check_previous_token_score(exercises.reference_previous_token_score, verbose=False)
    assert exercises.check_previous_token_score(loop, verbose=False)
    assert not exercises.check_previous_token_score(lambda w: w.diagonal(dim1=-2, dim2=-1).mean(-1), verbose=False)
    assert not exercises.check_previous_token_score(
        lambda w: w.diagonal(offset=1, dim1=-2, dim2=-1).mean(-1), verbose=False)  # above the diagonal: zeros
    assert not exercises.check_previous_token_score(
        lambda w: w.diagonal(offset=-1, dim1=-2, dim2=-1).sum(-1) / w.shape[-1], verbose=False)  # divides by T


def test_ridge_probe_accuracy_checker():
    def mine(x_tr, y_tr, x_te, y_te, ridge):
        X = torch.cat([x_tr, torch.ones(len(x_tr), 1, dtype=x_tr.dtype)], 1)
        Xt = torch.cat([x_te, torch.ones(len(x_te), 1, dtype=x_te.dtype)], 1)
        Y = F.one_hot(y_tr, int(max(y_tr.max(), y_te.max())) + 1).to(X.dtype)
        W = torch.linalg.inv(X.T @ X + ridge * torch.eye(X.shape[1], dtype=X.dtype)) @ X.T @ Y
        return (Xt @ W).argmax(1).eq(y_te).double().mean().item()

    def train_accuracy(x_tr, y_tr, x_te, y_te, ridge):
        return exercises.reference_ridge_probe_accuracy(x_tr, y_tr, x_tr, y_tr, ridge)

    def no_ridge(x_tr, y_tr, x_te, y_te, ridge):
        return exercises.reference_ridge_probe_accuracy(x_tr, y_tr, x_te, y_te, 1e-6)

    def no_bias(x_tr, y_tr, x_te, y_te, ridge):
        Y = F.one_hot(y_tr, int(max(y_tr.max(), y_te.max())) + 1).double()
        W = torch.linalg.solve(x_tr.T @ x_tr + ridge * torch.eye(x_tr.shape[1], dtype=x_tr.dtype), x_tr.T @ Y)
        return (x_te @ W).argmax(1).eq(y_te).double().mean().item()

    assert exercises.check_ridge_probe_accuracy(exercises.reference_ridge_probe_accuracy, verbose=False)
    assert exercises.check_ridge_probe_accuracy(mine, verbose=False)
    for wrong in (train_accuracy, no_ridge, no_bias):
        assert not exercises.check_ridge_probe_accuracy(wrong, trials=10, verbose=False), wrong.__name__
