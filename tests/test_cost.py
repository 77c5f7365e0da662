"""lmlib.cost (chapter 6): the FLOPs -> hours -> energy -> money chain, and its checker."""
import math

import pytest

from lmlib import cost, exercises
from lmlib.model import count_params


def test_gpt3_flops_match_the_published_total():
    # Brown et al. 2020 report 3.14e23 training FLOPs for GPT-3 175B trained on 300B tokens.
    assert math.isclose(cost.training_flops(175e9, 300e9), 3.15e23, rel_tol=1e-12)


def test_chain_by_hand():
    hours = cost.gpu_hours(3.6e18, 1e15, 0.5)  # 3.6e18 / 5e14 = 7200 s = 2 h
    assert math.isclose(hours, 2.0)
    assert math.isclose(cost.energy_kwh(2.0, 500, pue=1.2), 1.2)
    assert math.isclose(cost.co2e_kg(1.2, 0.5), 0.6)
    assert math.isclose(cost.cost(2.0, 3.0), 6.0)
    e = cost.estimate(1e9, 6e8, 1e15, 0.5, 500, pue=1.2, kg_per_kwh=0.5, price_per_hour=3.0)
    assert math.isclose(e["gpu_hours"], 2.0) and math.isclose(e["cost"], 6.0) and math.isclose(e["co2e_kg"], 0.6)


def test_bad_inputs_are_explained():
    with pytest.raises(ValueError, match="percentage"):
        cost.gpu_hours(1e20, 1e15, 40)
    with pytest.raises(ValueError, match="positive"):
        cost.training_flops(-1, 10)
    with pytest.raises(ValueError, match="pue"):
        cost.energy_kwh(1.0, 300, pue=0.8)


def test_gpu_hours_checker():
    assert exercises.check_gpu_hours(exercises.reference_gpu_hours, verbose=False)
    assert not exercises.check_gpu_hours(lambda n, d, p, m: 6 * n * d / (p * m), verbose=False)  # seconds
    assert not exercises.check_gpu_hours(lambda n, d, p, m: 2 * n * d / (p * m) / 3600, verbose=False)
    assert not exercises.check_gpu_hours(lambda n, d, p, m: 6 * n * d * m / p / 3600, verbose=False)


def test_gpt2_small_shape_and_memory_by_hand():
    # GPT-2 small: 12 layers x 768, 124M parameters with the padded vocabulary and 1024 positions.
    config = cost.gpt2_shape(12)
    assert (config.n_layer, config.n_embd, config.n_head) == (12, 768, 12)
    n = count_params(config)
    # 12 L d^2 in the blocks, the two tables, and the biases and norms (13 d per layer, 2 d at the end)
    assert n == 12 * 12 * 768**2 + 50304 * 768 + 1024 * 768 + 12 * 13 * 768 + 2 * 768 and round(n / 1e6) == 124
    need = cost.training_memory_bytes(n, 12, 768, tokens=8 * 1024, activation_bytes=150.0)
    assert need == 16 * n + 150.0 * 12 * 768 * 8192


def test_largest_gpt2_shape_is_the_last_that_fits():
    a = 152.8  # bytes per token x layer x width, as measured on the CPU (benchmarks/RESULTS.md)
    best = cost.largest_gpt2_shape(16e9, batch=8, block_size=1024, activation_bytes=a)
    assert (best["n_layer"], best["n_embd"]) == (12, 768) and best["bytes"] <= 0.9 * 16e9
    bigger = count_params(cost.gpt2_shape(13))
    assert cost.training_memory_bytes(bigger, 13, 832, 8 * 1024, a) > 0.9 * 16e9
    # fewer tokens per step leave room for a larger model; a tiny budget fits nothing
    assert cost.largest_gpt2_shape(16e9, batch=1, block_size=1024, activation_bytes=a)["n_layer"] > 12
    assert cost.largest_gpt2_shape(1e6, batch=1, block_size=1024, activation_bytes=a) is None
    with pytest.raises(ValueError, match="batch must be a positive number"):
        cost.largest_gpt2_shape(16e9, batch=0, block_size=1024, activation_bytes=a)
