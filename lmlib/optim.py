"""Optimizers written out: the textbook update rules, and Muon, the speedruns' optimizer.

Chapter 4 derives both. :class:`TextbookOptimizer` implements gradient descent, momentum,
RMSProp, Adam and AdamW as one line of tensor arithmetic each, so a reader can compare them on one
model; :func:`torch_equivalent` builds the ``torch.optim`` object that computes the same steps
(the tests check every rule against it to float64 precision).

Muon ("what the speedruns learned") is momentum whose update is orthogonalised, for the weight
matrices inside the blocks. For a weight matrix W, plain momentum steps along the momentum matrix
M. Most of M's size sits in a few directions (its largest singular values), so those directions
take big steps while the rest barely move. Muon keeps M's singular vectors and sets every singular
value to about 1: with M = U S V^T it steps along U V^T, the orthogonal matrix nearest to M.
Computing U V^T by an SVD is slow on a GPU; a few Newton-Schulz iterations get close with matrix
products only (:func:`orthogonalize`).

Muon is for 2-D matrices of the hidden layers. Embeddings, the output head, norms and biases
keep AdamW: a parameter group with ``algorithm="adamw"`` is updated by AdamW's rule in the same
optimizer (one object for the scheduler, the gradient scaler and the checkpoint);
:func:`lmlib.train.muon_groups` makes the split.

API:
    RULES = ("sgd", "momentum", "rmsprop", "adam", "adamw")
    TextbookOptimizer(params, rule, lr, momentum=0.9, alpha=0.99, betas=(0.9, 0.999), eps=1e-8,
                      weight_decay=0.0)                  # one rule of RULES, written out
    torch_equivalent(rule, params, lr, ...) -> torch.optim.Optimizer   the same steps, by torch
    orthogonalize(matrix, steps=5, coefficients=QUINTIC, eps=1e-7) -> Tensor
    Muon(params, lr=0.02, momentum=0.95, nesterov=True, ns_steps=5, weight_decay=0.0,
         betas=(0.9, 0.95), eps=1e-8)                    # groups: algorithm="muon" or "adamw"
    QUINTIC, CUBIC                                       # Newton-Schulz coefficients
"""
from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import Tensor

__all__ = ["RULES", "TextbookOptimizer", "torch_equivalent", "orthogonalize", "Muon", "QUINTIC", "CUBIC"]

def _evaluate(closure) -> Tensor | None:
    """The loss that ``closure`` recomputes with gradients on, as torch's optimizers take it (None without one)."""
    if closure is None:
        return None
    with torch.enable_grad():
        return closure()


#: The rules of :class:`TextbookOptimizer`, from the oldest to the one the course trains with.
RULES = ("sgd", "momentum", "rmsprop", "adam", "adamw")


class TextbookOptimizer(torch.optim.Optimizer):
    """Gradient descent, momentum, RMSProp, Adam or AdamW (``rule``), written out (chapter 4).

    For a parameter w with gradient g at step t (state starts at zero):

    - ``sgd``:      w <- w - lr (g + weight_decay w)
    - ``momentum``: b <- momentum b + g (b = g at the first step);  w <- w - lr b
    - ``rmsprop``:  s <- alpha s + (1 - alpha) g^2;  w <- w - lr g / (sqrt(s) + eps)
    - ``adam``:     g <- g + weight_decay w (L2, folded into the gradient);
                    m <- beta1 m + (1 - beta1) g;  v <- beta2 v + (1 - beta2) g^2;
                    w <- w - lr (m / (1 - beta1^t)) / (sqrt(v / (1 - beta2^t)) + eps)
    - ``adamw``:    w <- w (1 - lr weight_decay) (decoupled), then Adam's step without the L2 term.

    The divisions by 1 - beta^t undo the pull towards zero of averages that start at zero (bias
    correction). Momentum and RMSProp ignore ``weight_decay`` except through ``sgd``'s form.
    """

    def __init__(self, params: Iterable, rule: str, lr: float, momentum: float = 0.9, alpha: float = 0.99,
                 betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8, weight_decay: float = 0.0) -> None:
        if rule not in RULES:
            raise ValueError(f"rule must be one of {RULES}, got {rule!r}.")
        if lr <= 0:
            raise ValueError(f"lr must be > 0, got {lr}.")
        super().__init__(params, dict(rule=rule, lr=lr, momentum=momentum, alpha=alpha, betas=betas, eps=eps,
                                      weight_decay=weight_decay))

    @torch.no_grad()
    def step(self, closure=None):
        loss = _evaluate(closure)
        for group in self.param_groups:
            rule, lr, wd = group["rule"], group["lr"], group["weight_decay"]
            (beta1, beta2), eps = group["betas"], group["eps"]
            for w in group["params"]:
                if w.grad is None:
                    continue
                g, state = w.grad, self.state[w]
                if rule == "sgd":
                    w -= lr * (g + wd * w)
                elif rule == "momentum":
                    state["b"] = g.clone() if "b" not in state else group["momentum"] * state["b"] + g
                    w -= lr * state["b"]
                elif rule == "rmsprop":
                    s = state.get("s", torch.zeros_like(w))
                    state["s"] = group["alpha"] * s + (1 - group["alpha"]) * g * g
                    w -= lr * g / (state["s"].sqrt() + eps)
                else:  # adam, adamw
                    if rule == "adam":
                        g = g + wd * w
                    else:
                        w *= 1 - lr * wd
                    t = state["t"] = state.get("t", 0) + 1
                    state["m"] = beta1 * state.get("m", torch.zeros_like(w)) + (1 - beta1) * g
                    state["v"] = beta2 * state.get("v", torch.zeros_like(w)) + (1 - beta2) * g * g
                    m_hat, v_hat = state["m"] / (1 - beta1 ** t), state["v"] / (1 - beta2 ** t)
                    w -= lr * m_hat / (v_hat.sqrt() + eps)
        return loss


