"""Differentially private training: DP-SGD and the accounting of its privacy loss.

Derived in chapter 6 ("Privacy and memorization"). A training algorithm is (epsilon, delta)-
differentially private when adding or removing any one training example changes the probability
of any outcome (any set of final weights) by at most a factor e^epsilon, up to a slack delta.
DP-SGD (Abadi et al. 2016) makes gradient descent so:

1. sample each step's batch by including every example independently with probability ``q``
   (Poisson sampling; the privacy analysis depends on it);
2. compute every example's own gradient and scale it down to norm at most ``max_norm`` (C), so
   no single example can move the weights by more than C;
3. add Gaussian noise of standard deviation ``noise_multiplier * C`` (sigma C) to the sum of the
   clipped gradients, and divide by the expected batch size ``q * N``.

The optimizer then steps as usual (here AdamW, whose update only post-processes the noisy
gradient, which costs no privacy). The accountant turns (q, sigma, steps, delta) into epsilon
through Renyi differential privacy: the subsampled Gaussian's RDP at integer orders alpha
(Mironov, Talwar and Zhang 2019), summed over steps, converted to (epsilon, delta) with the
bound of Balle et al. (2020) and minimised over the orders.

API summary
-----------
per_example_grads(model, x, y) -> (losses (B,), {name: (B, *shape)})   each example's gradient
clip_and_sum(grads, max_norm) -> ({name: sum of clipped gradients}, clipped share)
privatize(grads, max_norm, noise_multiplier, expected_batch, generator=None) -> ({name: grad}, clipped share)
window_examples(ids, block_size) -> (x (N, T), y (N, T))   non-overlapping windows: the examples
poisson_batches(x, y, rate) -> batch_fn(generator) -> (x, y)   every example kept with probability rate
DPTrainer(model, config, x, y, rate, max_norm, noise_multiplier, val_batches=None)
    a :class:`lmlib.train.Trainer` whose step is DP-SGD's; ``.clipped`` the share clipped per step
rdp_sampled_gaussian(rate, noise_multiplier, order) -> float    RDP of one step at an integer order
epsilon(rate, noise_multiplier, steps, delta, orders=ORDERS) -> (epsilon, best order)
ORDERS = 2, 3, ..., 255
"""
from __future__ import annotations

import contextlib
import functools
import math
from collections.abc import Sequence

import torch
from torch import nn
from torch.func import functional_call, grad, vmap

from lmlib.data import windows_at
from lmlib.train import BatchFn, Trainer, TrainConfig

Tensor = torch.Tensor

__all__ = ["per_example_grads", "clip_and_sum", "privatize", "window_examples", "poisson_batches", "DPTrainer",
           "rdp_sampled_gaussian", "epsilon", "ORDERS"]

#: The Renyi orders the accountant tries (integers, where the RDP formula is an exact finite sum).
ORDERS = tuple(range(2, 256))


# --- DP-SGD --------------------------------------------------------------------------------------

