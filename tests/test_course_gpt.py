"""The course model: its recipe end to end at `smoke`, and the released files against the recipe."""
from __future__ import annotations

import dataclasses
import json
import math
import shutil

import pytest
import torch

from lmlib import checkpoint, data, recipes
from lmlib.data import sha256_of


def as_json(value):
    return json.loads(json.dumps(value))  # tuples become lists, as in the release's JSON files


@pytest.fixture(scope="module")
def smoke_release(tmp_path_factory, request):
    if not (data.mirrors() and (data.mirrors()[0] / "enwiki-2018-slice").is_dir()):
        pytest.skip("needs the course data mirror (LMLIB_DATA) with enwiki-2018-slice")
    out = tmp_path_factory.mktemp("course-gpt")
    log = recipes.train_course_gpt(recipes.course_gpt("smoke"), out, progress=False)
    return out, log


def test_smoke_recipe_writes_a_release_that_loads(smoke_release):
    out, log = smoke_release
    assert all((out / name).is_file() for name in recipes.RELEASE_FILES)
    model, tok, config = recipes.load_course_gpt(out)
    assert config["recipe"] == as_json(recipes.course_gpt("smoke"))
    assert model.config.vocab_size == tok.vocab_size == recipes.course_gpt("smoke")["vocab_size"]
    assert recipes.EOT in tok.special_tokens
    # the fp16 release holds the trained weights to fp16 precision: the held-out loss barely moves
    ids = tok.encode("The river flows through the town and into the sea.")[None]
    logits, _ = model(ids)
    assert logits.dtype == torch.float32 and torch.isfinite(logits).all()
    assert log["history"]["step"][-1] == recipes.course_gpt("smoke")["steps"] and log["resumed_from"] == 0
    assert log["corpus"]["stages"][0]["stage"] == "parsed records"
    assert set(log["kneser_ney_perplexity"]) == {"2", "3", "4"} and log["val_perplexity"] > 1
    assert log["machine"]["torch"] == torch.__version__
    assert len(recipes.course_heldout(log)) == recipes.course_gpt("smoke")["n_val"]


def test_special_tokens_are_added_after_the_released_ones(smoke_release):
    out, _ = smoke_release
    base, tok, _ = recipes.load_course_gpt(out)
    model, tok2, _ = recipes.load_course_gpt(out, special_tokens=["<|pad|>", "<|sep|>"])
    assert tok2.special_tokens[recipes.EOT] == tok.special_tokens[recipes.EOT]
    assert tok2.vocab_size == tok.vocab_size + 2 == model.config.vocab_size
    ids = tok.encode("A short test sentence.")[None]
    torch.testing.assert_close(model(ids)[0][..., : tok.vocab_size], base(ids)[0])
    assert tok2.encode("<|sep|>").tolist() == [tok.vocab_size + 1]
    with pytest.raises(ValueError, match="already special"):
        recipes.load_course_gpt(out, special_tokens=[recipes.EOT])


def test_retraining_gives_the_same_files(smoke_release, tmp_path):
    out, _ = smoke_release
    log = recipes.train_course_gpt(recipes.course_gpt("smoke"), tmp_path, progress=False, baselines=False)
    assert log["kneser_ney_perplexity"] is None and log["precision"] == "fp32"
    for name in ("model.safetensors", "tokenizer.json", "config.json"):
        assert sha256_of(tmp_path / name) == sha256_of(out / name), name


def test_bf16_retraining_is_deterministic_too(tmp_path, monkeypatch):
    """The release is trained under bf16 autocast (RELEASE_COMMAND); the same run twice gives the same files."""
    if not (data.mirrors() and (data.mirrors()[0] / "enwiki-2018-slice").is_dir()):
        pytest.skip("needs the course data mirror (LMLIB_DATA) with enwiki-2018-slice")
    monkeypatch.setenv("LMLIB_PRECISION", "bf16")
    logs = [recipes.train_course_gpt(recipes.course_gpt("smoke"), tmp_path / run, progress=False, baselines=False)
            for run in ("a", "b")]
    assert [log["precision"] for log in logs] == ["bf16", "bf16"]
    assert sha256_of(tmp_path / "a" / "model.safetensors") == sha256_of(tmp_path / "b" / "model.safetensors")


def test_an_interrupted_run_continues_from_its_checkpoint(smoke_release, tmp_path):
    """A run stopped after its first checkpoint ends with the files of an uninterrupted run."""
    out, _ = smoke_release
    recipe = recipes.course_gpt("smoke")
    shutil.copytree(out / "checkpoints", tmp_path / "checkpoints")
    for folder in checkpoint.all_checkpoints(tmp_path / "checkpoints"):
        if checkpoint.step_of(folder) > recipe["eval_every"]:
            shutil.rmtree(folder)  # as if the run had stopped right after its first checkpoint
    assert checkpoint.step_of(checkpoint.latest(tmp_path / "checkpoints")) == recipe["eval_every"]
    log = recipes.train_course_gpt(recipe, tmp_path, progress=False)
    assert log["resumed_from"] == recipe["eval_every"]  # resumed, not restarted
    assert sha256_of(tmp_path / "model.safetensors") == sha256_of(out / "model.safetensors")


def test_presets_and_default_scale(monkeypatch):
    monkeypatch.setenv("LMLIB_SCALE", "gpu")
    assert recipes.course_gpt() == recipes.COURSE_GPT["full"]
    monkeypatch.setenv("LMLIB_SCALE", "smoke")
    assert recipes.course_gpt() == recipes.COURSE_GPT["smoke"]
    with pytest.raises(ValueError, match="scale"):
        recipes.course_gpt("huge")


