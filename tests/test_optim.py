"""lmlib.optim: the textbook rules against torch.optim; Muon's Newton-Schulz orthogonalisation against an
SVD, and its update rule."""
import copy

import pytest
import torch

from lmlib.optim import CUBIC, QUINTIC, RULES, Muon, TextbookOptimizer, orthogonalize, torch_equivalent


def _matrix(m, n, singular_values, seed=0):
    g = torch.Generator().manual_seed(seed)
    u, _ = torch.linalg.qr(torch.randn(m, m, generator=g, dtype=torch.float64))
    v, _ = torch.linalg.qr(torch.randn(n, n, generator=g, dtype=torch.float64))
    k = min(m, n)
    return u[:, :k] @ torch.diag(torch.as_tensor(singular_values, dtype=torch.float64)) @ v[:, :k].T, u[:, :k], v[:, :k]


@pytest.mark.parametrize("shape", [(8, 8), (6, 10), (12, 5)])
def test_the_cubic_iteration_converges_to_the_polar_factor_of_an_svd(shape):
    m, n = shape
    matrix, u, v = _matrix(m, n, torch.linspace(0.4, 2.0, min(m, n)))
    torch.testing.assert_close(orthogonalize(matrix, steps=40, coefficients=CUBIC), u @ v.T, atol=1e-6, rtol=0)
    exact = torch.linalg.svd(matrix, full_matrices=False)
    torch.testing.assert_close(u @ v.T, exact.U @ exact.Vh, atol=1e-10, rtol=0)  # the reference is the SVD's U V^T


@pytest.mark.parametrize("shape", [(64, 64), (32, 96), (96, 32)])
def test_five_quintic_steps_keep_the_singular_vectors_and_move_the_values_near_1(shape):
    torch.manual_seed(0)
    gradient = torch.randn(*shape, dtype=torch.float64)
    svd = torch.linalg.svd(gradient, full_matrices=False)
    out = orthogonalize(gradient, steps=5, coefficients=QUINTIC)
    in_gradient_basis = svd.U.T @ out @ svd.Vh.T  # diagonal iff the singular vectors are kept
    diagonal = torch.diagonal(in_gradient_basis)
    torch.testing.assert_close(in_gradient_basis, torch.diag(diagonal), atol=1e-5, rtol=0)  # float32 products
    kept = svd.S > 1e-3 * svd.S[0]  # a vanishing singular value cannot be lifted in five steps
    assert diagonal[kept].min() > 0.6 and diagonal.max() < 1.25, diagonal
    assert orthogonalize(gradient.float()).dtype == torch.float32


def test_orthogonalize_refuses_what_it_cannot_do():
    with pytest.raises(ValueError, match="2-D"):
        orthogonalize(torch.randn(5))
    with pytest.raises(ValueError, match="2-D"):
        orthogonalize(torch.randn(2, 2, 3, 4))
    with pytest.raises(ValueError, match="steps"):
        orthogonalize(torch.randn(3, 3), steps=-1)


@pytest.mark.parametrize("shape", [(3, 5, 7), (4, 9, 2)])
def test_a_batch_of_matrices_is_orthogonalised_one_by_one(shape):
    torch.manual_seed(0)
    batch = torch.randn(*shape, dtype=torch.float64)
    torch.testing.assert_close(orthogonalize(batch), torch.stack([orthogonalize(m) for m in batch]))


def test_muon_batches_same_shaped_matrices_without_changing_the_step():
    torch.manual_seed(0)
    shapes = [(6, 4), (6, 4), (4, 6), (6, 4), (3, 3)]
    ws = [torch.nn.Parameter(torch.randn(s, dtype=torch.float64)) for s in shapes]
    expected = [w.detach().clone() for w in ws]
    opt = Muon(ws, lr=0.05, momentum=0.9, nesterov=False, weight_decay=0.1)
    buffers = [torch.zeros_like(e) for e in expected]
    for _ in range(3):
        grads = [torch.randn_like(e) for e in expected]
        for w, g in zip(ws, grads):
            w.grad = g.clone()
        opt.step()
        for i, (g, s) in enumerate(zip(grads, shapes)):
            buffers[i] = 0.9 * buffers[i] + g
            expected[i] = expected[i] * (1 - 0.05 * 0.1) - 0.05 * max(1, s[0] / s[1]) ** 0.5 * orthogonalize(buffers[i])
    for w, e in zip(ws, expected):
        torch.testing.assert_close(w.detach(), e)


def test_one_muon_step_by_hand():
    torch.manual_seed(0)
    w = torch.nn.Parameter(torch.randn(12, 4, dtype=torch.float64))
    start = w.detach().clone()
    grads = [torch.randn(12, 4, dtype=torch.float64) for _ in range(2)]
    opt = Muon([w], lr=0.1, momentum=0.9, weight_decay=0.5)
    buffer = torch.zeros_like(start)
    expected = start.clone()
    for g in grads:
        w.grad = g.clone()
        opt.step()
        buffer = 0.9 * buffer + g
        expected = expected * (1 - 0.1 * 0.5) - 0.1 * (12 / 4) ** 0.5 * orthogonalize(g + 0.9 * buffer)
    torch.testing.assert_close(w.detach(), expected)