def per_example_grads(model: nn.Module, x: Tensor, y: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
    """Each example's loss and gradient, for ``model(x, targets=y) -> (logits, loss)``.

    ``torch.func`` runs the model on one example at a time, vectorised over the batch with
    ``vmap``, so the batch costs one pass rather than one per example. Every trainable parameter
    gets a ``(B, *shape)`` tensor; dropout draws different masks for different examples.
    """
    if hasattr(model, "check_input"):
        model.check_input(x, targets=y)  # inside the transform, the model cannot read values to check them
    params = {name: p.detach() for name, p in model.named_parameters() if p.requires_grad}
    buffers = {name: b.detach() for name, b in model.named_buffers()}

    def loss_of(p, xi, yi):
        loss = functional_call(model, (p, buffers), (xi[None],), {"targets": yi[None]})[1]
        return loss, loss

    with _hand_written_attention(model):
        grads, losses = vmap(grad(loss_of, has_aux=True), in_dims=(None, 0, 0), randomness="different")(params, x, y)
    return losses, grads


@contextlib.contextmanager
def _hand_written_attention(model: nn.Module):
    # vmap has no batching rule for PyTorch's fused attention kernels on CPU and would loop over
    # the examples; the hand-written attention (chapter 2), the same arithmetic, batches.
    fast = [m for m in model.modules() if getattr(m, "fast", False) is True]
    for m in fast:
        m.fast = False
    try:
        yield
    finally:
        for m in fast:
            m.fast = True


def _check_dp(max_norm: float, noise_multiplier: float, expected_batch: float) -> None:
    if not (max_norm > 0 and noise_multiplier >= 0 and expected_batch > 0):
        raise ValueError(f"need max_norm > 0, noise_multiplier >= 0 and expected_batch > 0, got {max_norm!r}, "
                         f"{noise_multiplier!r}, {expected_batch!r}.")


def clip_and_sum(grads: dict[str, Tensor], max_norm: float) -> tuple[dict[str, Tensor], float]:
    """The sum over examples of per-example ``grads`` (``{name: (B, *shape)}``, B may be 0), each
    example's whole gradient (all parameters together) first scaled to norm at most ``max_norm``;
    and the share of examples that were clipped."""
    first = next(iter(grads.values()))
    n = first.shape[0]
    if n == 0:
        return {name: g.new_zeros(g.shape[1:]) for name, g in grads.items()}, 0.0
    norms = torch.sqrt(sum(g.reshape(n, -1).pow(2).sum(1) for g in grads.values()))
    scale = (max_norm / (norms + 1e-12)).clamp(max=1.0)
    sums = {name: torch.einsum("b,b...->...", scale.to(g.dtype), g) for name, g in grads.items()}
    return sums, float((norms > max_norm).float().mean())


def privatize(grads: dict[str, Tensor], max_norm: float, noise_multiplier: float, expected_batch: float,
              generator: torch.Generator | None = None) -> tuple[dict[str, Tensor], float]:
    """DP-SGD's gradient from per-example ``grads`` (``{name: (B, *shape)}``, B may be 0).

    :func:`clip_and_sum`, then Gaussian noise of standard deviation ``noise_multiplier * max_norm``
    added to every coordinate, and the result divided by ``expected_batch`` (the sampling rate
    times the number of examples, not the batch's own size, which would reveal whether an example
    is in it). Returns the gradient and the share of examples that were clipped.
    """
    _check_dp(max_norm, noise_multiplier, expected_batch)
    sums, clipped = clip_and_sum(grads, max_norm)
    out = {}
    for name, total in sums.items():
        noise = torch.randn(total.shape, generator=generator, dtype=total.dtype) * (noise_multiplier * max_norm)
        out[name] = (total + noise.to(total.device)) / expected_batch
    return out, clipped


def window_examples(ids: Tensor, block_size: int) -> tuple[Tensor, Tensor]:
    """The token stream ``ids`` cut into non-overlapping ``(x, y)`` windows of ``block_size``
    (y is x shifted by one): a fixed set of examples, the unit that DP-SGD protects."""
    ids = torch.as_tensor(ids, dtype=torch.long).flatten()
    n = (len(ids) - 1) // block_size
    if n < 1:
        raise ValueError(f"{len(ids)} tokens hold no window of {block_size} + 1 tokens.")
    return windows_at(ids, torch.arange(n) * block_size, block_size)


def poisson_batches(x: Tensor, y: Tensor, rate: float) -> BatchFn:
    """A ``batch_fn(generator) -> (x, y)`` that keeps each example with probability ``rate``, so
    the batch size varies from step to step (and may be 0)."""
    if not 0 < rate <= 1:
        raise ValueError(f"the sampling rate must be in (0, 1], got {rate!r}.")
    if len(x) != len(y):
        raise ValueError(f"x and y must hold the same number of examples, got {len(x)} and {len(y)}.")

    def batch_fn(generator: torch.Generator) -> tuple[Tensor, Tensor]:
        keep = torch.rand(len(x), generator=generator) < rate
        return x[keep], y[keep]

    return batch_fn


class DPTrainer(Trainer):
    """The course's :class:`lmlib.train.Trainer` with DP-SGD's step (chapter 6).

    Trains on the fixed examples ``x, y`` (e.g. :func:`window_examples`), Poisson-sampled at
    ``rate``; everything else (schedule, evaluation, history, checkpoints) is the Trainer's.
    ``config.grad_clip`` must be None, since the clipping is per example, and
    ``grad_accum_steps`` 1; one process only. The noise comes from the trainer's data generator,
    so a run is repeatable from its seed.
    """

    def __init__(self, model: nn.Module, config: TrainConfig, x: Tensor, y: Tensor, rate: float, max_norm: float,
                 noise_multiplier: float, val_batches=None) -> None:
        if config.grad_clip is not None or config.grad_accum_steps != 1:
            raise ValueError("DP-SGD clips every example's gradient itself: set grad_clip=None and grad_accum_steps=1.")
        super().__init__(model, config, poisson_batches(x, y, rate), val_batches)
        if self.world_size != 1:
            raise ValueError("DPTrainer runs in one process; the accountant's sampling is over the whole data set.")
        self.expected_batch = rate * len(x)
        self.max_norm, self.noise_multiplier = float(max_norm), float(noise_multiplier)
        _check_dp(self.max_norm, self.noise_multiplier, self.expected_batch)
        self.clipped: list[float] = []

    def _train_step(self) -> tuple[Tensor, int]:
        x, y = self.train_batches(self._train_gen)
        x, y = x.to(self.device), y.to(self.device)
        model = self.raw_model
        if len(x):
            losses, grads = per_example_grads(model, x, y)
            self._stop_if_not_finite(losses.mean())
        else:  # an empty batch still takes a step: the noise alone
            losses = torch.zeros(0, device=self.device)
            grads = {name: torch.zeros((0, *p.shape), device=self.device)
                     for name, p in model.named_parameters() if p.requires_grad}
        noisy, clipped = privatize(grads, self.max_norm, self.noise_multiplier, self.expected_batch, self._train_gen)
        self.clipped.append(clipped)
        for name, p in model.named_parameters():
            if name in noisy:
                p.grad = noisy[name].to(p.dtype)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.scheduler.step()
        loss = losses.mean() if len(x) else torch.full((), float("nan"), device=self.device)
        return loss.detach(), y.numel()


# --- accounting ----------------------------------------------------------------------------------

@functools.lru_cache(maxsize=65536)  # the accountant asks for the same orders again and again
def rdp_sampled_gaussian(rate: float, noise_multiplier: float, order: int) -> float:
    """The Renyi DP of one step of the Poisson-subsampled Gaussian mechanism at integer ``order``:

    ``log(sum_k C(order, k) (1 - q)^(order - k) q^k exp((k^2 - k) / (2 sigma^2))) / (order - 1)``

    (Mironov, Talwar and Zhang 2019, for sensitivity 1 after clipping and noise sigma). With
    ``rate`` 1 it is the plain Gaussian mechanism's ``order / (2 sigma^2)``.
    """
    if not (isinstance(order, int) and order >= 2):
        raise ValueError(f"the order must be an integer >= 2, got {order!r}.")
    if not (0 < rate <= 1 and noise_multiplier > 0):
        raise ValueError(f"need 0 < rate <= 1 and noise_multiplier > 0, got {rate!r} and {noise_multiplier!r}.")
    if rate == 1:
        return order / (2 * noise_multiplier ** 2)
    terms = [math.lgamma(order + 1) - math.lgamma(k + 1) - math.lgamma(order - k + 1)
             + (order - k) * math.log1p(-rate) + k * math.log(rate) + (k * k - k) / (2 * noise_multiplier ** 2)
             for k in range(order + 1)]
    top = max(terms)
    return (top + math.log(sum(math.exp(t - top) for t in terms))) / (order - 1)


def epsilon(rate: float, noise_multiplier: float, steps: int, delta: float,
            orders: Sequence[int] = ORDERS) -> tuple[float, int]:
    """The (epsilon, delta) guarantee of ``steps`` DP-SGD steps, and the order that gives it.

    RDP adds up over steps; each order's total converts to epsilon with
    ``rdp + log((a - 1) / a) - (log delta + log a) / (a - 1)`` (Balle et al. 2020), and the
    smallest over ``orders`` is the guarantee.
    """
    if not (isinstance(steps, int) and steps >= 0 and 0 < delta < 1):
        raise ValueError(f"need an integer steps >= 0 and 0 < delta < 1, got {steps!r} and {delta!r}.")
    if steps == 0:
        return 0.0, int(orders[0])
    best = min((steps * rdp_sampled_gaussian(rate, noise_multiplier, a) + math.log((a - 1) / a)
                - (math.log(delta) + math.log(a)) / (a - 1), a) for a in orders)
    return max(best[0], 0.0), best[1]
