"""Where and how the course's code runs: device, numeric precision, TF32, processes, seeding.

Derived in the appendix page "Setting up" (chapters/appendix/setup.md). Every notebook starts
with ``lmlib.device.report()`` so the reader sees what was chosen and why. :func:`runtime` is the
one place that turns a request into a decision; :class:`lmlib.train.Trainer` and the benchmarks
call it instead of repeating the capability checks. (How *big* a run is, the scale preset, lives
in :mod:`lmlib.presets`.)

Environment variables (all optional):

- ``LMLIB_DEVICE``: ``cuda``, ``cuda:1``, ``mps`` or ``cpu`` instead of the automatic choice.
- ``LMLIB_PRECISION``: ``fp32``, ``bf16`` or ``fp16`` instead of the hardware policy.

API summary
-----------
best_device(request=None) -> torch.device            cuda > mps > cpu, or what was asked for
PRECISIONS = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
Precision(device_type, dtype, reason)                .name .grad_scaler .autocast() .make_grad_scaler()
choose_precision(device_type, cuda_capability=None, request=None) -> Precision
precision_for(device=None) -> Precision              the policy for a real device
Runtime(device, precision, rank=0, world_size=1)     .peak_flops .is_main
runtime(device=None, precision=None, tf32=True) -> Runtime
peak_flops(device_name, dtype, tf32=False) -> float | None
GPU_PEAK_FLOPS                                       (pattern, {precision: FLOP/s}) per GPU
model_device(model) -> torch.device                  where a module's parameters live
eval_mode(model)                                     context manager: eval(), then the old mode back
seed_everything(seed=0) -> torch.Generator
describe(device=None) -> str;  report(device=None) -> torch.device
"""
from __future__ import annotations

import contextlib
import os
import random
import re
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from lmlib.presets import scale

PRECISIONS = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}

__all__ = [
    "best_device", "Precision", "PRECISIONS", "choose_precision", "precision_for", "Runtime",
    "runtime", "peak_flops", "GPU_PEAK_FLOPS", "model_device", "eval_mode", "seed_everything",
    "describe", "report",
]


def best_device(request: str | None = None) -> torch.device:
    """The device to train on: CUDA, then Apple MPS, then CPU.

    ``request`` (or ``LMLIB_DEVICE``) forces a choice; asking for hardware that is absent is an
    error rather than a silent fall-back, so a reader never trains on the CPU by accident.
    """
    request = request or os.environ.get("LMLIB_DEVICE") or None
    if request is None:
        if torch.cuda.is_available():
            return torch.device("cuda")
        if _mps_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(request)
    except RuntimeError as err:
        raise ValueError(
            f"Unknown device {request!r}: use 'cuda', 'cuda:N', 'mps' or 'cpu' "
            "(from the argument or the LMLIB_DEVICE variable)."
        ) from err
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise RuntimeError(
                f"Device {request!r} was requested but this PyTorch sees no CUDA GPU. "
                "Unset LMLIB_DEVICE to pick the best available device."
            )
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise RuntimeError(
                f"Device {request!r} was requested but only {torch.cuda.device_count()} "
                "CUDA device(s) exist."
            )
    elif device.type == "mps" and not _mps_available():
        raise RuntimeError(
            "Device 'mps' was requested but Apple's Metal backend is not available here. "
            "Unset LMLIB_DEVICE to pick the best available device."
        )
    elif device.type not in ("cuda", "mps", "cpu"):
        raise ValueError(f"Unsupported device type {device.type!r}: use 'cuda', 'mps' or 'cpu'.")
    return device


def _mps_available() -> bool:
    backend = getattr(torch.backends, "mps", None)
    return bool(backend and backend.is_available())


