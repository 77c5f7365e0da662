"""Training recipes shared by the notebooks and the benchmarks: chapter 4's Tiny Shakespeare GPT and the course model.

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

The course model (chapter 4, "The course model") is the one GPT that chapters 5 and 6 fine-tune,
compress and audit: :func:`course_gpt` is its recipe, :func:`train_course_gpt` cleans raw
Wikipedia (:mod:`lmlib.corpus`), trains and writes a release folder, and :func:`load_course_gpt`
loads the release registered in ``lmlib/datasets.toml`` (committed under ``models/``). Retrain it
with :data:`RELEASE_COMMAND`.
"""
from __future__ import annotations

import argparse
import copy
import dataclasses
import hashlib
import json
import math
import os
import platform
import shutil
import tempfile
import time
import warnings
from collections.abc import Sequence
from pathlib import Path

import safetensors.torch
import torch

from lmlib.book import REPOSITORY_URL, raw_url
from lmlib.checkpoint import latest
from lmlib.corpus import ENWIKI, ENWIKI_FILES, clean, held_out, read_enwiki
from lmlib.data import cache_dir, dataset, path, sha256_of, window_batches
from lmlib.dedup import open_packed, pack
from lmlib.generate import generate
from lmlib.metrics import stream_nll
from lmlib.model import GPT, GPTConfig
from lmlib.ngram import NGramLM
from lmlib.presets import recipe_for, scaled
from lmlib.tokenizers import ByteBPE
from lmlib.train import Trainer, TrainConfig

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


#: The speedrun preset (chapter 4, "What the speedruns learned"): the ``cpu`` preset with the one change of
#: ``benchmarks/speedrun_ladder.py`` that paid on a 2-core CPU, Muon for the blocks' weight matrices
#: (:class:`lmlib.optim.Muon`; AdamW for the rest), and the step count that fills about 100 s of training there.
SHAKESPEARE_SPEEDRUN = dict(SHAKESPEARE_CHAR["cpu"], optimizer="muon", muon_lr=0.02, steps=2000)


def shakespeare_char(scale: str | None = None) -> dict:
    """The recipe for ``scale`` (``smoke``/``cpu``/``gpu``; default: the ``LMLIB_SCALE`` preset). A copy."""
    if scale is None:
        return dict(scaled(**SHAKESPEARE_CHAR))
    if scale not in SHAKESPEARE_CHAR:
        raise ValueError(f"scale must be one of {sorted(SHAKESPEARE_CHAR)}, got {scale!r}.")
    return dict(SHAKESPEARE_CHAR[scale])


#: Architecture options a recipe may set (else the :class:`lmlib.model.GPTConfig` defaults).
MODEL_OPTIONS = ("mlp", "pos", "norm", "bias", "tie_weights", "qk_norm", "zero_init", "logit_softcap")
#: Optimisation options a recipe may set (else the :class:`lmlib.train.TrainConfig` defaults).
TRAIN_OPTIONS = ("optimizer", "muon_lr", "schedule", "cooldown_frac")


def model_config(recipe: dict, vocab_size: int) -> GPTConfig:
    """The :class:`lmlib.model.GPTConfig` of ``recipe`` for a vocabulary of ``vocab_size``."""
    keys = ("n_layer", "n_head", "n_embd", "block_size", "dropout")
    options = {k: recipe[k] for k in MODEL_OPTIONS if k in recipe}
    return GPTConfig(vocab_size=vocab_size, **{k: recipe[k] for k in keys}, **options)


def train_config(recipe: dict, **overrides) -> TrainConfig:
    """The :class:`lmlib.train.TrainConfig` of ``recipe``; ``overrides`` set any other field."""
    fields = dict(max_steps=recipe["steps"], lr=recipe["lr"], min_lr=recipe["min_lr"],
                  warmup_steps=recipe["warmup"], betas=tuple(recipe["betas"]),
                  weight_decay=recipe["weight_decay"], grad_clip=recipe["grad_clip"])
    fields.update({k: recipe[k] for k in TRAIN_OPTIONS if k in recipe})
    return TrainConfig(**{**fields, **overrides})


# --- the course model: one GPT pretrained on cleaned Wikipedia, used from chapter 4 on ---------------

#: The name of the course model in the data registry (``lmlib/datasets.toml``).
COURSE_GPT_NAME = "course-gpt"
#: The token that ends every document of the course corpus.
EOT = "<|endoftext|>"
#: Files of a course-model release folder, in the registry as files of :data:`COURSE_GPT_NAME`.
RELEASE_FILES = ("model.safetensors", "tokenizer.json", "config.json", "train_log.json")
#: The command that trains the released course model (written into its training log).
RELEASE_COMMAND = "LMLIB_PRECISION=bf16 python -m lmlib.recipes course-gpt --scale full --out models/course-gpt"