def test_muon_lowers_a_matrix_regression_loss():
    torch.manual_seed(0)
    target = torch.randn(16, 16)
    x = torch.randn(256, 16)
    w = torch.nn.Parameter(torch.zeros(16, 16))
    opt = Muon([w], lr=0.5)  # each step moves w by at most lr in spectral norm; the target's is about 8
    steps = 100
    schedule = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 1 - step / steps)  # a constant-size step
    losses = []                                                                       # needs a decaying lr
    for _ in range(steps):
        loss = ((x @ w - x @ target) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        schedule.step()
        losses.append(loss.item())
    assert losses[-1] < 1e-3 * losses[0]


def test_muon_refuses_vectors_and_bad_settings():
    with pytest.raises(ValueError, match="2-D weight matrices only.*AdamW"):
        Muon([torch.nn.Parameter(torch.zeros(4))])
    for bad in (dict(lr=0), dict(momentum=1.0), dict(ns_steps=0), dict(weight_decay=-1)):
        with pytest.raises(ValueError, match=next(iter(bad))):
            Muon([torch.nn.Parameter(torch.zeros(2, 2))], **bad)


def test_the_adamw_groups_follow_torch_adamw():
    torch.manual_seed(0)
    start = torch.randn(5, 3, dtype=torch.float64)
    ours, theirs = torch.nn.Parameter(start.clone()), torch.nn.Parameter(start.clone())
    mine = Muon([{"params": [ours], "algorithm": "adamw", "lr": 1e-2, "weight_decay": 0.1}], betas=(0.8, 0.9), eps=1e-6)
    reference = torch.optim.AdamW([theirs], lr=1e-2, weight_decay=0.1, betas=(0.8, 0.9), eps=1e-6)
    for _ in range(5):
        g = torch.randn(5, 3, dtype=torch.float64)
        ours.grad, theirs.grad = g.clone(), g.clone()
        mine.step()
        reference.step()
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-12)
    with pytest.raises(ValueError, match="algorithm"):
        Muon([{"params": [torch.nn.Parameter(torch.zeros(2, 2))], "algorithm": "sgd"}])


def test_the_trainer_with_muon_learns_and_resumes_exactly(tmp_path):
    from lmlib import train as T
    from lmlib.model import GPT, GPTConfig

    data = torch.arange(4000) % 13  # a cycle: the loss must fall towards 0

    def run(steps, folder=None, resume=False):
        torch.manual_seed(0)
        model = GPT(GPTConfig(vocab_size=13, block_size=16, n_layer=2, n_head=2, n_embd=32, tie_weights=False))
        cfg = T.TrainConfig(max_steps=40, lr=3e-3, muon_lr=0.02, optimizer="muon", eval_every=None, progress=False,
                            checkpoint_dir=folder)
        trainer = T.Trainer(model, cfg, T.token_batches(data, 16, 8))
        if resume:
            trainer.load_checkpoint()
        trainer.config.max_steps = steps  # stop early to simulate an interruption (same schedule)
        return trainer, trainer.fit()

    whole, history = run(40)
    groups = {g["group"]: g for g in whole.optimizer.param_groups}
    assert set(groups) == {"decay/muon", "decay/adamw", "no_decay/adamw"}
    assert "lm_head.weight" in groups["decay/adamw"]["names"] and "wte.weight" in groups["no_decay/adamw"]["names"]
    assert all(n.startswith("blocks.") for n in groups["decay/muon"]["names"])
    assert history.train_loss[-1] < 0.5 * history.train_loss[0]
    first, _ = run(20, tmp_path)
    first.save_checkpoint()
    resumed, _ = run(40, tmp_path, resume=True)
    for (name, a), b in zip(whole.raw_model.state_dict().items(), resumed.raw_model.state_dict().values()):
        torch.testing.assert_close(a, b, msg=f"{name} differs after resuming")


@pytest.mark.parametrize("rule", RULES)
def test_every_textbook_rule_takes_the_steps_of_torch_optim(rule):
    torch.manual_seed(0)
    ours_model = torch.nn.Sequential(torch.nn.Linear(5, 7), torch.nn.Tanh(), torch.nn.Linear(7, 3)).double()
    theirs_model = copy.deepcopy(ours_model)
    hyper = dict(lr=0.05, weight_decay=0.1 if rule in ("sgd", "adam", "adamw") else 0.0)
    ours = TextbookOptimizer(ours_model.parameters(), rule, **hyper)
    theirs = torch_equivalent(rule, theirs_model.parameters(), **hyper)
    for _ in range(6):
        x, y = torch.randn(8, 5, dtype=torch.float64), torch.randn(8, 3, dtype=torch.float64)
        for model, opt in ((ours_model, ours), (theirs_model, theirs)):
            opt.zero_grad()
            torch.nn.functional.mse_loss(model(x), y).backward()
            opt.step()
    for a, b in zip(ours_model.parameters(), theirs_model.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def test_adam_bias_correction_makes_the_first_step_lr_sized():
    w = torch.nn.Parameter(torch.tensor([1.0, -2.0], dtype=torch.float64))
    opt = TextbookOptimizer([w], "adam", lr=0.1, eps=0.0)
    w.grad = torch.tensor([1e-3, 50.0], dtype=torch.float64)  # tiny and huge gradients alike
    opt.step()
    torch.testing.assert_close(w.detach(), torch.tensor([0.9, -2.1], dtype=torch.float64))  # each moved by lr


def test_textbook_optimizer_refuses_unknown_rules():
    with pytest.raises(ValueError, match="rule"):
        TextbookOptimizer([torch.nn.Parameter(torch.zeros(2))], "lion", lr=0.1)
    with pytest.raises(ValueError, match="rule"):
        torch_equivalent("lion", [torch.nn.Parameter(torch.zeros(2))], lr=0.1)
