"""DP-SGD (chapter 6): per-example gradients, clipping and noise, Poisson batches, the trainer, the accountant."""
import math

import pytest
import torch
from opacus.accountants.analysis.rdp import compute_rdp, get_privacy_spent

from lmlib import dp
from lmlib.model import GPT, GPTConfig
from lmlib.train import Trainer, TrainConfig


def tiny_gpt(bias=True):
    torch.manual_seed(0)
    return GPT(GPTConfig(vocab_size=20, block_size=16, n_layer=2, n_head=2, n_embd=16, bias=bias))


def test_per_example_grads_equal_one_backward_per_example():
    model = tiny_gpt()
    g = torch.Generator().manual_seed(1)
    x, y = torch.randint(0, 20, (5, 16), generator=g), torch.randint(0, 20, (5, 16), generator=g)
    losses, grads = dp.per_example_grads(model, x, y)
    assert set(grads) == {n for n, _ in model.named_parameters()}
    for i in range(5):
        model.zero_grad()
        loss = model(x[i:i + 1], targets=y[i:i + 1])[1]
        loss.backward()
        torch.testing.assert_close(losses[i], loss.detach())
        for name, p in model.named_parameters():
            torch.testing.assert_close(grads[name][i], p.grad, rtol=1e-4, atol=1e-6)
    assert all(m.fast for m in model.modules() if hasattr(m, "fast"))  # the fused attention is back
    with pytest.raises(ValueError, match="token ids"):
        dp.per_example_grads(model, x + 100, y)


def test_privatize_clips_each_example_then_adds_noise():
    grads = {"w": torch.tensor([[3.0, 4.0], [0.3, 0.4], [0.0, 0.0]]), "b": torch.tensor([[0.0], [0.0], [0.0]])}
    out, clipped = dp.privatize(grads, max_norm=1.0, noise_multiplier=0.0, expected_batch=2.0)
    # example 0 (norm 5) is scaled to norm 1, example 1 (norm 0.5) is kept: (0.6 + 0.3, 0.8 + 0.4) / 2
    torch.testing.assert_close(out["w"], torch.tensor([0.45, 0.6]))
    assert clipped == pytest.approx(1 / 3)
    # the norm is over all parameters together
    both = {"w": torch.tensor([[3.0]]), "b": torch.tensor([[4.0]])}
    torch.testing.assert_close(dp.privatize(both, 1.0, 0.0, 1.0)[0]["b"], torch.tensor([0.8]))
    # the noise: standard deviation sigma * C / expected batch in every coordinate
    zeros = {"w": torch.zeros(4, 20_000)}
    noisy, _ = dp.privatize(zeros, max_norm=2.0, noise_multiplier=1.5, expected_batch=3.0,
                            generator=torch.Generator().manual_seed(0))
    assert float(noisy["w"].std()) == pytest.approx(1.5 * 2.0 / 3.0, rel=0.03)
    # an empty batch: the noise alone
    empty, share = dp.privatize({"w": torch.zeros(0, 3)}, 1.0, 1.0, 2.0, torch.Generator().manual_seed(0))
    assert empty["w"].shape == (3,) and share == 0.0 and empty["w"].abs().sum() > 0
    with pytest.raises(ValueError, match="max_norm > 0"):
        dp.privatize(grads, 0.0, 1.0, 2.0)


def test_windows_and_poisson_batches():
    x, y = dp.window_examples(torch.arange(23), 5)
    assert x.shape == y.shape == (4, 5) and torch.equal(y, x + 1)
    with pytest.raises(ValueError, match="no window"):
        dp.window_examples(torch.arange(5), 5)
    xs, ys = torch.arange(1000)[:, None], torch.arange(1000)[:, None]
    batch = dp.poisson_batches(xs, ys, 0.1)
    g = torch.Generator().manual_seed(0)
    sizes = [len(batch(g)[0]) for _ in range(200)]
    assert abs(sum(sizes) / len(sizes) - 100) < 3 and len(set(sizes)) > 10  # the size varies
    with pytest.raises(ValueError, match="sampling rate"):
        dp.poisson_batches(xs, ys, 0.0)