def test_the_released_model_is_the_full_recipe():
    """The registered release (committed under models/) was made by the `full` recipe and loads."""
    config = json.loads(data.path(recipes.COURSE_GPT_NAME, "config.json").read_text())
    log = json.loads(data.path(recipes.COURSE_GPT_NAME, "train_log.json").read_text())
    full = recipes.course_gpt("full")
    assert config["recipe"] == as_json(full) == log["recipe"]
    model, tok, _ = recipes.load_course_gpt()
    assert dataclasses.asdict(model.config) == dataclasses.asdict(recipes.model_config(full, tok.vocab_size))
    assert log["command"] == recipes.RELEASE_COMMAND
    assert log["history"]["step"][-1] == full["steps"]
    # the log's figures agree with each other
    assert log["val_perplexity"] == pytest.approx(math.exp(log["val_loss"]))
    assert log["tokens_seen"] == full["steps"] * full["batch"] * full["block_size"]
    assert log["epochs"] == pytest.approx(log["tokens_seen"] / log["corpus"]["train_tokens"])
    assert set(log["kneser_ney_perplexity"]) == {"2", "3", "4"} and len(log["corpus"]["val_pages"]) == full["n_val"]
    assert log["precision"] == "bf16" and "LMLIB_PRECISION=bf16" in recipes.RELEASE_COMMAND
    # the release's claim: it beats every Kneser-Ney baseline on the same held-out tokens
    assert log["val_perplexity"] < min(log["kneser_ney_perplexity"].values())


def test_the_corpus_is_prepared_once_then_read_from_the_cache(tmp_path, monkeypatch):
    if not (data.mirrors() and (data.mirrors()[0] / "enwiki-2018-slice").is_dir()):
        pytest.skip("needs the course data mirror (LMLIB_DATA) with enwiki-2018-slice")
    monkeypatch.setenv("LMLIB_CACHE", str(tmp_path / "cache"))
    recipe = recipes.course_gpt("smoke")
    built = recipes.course_corpus(recipe, progress=False)
    folder = recipes.corpus_cache_folder(recipe)
    assert not built.from_cache and sorted(p.name for p in folder.iterdir()) == [
        "summary.json", "tokenizer.json", "train.bin", "train.bin.json", "val.bin", "val.bin.json"]
    cached = recipes.course_corpus(recipe, progress=False)
    fresh = recipes.course_corpus(recipe, progress=False, cache=False)
    for other in (cached, fresh):
        assert torch.equal(other.train_ids, built.train_ids) and torch.equal(other.val_ids, built.val_ids)
        assert other.tok.merges == built.tok.merges and other.val_pages == built.val_pages
        assert (other.stages, other.drop_counts, other.train_docs) == (built.stages, built.drop_counts, built.train_docs)
    assert cached.from_cache and not fresh.from_cache and built.train_ids.dtype == torch.long
    # the key follows the corpus settings only: another step count shares the folder, another split does not
    assert recipes.corpus_cache_folder(dict(recipe, steps=7)) == folder
    assert recipes.corpus_cache_folder(dict(recipe, n_val=recipe["n_val"] + 1)) != folder
    # a damaged cache entry is reported and rebuilt, never served
    (folder / "train.bin").write_bytes(b"\x00" * 10)
    with pytest.warns(UserWarning, match="cannot be read"):
        again = recipes.course_corpus(recipe, progress=False)
    assert torch.equal(again.train_ids, built.train_ids) and not again.from_cache


def test_save_course_corpus_copies_a_train_shard_packed_by_the_caller(tmp_path, monkeypatch):
    if not (data.mirrors() and (data.mirrors()[0] / "enwiki-2018-slice").is_dir()):
        pytest.skip("needs the course data mirror (LMLIB_DATA) with enwiki-2018-slice")
    from lmlib import corpus, dedup
    from lmlib.tokenizers import ByteBPE

    monkeypatch.setenv("LMLIB_CACHE", str(tmp_path / "cache"))
    recipe = recipes.course_gpt("smoke")
    cleaned = corpus.clean(corpus.read_enwiki(recipe["n_files"])[0], n_val=recipe["n_val"], seed=recipe["seed"],
                           progress=False)
    tok = ByteBPE.train("\n\n".join(cleaned.train), recipe["vocab_size"], special_tokens=[recipes.EOT])
    eot = tok.special_tokens[recipes.EOT]
    shard = tmp_path / "train.bin"
    dedup.pack((tok.encode_list(d) for d in cleaned.train), shard, tok.vocab_size, eot_id=eot, progress=False)
    # a shard of other documents is refused, naming the file
    wrong = tmp_path / "wrong.bin"
    dedup.pack((tok.encode_list(d) for d in cleaned.train[1:]), wrong, tok.vocab_size, eot_id=eot, progress=False)
    with pytest.raises(ValueError, match="wrong.bin"):
        recipes.save_course_corpus(recipe, cleaned, tok, progress=False, train_shard=wrong)
    assert not recipes.corpus_cache_folder(recipe).exists()
    folder = recipes.save_course_corpus(recipe, cleaned, tok, progress=False, train_shard=shard)
    assert (folder / "train.bin").read_bytes() == shard.read_bytes()
    fresh = recipes.course_corpus(recipe, progress=False, cache=False)  # encoded from scratch, the same tokens
    cached = recipes.course_corpus(recipe, progress=False)
    assert cached.from_cache and torch.equal(cached.train_ids, fresh.train_ids)
    assert torch.equal(cached.val_ids, fresh.val_ids)