@dataclass(frozen=True)
class Precision:
    """How to run the forward and backward pass on one device.

    ``dtype`` is the autocast dtype (``float32`` means: no autocast). ``grad_scaler`` is True for
    float16, whose narrow exponent range underflows small gradients unless the loss is scaled.
    """

    device_type: str
    dtype: torch.dtype
    reason: str

    @property
    def name(self) -> str:
        return {v: k for k, v in PRECISIONS.items()}[self.dtype]

    @property
    def grad_scaler(self) -> bool:
        return self.dtype == torch.float16

    def autocast(self) -> contextlib.AbstractContextManager:
        """A context manager for the forward pass (a no-op in float32)."""
        if self.dtype == torch.float32:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device_type, dtype=self.dtype)

    def make_grad_scaler(self) -> torch.amp.GradScaler:
        """A GradScaler that is active only where the policy needs one (float16)."""
        return torch.amp.GradScaler(self.device_type, enabled=self.grad_scaler)


def choose_precision(
    device_type: str,
    cuda_capability: tuple[int, int] | None = None,
    request: str | None = None,
) -> Precision:
    """The precision policy, as a pure function of the hardware so tests can simulate any GPU.

    - CUDA with compute capability 8.0 or newer (A100, RTX 30xx and later, H100): bfloat16.
    - Older CUDA GPUs (T4 is 7.5, V100 is 7.0): float16 with a GradScaler. We read the compute
      capability instead of ``torch.cuda.is_bf16_supported()``, which can answer True on a T4
      because bf16 is *emulated* there: it runs, but slower than float32.
    - Apple MPS: float32. Autocast on MPS has had silently wrong results and missing kernels
      across PyTorch and macOS versions; float32 on the GPU is still far faster than the CPU.
    - CPU: float32 (bf16 autocast on CPU is slower than float32 on most laptop processors).
    """
    if request is not None:
        if request not in PRECISIONS:
            raise ValueError(
                f"Unknown precision {request!r}: choose one of {sorted(PRECISIONS)} "
                "(from the argument or the LMLIB_PRECISION variable)."
            )
        if request == "bf16" and device_type == "cuda" and cuda_capability and cuda_capability < (8, 0):
            raise ValueError(
                f"bf16 was requested but this GPU (compute capability {cuda_capability[0]}."
                f"{cuda_capability[1]}) has no bf16 tensor cores; use fp16 (with a GradScaler) or fp32."
            )
        return Precision(device_type, PRECISIONS[request], "requested")
    if device_type == "cuda":
        if cuda_capability is None:
            raise ValueError("choose_precision needs the CUDA compute capability for a CUDA device.")
        if cuda_capability >= (8, 0):
            return Precision("cuda", torch.bfloat16, f"GPU compute capability {cuda_capability} has bf16")
        return Precision("cuda", torch.float16, f"GPU compute capability {cuda_capability} lacks bf16: fp16 + GradScaler")
    if device_type == "mps":
        return Precision("mps", torch.float32, "Apple GPU: float32 is the reliable choice")
    return Precision(device_type, torch.float32, "CPU: float32")


def precision_for(device: torch.device | str | None = None) -> Precision:
    """The precision policy for an actual device (reads its capability and ``LMLIB_PRECISION``)."""
    device = torch.device(device) if device is not None else best_device()
    capability = torch.cuda.get_device_capability(device) if device.type == "cuda" else None
    return choose_precision(device.type, capability, os.environ.get("LMLIB_PRECISION") or None)


