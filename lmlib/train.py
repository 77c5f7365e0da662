"""The course's training engine: one readable loop with everything a real pretraining run needs.

Derived in chapter 4 ("Pretraining"). The model convention is nanoGPT's: the trainer calls
``model(x, targets=y)`` and expects ``(logits, loss)``, where ``loss`` is the mean cross-entropy
over the batch (:func:`lm_loss` computes it from ``(B, T, V)`` logits). Any ``nn.Module`` that
follows it trains here, on CPU, Apple MPS, one CUDA GPU, or several under ``torchrun``.

Batches come from a function ``batch_fn(generator) -> (x, y)`` that draws with the given
``torch.Generator`` (e.g. :func:`token_batches`). The trainer owns that generator and saves its
state in every checkpoint, so the data position is part of the state and a resumed run sees
exactly the batches an uninterrupted run would. A plain iterable of ``(x, y)`` also works; on
resume it is fast-forwarded past the batches already used (exact if it yields the same sequence
each time it is created).

Each batch is checked before its step: not empty, integer targets in ``[0, classes)``
or -100 (ignored), not every target ignored (the classes are ``model.config.vocab_size`` when
the model has one, else the last dimension of the first logits). Training stops with
``FloatingPointError`` at the first nan or inf loss, before that step's update; a checkpoint
with nan or inf weights is never written. Resume checks that the model's config and the
settings outside :data:`RESUME_MAY_CHANGE` equal the checkpoint's (resume would silently ignore
or mix them), and ``fit()`` refuses a ``checkpoint_dir`` holding checkpoints of another run.

API::

    TrainConfig(max_steps=1000, lr=3e-4, min_lr=None, warmup_steps=None, weight_decay=0.1,
                optimizer="adamw", muon_lr=0.02, schedule="cosine", cooldown_frac=0.4, betas=(0.9, 0.95),
                eps=1e-8, grad_clip=1.0,
                grad_accum_steps=1, eval_every=250, eval_steps=20, log_every=None, checkpoint_every=None, checkpoint_dir=None,
                keep_last=3, compile=False, precision=None, device=None, seed=0, progress=True)
    Trainer(model, config, train_batches, val_batches=None, flops_per_token=None)
        .fit() -> History            # resumes from .step; Ctrl-C saves a checkpoint and returns
        .evaluate() -> float         # mean validation loss over config.eval_steps batches
        .save_checkpoint() -> Path | None
        .load_checkpoint(path=None)  # None: the newest under config.checkpoint_dir
        .reschedule(max_steps)       # the schedule ends at max_steps from now on (a budget of seconds)
        .step, .history, .model (wrapped), .raw_model, .optimizer, .scheduler, .scaler,
        .runtime, .precision, .device, .rank, .world_size
    History(step, train_loss, lr, tokens_per_s, mfu, val_step, val_loss, interrupted)
    plot_history(history, axes=None) -> axes
    param_groups(model, weight_decay) -> list[dict]   # "decay" and "no_decay", with names
    muon_groups(model, weight_decay, lr, muon_lr) -> list[dict]  # hidden matrices to Muon, the rest AdamW
    lr_at(step, lr, min_lr, warmup_steps, max_steps, schedule="cosine", cooldown_frac=0.4) -> float
    token_batches(tokens, block_size, batch_size) -> batch_fn
    lm_loss(logits, targets) -> Tensor
    data_seed(seed, rank) -> int
    RESUME_MAY_CHANGE                                TrainConfig fields a resumed run may change
    CheckpointError                                  (from lmlib.checkpoint) a checkpoint that cannot be used
"""
from __future__ import annotations

import contextlib
import math
import numbers
import signal
import time
import warnings
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from tqdm.auto import tqdm

from lmlib import checkpoint as ckpt
from lmlib.checkpoint import CheckpointError
from lmlib.data import check_targets, window_batches
from lmlib.device import PRECISIONS, Runtime, runtime
from lmlib.optim import Muon

Batch = tuple[torch.Tensor, torch.Tensor]
BatchFn = Callable[[torch.Generator], Batch]

__all__ = [
    "TrainConfig", "Trainer", "History", "plot_history", "param_groups", "muon_groups", "lr_at", "token_batches",
    "lm_loss", "data_seed", "RESUME_MAY_CHANGE", "CheckpointError",
]

# Settings a resumed run may change: how long it runs (the cosine schedule is stretched to the new
# max_steps, with a warning), what it reports and where, and where it runs. Any other field is
# either stored in the optimizer, scheduler or random state (a new value would be ignored) or
# changes the updates themselves, so a changed value is refused.
RESUME_MAY_CHANGE = frozenset({
    "max_steps", "eval_every", "eval_steps", "log_every", "checkpoint_every", "checkpoint_dir",
    "keep_last", "compile", "precision", "device", "progress",
})


#: The learning-rate schedules :func:`lr_at` knows.
SCHEDULES = ("cosine", "trapezoid")


