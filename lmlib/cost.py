"""What training a model costs: from FLOPs to accelerator-hours, energy, carbon and money.

Derived in chapter 6 ("Challenges and frontiers", notebook 02 "Cost and energy"). The chain is
a product of estimates, each one explicit so that it can be argued with:

    FLOPs = 6 N D                     N parameters, D training tokens (forward 2 N D, backward 4 N D)
    hours = FLOPs / (peak FLOP/s * MFU) / 3600        MFU: the fraction of peak actually achieved
    energy (kWh) = hours * watts / 1000 * PUE         PUE: data-centre overhead (cooling, power)
    CO2e (kg) = energy * carbon intensity (kg CO2e per kWh)
    money = hours * price per accelerator-hour

Peak throughputs of GPUs come from :func:`lmlib.device.peak_flops` (one table for the course).

API::

    training_flops(n_params, n_tokens) -> float
    gpu_hours(flops, peak_flops, mfu) -> float
    energy_kwh(gpu_hours, watts, pue=1.0) -> float
    co2e_kg(energy_kwh, kg_per_kwh) -> float
    cost(gpu_hours, price_per_hour) -> float
    estimate(n_params, n_tokens, peak_flops, mfu, watts, pue, kg_per_kwh, price_per_hour) -> dict
    gpt2_shape(n_layer, vocab_size=50304, block_size=1024) -> GPTConfig   width 64 x layers
    training_memory_bytes(n_params, n_layer, n_embd, tokens, activation_bytes, bytes_per_param=16) -> float
    largest_gpt2_shape(memory_bytes, batch, block_size, activation_bytes, ...) -> dict | None

Memory is the other cost of training: a model that does not fit cannot be trained at all. With
AdamW in float32, every parameter costs 16 bytes (weights, gradient and two moments), and the
activations kept for the backward pass grow with layers x width x tokens in the batch; the
constant in front (``activation_bytes``) is measured by ``benchmarks/peak_memory.py``.
"""
from __future__ import annotations

from lmlib.model import GPTConfig, count_params

__all__ = ["training_flops", "gpu_hours", "energy_kwh", "co2e_kg", "cost", "estimate", "gpt2_shape",
           "training_memory_bytes", "largest_gpt2_shape"]


def _positive(**values: float) -> None:
    for name, value in values.items():
        if not isinstance(value, (int, float)) or isinstance(value, bool) or not value > 0:
            raise ValueError(f"{name} must be a positive number, got {value!r}.")


def training_flops(n_params: float, n_tokens: float) -> float:
    """``6 * N * D``: 2 FLOPs per parameter per token forward, 4 backward (Kaplan et al. 2020)."""
    _positive(n_params=n_params, n_tokens=n_tokens)
    return 6.0 * n_params * n_tokens


def gpu_hours(flops: float, peak_flops: float, mfu: float) -> float:
    """Accelerator-hours to compute ``flops`` at ``mfu`` (0 < mfu <= 1) of ``peak_flops`` FLOP/s."""
    _positive(flops=flops, peak_flops=peak_flops, mfu=mfu)
    if mfu > 1:
        raise ValueError(f"mfu is a fraction of the peak, at most 1; got {mfu} (did you pass a percentage?).")
    return flops / (peak_flops * mfu) / 3600.0


def energy_kwh(gpu_hours: float, watts: float, pue: float = 1.0) -> float:
    """Energy drawn: hours x average watts per accelerator x the data centre's PUE (>= 1)."""
    _positive(gpu_hours=gpu_hours, watts=watts, pue=pue)
    if pue < 1:
        raise ValueError(f"pue (power usage effectiveness) is total power / IT power, at least 1; got {pue}.")
    return gpu_hours * watts / 1000.0 * pue