def test_dp_trainer_without_noise_or_clipping_is_plain_training():
    g = torch.Generator().manual_seed(2)
    x, y = torch.randint(0, 20, (6, 16), generator=g), torch.randint(0, 20, (6, 16), generator=g)
    config = TrainConfig(max_steps=3, lr=1e-2, grad_clip=None, eval_every=None, progress=False, warmup_steps=0)
    # bias-free: a key bias's gradient is rounding noise, which Adam would blow up differently in the two runs
    plain = Trainer(tiny_gpt(bias=False), config, lambda gen: (x, y))
    private = dp.DPTrainer(tiny_gpt(bias=False), config, x, y, rate=1.0, max_norm=1e6, noise_multiplier=0.0)
    plain.fit()
    private.fit()
    for (name, a), b in zip(plain.raw_model.named_parameters(), private.raw_model.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6, msg=name)
    assert private.clipped == [0.0, 0.0, 0.0]


def test_dp_trainer_trains_with_noise_and_refuses_global_clipping():
    g = torch.Generator().manual_seed(3)
    x, y = dp.window_examples(torch.randint(0, 20, (2000,), generator=g), 16)
    config = TrainConfig(max_steps=4, lr=1e-2, grad_clip=None, eval_every=None, progress=False)
    trainer = dp.DPTrainer(tiny_gpt(), config, x, y, rate=0.1, max_norm=0.5, noise_multiplier=1.0)
    history = trainer.fit()
    assert len(history.train_loss) == 4 and all(math.isfinite(v) for v in history.train_loss)
    assert len(trainer.clipped) == 4 and all(0 <= c <= 1 for c in trainer.clipped)
    with pytest.raises(ValueError, match="grad_clip=None"):
        dp.DPTrainer(tiny_gpt(), TrainConfig(max_steps=1), x, y, 0.1, 1.0, 1.0)


def test_rdp_by_hand_and_against_opacus():
    assert dp.rdp_sampled_gaussian(1.0, 2.0, 3) == pytest.approx(3 / (2 * 4))  # the plain Gaussian
    # order 2 by hand: (1-q)^2 + 2q(1-q) + q^2 e^(1/sigma^2)
    q, s = 0.05, 0.8
    assert dp.rdp_sampled_gaussian(q, s, 2) == pytest.approx(math.log((1 - q) ** 2 + 2 * q * (1 - q)
                                                                      + q * q * math.exp(1 / s ** 2)))
    orders = [2, 3, 5, 8, 16, 32, 64]
    for q, s in [(0.01, 1.1), (0.05, 0.8), (0.2, 2.0), (1.0, 1.5)]:
        ours = [dp.rdp_sampled_gaussian(q, s, a) for a in orders]
        theirs = compute_rdp(q=q, noise_multiplier=s, steps=1, orders=orders)
        torch.testing.assert_close(torch.tensor(ours, dtype=torch.float64),
                                   torch.tensor(theirs, dtype=torch.float64), rtol=1e-9, atol=1e-12)
    with pytest.raises(ValueError, match="integer >= 2"):
        dp.rdp_sampled_gaussian(0.1, 1.0, 1.5)


@pytest.mark.parametrize("q,sigma,steps,delta", [(0.01, 1.1, 1000, 1e-5), (0.004, 0.7, 600, 1e-5),
                                                 (0.1, 3.0, 50, 1e-6), (0.02, 0.9, 300, 1e-4)])
def test_epsilon_matches_opacus(q, sigma, steps, delta):
    orders = list(dp.ORDERS)
    expected, order = get_privacy_spent(orders=orders, rdp=compute_rdp(q=q, noise_multiplier=sigma, steps=steps,
                                                                      orders=orders), delta=delta)
    eps, best = dp.epsilon(q, sigma, steps, delta)
    assert eps == pytest.approx(expected, rel=1e-9) and best == order


def test_epsilon_grows_with_steps_and_falls_with_noise():
    assert dp.epsilon(0.01, 1.0, 0, 1e-5) == (0.0, 2)
    e = [dp.epsilon(0.01, 1.0, t, 1e-5)[0] for t in (10, 100, 1000)]
    assert e[0] < e[1] < e[2]
    assert dp.epsilon(0.01, 2.0, 1000, 1e-5)[0] < e[2]
    with pytest.raises(ValueError, match="delta"):
        dp.epsilon(0.01, 1.0, 10, 1.5)