# --- peak throughput, for MFU ----------------------------------------------------------------
# Dense (no 2:4 sparsity) peak tensor-core throughput in FLOP/s, from NVIDIA's data sheets and
# architecture whitepapers; data sheets often print the sparse figure, which is twice these.
#   A100: nvidia.com A100 data sheet (BF16/FP16 312, TF32 156, FP32 19.5 TFLOPS).
#   H100 SXM / PCIe / NVL: H100 data sheet (BF16 1979/1513/1671 sparse; TF32 989/756/835 sparse;
#     FP32 67/51/60). H200 and H200 NVL: H200 data sheet (same compute as H100 SXM / H100 NVL).
#   L4: L4 data sheet (BF16/FP16 242 and TF32 120 sparse; FP32 30.3).
#   L40S: L40S data sheet (BF16/FP16 733 and TF32 366 sparse; FP32 91.6).
#   A10: A10 data sheet (BF16/FP16 125, TF32 62.5 dense; FP32 31.2). AWS's A10G has no NVIDIA
#     data sheet; it is an A10 variant and the A10 figures are used as its (upper-bound) peak.
#   T4: T4 data sheet (FP16 mixed precision 65, FP32 8.1; no bf16 or tf32 tensor cores).
#   V100 SXM2 / PCIe / V100S: V100 data sheet (tensor 125/112/130, FP32 15.7/14/16.4).
#   RTX 3090 / 4090: NVIDIA Ampere GA102 and Ada Lovelace whitepapers, FP16/BF16 tensor with
#     FP32 accumulate (what autocast uses): 71 and 165.2; TF32 35.6 and 82.6; FP32 35.6 and 82.6.
# Patterns are matched in order against torch.cuda.get_device_name(), most specific first.
_T = 1e12
GPU_PEAK_FLOPS: tuple[tuple[str, dict[str, float]], ...] = (
    (r"H200 NVL", dict(bf16=835.5 * _T, fp16=835.5 * _T, tf32=417.5 * _T, fp32=60 * _T)),
    (r"H200", dict(bf16=989.5 * _T, fp16=989.5 * _T, tf32=494.5 * _T, fp32=67 * _T)),
    (r"H100 NVL", dict(bf16=835.5 * _T, fp16=835.5 * _T, tf32=417.5 * _T, fp32=60 * _T)),
    (r"H100 PCIe", dict(bf16=756.5 * _T, fp16=756.5 * _T, tf32=378 * _T, fp32=51 * _T)),
    (r"H100", dict(bf16=989.5 * _T, fp16=989.5 * _T, tf32=494.5 * _T, fp32=67 * _T)),
    (r"A100", dict(bf16=312 * _T, fp16=312 * _T, tf32=156 * _T, fp32=19.5 * _T)),
    (r"A10G?$", dict(bf16=125 * _T, fp16=125 * _T, tf32=62.5 * _T, fp32=31.2 * _T)),
    (r"L40S", dict(bf16=366.5 * _T, fp16=366.5 * _T, tf32=183 * _T, fp32=91.6 * _T)),
    (r"\bL4$", dict(bf16=121 * _T, fp16=121 * _T, tf32=60 * _T, fp32=30.3 * _T)),
    (r"\bT4$", dict(fp16=65 * _T, fp32=8.1 * _T)),
    (r"V100S", dict(fp16=130 * _T, fp32=16.4 * _T)),
    (r"V100-SXM", dict(fp16=125 * _T, fp32=15.7 * _T)),
    (r"V100", dict(fp16=112 * _T, fp32=14 * _T)),
    (r"RTX 4090$", dict(bf16=165.2 * _T, fp16=165.2 * _T, tf32=82.6 * _T, fp32=82.6 * _T)),
    (r"RTX 3090$", dict(bf16=71 * _T, fp16=71 * _T, tf32=35.6 * _T, fp32=35.6 * _T)),
)


def peak_flops(device_name: str, dtype: torch.dtype, tf32: bool = False) -> float | None:
    """Peak dense FLOP/s of a known GPU for ``dtype`` (float32 counts as TF32 if ``tf32``), else None."""
    key = {torch.bfloat16: "bf16", torch.float16: "fp16"}.get(dtype, "tf32" if tf32 else "fp32")
    for pattern, peaks in GPU_PEAK_FLOPS:
        if re.search(pattern, device_name.strip()):
            return peaks.get(key)
    return None


# --- the runtime: every decision about where and how a run executes, made once ------------------
@dataclass(frozen=True)
class Runtime:
    """What :func:`runtime` decided: the device, the precision policy, and this process's place.

    ``rank`` and ``world_size`` describe a ``torchrun`` launch (0 and 1 for a single process).
    """

    device: torch.device
    precision: Precision
    rank: int = 0
    world_size: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def peak_flops(self) -> float | None:
        """This GPU's dense peak for the precision in use (None on CPU, MPS or an unknown GPU)."""
        if self.device.type != "cuda":
            return None
        tf32 = torch.backends.cuda.matmul.allow_tf32
        return peak_flops(torch.cuda.get_device_name(self.device), self.precision.dtype, tf32)


