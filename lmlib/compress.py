"""Making a trained model smaller and cheaper: quantization, pruning and distillation.

Derived in chapter 6 ("Challenges and frontiers", notebook 01 "Faster and smaller"). Everything is
written from scratch on top of plain PyTorch, so each step can be read and tested:

- symmetric int8 (and packed int4) weight quantization, per output channel, per tensor or per
  group of ``group_size`` consecutive weights of a row (one scale per group);
- :class:`QuantizedLinear`, a drop-in ``nn.Linear`` that stores int8/int4 weights and dequantizes
  them on the fly, and :func:`quantize_model`, which swaps every linear layer of a model (a tied
  embedding and output head share one quantized matrix);
- magnitude pruning with masks (:func:`magnitude_prune`) and structured pruning by depth
  (:func:`drop_blocks`, a copy of a GPT without some of its Transformer blocks);
- knowledge distillation (:func:`distillation_loss` and the :class:`Distiller` wrapper, which
  trains with :class:`lmlib.train.Trainer`);
- :func:`model_size_bytes`, the real storage of a model's tensors.

API::

    quantize_int8(weight, per_channel=True, group_size=None) -> (q int8, scale float32)
    quantize_int4(weight, group_size=None) -> (packed uint8, scale)   two 4-bit values per byte
        (the scale is (out, 1) per channel, (1, 1) per tensor, (out, ceil(in / group_size)) per group)
    dequantize(q, scale, group_size=None) -> float32 weight
    dequantize_int4(packed, scale, in_features, group_size=None)
    expand_scale(scale, in_features, group_size=None) -> (out or 1, in_features)   each scale over its weights
    QuantizedLinear.from_linear(linear, bits=8, group_size=None)
    quantize_model(model, bits=8, group_size=None) -> new model
    QuantizedEmbedding                                  a tied embedding that reads the quantized head
    magnitude_prune(model, sparsity, scope="global") -> {name: mask}; sparsity(model) -> float
    drop_blocks(model, drop) -> new model without the blocks whose indices are in drop
    distillation_loss(student_logits, teacher_logits, targets, temperature=2.0, alpha=0.5)
    Distiller(student, teacher, temperature=2.0, alpha=0.5)   forward(x, targets) -> (logits, loss)
    model_size_bytes(model) -> int
"""
from __future__ import annotations

import copy
import dataclasses
from collections.abc import Iterable

import torch
import torch.nn as nn
import torch.nn.functional as F

Tensor = torch.Tensor

__all__ = [
    "quantize_int8", "quantize_int4", "dequantize", "dequantize_int4", "expand_scale", "QuantizedLinear",
    "QuantizedEmbedding", "quantize_model", "magnitude_prune", "sparsity", "drop_blocks", "distillation_loss",
    "Distiller", "model_size_bytes",
]


# --- quantization of one matrix -----------------------------------------------------------------

def _check_weight(weight: Tensor, name: str) -> None:
    if not isinstance(weight, torch.Tensor) or weight.dim() != 2 or not weight.is_floating_point():
        shape = tuple(weight.shape) if isinstance(weight, torch.Tensor) else type(weight).__name__
        raise ValueError(f"{name} needs a 2-D floating-point weight (out_features, in_features), got {shape}.")


def _scales(weight: Tensor, qmax: int, per_channel: bool, group_size: int | None = None) -> Tensor:
    """One scale per row (output channel), per group of ``group_size`` weights of a row, or one for
    the whole matrix, so that the largest |w| each scale covers maps to qmax."""
    w = weight.detach().float()
    if group_size is not None:
        if not isinstance(group_size, int) or group_size < 1:
            raise ValueError(f"group_size must be a positive integer (32 or 128 are usual), got {group_size!r}.")
        pad = -w.shape[1] % group_size
        amax = F.pad(w.abs(), (0, pad)).reshape(w.shape[0], -1, group_size).amax(dim=2)
    else:
        amax = w.abs().amax(dim=1, keepdim=True) if per_channel else w.abs().amax().reshape(1, 1)
    return (amax / qmax).clamp(min=1e-12)  # an all-zero row would give scale 0 and a division by zero


