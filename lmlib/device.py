"""Where the course's code runs: device choice, numeric precision, seeding and the scale preset.

Derived in the appendix page "Setting up" (chapters/appendix/setup.md). Every notebook starts
with `lmlib.device.report()` so the reader sees what was chosen and why.

Environment variables (all optional):

- ``LMLIB_DEVICE``: ``cuda``, ``cuda:1``, ``mps`` or ``cpu`` instead of the automatic choice.
- ``LMLIB_PRECISION``: ``fp32``, ``bf16`` or ``fp16`` instead of the hardware policy.
- ``LMLIB_SCALE``: ``smoke`` (seconds, for CI), ``cpu`` (minutes on a laptop) or ``gpu`` (full
  results); the default is ``gpu`` when CUDA is present, else ``cpu``.
"""
from __future__ import annotations

import contextlib
import os
import random
from dataclasses import dataclass
from typing import TypeVar

import numpy as np
import torch

SCALES = ("smoke", "cpu", "gpu")
PRECISIONS = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
T = TypeVar("T")


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


def seed_everything(seed: int = 0) -> torch.Generator:
    """Seed Python, NumPy and PyTorch (all devices); returns a CPU generator seeded the same way.

    Identical seeds give identical results on the same hardware and software; across GPUs or
    library versions, floating-point order can still differ in the last digits.
    """
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)  # also seeds every CUDA and MPS device
    return torch.Generator().manual_seed(seed)


def scale() -> str:
    """The scale preset: ``LMLIB_SCALE`` if set, else ``gpu`` with CUDA present, else ``cpu``."""
    value = os.environ.get("LMLIB_SCALE")
    if not value:
        return "gpu" if torch.cuda.is_available() else "cpu"
    value = value.strip().lower()
    if value not in SCALES:
        raise ValueError(f"LMLIB_SCALE={value!r} is not a scale preset: use one of {', '.join(SCALES)}.")
    return value


def scaled(*, smoke: T, cpu: T, gpu: T) -> T:
    """Pick the value for the current scale preset, e.g. ``steps = scaled(smoke=20, cpu=2000, gpu=5000)``.

    A preset changes sizes and step counts, never the code path.
    """
    return {"smoke": smoke, "cpu": cpu, "gpu": gpu}[scale()]


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