def runtime(device: str | torch.device | None = None, precision: str | None = None,
            tf32: bool = True) -> Runtime:
    """Decide device, precision policy, TF32 and the distributed setup, once (chapter 4).

    - ``device``: as :func:`best_device` (``None``: ``LMLIB_DEVICE`` or the best available). Under
      ``torchrun`` with several processes, a bare ``cuda`` becomes ``cuda:<LOCAL_RANK>`` and the
      process group is started (NCCL on CUDA, else Gloo).
    - ``precision``: ``fp32``/``bf16``/``fp16``, else ``LMLIB_PRECISION``, else the hardware policy
      of :func:`choose_precision`.
    - ``tf32``: on CUDA, let the float32 matmuls that autocast leaves use TF32 tensor cores
      (``torch.set_float32_matmul_precision("high")``, a process-wide setting); ``False`` keeps
      them exact. On CPU and MPS float32 is always exact.
    """
    rank, world_size, local_rank = _distributed()
    chosen = best_device(None if device is None else str(device))
    if chosen.type == "cuda":
        if world_size > 1 and chosen.index is None:
            chosen = torch.device("cuda", local_rank)
        torch.cuda.set_device(chosen)
        torch.set_float32_matmul_precision("high" if tf32 else "highest")
        torch.backends.cudnn.allow_tf32 = tf32
    capability = torch.cuda.get_device_capability(chosen) if chosen.type == "cuda" else None
    request = precision or os.environ.get("LMLIB_PRECISION") or None
    return Runtime(chosen, choose_precision(chosen.type, capability, request), rank, world_size)


def _distributed() -> tuple[int, int, int]:
    """(rank, world size, local rank); starts the process group when launched by ``torchrun``."""
    if not dist.is_available():
        return 0, 1, 0
    if not dist.is_initialized() and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    if dist.is_initialized():
        return dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0"))
    return 0, 1, 0


# --- a model's device and mode -------------------------------------------------------------------
def model_device(model) -> torch.device:
    """The device of ``model``'s first parameter (or buffer); the CPU for a module with neither,
    or for a plain function that maps ids to logits."""
    if isinstance(model, nn.Module):
        for tensor in (*model.parameters(), *model.buffers()):
            return tensor.device
    return torch.device("cpu")


@contextlib.contextmanager
def eval_mode(model):
    """Run the body with ``model.eval()`` (no dropout), then give the model back its old mode.

    Measurements (generation, scoring, probes) must not change a model that is being trained, so
    every such function in the course wraps its work in this context manager. Objects without
    ``.training`` (a plain function that maps ids to logits) pass through unchanged.
    """
    was_training = getattr(model, "training", None)
    if was_training is not None:
        model.eval()
    try:
        yield model
    finally:
        if was_training is not None:
            model.train(was_training)


def seed_everything(seed: int = 0) -> torch.Generator:
    """Seed Python, NumPy and PyTorch (all devices); returns a CPU generator seeded the same way.

    Identical seeds give identical results on the same hardware and software; across GPUs or
    library versions, floating-point order can still differ in the last digits.
    """
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)  # also seeds every CUDA and MPS device
    return torch.Generator().manual_seed(seed)


def describe(device: torch.device | None = None) -> str:
    """One line saying what runs where: device, precision, scale preset and library versions."""
    device = device or best_device()
    if device.type == "cuda":
        where = f"cuda ({torch.cuda.get_device_name(device)})"
    elif device.type == "mps":
        where = "mps (Apple GPU)"
    else:
        where = f"cpu ({torch.get_num_threads()} threads)"
    policy = precision_for(device)
    return (
        f"device: {where} | precision: {policy.name} ({policy.reason}) | scale: {scale()} "
        f"| torch {torch.__version__}"
    )


def report(device: torch.device | None = None) -> torch.device:
    """Print :func:`describe` and return the chosen device (the first lines of every notebook)."""
    device = device or best_device()
    print(describe(device))
    return device
