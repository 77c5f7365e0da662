"""Chapter 4's CPU claims for the Tiny Shakespeare character GPT, measured in one process.

The model is nanoGPT's documented CPU configuration (4 layers, 4 heads, width 128, context 64,
batch 12, dropout 0) built with :class:`lmlib.model.GPT`. Two measurements:

1. Throughput. Tokens/s of a plain float32 PyTorch loop (default ``torch.optim.AdamW``,
   ``loss.item()`` every step, no compile) against :class:`lmlib.train.Trainer` in its CPU
   settings: fused AdamW, the loss read only every ``log_every`` steps, with and without
   ``torch.compile``, and with bfloat16 autocast (``precision="bf16"``). Runs alternate
   (A, B, C, D, A, B, ...) so that a busy machine slows every variant alike; the table reports
   medians and ratios to the plain loop. The first steps of every run are warm-up (allocator,
   compilation) and are not timed. Besides wall-clock tokens/s it reports tokens per CPU-second
   of the process (``time.process_time``), which a busy machine distorts much less when the run
   uses one thread.
2. Time to loss. The Trainer trains the course's ``cpu`` preset (:mod:`lmlib.recipes`: 2 layers,
   context 64, batch 16, 1200 steps at a peak learning rate of 5e-3) and nanoGPT's CPU recipe
   (4 layers, 2000 steps at 1e-3). Every 100 steps it measures the validation loss on nanoGPT's
   split (the last 10% of the text) over 200 batches of 12 windows, as nanoGPT's ``eval_iters``;
   training time counts (compilation too, with ``--ttl-compile``), evaluation does not. The
   course's target: at most 1.88 within 60 s. ``--ttl-override`` changes the preset for a sweep.

On a GPU (``--device cuda``) the same script measures the same variants (the Trainer then uses
the device's mixed-precision policy and reports MFU) and, by default, races the ``gpu`` preset
(nanoGPT's 6-layer, 384-wide Shakespeare model) against the GPU target: validation loss
1.47 within 60 s, a third of the 3 minutes nanoGPT reports on an A100::

    LMLIB_DATA=... python benchmarks/train_char_gpt.py --device cuda --ttl-compile

CPU threads: by default PyTorch uses one thread per core. On a machine that other processes keep
busy, its OpenMP threads wait for each other and a 2-thread run can be ten times slower than a
1-thread one; there, pass ``--threads 1`` (the setting applies to every variant alike).

Results go to ``benchmarks/results/<device>_char_gpt.json`` (the CPU file is quoted by the book) and to stdout.
Re-run on a quiet machine (about 6 minutes on 2 cores)::

    LMLIB_DATA=<mirror> .venv/bin/python benchmarks/train_char_gpt.py
    LMLIB_DATA=<mirror> .venv/bin/python benchmarks/train_char_gpt.py --threads 1 \
        --out benchmarks/results/cpu_char_gpt_1thread.json
    LMLIB_DATA=<mirror> .venv/bin/python benchmarks/train_char_gpt.py --repeats 0 \
        --ttl "cpu preset" --ttl-override '{"n_layer": 3}' --out /tmp/sweep.json   # one sweep point
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import torch
from common import RESULTS, cpu_name, sync, write_results

from lmlib import data as D
from lmlib import recipes
from lmlib import train as T
from lmlib.device import best_device, runtime
from lmlib.model import GPT, GPTConfig
from lmlib.tokenizers import CharTokenizer

REF = recipes.NANOGPT_CPU  # throughput is measured on nanoGPT's documented CPU configuration
BLOCK, BATCH = REF["block_size"], REF["batch"]
MODEL = {k: REF[k] for k in ("n_layer", "n_head", "n_embd", "block_size", "dropout")}
RECIPE = dict(lr=REF["lr"], min_lr=REF["min_lr"], betas=REF["betas"], warmup_steps=REF["warmup"],
              weight_decay=REF["weight_decay"], grad_clip=REF["grad_clip"])
# Time-to-loss runs: recipe, and the course's target (validation loss, seconds of training).
# 1.88 in 60 s on a 2-core CPU; on a GPU nanoGPT's 1.47 in a third of its 3 A100 minutes.
RACES = {"cpu preset": (lambda: recipes.shakespeare_char("cpu"), 1.88, 60.0),
         "nanoGPT CPU recipe": (lambda: dict(REF), 1.88, 60.0),
         "gpu preset": (lambda: recipes.shakespeare_char("gpu"), 1.47, 60.0)}
WARMUP_STEPS = 10  # untimed steps at the start of every throughput run


def load_tokens() -> tuple[torch.Tensor, torch.Tensor, int]:
    text = D.read_text("tinyshakespeare")
    tok = CharTokenizer.from_text(text)
    train, val = D.split(tok.encode(text), 0.1)
    return train, val, tok.vocab_size


def new_model(vocab: int) -> GPT:
    torch.manual_seed(0)
    return GPT(GPTConfig(vocab_size=vocab, **MODEL))


def plain_loop(train: torch.Tensor, vocab: int, steps: int, device: torch.device) -> tuple[float, float]:
    """What a first training script looks like; (wall-clock, CPU-time) tokens/s over ``steps`` timed steps."""
    runtime(str(device), precision="fp32", tf32=False)  # really float32: the Trainer turns TF32 on process-wide
    model = new_model(vocab).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=RECIPE["lr"])
    gen = torch.Generator().manual_seed(0)
    for i in range(WARMUP_STEPS + steps):
        if i == WARMUP_STEPS:
            sync(device)
            start, cpu = time.perf_counter(), time.process_time()
        x, y = (t.to(device) for t in D.random_windows(train, BLOCK, BATCH, generator=gen))
        _, loss = model(x, y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        loss.item()  # a plain loop reads the loss every step, to print or record it
    sync(device)
    tokens = steps * BATCH * BLOCK
    return tokens / (time.perf_counter() - start), tokens / (time.process_time() - cpu)


def trainer_run(train: torch.Tensor, vocab: int, steps: int, compile_: bool, precision: str | None,
                device: torch.device) -> tuple[float, float]:
    """(wall-clock, CPU-time) tokens/s of ``Trainer.fit`` over ``steps`` steps, after untimed warm-up steps.

    ``precision=None`` is ``lmlib.device``'s policy: float32 on a CPU, bf16 or fp16 on a GPU.
    """
    cfg = T.TrainConfig(max_steps=WARMUP_STEPS + steps, log_every=10, eval_every=None,
                        compile=compile_, precision=precision, device=str(device), progress=False,
                        **dict(RECIPE, warmup_steps=WARMUP_STEPS))
    trainer = T.Trainer(new_model(vocab), cfg, T.token_batches(train, BLOCK, BATCH))
    cfg.max_steps = WARMUP_STEPS  # fit() stops here: warm-up and compilation, not timed
    trainer.fit()
    cfg.max_steps = WARMUP_STEPS + steps  # ... and continues from there (the schedule is unchanged)
    sync(device)
    start, cpu = time.perf_counter(), time.process_time()
    trainer.fit()
    sync(device)
    tokens = steps * BATCH * BLOCK
    return tokens / (time.perf_counter() - start), tokens / (time.process_time() - cpu)


#: The throughput variants: (train, vocab, steps, device) -> (tokens/s, tokens per CPU-second).
VARIANTS = {
    "plain float32 loop": plain_loop,
    "Trainer": lambda *a: trainer_run(*a[:3], False, None, a[3]),
    "Trainer + compile": lambda *a: trainer_run(*a[:3], True, None, a[3]),
    "Trainer + compile + bf16": lambda *a: trainer_run(*a[:3], True, "bf16", a[3]),  # on a CPU
}


# The kernels a trainer cannot make cheaper without changing the arithmetic (same shapes, float32).
MATMUL_OPS = ("aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm",
              "aten::_scaled_dot_product_flash_attention_for_cpu",
              "aten::_scaled_dot_product_flash_attention_for_cpu_backward")


def matmul_share(train: torch.Tensor, vocab: int, steps: int = 30) -> dict:
    """Profile the plain loop: the share of its CPU time spent in matrix products and attention.

    Whatever a trainer does around them (fusing element-wise ops, a fused optimizer, fewer
    synchronisations), the float32 products stay; so 1 / share bounds the speed-up any fp32
    trainer can reach over the plain loop on this machine (Amdahl's law).
    """
    from torch.profiler import ProfilerActivity, profile

    model = new_model(vocab)
    opt = torch.optim.AdamW(model.parameters(), lr=RECIPE["lr"])
    gen = torch.Generator().manual_seed(0)

    def step():
        x, y = D.random_windows(train, BLOCK, BATCH, generator=gen)
        _, loss = model(x, y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        loss.item()

    for _ in range(WARMUP_STEPS):
        step()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            step()
    events = prof.key_averages()
    total = sum(e.self_cpu_time_total for e in events)
    by_op = {e.key: e.self_cpu_time_total / total for e in events if e.key in MATMUL_OPS}
    share = sum(by_op.values())
    return {"profiled_steps": steps, "matmul_attention_share": share, "by_op": by_op,
            "amdahl_bound_fp32": 1 / share}


@torch.no_grad()
def val_loss(model: GPT, val: torch.Tensor, batches: int = 200, block: int = BLOCK, batch: int = BATCH) -> float:
    """Mean loss over ``batches`` random validation windows (nanoGPT's eval_iters = 200)."""
    model.eval()
    device = next(model.parameters()).device
    gen = torch.Generator().manual_seed(1234)
    losses = [model(*(t.to(device) for t in D.random_windows(val, block, batch, generator=gen)))[1].item()
              for _ in range(batches)]
    return sum(losses) / len(losses)


def train_in_chunks(trainer: T.Trainer, val, block: int, total: int, chunk: int, device: torch.device,
                    eval_batches: int = 200, budget_seconds: float | None = None, verbose: bool = False):
    """Train ``trainer`` to ``total`` steps, ``chunk`` steps per ``fit()``, with a validation loss after each.

    Only the chunks are timed: compilation counts, evaluation does not. The learning-rate schedule
    is fixed when the trainer is built, so the chunks make the same run as one call. With
    ``budget_seconds``, the pace measured after each chunk re-estimates how many steps fit in that
    many training seconds, and :meth:`lmlib.train.Trainer.reschedule` moves the end of the schedule
    there (the speedrun ladder trains every rung for the same time this way). Returns the curve
    (step, training seconds, validation loss per chunk), the wall and the CPU seconds of training.
    """
    wall = cpu = 0.0
    curve = []
    while trainer.step < total:
        trainer.config.max_steps = min(total, trainer.step + chunk)  # where this fit() stops
        sync(device)
        start, cpu_start = time.perf_counter(), time.process_time()
        trainer.fit()
        sync(device)
        wall += time.perf_counter() - start
        cpu += time.process_time() - cpu_start
        loss = val_loss(trainer.raw_model, val, batches=eval_batches, block=block)
        trainer.raw_model.train()
        curve.append({"step": trainer.step, "train_seconds": wall, "val_loss": loss})
        if verbose:
            print(f"  step {trainer.step:>5}  {wall:6.1f} s  validation loss {loss:.3f}", flush=True)
        if budget_seconds is not None:
            total = max(trainer.step, trainer.config.warmup_steps,
                        round(trainer.step + (budget_seconds - wall) * trainer.step / wall))
            if total > trainer.step:
                trainer.reschedule(total)
    return curve, wall, cpu


def time_to_loss(train, val, vocab, recipe: dict, target: tuple[float, float], compile_: bool,
                 precision: str | None, device: torch.device, eval_every: int = 100, eval_batches: int = 200) -> dict:
    """Train ``recipe`` with the Trainer; validation loss every ``eval_every`` steps against training time.

    ``seconds_to_target`` is the training time at the first evaluation at or below the target loss
    (``None`` if the run never gets there); see :func:`train_in_chunks` for what is timed.
    """
    target_loss, target_seconds = target
    torch.manual_seed(0)
    model = GPT(recipes.model_config(recipe, vocab))
    cfg = recipes.train_config(recipe, log_every=50, eval_every=None, compile=compile_, precision=precision,
                               device=str(device), progress=False)
    trainer = T.Trainer(model, cfg, T.token_batches(train, recipe["block_size"], recipe["batch"]))
    curve, wall, cpu = train_in_chunks(trainer, val, recipe["block_size"], recipe["steps"], eval_every, device,
                                       eval_batches, verbose=True)
    reached = next((c for c in curve if c["val_loss"] <= target_loss), None)
    steps = recipe["steps"]
    return dict(recipe=dict(recipe, betas=list(recipe["betas"])), params=model.num_params(), steps=steps,
                tokens=steps * recipe["batch"] * recipe["block_size"], compile=compile_,
                precision=str(trainer.precision.dtype).replace("torch.", ""),
                train_seconds=wall, train_cpu_seconds=cpu, val_loss=curve[-1]["val_loss"], curve=curve,
                seconds_to_target=reached and reached["train_seconds"], steps_to_target=reached and reached["step"],
                tokens_per_s=steps * recipe["batch"] * recipe["block_size"] / wall,
                mfu=trainer.history.mfu[-1], target_val_loss=target_loss, target_seconds=target_seconds,
                meets_targets=curve[-1]["val_loss"] <= target_loss and wall <= target_seconds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default=None, help="cpu, cuda or mps (default: lmlib's choice)")
    parser.add_argument("--steps", type=int, default=100, help="timed steps per throughput run")
    parser.add_argument("--repeats", type=int, default=3, help="alternating rounds (medians reported; 0 skips them)")
    parser.add_argument("--variants", nargs="+", default=None, choices=list(VARIANTS),
                        help="throughput variants to run (default: all that apply to the device)")
    parser.add_argument("--ttl", nargs="*", default=None, choices=list(RACES),
                        help="time-to-loss runs (default: the cpu preset and nanoGPT's CPU recipe on a CPU, the "
                             "gpu preset on a GPU); give --ttl alone to skip them")
    parser.add_argument("--ttl-override", type=json.loads, default={},
                        help='JSON changes to every time-to-loss recipe, for a sweep, e.g. \'{"n_layer": 3, "lr": 3e-3}\'')
    parser.add_argument("--ttl-compile", action="store_true",
                        help="compile the time-to-loss runs (compilation time counts; default: off, as the cpu notebook)")
    parser.add_argument("--ttl-precision", default=None, choices=["fp32", "bf16", "fp16"],
                        help="precision of the time-to-loss runs (default: the policy of lmlib.device, fp32 on a CPU)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--profile", action="store_true",
                        help="also profile the plain loop: the share of time in matrix products bounds any fp32 speed-up")
    parser.add_argument("--out", type=Path, default=None, help="default: benchmarks/results/<device>_char_gpt.json")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = best_device(args.device)
    on_gpu = device.type != "cpu"
    train, val, vocab = load_tokens()
    load_before = os.getloadavg()
    device_name = torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_name()

    names = args.variants or [n for n in VARIANTS if not (on_gpu and n == "Trainer + compile + bf16")]
    variants = {n: (lambda n=n: VARIANTS[n](train, vocab, args.steps, device)) for n in names}
    if args.repeats < 1:
        variants = {}
    runs: dict[str, list[float]] = {name: [] for name in variants}
    cpu_runs: dict[str, list[float]] = {name: [] for name in variants}
    for r in range(args.repeats):
        for name, run in variants.items():
            wall, cpu = run()
            runs[name].append(wall)
            cpu_runs[name].append(cpu)
            print(f"round {r + 1}/{args.repeats} {name:<26} {wall:>10,.0f} tokens/s {cpu:>10,.0f} per CPU-s", flush=True)
    med = {name: statistics.median(v) for name, v in runs.items()}
    cpu_med = {name: statistics.median(v) for name, v in cpu_runs.items()}
    base = med.get("plain float32 loop", float("nan"))
    cpu_base = cpu_med.get("plain float32 loop", float("nan"))
    load_after_throughput = os.getloadavg()

    print(f"\n{device_name} | {torch.get_num_threads()} threads | torch {torch.__version__} | "
          f"{args.steps} timed steps x {BATCH} x {BLOCK} tokens, median of {args.repeats} | "
          f"load average before {load_before[0]:.2f}, after {load_after_throughput[0]:.2f}")
    print(f"{'run':<28}{'tokens/s':>12}{'ratio':>8}{'tokens/CPU-s':>14}{'ratio':>8}")
    for name, value in med.items():
        print(f"{name:<28}{value:>12,.0f}{value / base:>8.2f}{cpu_med[name]:>14,.0f}{cpu_med[name] / cpu_base:>8.2f}")

    result = {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "device": device.type, "cpu": cpu_name(), "device_name": device_name,
        "threads": torch.get_num_threads(), "torch": torch.__version__,
        "model": dict(MODEL, vocab_size=vocab, batch_size=BATCH), "recipe": dict(RECIPE, betas=list(RECIPE["betas"])),
        "params": new_model(vocab).num_params(),
        "throughput": {"timed_steps": args.steps, "repeats": args.repeats, "runs_tokens_per_s": runs,
                       "median_tokens_per_s": med, "ratio_to_plain": {k: v / base for k, v in med.items()},
                       "runs_tokens_per_cpu_s": cpu_runs, "median_tokens_per_cpu_s": cpu_med,
                       "cpu_ratio_to_plain": {k: v / cpu_base for k, v in cpu_med.items()}},
        "load_average_1_5_15": {"before": load_before, "after_throughput": load_after_throughput},
        "command": "python benchmarks/train_char_gpt.py " + " ".join(shlex.quote(a) for a in sys.argv[1:]),
    }

    if args.profile:
        prof = matmul_share(train, vocab)
        result["profile"] = prof
        print(f"\nplain loop profile: {prof['matmul_attention_share']:.0%} of CPU time in matrix products and "
              f"attention kernels, so no float32 trainer can exceed {prof['amdahl_bound_fp32']:.2f}x on this machine")

    races = args.ttl if args.ttl is not None else (["gpu preset"] if on_gpu else ["cpu preset", "nanoGPT CPU recipe"])
    if races:
        result["time_to_loss"] = {}
    for name in races:
        make_recipe, target_loss, target_seconds = RACES[name]
        recipe = dict(make_recipe(), **args.ttl_override)
        print(f"\ntime to loss: {name} {recipe}", flush=True)
        ttl = time_to_loss(train, val, vocab, recipe, (target_loss, target_seconds), args.ttl_compile,
                           args.ttl_precision, device)
        ttl["load_average_after"] = os.getloadavg()
        result["time_to_loss"][name] = ttl
        reached = (f"{target_loss} first reached after {ttl['seconds_to_target']:.1f} s" if ttl["seconds_to_target"]
                   else f"{target_loss} not reached")
        mfu = "" if ttl["mfu"] is None else f", MFU {ttl['mfu']:.0%}"
        print(f"{name}: {ttl['steps']} steps in {ttl['train_seconds']:.1f} s of training "
              f"({ttl['tokens_per_s']:,.0f} tokens/s{mfu}; evaluation excluded) -> validation loss "
              f"{ttl['val_loss']:.3f}; {reached}; target (<= {target_loss} within {target_seconds:.0f} s) "
              f"{'met' if ttl['meets_targets'] else 'NOT met'}")

    write_results(result, args.out or RESULTS / f"{device.type}_char_gpt.json")


if __name__ == "__main__":
    main()