# ----------------------------------------------------------------------------- configuration
@dataclass
class TrainConfig:
    """Every knob of a run, checked when the config is built (a typo fails before training starts).

    Defaults are relative to the run: ``min_lr`` is ``lr / 10``, ``warmup_steps`` is a tenth of
    the run capped at 100 steps, ``log_every`` gives about 20 log points. ``eval_every=None`` evaluates only at the end;
    ``checkpoint_every`` needs ``checkpoint_dir`` (a final checkpoint is written whenever
    ``checkpoint_dir`` is set). ``precision`` (``fp32``/``bf16``/``fp16``) overrides the
    :mod:`lmlib.device` policy; ``device`` overrides :func:`lmlib.device.best_device`.
    ``schedule`` is ``"cosine"`` (warmup, then cosine decay to ``min_lr``) or ``"trapezoid"``
    (warmup, constant, then a linear cool-down to ``min_lr`` over the last ``cooldown_frac`` of
    the steps; see :func:`lr_at`). ``optimizer="muon"`` trains the hidden matrices with
    :class:`lmlib.optim.Muon` at ``muon_lr`` and the rest with AdamW at ``lr``. On
    resume only the fields in :data:`RESUME_MAY_CHANGE` may differ from the checkpoint's.
    """

    max_steps: int = 1000
    lr: float = 3e-4
    min_lr: float | None = None
    warmup_steps: int | None = None
    weight_decay: float = 0.1
    optimizer: str = "adamw"
    muon_lr: float = 0.02
    schedule: str = "cosine"
    cooldown_frac: float = 0.4
    betas: tuple[float, float] = (0.9, 0.95)
    eps: float = 1e-8
    grad_clip: float | None = 1.0
    grad_accum_steps: int = 1
    eval_every: int | None = 250
    eval_steps: int = 20
    log_every: int | None = None
    checkpoint_every: int | None = None
    checkpoint_dir: str | Path | None = None
    keep_last: int | None = 3
    compile: bool = False
    precision: str | None = None
    device: str | None = None
    seed: int = 0
    progress: bool = True

    def __post_init__(self) -> None:
        def bad(name: str, must: str) -> ValueError:
            return ValueError(f"TrainConfig.{name}={getattr(self, name)!r}: {must}.")

        def is_int(v) -> bool:
            return isinstance(v, (int, np.integer)) and not isinstance(v, bool)

        def is_num(v) -> bool:
            return isinstance(v, (int, float, np.number)) and not isinstance(v, bool) and math.isfinite(v)

        if is_int(self.max_steps) and self.max_steps >= 1:
            if self.warmup_steps is None:
                self.warmup_steps = min(100, self.max_steps // 10)
            if self.log_every is None:
                self.log_every = max(1, self.max_steps // 20)
        for name in ("max_steps", "grad_accum_steps", "eval_steps", "log_every"):
            if not is_int(getattr(self, name)) or getattr(self, name) < 1:
                raise bad(name, "must be a whole number >= 1")
        for name in ("eval_every", "checkpoint_every", "keep_last"):
            value = getattr(self, name)
            if value is not None and (not is_int(value) or value < 1):
                raise bad(name, "must be a whole number >= 1, or None to switch it off")
        if not is_int(self.warmup_steps) or not 0 <= self.warmup_steps <= self.max_steps:
            raise bad("warmup_steps", f"must be a whole number between 0 and max_steps={self.max_steps}")
        if not is_num(self.lr) or self.lr <= 0:
            raise bad("lr", "must be a positive number, e.g. 3e-4")
        if self.min_lr is None:
            self.min_lr = self.lr / 10
        if not is_num(self.min_lr) or not 0 <= self.min_lr <= self.lr:
            raise bad("min_lr", f"must be between 0 and lr={self.lr}")
        if not is_num(self.weight_decay) or self.weight_decay < 0:
            raise bad("weight_decay", "must be >= 0 (0.1 is usual for transformers)")
        if self.optimizer not in ("adamw", "muon"):
            raise bad("optimizer", "must be 'adamw' or 'muon' (Muon for the hidden matrices, AdamW for the rest)")
        if not is_num(self.muon_lr) or self.muon_lr <= 0:
            raise bad("muon_lr", "must be > 0 (0.02 is usual)")
        if self.schedule not in SCHEDULES:
            raise bad("schedule", f"must be one of {SCHEDULES}")
        if not is_num(self.cooldown_frac) or not 0 <= self.cooldown_frac <= 1:
            raise bad("cooldown_frac", "must be a fraction of the run in [0, 1], e.g. 0.4")
        if (not isinstance(self.betas, (tuple, list)) or len(self.betas) != 2
                or not all(is_num(b) and 0 <= b < 1 for b in self.betas)):
            raise bad("betas", "must be two numbers in [0, 1), e.g. (0.9, 0.95)")
        self.betas = tuple(float(b) for b in self.betas)
        if not is_num(self.eps) or self.eps <= 0:
            raise bad("eps", "must be a small positive number, e.g. 1e-8")
        if self.grad_clip is not None and (not is_num(self.grad_clip) or self.grad_clip <= 0):
            raise bad("grad_clip", "must be a positive gradient-norm bound, or None for no clipping")
        if self.checkpoint_every is not None and self.checkpoint_dir is None:
            raise bad("checkpoint_every", "needs checkpoint_dir, the folder to write checkpoints into")
        if self.precision is not None and self.precision not in PRECISIONS:
            raise bad("precision", f"must be one of {sorted(PRECISIONS)} or None for the device policy")
        if not is_int(self.seed) or not 0 <= self.seed < 2**32:
            raise bad("seed", "must be a whole number in [0, 2**32)")
        if self.checkpoint_dir is not None:
            self.checkpoint_dir = Path(self.checkpoint_dir)

    def as_dict(self) -> dict:
        """Plain values only (what a checkpoint stores)."""
        out = asdict(self)
        out["checkpoint_dir"] = None if self.checkpoint_dir is None else str(self.checkpoint_dir)
        out["betas"] = list(self.betas)
        return out


# ----------------------------------------------------------------------------- optimizer pieces
def _is_norm(module: nn.Module) -> bool:
    norm_types = (nn.LayerNorm, nn.GroupNorm, nn.LocalResponseNorm, nn.modules.batchnorm._NormBase)
    if hasattr(nn, "RMSNorm"):
        norm_types += (nn.RMSNorm,)
    return isinstance(module, norm_types) or type(module).__name__.endswith("Norm")


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Split trainable parameters into a weight-decay group and a no-decay group.

    Decay shrinks weights towards zero, which regularises the matrices that mix features. It is
    not applied to biases (shifts, not mixing), to the gains of normalisation layers (decay would
    pull them towards 0 instead of their natural value 1) or to embeddings (a rare token's row
    would decay every step while receiving almost no gradient). The rule:

    - no decay: parameters of ``nn.Embedding``/``EmbeddingBag`` modules and of normalisation
      modules (PyTorch's norms, or any class whose name ends in ``Norm``, like a hand-written
      ``RMSNorm``), and every parameter with fewer than 2 dimensions (biases, gains);
    - decay: all other parameters (the weight matrices of linear and convolution layers).

    A tied weight (an output layer sharing the embedding matrix) counts once, as an embedding.
    Each group carries a ``names`` list, so the split can be printed and tested.
    """
    no_decay_ids = set()
    for module in model.modules():
        if isinstance(module, (nn.Embedding, nn.EmbeddingBag)) or _is_norm(module):
            no_decay_ids.update(id(p) for p in module.parameters(recurse=False))
    decay, no_decay = ([], []), ([], [])
    for name, p in model.named_parameters():  # shared parameters are listed once
        if not p.requires_grad:
            continue
        names, params = no_decay if (id(p) in no_decay_ids or p.dim() < 2) else decay
        names.append(name)
        params.append(p)
    if not decay[1] and not no_decay[1]:
        raise ValueError("The model has no trainable parameters (all have requires_grad=False).")
    return [
        {"params": decay[1], "names": decay[0], "weight_decay": float(weight_decay), "group": "decay"},
        {"params": no_decay[1], "names": no_decay[0], "weight_decay": 0.0, "group": "no_decay"},
    ]


def muon_groups(model: nn.Module, weight_decay: float, lr: float, muon_lr: float) -> list[dict]:
    """:func:`param_groups` for :class:`lmlib.optim.Muon`: the hidden layers' weight matrices (every
    ``nn.Linear`` weight but an output head's, by its name) in a ``"muon"`` group at ``muon_lr``;
    the rest (embeddings, the head, norms, biases) keep AdamW at ``lr``, decayed as before."""
    hidden = {id(m.weight) for name, m in model.named_modules()
              if isinstance(m, nn.Linear) and "head" not in name.rsplit(".", 1)[-1]}
    groups = []
    for group in param_groups(model, weight_decay):
        split = {"muon": [], "adamw": []}
        for n, p in zip(group["names"], group["params"]):
            split["muon" if id(p) in hidden and p.dim() == 2 else "adamw"].append((n, p))
        for algorithm, group_lr in (("muon", muon_lr), ("adamw", lr)):
            members = split[algorithm]
            if members:
                groups.append({"params": [p for _, p in members], "names": [n for n, _ in members],
                               "weight_decay": group["weight_decay"], "group": f"{group['group']}/{algorithm}",
                               "algorithm": algorithm, "lr": group_lr})
    return groups


def lr_at(step: int, lr: float, min_lr: float, warmup_steps: int, max_steps: int,
          schedule: str = "cosine", cooldown_frac: float = 0.4) -> float:
    """Learning rate for optimizer step ``step`` (0-based): linear warmup, then the decay of ``schedule``.

    Warmup ramps from ``lr / warmup_steps`` to ``lr`` over the first ``warmup_steps`` steps (Adam's
    early moment estimates are noisy, so the first updates are kept small). ``"cosine"``: a half
    cosine takes it from ``lr`` down to ``min_lr`` at the last step ``max_steps - 1``.
    ``"trapezoid"`` (warmup, stable, decay; the speedruns' choice, chapter 4) holds ``lr`` until
    the last ``cooldown_frac`` of the steps, then falls linearly to ``min_lr`` at the last step:
    more of the run at the full rate, and a run can be extended before its cool-down starts.
    Later steps stay at ``min_lr``.
    """
    if step < warmup_steps:
        return lr * (step + 1) / warmup_steps
    if schedule == "trapezoid":
        cooldown = max(0, min(round(cooldown_frac * max_steps), max_steps - warmup_steps))
        if step < max_steps - cooldown:
            return lr
        return lr + (min_lr - lr) * min(1.0, (step - (max_steps - cooldown) + 1) / cooldown)
    decay_steps = max_steps - 1 - warmup_steps
    if decay_steps <= 0:
        return lr
    progress = min(1.0, (step - warmup_steps) / decay_steps)
    return min_lr + 0.5 * (lr - min_lr) * (1 + math.cos(math.pi * progress))


class _WarmupCosine:
    """The multiplier ``LambdaLR`` needs; an object (not a lambda) so its state can be saved."""

    def __init__(self, lr: float, min_lr: float, warmup_steps: int, max_steps: int,
                 schedule: str = "cosine", cooldown_frac: float = 0.4):
        self.lr, self.min_lr, self.warmup_steps, self.max_steps = lr, min_lr, warmup_steps, max_steps
        self.schedule, self.cooldown_frac = schedule, cooldown_frac

    def __call__(self, step: int) -> float:
        return lr_at(step, self.lr, self.min_lr, self.warmup_steps, self.max_steps, self.schedule,
                     self.cooldown_frac) / self.lr


def _adamw(groups: list[dict], config: TrainConfig, device: torch.device) -> torch.optim.AdamW:
    """AdamW, fused into one kernel where this PyTorch supports it, else the multi-tensor version."""
    kwargs = dict(lr=config.lr, betas=config.betas, eps=config.eps)
    try:
        return torch.optim.AdamW(groups, fused=True, **kwargs)
    except (RuntimeError, TypeError, ValueError):
        return torch.optim.AdamW(groups, foreach=device.type != "cpu" or None, **kwargs)


# ----------------------------------------------------------------------------- data and loss
def token_batches(tokens: torch.Tensor, block_size: int, batch_size: int) -> BatchFn:
    """A ``batch_fn`` of random windows from a 1-D token tensor (:func:`lmlib.data.window_batches`)."""
    return window_batches(tokens, block_size, batch_size)


def lm_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean next-token cross-entropy of ``(B, T, V)`` logits against ``(B, T)`` targets."""
    if logits.dim() != 3 or targets.shape != logits.shape[:2]:
        raise ValueError(
            f"lm_loss needs logits (B, T, V) and targets (B, T); got {tuple(logits.shape)} and "
            f"{tuple(targets.shape)}."
        )
    return F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten())


def data_seed(seed: int, rank: int) -> int:
    """The seed of the training-batch generator on process ``rank`` (ranks draw different batches).

    Validation batches use ``data_seed(seed, rank) + 2**40``, re-seeded at every evaluation.
    """
    return seed * 1_000_003 + rank


# ----------------------------------------------------------------------------- history
@dataclass
class History:
    """What :meth:`Trainer.fit` measured: logged every ``log_every`` steps, validated every ``eval_every``."""

    step: list[int] = field(default_factory=list)
    train_loss: list[float] = field(default_factory=list)
    lr: list[float] = field(default_factory=list)
    tokens_per_s: list[float] = field(default_factory=list)
    mfu: list[float | None] = field(default_factory=list)
    val_step: list[int] = field(default_factory=list)
    val_loss: list[float] = field(default_factory=list)
    interrupted: bool = False

    def as_dict(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(self)}


def plot_history(history: History, axes=None):
    """Loss curves (train and validation) above the learning-rate schedule, at the page's width."""
    # Imported here, not at the top: a plain training run (a script, a benchmark) needs no matplotlib.
    import matplotlib.pyplot as plt

    from lmlib.plot import curves

    if axes is None:
        fig, axes = plt.subplots(2, 1, figsize=(6.5, 5), sharex=True, height_ratios=[3, 2])
        fig.set_layout_engine("constrained")
    series = {"train": (history.step, history.train_loss)}
    if history.val_loss:
        series["validation"] = (history.val_step, history.val_loss)
    curves(series, ax=axes[0], title="Training and validation loss", xlabel="", ylabel="cross-entropy (nats)")
    curves({"learning rate": (history.step, history.lr)}, ax=axes[1], title="Learning-rate schedule", ylabel="learning rate")
    return axes


class _DeferInterrupt:
    """Turn the first Ctrl-C into a flag checked between steps, so a step is never cut in half.

    A second Ctrl-C raises KeyboardInterrupt at once. Only possible in the main thread; elsewhere
    Ctrl-C behaves as usual.
    """

    def __init__(self, enabled: bool = True):
        self.requested = False
        self.enabled = enabled
        self._previous = None

    def _handler(self, signum, frame):
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True

    def __enter__(self):
        if not self.enabled:
            return self
        try:
            self._previous = signal.signal(signal.SIGINT, self._handler)
        except ValueError:  # not the main thread
            self._previous = None
        return self

    def __exit__(self, *exc):
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)
        return False


# ----------------------------------------------------------------------------- the trainer
class Trainer:
    """Train ``model`` (``model(x, targets=y) -> (logits, loss)``) with AdamW (or Muon, ``optimizer="muon"``) under ``config``.

    See the module docstring for the batch sources. ``flops_per_token`` (forward + backward) is
    used for MFU; by default it is ``6 * parameters``, the usual estimate that ignores attention.
    Under ``torchrun`` the model is wrapped in DistributedDataParallel: each process draws its own
    batches (generator seed :func:`data_seed`), gradients are averaged, and rank 0 writes the
    checkpoints. Building the trainer seeds PyTorch's global RNG (dropout) with
    ``config.seed + rank``; seed the model's initialisation yourself before building the model.
    On CUDA it also calls ``torch.set_float32_matmul_precision("high")`` (TF32 for the float32
    matmuls autocast leaves), a process-wide setting; on CPU float32 stays exact.
    """

    def __init__(
        self,
        model: nn.Module,
        config: TrainConfig,
        train_batches: BatchFn | Iterable[Batch],
        val_batches: BatchFn | Iterable[Batch] | None = None,
        flops_per_token: float | None = None,
    ):
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}.")
        if not isinstance(config, TrainConfig):
            raise TypeError(f"config must be a TrainConfig, got {type(config).__name__}.")
        for name, source in (("train_batches", train_batches), ("val_batches", val_batches)):
            if source is not None and not callable(source) and not isinstance(source, Iterable):
                raise TypeError(f"{name} must be a function generator -> (x, y) or an iterable of (x, y).")
        self.config = config
        self.runtime: Runtime = runtime(config.device, config.precision)
        self.device, self.precision = self.runtime.device, self.runtime.precision
        self.rank, self.world_size = self.runtime.rank, self.runtime.world_size
        torch.manual_seed(config.seed + self.rank)

        self.raw_model = model.to(self.device)
        if config.optimizer == "muon":
            self.optimizer = Muon(muon_groups(model, config.weight_decay, config.lr, config.muon_lr),
                                  betas=config.betas, eps=config.eps)
        else:
            self.optimizer = _adamw(param_groups(model, config.weight_decay), config, self.device)
        schedule = _WarmupCosine(config.lr, config.min_lr, config.warmup_steps, config.max_steps,
                                 config.schedule, config.cooldown_frac)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, schedule)
        self.scaler = self.precision.make_grad_scaler()
        self.model = model
        if self.world_size > 1:
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.model = DistributedDataParallel(model, device_ids=ids)
        if config.compile:
            self.model = torch.compile(self.model)
        self._eval_model = torch.compile(model) if config.compile else model

        self.train_batches, self.val_batches = train_batches, val_batches
        self._train_gen = torch.Generator().manual_seed(data_seed(config.seed, self.rank))
        self._train_iter = None if callable(train_batches) else iter(train_batches)
        self._drawn = 0  # batches taken from an iterable source
        self.step = 0
        self.history = History()
        self._checked_output = False
        vocab = getattr(getattr(model, "config", None), "vocab_size", None)
        # else learnt from the first logits
        self._classes = int(vocab) if isinstance(vocab, numbers.Integral) and not isinstance(vocab, bool) else None
        self._own_step: tuple[Path, int] | None = None  # (folder, step): this run's newest checkpoint, written or resumed
        self._skipped: set[Path] = set()  # damaged newer checkpoints passed over on resume

        self.flops_per_token = flops_per_token or 6 * sum(p.numel() for p in model.parameters())
        self._peak = self.runtime.peak_flops

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    # ------------------------------------------------------------------ batches
    def _next_batch(self) -> Batch:
        if self._train_iter is None:
            batch = self.train_batches(self._train_gen)
        else:
            try:
                batch = next(self._train_iter)
            except StopIteration:
                raise RuntimeError(
                    f"train_batches ran out after {self._drawn} batches at step {self.step}; "
                    f"max_steps={self.config.max_steps} x grad_accum_steps={self.config.grad_accum_steps} "
                    "need more. Pass a longer iterable or a batch function."
                ) from None
            self._drawn += 1
        return self._to_device(batch, "train_batches")

    def _to_device(self, batch, source: str) -> Batch:
        if not (isinstance(batch, (tuple, list)) and len(batch) == 2
                and all(isinstance(t, torch.Tensor) for t in batch)):
            raise TypeError(f"{source} must give (x, y) pairs of tensors, got {type(batch).__name__}.")
        x, y = batch
        if x.numel() == 0 or y.numel() == 0:
            raise ValueError(
                f"{source} gave an empty batch (x {tuple(x.shape)}, y {tuple(y.shape)}); every batch needs "
                "at least one example and one target."
            )
        if hasattr(self.raw_model, "check_input"):
            if self.config.compile:  # the compiled graph skips the range checks: make them here, on the host
                self.raw_model.check_input(x, targets=y)
            # else the model's forward pass checks ids and targets, before any weight changes
        else:
            check_targets(y, self._classes, f"a batch from {source}", classes="the model's classes")
        nb = self.device.type == "cuda"
        return x.to(self.device, non_blocking=nb), y.to(self.device, non_blocking=nb)

    def _loss(self, out, y: torch.Tensor) -> torch.Tensor:
        if not self._checked_output:
            if not (isinstance(out, (tuple, list)) and len(out) == 2 and isinstance(out[1], torch.Tensor)
                    and out[1].dim() == 0):
                raise TypeError(
                    "The model must follow the convention model(x, targets=y) -> (logits, loss) with a "
                    f"scalar loss; it returned {type(out).__name__}. Wrap a logits-only model so that "
                    "it returns (logits, lmlib.train.lm_loss(logits, targets))."
                )
            self._checked_output = True
            logits = out[0]
            # Targets index the last axis of the logits (an LM's (B, T, V) for (B, T), a classifier's
            # (B, C) for (B,)): then that axis is the number of classes. Other heads (a span
            # extractor's (B, T, 2) logits for (B, 2) positions) keep only the dtype checks.
            if (self._classes is None and isinstance(logits, torch.Tensor)
                    and tuple(logits.shape[:-1]) == tuple(y.shape)):
                self._classes = logits.shape[-1]
        return out[1]

    # ------------------------------------------------------------------ one optimizer step
    def _train_step(self) -> tuple[torch.Tensor, int]:
        cfg, accum = self.config, self.config.grad_accum_steps
        total = torch.zeros((), device=self.device)
        tokens = 0
        for micro in range(accum):
            x, y = self._next_batch()
            tokens += y.numel()
            # Under DDP, gradients are averaged across processes only on the last micro-batch.
            sync = (self.world_size == 1 or micro == accum - 1)
            with contextlib.nullcontext() if sync else self.model.no_sync():
                with self.precision.autocast():
                    loss = self._loss(self.model(x, targets=y), y)
                self.scaler.scale(loss / accum).backward()
            total += loss.detach()
        self._stop_if_not_finite(total)
        if cfg.grad_clip is not None:
            self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.raw_model.parameters(), cfg.grad_clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        self.scheduler.step()
        return total / accum, tokens * self.world_size

    def _stop_if_not_finite(self, loss: torch.Tensor) -> None:
        """Raise before the update when the loss (on any process) is nan or inf."""
        bad = (~torch.isfinite(loss)).float()
        if self.world_size > 1:
            dist.all_reduce(bad)
        if bad.item():
            self.optimizer.zero_grad(set_to_none=True)
            cfg = self.config
            raise FloatingPointError(
                f"The training loss is not finite ({loss.item()} on this process) at step {self.step + 1} "
                f"(lr {self.optimizer.param_groups[0]['lr']:.3g}); training stopped before this step's update "
                "and wrote no checkpoint of it. Try a lower lr (e.g. a tenth of "
                f"{cfg.lr:g}), gradient clipping (grad_clip={cfg.grad_clip}; e.g. 1.0), a longer warmup "
                "(warmup_steps), or check the batches. Resume from the last checkpoint with load_checkpoint()."
            )

    def _mean_across_ranks(self, value: torch.Tensor) -> float:
        if self.world_size > 1:
            value = value.clone()
            dist.all_reduce(value)
            value /= self.world_size
        return value.item()

    @torch.no_grad()
    def evaluate(self) -> float:
        """Mean validation loss over ``eval_steps`` batches (the same batches at every call)."""
        if self.val_batches is None:
            raise ValueError("evaluate() needs val_batches; pass them to Trainer(...).")
        self._eval_model.eval()
        total = torch.zeros((), device=self.device)
        if callable(self.val_batches):
            gen = torch.Generator().manual_seed(data_seed(self.config.seed, self.rank) + (1 << 40))
            batches = (self.val_batches(gen) for _ in range(self.config.eval_steps))
        else:
            batches = iter(self.val_batches)
        n = 0
        for n, batch in enumerate(batches, 1):
            x, y = self._to_device(batch, "val_batches")
            with self.precision.autocast():
                total += self._loss(self._eval_model(x, targets=y), y).float()
            if n == self.config.eval_steps:
                break
        self._eval_model.train()
        if n == 0:
            raise ValueError(
                "val_batches gave no batches. An iterator is used up after one evaluation: pass a "
                "list of (x, y) or a batch function instead."
            )
        return self._mean_across_ranks(total / n)

    # ------------------------------------------------------------------ the loop
    def fit(self) -> History:
        """Train from ``self.step`` to ``max_steps``; returns (and keeps) the history.

        The first Ctrl-C finishes the current step, writes a checkpoint (if ``checkpoint_dir`` is
        set) and returns with ``history.interrupted = True``; calling ``fit()`` again continues.
        Before step 1 it raises CheckpointError when ``checkpoint_dir`` is a file, is not writable,
        or holds checkpoints this trainer did not write or resume from (rotation would mix the two
        runs). A nan or inf loss raises FloatingPointError before that step's update.
        """
        cfg, h = self.config, self.history
        if cfg.checkpoint_dir is not None and self.step < cfg.max_steps:
            self._check_checkpoint_dir()
        h.interrupted = False
        self.raw_model.train()
        bar = tqdm(total=cfg.max_steps, initial=self.step, desc="training", unit="step",
                   disable=not (cfg.progress and self.is_main))
        window_loss, window_steps, window_tokens = torch.zeros((), device=self.device), 0, 0
        postfix: dict[str, str] = {}
        started = time.perf_counter()
        # Under torchrun, Ctrl-C goes to the launcher, which stops the workers: rely on
        # checkpoint_every there (ranks stopping at different steps would deadlock).
        with _DeferInterrupt(enabled=self.world_size == 1) as interrupt, bar:
            while self.step < cfg.max_steps:
                lr = self.optimizer.param_groups[0]["lr"]
                loss, tokens = self._train_step()
                self.step += 1
                window_loss += loss
                window_steps += 1
                window_tokens += tokens
                bar.update()
                last = self.step == cfg.max_steps
                if self.step % cfg.log_every == 0 or last or interrupt.requested:
                    train_loss = self._mean_across_ranks(window_loss / window_steps)  # syncs the device
                    speed = window_tokens / (time.perf_counter() - started)
                    h.step.append(self.step)
                    h.train_loss.append(train_loss)
                    h.lr.append(lr)
                    h.tokens_per_s.append(speed)
                    h.mfu.append(None if self._peak is None else
                                 self.flops_per_token * speed / (self._peak * self.world_size))
                    postfix.update(loss=f"{train_loss:.3f}", tok_s=f"{speed:,.0f}")
                    bar.set_postfix(postfix)
                    window_loss, window_steps, window_tokens = torch.zeros((), device=self.device), 0, 0
                    started = time.perf_counter()
                pause_start = time.perf_counter()
                if self.val_batches is not None and (last or (cfg.eval_every and self.step % cfg.eval_every == 0)):
                    h.val_step.append(self.step)
                    h.val_loss.append(self.evaluate())
                    postfix["val"] = f"{h.val_loss[-1]:.3f}"
                    bar.set_postfix(postfix)
                if cfg.checkpoint_dir is not None and (
                    last or interrupt.requested or (cfg.checkpoint_every and self.step % cfg.checkpoint_every == 0)
                ):
                    self.save_checkpoint()
                started += time.perf_counter() - pause_start  # evaluation and checkpoints don't count
                if interrupt.requested:
                    h.interrupted = True
                    if self.is_main:
                        where = (f"checkpoint written to {cfg.checkpoint_dir}" if cfg.checkpoint_dir
                                 else "no checkpoint_dir, so nothing was written")
                        print(f"Interrupted after step {self.step}: {where}. Call fit() again to continue.")
                    break
        return h

    # ------------------------------------------------------------------ checkpoints
    def _rank_state(self) -> dict:
        data = ({"generator": self._train_gen.get_state()} if self._train_iter is None
                else {"drawn": self._drawn})
        return {"rng": ckpt.rng_state(), "data": data}

    def save_checkpoint(self) -> Path | None:
        """Write a checkpoint of the current step into ``config.checkpoint_dir`` (rank 0 writes)."""
        if self.config.checkpoint_dir is None:
            raise ValueError("save_checkpoint() needs TrainConfig.checkpoint_dir.")
        ranks = [self._rank_state()]
        if self.world_size > 1:
            ranks = [None] * self.world_size
            dist.all_gather_object(ranks, self._rank_state())
        path = None
        if self.is_main:
            state = {
                "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(),
                "scaler": self.scaler.state_dict(),
                "ranks": ranks,
                "history": self.history.as_dict(),
                "config": self.config.as_dict(),
                "model_config": ckpt.model_config(self.raw_model),
            }
            path = ckpt.save(self.config.checkpoint_dir, self.step, self.raw_model, state, self.config.keep_last)
        if self.world_size > 1:
            dist.barrier()
        self._own_step = (Path(self.config.checkpoint_dir).resolve(), self.step)
        return path

    def _check_checkpoint_dir(self) -> None:
        """Before step 1: ``checkpoint_dir`` is writable and holds no checkpoint of another run."""
        problem = None
        if self.is_main:
            try:
                self._checkpoint_dir_problem()
            except CheckpointError as err:
                problem = str(err)
        if self.world_size > 1:  # every process stops, not only the one that writes
            box = [problem]
            dist.broadcast_object_list(box, src=0)
            problem = box[0]
        if problem:
            raise CheckpointError(problem)

    def _checkpoint_dir_problem(self) -> None:
        directory = ckpt.check_writable(self.config.checkpoint_dir)
        own = None
        if self._own_step is not None and self._own_step[0] == directory.resolve():
            own = self._own_step[1]
        foreign = [c for c in ckpt.all_checkpoints(directory) if c.resolve() not in self._skipped
                   and (own is None or ckpt.step_of(c) > own)]
        if not foreign:
            return
        names = ", ".join(c.name for c in foreign[-3:]) + (f" and {len(foreign) - 3} more" if len(foreign) > 3 else "")
        if own is None:
            raise CheckpointError(
                f"checkpoint_dir {directory} already holds checkpoints this trainer did not resume from "
                f"({names}). This run's checkpoints would mix with them, and latest() or load_checkpoint() could "
                "pick the other run's. Resume that run with trainer.load_checkpoint() before fit(), or "
                "choose another checkpoint_dir (or delete those folders)."
            )
        raise CheckpointError(
            f"checkpoint_dir {directory} holds {names}, newer than step {own} that this trainer resumed "
            f"from or wrote; training on from step {self.step} would mix two runs there. Resume from the "
            "newest with load_checkpoint() (no path), choose another checkpoint_dir, or delete the newer folders."
        )

    def _check_resume_config(self, state: dict) -> None:
        saved, current = state.get("config") or {}, self.config.as_dict()
        differ = [f"{k}={current[k]!r} here, {saved[k]!r} in the checkpoint" for k in current
                  if k not in RESUME_MAY_CHANGE and k in saved and saved[k] != current[k]]
        if differ:
            raise CheckpointError(
                f"The TrainConfig differs from the checkpoint's: {'; '.join(differ)}. Resuming would silently "
                "ignore or mix these (the optimizer, schedule and random state come from the checkpoint). "
                "Resume with the checkpoint's values (lmlib.checkpoint.read(path)[1]['config']), or train with "
                "the new ones as a new run in another checkpoint_dir, starting from the weights "
                "(model.load_state_dict(lmlib.checkpoint.read(path)[0])). A resumed run may change only "
                f"{', '.join(sorted(RESUME_MAY_CHANGE))}. Nothing was loaded."
            )

    def load_checkpoint(self, path: str | Path | None = None) -> Path:
        """Restore a checkpoint (default: the newest in ``checkpoint_dir``); all checks run first.

        A checkpoint that is truncated, corrupt, or made for another model, model config, optimizer
        or TrainConfig (outside :data:`RESUME_MAY_CHANGE`) raises :class:`CheckpointError` and
        leaves the trainer exactly as it was. From a ``checkpoint_dir``, damaged newer checkpoints
        are skipped with a warning (:func:`lmlib.checkpoint.read_valid`). A changed ``max_steps``
        stretches the cosine schedule to the new end, with a warning.
        """
        if path is None:
            if self.config.checkpoint_dir is None:
                raise ValueError("load_checkpoint() needs a path or TrainConfig.checkpoint_dir.")
            path = self.config.checkpoint_dir
        folder, weights, state = ckpt.read_valid(path)
        ckpt.check_weights(weights, self.raw_model)
        ckpt.check_model_config(state.get("model_config"), self.raw_model)
        ckpt.check_trainer_state(state, self.optimizer, self.world_size)
        self._check_resume_config(state)
        data = state["ranks"][self.rank]["data"]
        if ("generator" in data) != (self._train_iter is None):
            raise CheckpointError(
                "The checkpoint was written with another kind of train_batches (function vs iterable); "
                "pass the same kind to resume. Nothing was loaded."
            )
        train_iter = None
        if "drawn" in data:  # fast-forward a fresh pass over the iterable before touching anything
            train_iter = iter(self.train_batches)
            for _ in range(data["drawn"]):
                if next(train_iter, None) is None:
                    raise CheckpointError(
                        f"train_batches holds fewer than the {data['drawn']} batches this checkpoint "
                        "already used; pass the same data. Nothing was loaded."
                    )
        # Everything is verified: apply it.
        self.raw_model.load_state_dict(weights)
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self._apply_schedule()
        if state["scaler"] and self.scaler.is_enabled():
            self.scaler.load_state_dict(state["scaler"])
        ckpt.set_rng_state(state["ranks"][self.rank]["rng"])
        if train_iter is None:
            self._train_gen.set_state(data["generator"])
        else:
            self._train_iter, self._drawn = train_iter, data["drawn"]
        self.step = int(state["step"])
        self.history = History(**state["history"])
        self._own_step = (folder.parent.resolve(), self.step)
        fell_back = folder != Path(path)  # read_valid skipped the damaged newer ones
        self._skipped = {c.resolve() for c in ckpt.all_checkpoints(folder.parent)
                         if fell_back and ckpt.step_of(c) > self.step}
        return folder

    def reschedule(self, max_steps: int) -> None:
        """Make the learning-rate schedule end at step ``max_steps``, from the current step on.

        Where ``fit()`` stops (``config.max_steps``) is not changed. A run on a budget of seconds
        rather than steps (chapter 4's speedrun ladder) calls this as it learns how long a step
        takes; a resumed run with a new ``max_steps`` goes through it too.
        """
        cfg = self.config
        if not isinstance(max_steps, (int, np.integer)) or max_steps < max(1, cfg.warmup_steps):
            raise ValueError(f"max_steps must be a whole number >= warmup_steps={cfg.warmup_steps}, got {max_steps!r}.")
        schedule = self.scheduler.lr_lambdas[0]
        schedule.__init__(cfg.lr, cfg.min_lr, cfg.warmup_steps, int(max_steps), cfg.schedule, cfg.cooldown_frac)
        for group, base in zip(self.optimizer.param_groups, self.scheduler.base_lrs):
            group["lr"] = base * schedule(self.scheduler.last_epoch)

    def _apply_schedule(self) -> None:
        """Keep the schedule of this config after a scheduler state is loaded (it stores its own)."""
        cfg, schedule = self.config, self.scheduler.lr_lambdas[0]
        saved_end = schedule.max_steps
        before = self.optimizer.param_groups[0]["lr"]
        self.reschedule(cfg.max_steps)
        if saved_end != cfg.max_steps:
            warnings.warn(
                f"max_steps changed from {saved_end} to {cfg.max_steps} on resume: the cosine schedule now "
                f"ends at step {cfg.max_steps} (lr at step {self.scheduler.last_epoch}: {before:.3g} -> "
                f"{self.optimizer.param_groups[0]['lr']:.3g}).", stacklevel=3)
