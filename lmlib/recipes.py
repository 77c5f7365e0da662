"""Training recipes for chapter 4's Tiny Shakespeare character GPT, shared by the notebook and the benchmarks.

A recipe is a plain dict: model sizes, batch, step count and the AdamW schedule. Chapter 4
(``03_training_a_gpt``) trains :func:`shakespeare_char` at the current scale preset, and
``benchmarks/train_char_gpt.py`` times the same dicts, so the figures the book quotes are the
figures of the run the reader makes.

Two reference recipes come from nanoGPT's ``config/train_shakespeare_char.py`` and its README
(Karpathy, 2022): its documented laptop run (:data:`NANOGPT_CPU`, validation loss about 1.88
after 2000 steps) and its GPU run (the ``gpu`` preset, about 1.47 after 5000 steps). The course's
``cpu`` preset is not nanoGPT's laptop run: a sweep on a 2-core CPU (chapter 4 and
``benchmarks/RESULTS.md``) found that half the depth, a 16-window batch and five times the
learning rate reach the same loss in about a third of the time.
"""
from __future__ import annotations

from lmlib.model import GPTConfig
from lmlib.presets import scaled
from lmlib.train import TrainConfig

_SCHEDULE = dict(betas=(0.9, 0.99), weight_decay=0.1, grad_clip=1.0)

#: nanoGPT's documented CPU run: 4 layers x 128, context 64, batch 12, 2000 steps at 1e-3.
NANOGPT_CPU = dict(n_layer=4, n_head=4, n_embd=128, block_size=64, dropout=0.0, batch=12,
                   steps=2000, lr=1e-3, min_lr=1e-4, warmup=100, **_SCHEDULE)

#: The presets of :func:`shakespeare_char`.
SHAKESPEARE_CHAR = {
    "smoke": dict(n_layer=2, n_head=2, n_embd=32, block_size=32, dropout=0.0, batch=8,
                  steps=20, lr=1e-3, min_lr=1e-4, warmup=5, **_SCHEDULE),
    # Fast on a CPU: 2 layers are as good as 4 this early in training and cost half as much
    # per token, and a small model takes a learning rate of 5e-3 without diverging.
    "cpu": dict(n_layer=2, n_head=4, n_embd=128, block_size=64, dropout=0.0, batch=16,
                steps=1200, lr=5e-3, min_lr=5e-4, warmup=50, **_SCHEDULE),
    # nanoGPT's GPU run: 6 layers x 384, context 256, batch 64, dropout 0.2, 5000 steps.
    "gpu": dict(n_layer=6, n_head=6, n_embd=384, block_size=256, dropout=0.2, batch=64,
                steps=5000, lr=1e-3, min_lr=1e-4, warmup=100, **_SCHEDULE),
}


def shakespeare_char(scale: str | None = None) -> dict:
    """The recipe for ``scale`` (``smoke``/``cpu``/``gpu``; default: the ``LMLIB_SCALE`` preset). A copy."""
    if scale is None:
        return dict(scaled(**SHAKESPEARE_CHAR))
    if scale not in SHAKESPEARE_CHAR:
        raise ValueError(f"scale must be one of {sorted(SHAKESPEARE_CHAR)}, got {scale!r}.")
    return dict(SHAKESPEARE_CHAR[scale])


def model_config(recipe: dict, vocab_size: int) -> GPTConfig:
    """The :class:`lmlib.model.GPTConfig` of ``recipe`` for a vocabulary of ``vocab_size``."""
    keys = ("n_layer", "n_head", "n_embd", "block_size", "dropout")
    return GPTConfig(vocab_size=vocab_size, **{k: recipe[k] for k in keys})


def train_config(recipe: dict, **overrides) -> TrainConfig:
    """The :class:`lmlib.train.TrainConfig` of ``recipe``; ``overrides`` set any other field."""
    fields = dict(max_steps=recipe["steps"], lr=recipe["lr"], min_lr=recipe["min_lr"],
                  warmup_steps=recipe["warmup"], betas=tuple(recipe["betas"]),
                  weight_decay=recipe["weight_decay"], grad_clip=recipe["grad_clip"])
    return TrainConfig(**{**fields, **overrides})