def torch_equivalent(rule: str, params: Iterable, lr: float, momentum: float = 0.9, alpha: float = 0.99,
                     betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                     weight_decay: float = 0.0) -> torch.optim.Optimizer:
    """The ``torch.optim`` optimizer that takes the same steps as ``TextbookOptimizer(params, rule, ...)``."""
    if rule == "sgd":
        return torch.optim.SGD(params, lr=lr, weight_decay=weight_decay)
    if rule == "momentum":
        return torch.optim.SGD(params, lr=lr, momentum=momentum)
    if rule == "rmsprop":
        return torch.optim.RMSprop(params, lr=lr, alpha=alpha, eps=eps)
    if rule == "adam":
        return torch.optim.Adam(params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay)
    if rule == "adamw":
        return torch.optim.AdamW(params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay)
    raise ValueError(f"rule must be one of {RULES}, got {rule!r}.")


#: Coefficients (a, b, c) of the quintic iteration X <- a X + b (X X^T) X + c (X X^T)^2 X that
#: Muon's authors tuned to push every singular value in (0, 1] into a band around 1 (for a random
#: Gaussian matrix, 0.68 to 1.2) in five steps (Jordan et al. 2024). The steep slope at 0
#: (a = 3.4) lifts small singular values quickly; the price is that the values oscillate around 1
#: instead of converging to it.
QUINTIC = (3.4445, -4.7750, 2.0315)
#: The classic cubic iteration X <- 1.5 X - 0.5 (X X^T) X: it converges to U V^T exactly, but
#: small singular values need many steps to grow.
CUBIC = (1.5, -0.5, 0.0)


def orthogonalize(matrix: Tensor, steps: int = 5, coefficients: tuple[float, float, float] = QUINTIC,
                  eps: float = 1e-7) -> Tensor:
    """Approximately U V^T for ``matrix`` = U S V^T, by Newton-Schulz iterations (matrix products only).

    The matrix is first divided by its Frobenius norm, which bounds the largest singular value by
    1. Each iteration X <- a X + b (X X^T) X + c (X X^T)^2 X maps every singular value s to
    a s + b s^3 + c s^5 and leaves the singular vectors alone. The products are taken on the
    smaller side (X X^T is min(m, n) square), so a tall matrix is transposed first. A 3-D input
    is a batch of matrices of one shape, each orthogonalised on its own (Muon batches its
    same-shaped matrices this way: one product per iteration instead of one per matrix).
    """
    if matrix.dim() not in (2, 3):
        raise ValueError(f"orthogonalize needs a 2-D matrix (or a 3-D batch of them), got shape {tuple(matrix.shape)}.")
    if steps < 0:
        raise ValueError(f"steps must be >= 0, got {steps}.")
    a, b, c = coefficients
    x = matrix if matrix.dtype in (torch.float32, torch.float64) else matrix.float()  # half precision: in float32
    tall = x.shape[-2] > x.shape[-1]
    if tall:
        x = x.mT
    x = x / (torch.linalg.matrix_norm(x, keepdim=True) + eps)
    for _ in range(steps):
        gram = x @ x.mT
        x = a * x + (b * gram + c * gram @ gram) @ x
    return (x.mT if tall else x).to(matrix.dtype)