def co2e_kg(energy_kwh: float, kg_per_kwh: float) -> float:
    """Emissions in kg CO2-equivalent for ``energy_kwh`` at a grid's carbon intensity."""
    if not isinstance(kg_per_kwh, (int, float)) or kg_per_kwh < 0:
        raise ValueError(f"kg_per_kwh must be >= 0, got {kg_per_kwh!r}.")
    _positive(energy_kwh=energy_kwh)
    return energy_kwh * kg_per_kwh


def cost(gpu_hours: float, price_per_hour: float) -> float:
    """Money for renting ``gpu_hours`` at ``price_per_hour`` per accelerator-hour."""
    _positive(gpu_hours=gpu_hours, price_per_hour=price_per_hour)
    return gpu_hours * price_per_hour


def estimate(n_params: float, n_tokens: float, peak_flops: float, mfu: float, watts: float,
             pue: float = 1.0, kg_per_kwh: float = 0.4, price_per_hour: float = 2.0) -> dict[str, float]:
    """The whole chain at once: flops, gpu_hours, energy_kwh, co2e_kg and cost."""
    flops = training_flops(n_params, n_tokens)
    hours = gpu_hours(flops, peak_flops, mfu)
    kwh = energy_kwh(hours, watts, pue)
    return dict(flops=flops, gpu_hours=hours, energy_kwh=kwh, co2e_kg=co2e_kg(kwh, kg_per_kwh),
                cost=cost(hours, price_per_hour))


def gpt2_shape(n_layer: int, vocab_size: int = 50304, block_size: int = 1024) -> GPTConfig:
    """The GPT-2-shaped model with ``n_layer`` layers: width 64 x layers, heads of 64 features.

    GPT-2 small is ``gpt2_shape(12)`` (768 wide, 12 heads); count its parameters with
    :func:`lmlib.model.count_params`.
    """
    if not isinstance(n_layer, int) or n_layer < 1:
        raise ValueError(f"n_layer must be a positive whole number, got {n_layer!r}.")
    return GPTConfig(vocab_size=vocab_size, block_size=block_size, n_layer=n_layer, n_head=n_layer,
                     n_embd=64 * n_layer)


def training_memory_bytes(n_params: float, n_layer: int, n_embd: int, tokens: int, activation_bytes: float,
                          bytes_per_param: float = 16.0) -> float:
    """Memory of one training step: ``bytes_per_param * N + activation_bytes * layers * width * tokens``.

    ``tokens`` is batch x context of one micro-batch; ``activation_bytes`` is measured (bytes kept
    per token, layer and unit of width). A planning figure: allocator slack is not modelled.
    """
    _positive(n_params=n_params, n_layer=n_layer, n_embd=n_embd, tokens=tokens, bytes_per_param=bytes_per_param)
    if activation_bytes < 0:
        raise ValueError(f"activation_bytes must be >= 0, got {activation_bytes!r}.")
    return bytes_per_param * n_params + activation_bytes * n_layer * n_embd * tokens


def largest_gpt2_shape(memory_bytes: float, batch: int, block_size: int, activation_bytes: float,
                       bytes_per_param: float = 16.0, headroom: float = 0.9, vocab_size: int = 50304) -> dict | None:
    """The largest GPT-2-shaped model (width = 64 x layers, heads of 64) whose training step fits.

    Only ``headroom`` of ``memory_bytes`` is used (the rest: the CUDA context, fragmentation).
    Returns ``{"n_layer", "n_embd", "params", "bytes"}``, or ``None`` if not even 2 layers fit.
    """
    _positive(memory_bytes=memory_bytes, batch=batch, block_size=block_size, headroom=headroom)
    budget, best = memory_bytes * headroom, None
    for n_layer in range(2, 129):
        n_embd = 64 * n_layer
        params = count_params(gpt2_shape(n_layer, vocab_size, block_size))
        need = training_memory_bytes(params, n_layer, n_embd, batch * block_size, activation_bytes, bytes_per_param)
        if need > budget:
            break
        best = {"n_layer": n_layer, "n_embd": n_embd, "params": params, "bytes": need}
    return best