def expand_scale(scale: Tensor, in_features: int, group_size: int | None = None) -> Tensor:
    """Each scale repeated over the weights it covers: (rows, groups) -> (rows, in_features).

    A per-channel (rows, 1) or per-tensor (1, 1) scale broadcasts as it is; a group-wise scale
    covers ``group_size`` consecutive weights per column (the last group of a row may be shorter).
    The number of groups alone does not fix the group size (12 weights make 3 groups of 4 or of 5),
    so a group-wise scale needs the ``group_size`` it was made with.
    """
    if scale.shape[-1] == 1:
        return scale
    if group_size is None or -(-in_features // group_size) != scale.shape[-1]:
        raise ValueError(f"this scale has {scale.shape[-1]} columns, one per group of a row of {in_features} "
                         f"weights; pass the group_size it was made with (got {group_size}).")
    return scale.repeat_interleave(group_size, dim=-1)[..., :in_features]


def quantize_int8(weight: Tensor, per_channel: bool = True, group_size: int | None = None) -> tuple[Tensor, Tensor]:
    """Symmetric int8 quantization: ``q = round(w / scale)`` in [-127, 127], ``scale = max|w| / 127``.

    With ``per_channel`` each output row gets its own scale, shape (out, 1); else one scale,
    shape (1, 1). With ``group_size`` each run of that many consecutive weights in a row gets its
    own, shape (out, ceil(in / group_size)): one outlier then coarsens only its own group.
    ``dequantize(q, scale)`` gives back ``w`` within ``scale / 2`` per entry.
    """
    _check_weight(weight, "quantize_int8")
    scale = _scales(weight, 127, per_channel, group_size)
    q = torch.round(weight.detach().float() / expand_scale(scale, weight.shape[1], group_size))
    return q.clamp(-127, 127).to(torch.int8), scale


def dequantize(q: Tensor, scale: Tensor, group_size: int | None = None) -> Tensor:
    """The float32 weight that ``q`` (int8) and ``scale`` (per row, per group or one value) stand for."""
    return q.float() * expand_scale(scale, q.shape[-1], group_size)


def quantize_int4(weight: Tensor, group_size: int | None = None) -> tuple[Tensor, Tensor]:
    """Symmetric 4-bit quantization per output channel (or per group of ``group_size`` weights of
    a row), two values packed into each byte.

    Values are in [-7, 7] (``scale = max|w| / 7``), stored offset by 8 as unsigned nibbles; an odd
    number of columns is padded with one zero. Returns ``(packed uint8 (out, ceil(in / 2)), scale)``.
    """
    _check_weight(weight, "quantize_int4")
    scale = _scales(weight, 7, per_channel=True, group_size=group_size)
    q = torch.round(weight.detach().float() / expand_scale(scale, weight.shape[1], group_size)).clamp(-7, 7)
    q = q.to(torch.int16) + 8  # 1..15
    if q.shape[1] % 2:
        q = F.pad(q, (0, 1), value=8)
    packed = (q[:, 0::2] | (q[:, 1::2] << 4)).to(torch.uint8)
    return packed, scale


def dequantize_int4(packed: Tensor, scale: Tensor, in_features: int, group_size: int | None = None) -> Tensor:
    """Unpack :func:`quantize_int4`'s bytes into the float32 (out, in_features) weight."""
    low = (packed & 0x0F).to(torch.int16) - 8
    high = (packed >> 4).to(torch.int16) - 8
    q = torch.stack([low, high], dim=-1).flatten(1)[:, :in_features]
    return q.float() * expand_scale(scale, in_features, group_size)


# --- quantized modules --------------------------------------------------------------------------

class QuantizedLinear(nn.Module):
    """``nn.Linear`` with int8 (or packed int4) weights, dequantized to float32 at every call.

    Weight-only quantization: activations stay float32, so the output differs from the float
    layer only through the rounding of the weights. Storage shrinks about 4x (8x for int4); on a
    CPU the extra dequantization makes each call a little slower, not faster (chapter 6 measures it).
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True, bits: int = 8,
                 group_size: int | None = None) -> None:
        super().__init__()
        if bits not in (4, 8):
            raise ValueError(f"bits must be 8 or 4, got {bits!r}.")
        self.in_features, self.out_features, self.bits, self.group_size = in_features, out_features, bits, group_size
        cols = in_features if bits == 8 else (in_features + 1) // 2
        groups = 1 if group_size is None else -(-in_features // group_size)
        self.register_buffer("qweight", torch.zeros(out_features, cols, dtype=torch.int8 if bits == 8 else torch.uint8))
        self.register_buffer("scale", torch.ones(out_features, groups))
        self.register_buffer("bias", torch.zeros(out_features) if bias else None)

    @classmethod
    def from_linear(cls, linear: nn.Linear, bits: int = 8, group_size: int | None = None) -> "QuantizedLinear":
        if not isinstance(linear, nn.Linear):
            raise TypeError(f"from_linear needs an nn.Linear, got {type(linear).__name__}.")
        layer = cls(linear.in_features, linear.out_features, linear.bias is not None, bits, group_size)
        q, scale = (quantize_int8(linear.weight, group_size=group_size) if bits == 8
                    else quantize_int4(linear.weight, group_size=group_size))
        layer.qweight.copy_(q)
        layer.scale.copy_(scale)
        if linear.bias is not None:
            layer.bias.copy_(linear.bias.detach().float())
        return layer.to(linear.weight.device)

    def weight(self) -> Tensor:
        """The dequantized float32 weight (out_features, in_features)."""
        if self.bits == 8:
            return dequantize(self.qweight, self.scale, self.group_size)
        return dequantize_int4(self.qweight, self.scale, self.in_features, self.group_size)

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(x, self.weight().to(x.dtype), None if self.bias is None else self.bias.to(x.dtype))

    def extra_repr(self) -> str:
        groups = "" if self.group_size is None else f", group_size={self.group_size}"
        return f"in_features={self.in_features}, out_features={self.out_features}, bits={self.bits}{groups}"


class QuantizedEmbedding(nn.Module):
    """A token embedding that reads its rows from a tied :class:`QuantizedLinear` output head.

    The head's per-output-channel scales are per-token scales, so a lookup dequantizes only the
    rows it needs, and the embedding and head keep sharing one stored matrix.
    """

    def __init__(self, head: QuantizedLinear) -> None:
        super().__init__()
        self.head = [head]  # a plain list: not registered twice as a submodule

    def forward(self, idx: Tensor) -> Tensor:
        head = self.head[0]
        if head.bits == 8:
            return dequantize(head.qweight[idx], head.scale[idx], head.group_size)
        rows = head.qweight[idx.flatten()]
        return dequantize_int4(rows, head.scale[idx.flatten()], head.in_features, head.group_size).reshape(*idx.shape, -1)


def quantize_model(model: nn.Module, bits: int = 8, group_size: int | None = None) -> nn.Module:
    """A copy of ``model`` (left unchanged) with every ``nn.Linear`` replaced by :class:`QuantizedLinear`.

    If the model ties its token embedding ``wte`` to its output head ``lm_head`` (as
    :class:`lmlib.model.GPT` does), the embedding becomes a :class:`QuantizedEmbedding` reading the
    quantized head, so the two stay one matrix. Norms and position tables stay float32.
    ``group_size`` gives every layer one scale per group of that many weights of a row.
    """
    if bits not in (4, 8):
        raise ValueError(f"bits must be 8 or 4, got {bits!r}.")
    if isinstance(model, nn.Linear):
        return QuantizedLinear.from_linear(model, bits, group_size)
    if not any(isinstance(m, nn.Linear) for m in model.modules()):
        raise ValueError("quantize_model found no nn.Linear layer to quantize in this model.")
    model = copy.deepcopy(model).eval()
    tied = (isinstance(getattr(model, "wte", None), nn.Embedding) and isinstance(getattr(model, "lm_head", None), nn.Linear)
            and model.wte.weight is model.lm_head.weight)
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, nn.Linear):
                setattr(parent, name, QuantizedLinear.from_linear(child, bits, group_size))
    if tied:
        model.wte = QuantizedEmbedding(model.lm_head)
    return model


# --- pruning ------------------------------------------------------------------------------------

def _prunable(model: nn.Module) -> dict[str, nn.Parameter]:
    """Weights of linear layers, leaving out one shared with an embedding (a tied output head)."""
    embeddings = {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)}
    return {f"{name}.weight": m.weight for name, m in model.named_modules()
            if isinstance(m, nn.Linear) and id(m.weight) not in embeddings}


def magnitude_prune(model: nn.Module, sparsity: float, scope: str = "global") -> dict[str, Tensor]:
    """Zero the fraction ``sparsity`` of linear weights with the smallest magnitude, in place.

    ``scope="global"`` ranks all prunable weights together (layers with small weights lose more);
    ``"layer"`` removes the same fraction from each layer. A tied output head (shared with the
    embedding) is left whole. Returns the boolean masks (True = kept), keyed by parameter name;
    multiply gradients by them (``p.register_hook``) to keep the zeros while fine-tuning.
    """
    if not 0.0 <= sparsity < 1.0:
        raise ValueError(f"sparsity must be in [0, 1), the fraction of weights to remove; got {sparsity!r}.")
    if scope not in ("global", "layer"):
        raise ValueError(f"scope must be 'global' or 'layer', got {scope!r}.")
    weights = _prunable(model)
    if not weights:
        raise ValueError("magnitude_prune found no nn.Linear weight to prune in this model.")
    masks = {}
    with torch.no_grad():
        if scope == "global":
            scores = torch.cat([w.detach().abs().flatten().float() for w in weights.values()])
            k = int(sparsity * scores.numel())
            threshold = scores.kthvalue(k).values if k > 0 else scores.new_tensor(-1.0)
            for name, w in weights.items():
                masks[name] = w.abs() > threshold
        else:
            for name, w in weights.items():
                k = int(sparsity * w.numel())
                threshold = w.abs().flatten().kthvalue(k).values if k > 0 else w.new_tensor(-1.0)
                masks[name] = w.abs() > threshold
        for name, w in weights.items():
            w.mul_(masks[name])
    return masks


def sparsity(model: nn.Module) -> float:
    """The fraction of zeros among the prunable (linear, untied) weights of ``model``."""
    weights = list(_prunable(model).values())
    total = sum(w.numel() for w in weights)
    return sum(int((w == 0).sum()) for w in weights) / max(total, 1)


def drop_blocks(model: nn.Module, drop: Iterable[int]) -> nn.Module:
    """A copy of ``model`` (left unchanged) without the Transformer blocks at the indices ``drop``.

    Structured pruning by depth: whole layers go, so the copy is smaller and faster for real
    (unlike :func:`magnitude_prune`'s scattered zeros). The model needs a ``blocks``
    ``nn.ModuleList`` (as :class:`lmlib.model.GPT` has); its ``config.n_layer``, if any, is updated.
    The kept blocks keep their order and weights; embeddings, final norm and head are shared copies.
    """
    blocks = getattr(model, "blocks", None)
    if not isinstance(blocks, nn.ModuleList):
        raise ValueError(f"drop_blocks needs a model with a `blocks` nn.ModuleList, got {type(model).__name__}.")
    drop = sorted(set(int(i) for i in drop))
    bad = [i for i in drop if not 0 <= i < len(blocks)]
    if bad:
        raise ValueError(f"block indices {bad} are out of range: the model has {len(blocks)} blocks (0..{len(blocks) - 1}).")
    if len(drop) == len(blocks):
        raise ValueError(f"drop_blocks would remove all {len(blocks)} blocks; keep at least one.")
    model = copy.deepcopy(model)
    model.blocks = nn.ModuleList(b for i, b in enumerate(model.blocks) if i not in drop)
    config = getattr(model, "config", None)
    if config is not None and dataclasses.is_dataclass(config) and hasattr(config, "n_layer"):
        model.config = dataclasses.replace(config, n_layer=len(model.blocks))
    return model


# --- distillation -------------------------------------------------------------------------------

def distillation_loss(student_logits: Tensor, teacher_logits: Tensor, targets: Tensor,
                      temperature: float = 2.0, alpha: float = 0.5) -> Tensor:
    """``alpha * T^2 * KL(teacher_T || student_T) + (1 - alpha) * cross_entropy(student, targets)``.

    Both distributions are softened by the temperature ``T`` (Hinton et al. 2015); the ``T^2``
    keeps the soft term's gradients on the scale of the hard term's. Logits are (..., V), targets
    the matching (...) token ids.
    """
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(f"student and teacher logits must have the same shape, got {tuple(student_logits.shape)} "
                         f"and {tuple(teacher_logits.shape)}; do the two models share a vocabulary?")
    if targets.shape != student_logits.shape[:-1]:
        raise ValueError(f"targets must have shape {tuple(student_logits.shape[:-1])} (logits without the vocab axis), "
                         f"got {tuple(targets.shape)}.")
    if temperature <= 0 or not 0.0 <= alpha <= 1.0:
        raise ValueError(f"need temperature > 0 and 0 <= alpha <= 1, got temperature={temperature}, alpha={alpha}.")
    s = student_logits.flatten(0, -2).float()
    t = teacher_logits.flatten(0, -2).float().detach()
    soft = F.kl_div(F.log_softmax(s / temperature, -1), F.log_softmax(t / temperature, -1),
                    reduction="batchmean", log_target=True)
    hard = F.cross_entropy(s, targets.flatten().long())
    return alpha * temperature**2 * soft + (1 - alpha) * hard


class Distiller(nn.Module):
    """Train ``student`` to imitate a frozen ``teacher`` with :class:`lmlib.train.Trainer`.

    ``forward(x, targets) -> (student_logits, loss)``: in training mode the loss is
    :func:`distillation_loss`; in eval mode it is the plain cross-entropy, so the trainer's
    validation loss is comparable with any other model's. The teacher never trains.
    """

    def __init__(self, student: nn.Module, teacher: nn.Module, temperature: float = 2.0, alpha: float = 0.5) -> None:
        super().__init__()
        if temperature <= 0 or not 0.0 <= alpha <= 1.0:
            raise ValueError(f"need temperature > 0 and 0 <= alpha <= 1, got temperature={temperature}, alpha={alpha}.")
        self.student, self.teacher = student, teacher
        self.temperature, self.alpha = temperature, alpha
        for p in self.teacher.parameters():
            p.requires_grad_(False)

    def train(self, mode: bool = True) -> "Distiller":
        super().train(mode)
        self.teacher.eval()  # no dropout in the teacher's soft targets
        return self

    def forward(self, x: Tensor, targets: Tensor | None = None) -> tuple[Tensor, Tensor | None]:
        logits, hard = self.student(x, targets)
        if targets is None or not self.training:
            return logits, hard
        with torch.no_grad():
            teacher_logits, _ = self.teacher(x)
        return logits, distillation_loss(logits, teacher_logits, targets, self.temperature, self.alpha)


# --- size ---------------------------------------------------------------------------------------

def model_size_bytes(model: nn.Module) -> int:
    """Bytes held by the model's parameters and buffers, each shared storage counted once.

    Counts int8/uint8 buffers at 1 byte per entry and the float scales beside them, so it is the
    real memory of a :func:`quantize_model` result. A pruned model is still dense: its zeros count.
    """
    seen, total = set(), 0
    for t in list(model.parameters()) + list(model.buffers()):
        key = (t.untyped_storage().data_ptr(), t.storage_offset(), t.numel())
        if key not in seen:
            seen.add(key)
            total += t.numel() * t.element_size()
    return total