_COURSE_DATA = dict(vocab_size=4096, seed=0)
_COURSE_MODEL = dict(n_layer=3, n_head=3, n_embd=192, block_size=256, dropout=0.0)

#: The presets of :func:`course_gpt`: corpus (files of ``enwiki-2018-slice``, held-out documents,
#: BPE size), model and schedule. ``full`` is the released model, sized for about 90 minutes on 2
#: CPU cores: a throughput sweep (``benchmarks/course_gpt_sizing.py``) measured tokens per second
#: for five sizes, and Chinchilla's rule of about 20 training tokens per parameter (Hoffmann et
#: al. 2022) points at 2-3M parameters for that budget. The 2.2M-parameter model sees 49M tokens
#: (about 3.3 passes over the cleaned text, 23 tokens per parameter). The release was trained with
#: bf16 autocast (``LMLIB_PRECISION=bf16``), 1.27x the float32 speed on a CPU with bf16
#: instructions; on one without them, leave the variable out (float32 is then the faster choice).
COURSE_GPT = {
    "smoke": dict(n_files=2, n_val=20, vocab_size=512, seed=0, n_layer=2, n_head=2, n_embd=32, block_size=64,
                  dropout=0.0, batch=8, steps=30, lr=3e-3, min_lr=3e-4, warmup=5, eval_every=15, **_SCHEDULE),
    "cpu": dict(n_files=64, n_val=500, **_COURSE_DATA, **_COURSE_MODEL, batch=16, steps=50, lr=2e-3, min_lr=2e-4,
                warmup=5, eval_every=25, **_SCHEDULE),
    "full": dict(n_files=64, n_val=500, **_COURSE_DATA, **_COURSE_MODEL, batch=16, steps=12000, lr=2e-3,
                 min_lr=2e-4, warmup=200, eval_every=500, **_SCHEDULE),
}


def course_gpt(scale: str | None = None) -> dict:
    """The course-model recipe for ``scale`` (``smoke``/``cpu``/``full``; default: the preset in force,
    where the ``gpu`` preset means ``full``). A copy."""
    return recipe_for(COURSE_GPT, scale)


#: The recipe fields that decide the course corpus (the rest decide the model and its training).
CORPUS_FIELDS = ("n_files", "n_val", "vocab_size", "seed")
#: The modules whose code builds the corpus: a change to any of them invalidates a cached corpus.
_CORPUS_CODE = ("corpus.py", "dedup.py", "tokenizers.py")


@dataclasses.dataclass
class CourseCorpus:
    """The prepared course corpus: what training needs and what the training log records.

    ``stages``, ``drop_counts``, ``val_pages``, ``train_docs`` and ``val_docs`` summarise
    :func:`lmlib.corpus.clean`'s run; ``tok`` is the byte-level BPE trained on the training split;
    ``train_ids`` and ``val_ids`` are every document's tokens followed by :data:`EOT` (1-D int64).
    ``from_cache`` says whether it was read from the cache instead of built.
    """

    stages: list
    drop_counts: dict
    val_pages: list
    train_docs: int
    val_docs: int
    tok: ByteBPE
    train_ids: torch.Tensor
    val_ids: torch.Tensor
    from_cache: bool = False


def corpus_cache_folder(recipe: dict) -> Path:
    """Where the corpus of ``recipe`` is cached: ``<lmlib cache>/course-corpus/<key>``.

    The key hashes the corpus fields of the recipe, the sha256 of every raw file read and the code
    of the modules that clean and tokenize, so a changed rule never serves a stale corpus.
    """
    here = Path(__file__).resolve().parent
    files = dataset(ENWIKI).files
    key = dict(fields={k: recipe[k] for k in CORPUS_FIELDS}, eot=EOT,
               data=[files[name].sha256 for name in ENWIKI_FILES[: recipe["n_files"]]],
               code={name: sha256_of(here / name) for name in _CORPUS_CODE})
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    return cache_dir() / "course-corpus" / digest


