"""LoRA, low-rank adaptation (Hu et al. 2022), written from scratch for :class:`lmlib.model.GPT`.

Derived in chapter 5 ("Applications", notebook 03, instruction tuning). Fine-tuning changes a
weight matrix ``W`` (out, in) by some ``dW``. LoRA bets that a useful ``dW`` has low rank and
writes it as ``B @ A`` with ``A`` (r, in) and ``B`` (out, r), ``r`` much smaller than ``in`` and
``out``. ``W`` stays frozen; only ``A`` and ``B`` train. The layer computes

    y = x @ W^T + b + (alpha / r) * x @ A^T @ B^T

``B`` starts at zero, so at initialisation the adapted model is exactly the base model. After
training, :func:`merge_lora` adds ``(alpha / r) * B @ A`` into ``W``: the merged model is a plain
GPT with no extra cost per token, and :func:`unmerge_lora` takes the update out again.

API summary
-----------
lora_forward(x, weight, A, B, scale, bias=None) -> Tensor       the formula above
LoRALinear(base: nn.Linear, r, alpha=None, dropout=0.0)         .merge() .unmerge() .delta_weight()
apply_lora(model, targets=("q_proj", "v_proj"), r=8, alpha=None, dropout=0.0) -> model
    replaces the named linear layers (in place) and freezes every other parameter
lora_layers(model) -> dict[name, LoRALinear]
merge_lora(model) / unmerge_lora(model) -> number of layers changed
lora_state_dict(model) -> only the A and B tensors (a small adapter file)
load_lora_state_dict(model, state) -> None
LINEAR_NAMES: the names of GPT's linear layers that ``targets`` may use
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

Tensor = torch.Tensor

__all__ = [
    "lora_forward", "LoRALinear", "apply_lora", "lora_layers", "merge_lora", "unmerge_lora",
    "lora_state_dict", "load_lora_state_dict", "LINEAR_NAMES",
]

#: The linear layers of :class:`lmlib.model.GPT` by their last name: attention projections,
#: the feed-forward layers (``fc``/``proj`` for GELU, ``gate``/``up``/``proj`` for SwiGLU) and the head.
LINEAR_NAMES = ("q_proj", "k_proj", "v_proj", "out_proj", "fc", "proj", "gate", "up", "lm_head")


def lora_forward(x: Tensor, weight: Tensor, A: Tensor, B: Tensor, scale: float,
                 bias: Tensor | None = None) -> Tensor:
    """``x @ weight^T + bias + scale * (x @ A^T) @ B^T``, the low-rank path computed without forming ``B @ A``."""
    return F.linear(x, weight, bias) + scale * F.linear(F.linear(x, A), B)


class LoRALinear(nn.Module):
    """A frozen ``nn.Linear`` plus a trainable low-rank update ``(alpha / r) * B @ A`` (chapter 5).

    ``A`` gets the default random initialisation of a linear layer and ``B`` zeros, so the output
    equals the base layer's until training moves ``B``. ``alpha`` defaults to ``r`` (scale 1); the
    ratio ``alpha / r`` keeps the size of the update comparable when you change ``r``.
    ``dropout`` applies to the input of the low-rank path only, during training.
    """

    def __init__(self, base: nn.Linear, r: int, alpha: float | None = None, dropout: float = 0.0) -> None:
        super().__init__()
        if not isinstance(base, nn.Linear):
            raise TypeError(f"LoRALinear wraps an nn.Linear, got {type(base).__name__}.")
        alpha = _check_settings(r, alpha, dropout)
        if r > min(base.in_features, base.out_features):
            raise ValueError(
                f"LoRA rank r={r} exceeds min(in_features, out_features) = "
                f"{min(base.in_features, base.out_features)} of this layer: a rank that high is no "
                "longer low-rank (full fine-tuning is cheaper). Pick a smaller r, e.g. 4 or 8."
            )
        self.base, self.r, self.alpha, self.scale = base, r, alpha, alpha / r
        for p in base.parameters():
            p.requires_grad_(False)
        w = base.weight
        self.lora_A = nn.Parameter(torch.empty(r, base.in_features, device=w.device, dtype=w.dtype))
        self.lora_B = nn.Parameter(torch.zeros(base.out_features, r, device=w.device, dtype=w.dtype))
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))  # nn.Linear's default initialisation
        self.dropout = nn.Dropout(dropout)
        self.merged = False

    @property
    def in_features(self) -> int:
        return self.base.in_features

    @property
    def out_features(self) -> int:
        return self.base.out_features

    @property
    def weight(self) -> Tensor:
        """The base weight (merged or not), so code that reads ``layer.weight`` keeps working."""
        return self.base.weight

    @property
    def bias(self) -> Tensor | None:
        return self.base.bias

    def delta_weight(self) -> Tensor:
        """The update ``(alpha / r) * B @ A`` (out, in) that merging adds to the base weight."""
        return self.scale * (self.lora_B @ self.lora_A)

    def forward(self, x: Tensor) -> Tensor:
        if self.merged:
            return self.base(x)
        low_rank = F.linear(F.linear(self.dropout(x), self.lora_A), self.lora_B)
        return self.base(x) + self.scale * low_rank

    @torch.no_grad()
    def merge(self) -> None:
        """Add the update into the base weight; the forward pass then skips the low-rank path."""
        if self.merged:
            raise RuntimeError("This LoRA layer is already merged; call unmerge() first.")
        self.base.weight += self.delta_weight().to(self.base.weight.dtype)
        self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        """Subtract the update again (exact up to float rounding)."""
        if not self.merged:
            raise RuntimeError("This LoRA layer is not merged; there is nothing to unmerge.")
        self.base.weight -= self.delta_weight().to(self.base.weight.dtype)
        self.merged = False

    def extra_repr(self) -> str:
        return (f"in={self.in_features}, out={self.out_features}, r={self.r}, alpha={self.alpha:g}, "
                f"merged={self.merged}")


def _check_settings(r: int, alpha: float | None, dropout: float) -> float:
    """Validate rank, alpha and dropout; returns alpha (default: r)."""
    if not isinstance(r, int) or isinstance(r, bool) or r < 1:
        raise ValueError(f"LoRA rank r must be a positive integer, got {r!r}.")
    alpha = float(r if alpha is None else alpha)
    if not alpha > 0:
        raise ValueError(f"LoRA alpha must be positive, got {alpha!r}.")
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"LoRA dropout must be in [0, 1), got {dropout!r}.")
    return alpha


def _matches(name: str, target: str) -> bool:
    return name == target or name.endswith("." + target)


def apply_lora(model: nn.Module, targets: tuple[str, ...] | list[str] = ("q_proj", "v_proj"), r: int = 8,
               alpha: float | None = None, dropout: float = 0.0) -> nn.Module:
    """Wrap the linear layers named in ``targets`` in :class:`LoRALinear` and freeze everything else.

    A target matches a module whose qualified name is the target or ends with ``"." + target``:
    ``"q_proj"`` picks the query projection of every block, ``"blocks.3.mlp.fc"`` one layer.
    Every target must match at least one ``nn.Linear``. Changes ``model`` in place and returns it.
    The output head is refused when it shares its weight with the token embedding (merging would
    change the embedding too).
    """
    if isinstance(targets, str):
        targets = (targets,)
    targets = tuple(targets)
    if not targets:
        raise ValueError("targets is empty: name at least one linear layer, e.g. ('q_proj', 'v_proj').")
    if lora_layers(model):
        raise ValueError("This model already has LoRA layers; apply_lora once per model (or start from a fresh copy).")
    linears = {name: m for name, m in model.named_modules() if isinstance(m, nn.Linear)}
    chosen: dict[str, nn.Linear] = {}
    for target in targets:
        hits = {n: m for n, m in linears.items() if _matches(n, target)}
        if not hits:
            known = sorted({n.rsplit(".", 1)[-1] for n in linears})
            raise ValueError(
                f"LoRA target {target!r} matches no linear layer of this {type(model).__name__}. "
                f"Its linear layers are called: {', '.join(known)} (use one of these, or a longer "
                "dotted name such as 'blocks.0.attn.q_proj')."
            )
        chosen.update(hits)
    _check_settings(r, alpha, dropout)
    too_big = {n: m for n, m in chosen.items() if r > min(m.in_features, m.out_features)}
    if too_big:
        name, m = next(iter(too_big.items()))
        raise ValueError(
            f"LoRA rank r={r} exceeds min(in_features, out_features) = {min(m.in_features, m.out_features)} "
            f"of {name!r}: a rank that high is no longer low-rank. Pick a smaller r, e.g. 4 or 8."
        )
    wte = getattr(model, "wte", None)
    for name, layer in chosen.items():
        if isinstance(wte, nn.Embedding) and layer.weight is wte.weight:
            raise ValueError(
                f"{name!r} shares its weight with the token embedding (tie_weights=True); a LoRA update "
                "merged into it would change the embedding as well. Leave it out of targets."
            )
    for p in model.parameters():
        p.requires_grad_(False)
    for name, layer in chosen.items():
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, LoRALinear(layer, r, alpha, dropout))
    return model


def lora_layers(model: nn.Module) -> dict[str, LoRALinear]:
    """Every :class:`LoRALinear` in ``model``, by qualified name."""
    return {name: m for name, m in model.named_modules() if isinstance(m, LoRALinear)}


def merge_lora(model: nn.Module) -> int:
    """Merge every LoRA layer into its base weight; returns how many were merged."""
    layers = [m for m in lora_layers(model).values() if not m.merged]
    if not layers and not lora_layers(model):
        raise ValueError("The model has no LoRA layers to merge; call apply_lora first.")
    for layer in layers:
        layer.merge()
    return len(layers)


def unmerge_lora(model: nn.Module) -> int:
    """Undo :func:`merge_lora`; returns how many layers were unmerged."""
    layers = [m for m in lora_layers(model).values() if m.merged]
    for layer in layers:
        layer.unmerge()
    return len(layers)


def lora_state_dict(model: nn.Module) -> dict[str, Tensor]:
    """Only the LoRA tensors (``...lora_A``, ``...lora_B``): what an adapter file holds."""
    out = {k: v.detach().clone() for k, v in model.state_dict().items() if k.endswith(("lora_A", "lora_B"))}
    if not out:
        raise ValueError("The model has no LoRA layers; call apply_lora first.")
    return out


def load_lora_state_dict(model: nn.Module, state: dict[str, Tensor]) -> None:
    """Load adapter tensors saved by :func:`lora_state_dict` into a model with the same LoRA layers.

    The model must not be merged (the base weights would keep the old update).
    """
    layers = lora_layers(model)
    if any(m.merged for m in layers.values()):
        raise RuntimeError("Unmerge the model (unmerge_lora) before loading other LoRA weights.")
    expected = {f"{n}.lora_{x}" for n in layers for x in "AB"}
    missing, unexpected = sorted(expected - set(state)), sorted(set(state) - expected)
    if missing or unexpected:
        raise ValueError(
            f"The adapter does not fit this model: missing {missing[:4]}, unexpected {unexpected[:4]}. "
            "Apply LoRA with the same targets before loading."
        )
    own = model.state_dict()
    for k, v in state.items():
        if own[k].shape != v.shape:
            raise ValueError(f"{k}: adapter tensor has shape {tuple(v.shape)}, the model {tuple(own[k].shape)} (another r?).")
    with torch.no_grad():
        for name, layer in layers.items():
            layer.lora_A.copy_(state[f"{name}.lora_A"])
            layer.lora_B.copy_(state[f"{name}.lora_B"])
