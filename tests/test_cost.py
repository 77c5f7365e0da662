"""lmlib.cost (chapter 6): the FLOPs -> hours -> energy -> money chain, and its checker."""
import math

import pytest

from lmlib import cost, exercises


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