def _write_corpus(folder: Path, recipe: dict, cleaned, tok: ByteBPE, progress: bool,
                  train_shard: str | Path | None = None) -> None:
    """Write the corpus files into the existing, empty ``folder`` (the one encoding path)."""
    eot = tok.special_tokens[EOT]
    for split in ("train", "val"):
        target = folder / f"{split}.bin"
        if split == "train" and train_shard is not None:
            shard = open_packed(train_shard)  # checked against its sidecar before it is trusted
            meta = json.loads(Path(str(train_shard) + ".json").read_text())
            if (meta["vocab_size"], meta["eot_id"], meta["n_docs"]) != (tok.vocab_size, eot, len(cleaned.train)):
                raise ValueError(f"{train_shard} was not packed from this corpus's training split with this "
                                 f"tokenizer (its sidecar says {meta}); pack it again or leave train_shard out.")
            del shard
            shutil.copyfile(train_shard, target)
            shutil.copyfile(str(train_shard) + ".json", str(target) + ".json")
            continue
        pack((tok.encode_list(doc) for doc in getattr(cleaned, split)), target, tok.vocab_size,
             eot_id=eot, progress=progress)
    tok.save(folder / "tokenizer.json")
    summary = dict(recipe={k: recipe[k] for k in CORPUS_FIELDS}, stages=cleaned.table(),
                   drop_counts=cleaned.drop_counts, val_pages=cleaned.val_pages,
                   train_docs=len(cleaned.train), val_docs=len(cleaned.val))
    (folder / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")


def save_course_corpus(recipe: dict, cleaned, tok: ByteBPE, progress: bool = True,
                       train_shard: str | Path | None = None) -> Path:
    """Write the corpus of ``recipe`` (``cleaned``: :func:`lmlib.corpus.clean`'s result, ``tok`` the
    BPE trained on its training split) to its cache folder; returns the folder.

    Chapter 4's data pipeline page calls this after building the corpus step by step, so that the
    course-model page trains on it without rebuilding it. The token files are
    :func:`lmlib.dedup.pack` shards; ``train_shard``, a shard the caller already packed from
    ``cleaned.train`` with ``tok`` (EOT after each document), is copied instead of encoded again.
    The folder appears whole or not at all (written beside, then renamed).
    """
    folder = corpus_cache_folder(recipe)
    if (folder / "summary.json").is_file():  # prepared before: same key, same content
        return folder
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".writing-", dir=folder.parent))
    try:
        _write_corpus(tmp, recipe, cleaned, tok, progress, train_shard)
        if folder.exists():  # another run wrote it meanwhile: the same key, the same content
            shutil.rmtree(tmp)
        else:
            os.replace(tmp, folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return folder


def _load_course_corpus(folder: Path, from_cache: bool = True) -> CourseCorpus:
    summary = json.loads((folder / "summary.json").read_text())
    ids = {split: torch.from_numpy(open_packed(folder / f"{split}.bin").astype("int64")) for split in ("train", "val")}
    return CourseCorpus(summary["stages"], summary["drop_counts"], summary["val_pages"], summary["train_docs"],
                        summary["val_docs"], ByteBPE.load(folder / "tokenizer.json"), ids["train"], ids["val"],
                        from_cache=from_cache)


def course_corpus(recipe: dict, progress: bool = True, cache: bool = True) -> CourseCorpus:
    """The course corpus of ``recipe``, from the cache when a run has prepared it, else built and cached.

    Building runs :func:`lmlib.corpus.clean` on the first ``n_files`` files of
    ``enwiki-2018-slice`` and trains the byte-level BPE on its training split only (about a minute
    at the ``cpu`` and ``full`` recipes, on 2 cores); ``cache=False`` builds without reading or
    writing the cache (the files go to a temporary folder, read back, then deleted).
    """
    folder = corpus_cache_folder(recipe)
    if cache and (folder / "summary.json").is_file():
        try:
            return _load_course_corpus(folder)
        except (OSError, ValueError, KeyError) as err:  # damaged: say so, rebuild below
            warnings.warn(f"The cached course corpus in {folder} cannot be read ({err}); building it again.")
            shutil.rmtree(folder, ignore_errors=True)
    cleaned = clean(read_enwiki(recipe["n_files"])[0], n_val=recipe["n_val"], seed=recipe["seed"], progress=progress)
    tok = ByteBPE.train("\n\n".join(cleaned.train), recipe["vocab_size"], special_tokens=[EOT], progress=progress)
    if cache:
        return _load_course_corpus(save_course_corpus(recipe, cleaned, tok, progress), from_cache=False)
    with tempfile.TemporaryDirectory(prefix="course-corpus-") as tmp:
        _write_corpus(Path(tmp), recipe, cleaned, tok, progress)
        return _load_course_corpus(Path(tmp), from_cache=False)


def _machine() -> dict:
    return dict(platform=platform.platform(), processor=platform.processor() or platform.machine(),
                cpu_count=os.cpu_count(), torch_threads=torch.get_num_threads(), torch=torch.__version__,
                python=platform.python_version())


def train_course_gpt(recipe: dict, out_dir: str | Path, progress: bool = True, command: str | None = None,
                     baselines: bool = True) -> dict:
    """Build the corpus, train the course model and write a release folder; returns the training log.

    ``out_dir`` receives :data:`RELEASE_FILES`. Checkpoints go to ``out_dir/checkpoints`` every
    ``eval_every`` steps, so an interrupted run continues where it stopped when called again with
    the same recipe. The log holds the recipe, the corpus stage table, the loss curves, tokens,
    wall time, machine, the command, the held-out perplexity beside interpolated Kneser-Ney n-gram
    models on the same tokens (``baselines=False`` skips fitting them, minutes on the full corpus,
    and logs ``None``), and greedy samples.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    corpus = course_corpus(recipe, progress)
    tok, train_ids, val_ids = corpus.tok, corpus.train_ids, corpus.val_ids
    corpus_s = time.perf_counter() - started
    torch.manual_seed(recipe["seed"])
    model = GPT(model_config(recipe, tok.vocab_size))
    bs, batch = recipe["block_size"], recipe["batch"]
    cfg = train_config(recipe, eval_every=recipe["eval_every"], checkpoint_every=recipe["eval_every"],
                       checkpoint_dir=out_dir / "checkpoints", keep_last=2, seed=recipe["seed"], progress=progress)
    trainer = Trainer(model, cfg, window_batches(train_ids, bs, batch), window_batches(val_ids, bs, batch))
    if latest(cfg.checkpoint_dir) is not None:
        trainer.load_checkpoint()
    resumed_from = trainer.step
    train_started = time.perf_counter()
    history = trainer.fit()
    train_s = time.perf_counter() - train_started
    if history.interrupted:
        return {"interrupted": True, "step": trainer.step}
    model = trainer.raw_model.cpu().eval()
    scored = val_ids[: (len(val_ids) - 1) // bs * bs + 1]  # the tokens stream_nll scores, for both models
    val_nll = stream_nll(model, scored, bs)
    kn = {n: NGramLM(train_ids, n, tok.vocab_size).perplexity(scored) for n in (2, 3, 4)} if baselines else None
    prompts = ["The city of", "In 2015, the", "He was born in"]
    samples = {p: tok.decode(generate(model, tok.encode(p)[None], 40, greedy=True)[0]) for p in prompts}
    log = dict(
        name=COURSE_GPT_NAME, recipe=recipe, command=command or RELEASE_COMMAND, machine=_machine(),
        corpus=dict(stages=corpus.stages, drop_counts=corpus.drop_counts, train_tokens=len(train_ids),
                    val_tokens=len(val_ids), train_docs=corpus.train_docs, val_docs=corpus.val_docs,
                    val_pages=corpus.val_pages, seconds=corpus_s, from_cache=corpus.from_cache),
        params=model.num_params(), tokens_seen=trainer.step * bs * batch, epochs=trainer.step * bs * batch / len(train_ids),
        train_seconds=train_s, precision=trainer.precision.name, resumed_from=resumed_from, history=history.as_dict(), val_loss=val_nll, val_perplexity=math.exp(val_nll),
        kneser_ney_perplexity=None if kn is None else {str(n): p for n, p in kn.items()}, samples=samples,
    )
    save_release(model, tok, recipe, log, out_dir)
    return log


def save_release(model: GPT, tok: ByteBPE, recipe: dict, log: dict, out_dir: str | Path) -> None:
    """Write a release folder: fp16 safetensors weights, tokenizer, config and training log."""
    out_dir = Path(out_dir)
    half = copy.deepcopy(model).half()
    safetensors.torch.save_model(half, str(out_dir / "model.safetensors"))
    tok.save(out_dir / "tokenizer.json")
    config = dict(format="lmlib-course-gpt", version=1, model=dataclasses.asdict(model.config), recipe=recipe)
    (out_dir / "config.json").write_text(json.dumps(config, indent=1, sort_keys=True) + "\n")
    (out_dir / "train_log.json").write_text(json.dumps(log, indent=1, sort_keys=True) + "\n")


def load_course_gpt(folder: str | Path | None = None, special_tokens: Sequence[str] = ()) -> tuple[GPT, ByteBPE, dict]:
    """The course model (float32, on the CPU, evaluation mode), its tokenizer and its config.

    Without ``folder`` the released files come through :func:`lmlib.data.path` (the course
    repository's ``models/`` folder in a clone, else the cache or a download checked by sha256).
    ``special_tokens`` (for example a padding or separator token for a chapter-5 task) are added
    to the tokenizer after :data:`EOT`, and the model grows matching rows
    (:meth:`lmlib.model.GPT.grow_vocab`), so every old id and logit stays what it was.
    """
    def file(name: str) -> Path:
        return Path(folder) / name if folder is not None else path(COURSE_GPT_NAME, name)

    config = json.loads(file("config.json").read_text())
    if config.get("format") != "lmlib-course-gpt":
        raise ValueError(f"{file('config.json')} is not a course-model config (format {config.get('format')!r}).")
    model = GPT(GPTConfig(**config["model"])).half()
    safetensors.torch.load_model(model, str(file("model.safetensors")), strict=True)
    tok = ByteBPE.load(file("tokenizer.json"))
    if special_tokens:
        clash = [t for t in special_tokens if t in tok.special_tokens]
        if clash:
            raise ValueError(f"{clash} are already special tokens of the course tokenizer: {list(tok.special_tokens)}.")
        tok = ByteBPE(tok.merges, [*tok.special_tokens, *special_tokens], tok.pattern, tok.byte_order)
        model.grow_vocab(tok.vocab_size)
    return model.float().eval(), tok, config


def course_heldout(log: dict | None = None) -> list[str]:
    """The held-out documents of the released course model (never trained on), as cleaned text.

    They are rebuilt from the raw ``enwiki-2018-slice`` files and the page ids in the training log
    (``log``; default: the released one), which takes seconds instead of rerunning the pipeline.
    """
    if log is None:
        log = json.loads(path(COURSE_GPT_NAME, "train_log.json").read_text())
    return held_out(read_enwiki(log["recipe"]["n_files"])[0], log["corpus"]["val_pages"])


#: What the registry says about the released course model; :func:`registry_entry` writes it.
COURSE_GPT_RELEASE = dict(
    name=COURSE_GPT_NAME,
    title="The course model: a 2.2M-parameter GPT pretrained on cleaned English Wikipedia (chapter 4)",
    licence="Weights: MIT, like the course code; trained on Wikipedia text (CC BY-SA 3.0, Wikipedia contributors)",
    citation="The course's own release, made by lmlib.recipes (python -m lmlib.recipes course-gpt --scale full)",
)


def registry_entry(out_dir: str | Path, release: dict | None = None, base_url: str | None = None,
                   homepage: str | None = None) -> str:
    """The ``lmlib/datasets.toml`` entry of a release folder (sha256 and size of each file), as TOML.

    ``release`` holds the entry's ``name``, ``title``, ``licence`` and ``citation`` (default:
    :data:`COURSE_GPT_RELEASE`; the assistant's is :data:`lmlib.assistant.ASSISTANT_RELEASE`).
    ``base_url`` defaults to the release's folder in the course repository, ``homepage`` to the
    repository (:data:`lmlib.book.REPOSITORY_URL`).
    """
    release = release or COURSE_GPT_RELEASE
    name = release["name"]
    base_url = base_url or raw_url(f"models/{name}")
    homepage = homepage or REPOSITORY_URL
    lines = [f"[{name}]"] + [f"{key} = {json.dumps(release[key], ensure_ascii=False)}"
                             for key in ("title", "licence", "citation")]
    lines += [f'homepage = "{homepage}"', 'default = "model.safetensors"']
    for file in RELEASE_FILES:
        f = Path(out_dir) / file
        lines += [f'[{name}.files."{file}"]', f'url = "{base_url}/{file}"',
                  f'sha256 = "{sha256_of(f)}"', f"size = {f.stat().st_size}"]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    """``python -m lmlib.recipes course-gpt --scale full --out models/course-gpt`` trains and writes a release."""
    parser = argparse.ArgumentParser(prog="python -m lmlib.recipes", description=main.__doc__)
    parser.add_argument("recipe", choices=["course-gpt"])
    parser.add_argument("--scale", choices=sorted(COURSE_GPT), default="full")
    parser.add_argument("--out", required=True, help="release folder to write (checkpoints go inside it)")
    args = parser.parse_args(argv)
    env = f"LMLIB_PRECISION={os.environ['LMLIB_PRECISION']} " if os.environ.get("LMLIB_PRECISION") else ""
    command = f"{env}python -m lmlib.recipes course-gpt --scale {args.scale} --out {args.out}"
    log = train_course_gpt(course_gpt(args.scale), args.out, command=command)
    if log.get("interrupted"):
        print(f"Interrupted at step {log['step']}; run the same command again to continue.")
        return
    print(f"held-out perplexity {log['val_perplexity']:.1f}; Kneser-Ney {log['kneser_ney_perplexity']}; "
          f"{log['train_seconds'] / 60:.1f} min of training")


if __name__ == "__main__":
    main()