class Muon(torch.optim.Optimizer):
    """Momentum SGD whose step is the orthogonalised momentum, for 2-D weight matrices; AdamW for
    the groups that say ``algorithm="adamw"`` (their ``lr``, ``betas``, ``eps``, ``weight_decay``).

    Per matrix W (m x n) with gradient G: the buffer B <- momentum * B + G; the direction is
    G + momentum * B with ``nesterov`` (else B); the step is
    ``W <- W - lr * sqrt(max(1, m / n)) * orthogonalize(direction)``. An orthogonal m x n matrix
    (m <= n) has rows of length 1, so its entries are about 1/sqrt(n); the factor keeps the
    update's size per entry the same for tall matrices. ``weight_decay`` is decoupled, as in
    AdamW: W <- W (1 - lr * weight_decay) before the step.
    """

    def __init__(self, params: Iterable, lr: float = 0.02, momentum: float = 0.95, nesterov: bool = True,
                 ns_steps: int = 5, weight_decay: float = 0.0, betas: tuple[float, float] = (0.9, 0.95),
                 eps: float = 1e-8) -> None:
        if lr <= 0:
            raise ValueError(f"Muon's lr must be > 0, got {lr} (0.02 is usual).")
        if not 0 <= momentum < 1:
            raise ValueError(f"Muon's momentum must be in [0, 1), got {momentum} (0.95 is usual).")
        if ns_steps < 1:
            raise ValueError(f"Muon's ns_steps must be >= 1, got {ns_steps} (5 is usual).")
        if weight_decay < 0:
            raise ValueError(f"Muon's weight_decay must be >= 0, got {weight_decay}.")
        defaults = dict(lr=lr, momentum=momentum, nesterov=nesterov, ns_steps=ns_steps, weight_decay=weight_decay,
                        betas=betas, eps=eps, algorithm="muon")
        super().__init__(params, defaults)
        for group in self.param_groups:
            if group["algorithm"] not in ("muon", "adamw"):
                raise ValueError(f"A parameter group's algorithm must be 'muon' or 'adamw', got {group['algorithm']!r}.")
            if group["algorithm"] == "adamw":
                continue
            for p in group["params"]:
                if p.dim() != 2:
                    names = group.get("names")
                    raise ValueError(
                        f"Muon updates 2-D weight matrices only, got a parameter of shape {tuple(p.shape)}"
                        + (f" (in group {names[:3]}...)" if names else "")
                        + ": give embeddings' vectors, norms and biases to AdamW (lmlib.train.param_groups).")

    @torch.no_grad()
    def step(self, closure=None):
        loss = _evaluate(closure)
        for group in self.param_groups:
            if group["algorithm"] == "adamw":
                self._adamw_step(group)
            else:
                self._muon_step(group)
        return loss

    def _muon_step(self, group: dict) -> None:
        lr, momentum = group["lr"], group["momentum"]
        params = [p for p in group["params"] if p.grad is not None]
        if not params:
            return
        grads = [p.grad for p in params]
        buffers = []
        for p in params:
            if "momentum_buffer" not in self.state[p]:
                self.state[p]["momentum_buffer"] = torch.zeros_like(p.grad)
            buffers.append(self.state[p]["momentum_buffer"])
        torch._foreach_mul_(buffers, momentum)
        torch._foreach_add_(buffers, grads)
        directions = torch._foreach_add(grads, buffers, alpha=momentum) if group["nesterov"] else buffers
        if group["weight_decay"]:
            torch._foreach_mul_(params, 1 - lr * group["weight_decay"])
        by_shape: dict[tuple, list[int]] = {}  # same-shaped matrices are orthogonalised as one batch
        for i, p in enumerate(params):
            by_shape.setdefault((tuple(p.shape), p.dtype, p.device), []).append(i)
        for (shape, _, _), index in by_shape.items():
            updates = orthogonalize(torch.stack([directions[i] for i in index]), group["ns_steps"])
            scale = -lr * max(1.0, shape[0] / shape[1]) ** 0.5
            torch._foreach_add_([params[i] for i in index], list(updates.unbind(0)), alpha=scale)

    def _adamw_step(self, group: dict) -> None:
        """AdamW's update (Loshchilov and Hutter 2019), as torch.optim.AdamW computes it (one
        ``torch._foreach`` call per operation over the group's tensors, not one per tensor)."""
        (beta1, beta2), lr = group["betas"], group["lr"]
        params = [p for p in group["params"] if p.grad is not None]
        for p in params:
            if not self.state[p]:
                self.state[p].update(step=0, exp_avg=torch.zeros_like(p), exp_avg_sq=torch.zeros_like(p))
            self.state[p]["step"] += 1
        by_step: dict[int, list] = {}  # bias correction needs the step count: params that share it go together
        for p in params:
            by_step.setdefault(self.state[p]["step"], []).append(p)
        for step, ps in by_step.items():
            grads = [p.grad for p in ps]
            exp_avg = [self.state[p]["exp_avg"] for p in ps]
            exp_avg_sq = [self.state[p]["exp_avg_sq"] for p in ps]
            torch._foreach_lerp_(exp_avg, grads, 1 - beta1)
            torch._foreach_mul_(exp_avg_sq, beta2)
            torch._foreach_addcmul_(exp_avg_sq, grads, grads, value=1 - beta2)
            torch._foreach_mul_(ps, 1 - lr * group["weight_decay"])
            denominator = torch._foreach_sqrt(exp_avg_sq)
            torch._foreach_div_(denominator, (1 - beta2 ** step) ** 0.5)
            torch._foreach_add_(denominator, group["eps"])
            torch._foreach_addcdiv_(ps, exp_avg, denominator, value=-lr / (1 - beta1 ** step))
