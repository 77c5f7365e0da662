"""lmlib.recipes: the presets build valid models and trainer configs, and stay what the book says."""
from __future__ import annotations

import pytest

from lmlib import recipes
from lmlib.model import GPT
from lmlib.train import TrainConfig


@pytest.mark.parametrize("scale", ["smoke", "cpu", "gpu"])
def test_every_preset_builds_a_model_and_a_trainer_config(scale):
    recipe = recipes.shakespeare_char(scale)
    model = GPT(recipes.model_config(recipe, vocab_size=65))
    cfg = recipes.train_config(recipe, eval_every=None)
    assert isinstance(cfg, TrainConfig) and cfg.eval_every is None
    assert (cfg.max_steps, cfg.lr, cfg.min_lr, cfg.warmup_steps) == (
        recipe["steps"], recipe["lr"], recipe["min_lr"], recipe["warmup"])
    assert model.config.block_size == recipe["block_size"] and len(model.blocks) == recipe["n_layer"]


def test_the_default_follows_the_scale_preset_and_returns_a_copy(monkeypatch):
    monkeypatch.setenv("LMLIB_SCALE", "cpu")
    recipe = recipes.shakespeare_char()
    assert recipe == recipes.SHAKESPEARE_CHAR["cpu"]
    recipe["steps"] = 1
    assert recipes.SHAKESPEARE_CHAR["cpu"]["steps"] != 1


def test_presets_match_the_chapter_text():
    # Chapter 4 describes these numbers in words; the nanoGPT ones are published (README, config file).
    nano, cpu, gpu = recipes.NANOGPT_CPU, recipes.SHAKESPEARE_CHAR["cpu"], recipes.SHAKESPEARE_CHAR["gpu"]
    assert (nano["n_layer"], nano["n_embd"], nano["block_size"], nano["batch"], nano["steps"], nano["lr"]) == (
        4, 128, 64, 12, 2000, 1e-3)
    assert (gpu["n_layer"], gpu["n_embd"], gpu["block_size"], gpu["batch"], gpu["steps"], gpu["dropout"]) == (
        6, 384, 256, 64, 5000, 0.2)
    assert (cpu["n_layer"], cpu["n_embd"], cpu["block_size"], cpu["batch"]) == (2, 128, 64, 16)
    assert cpu["lr"] == 5 * nano["lr"]


def test_a_recipe_may_set_the_architecture_and_optimiser_options():
    recipe = dict(recipes.shakespeare_char("smoke"), mlp="relu2", qk_norm=True, zero_init=True, tie_weights=False,
                  logit_softcap=15.0, optimizer="muon", muon_lr=0.03, schedule="trapezoid", cooldown_frac=0.3)
    config = recipes.model_config(recipe, vocab_size=65)
    assert (config.mlp, config.qk_norm, config.zero_init, config.tie_weights, config.logit_softcap) == (
        "relu2", True, True, False, 15.0)
    cfg = recipes.train_config(recipe)
    assert (cfg.optimizer, cfg.muon_lr, cfg.schedule, cfg.cooldown_frac) == ("muon", 0.03, "trapezoid", 0.3)
    plain = recipes.model_config(recipes.shakespeare_char("smoke"), vocab_size=65)
    assert (plain.mlp, plain.qk_norm, plain.logit_softcap) == ("gelu", False, None)  # absent keys: the defaults


def test_unknown_scale_is_rejected():
    with pytest.raises(ValueError, match="scale must be one of"):
        recipes.shakespeare_char("tpu")


@pytest.mark.parametrize("scale", ["smoke", "cpu", "full"])
def test_course_gpt_presets_build_a_model_and_share_the_corpus_of_the_release(scale):
    recipe = recipes.course_gpt(scale)
    model = GPT(recipes.model_config(recipe, recipe["vocab_size"] + 1))
    cfg = recipes.train_config(recipe, eval_every=recipe["eval_every"])
    assert cfg.max_steps == recipe["steps"] and len(model.blocks) == recipe["n_layer"]
    if scale != "smoke":  # the cpu preset builds the same corpus and tokenizer as the release
        full = recipes.course_gpt("full")
        assert all(recipe[k] == full[k] for k in ("n_files", "n_val", "vocab_size", "seed", "n_layer", "n_embd"))
