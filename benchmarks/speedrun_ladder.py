"""The speedrun ladder: which of the GPU speedruns' training changes pay for a small GPT on a CPU.

Every rung trains the Tiny Shakespeare character GPT for the same budget of training seconds and
keeps the previous rungs' changes (chapter 4, "What the speedruns learned"):

    baseline    the ``cpu`` preset of :func:`lmlib.recipes.shakespeare_char` (AdamW, GELU, cosine)
    muon        Muon for the hidden weight matrices (:class:`lmlib.optim.Muon`), AdamW for the rest
    relu2       ReLU-squared feed-forward networks (``GPTConfig(mlp="relu2")``)
    qk_norm     RMS-normalised queries and keys (``GPTConfig(qk_norm=True)``)
    zero_init   an untied output head; it and every residual projection start at zero
    softcap     logits soft-capped at 15 (``GPTConfig(logit_softcap=15)``)
    trapezoid   warmup, constant, linear cool-down (``TrainConfig(schedule="trapezoid")``)
    wider       the same changes on a bigger model (4 layers, context 128) that a 120 s budget can feed

A last rung, ``speedrun``, trains the preset made from the rungs that paid
(:data:`lmlib.recipes.SHAKESPEARE_SPEEDRUN`) for its own step count, as a reader runs it.

Each rung runs in its own process and trains with :class:`lmlib.train.Trainer` for the budget of
wall-clock training seconds (a slower step gets fewer steps): after each twelfth of the run the
measured pace re-estimates the step count that fits, and the learning-rate schedule is moved to
end there (``Trainer.reschedule``). The validation loss on nanoGPT's split (200 batches) is
measured at those twelve points; evaluation time is excluded, as in ``train_char_gpt.py``. Rounds alternate the
rungs (a busy machine slows all of them alike) and the table reports medians: the validation loss
at the budget and the training seconds to reach 1.88, 1.70 and 1.65 (linear between evaluations).

With ``--nanogpt`` (default: ``../shared/reference/nanoGPT`` beside the course) each round also
runs the real nanoGPT, copied to a temporary folder, with its documented CPU command; only its
evaluation settings are changed (every 250 steps over 200 batches, as here), which do not change
its training. Its training time sums its own per-step times without the steps that evaluated.

    LMLIB_DATA=<mirror> .venv/bin/python benchmarks/speedrun_ladder.py            # 2 rounds, 90 s rungs
    LMLIB_DATA=<mirror> .venv/bin/python benchmarks/speedrun_ladder.py --budget 20 --rounds 1 \\
        --rungs baseline muon --nanogpt none                                       # a quick look

Results: ``benchmarks/results/<device>_speedrun_ladder.json`` and stdout. ``--device cuda`` runs
the same ladder on a GPU.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import torch
from common import RESULTS, cpu_name, print_result, run_child, sync, write_results

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_NANOGPT = ROOT.parent / "shared" / "reference" / "nanoGPT"
THRESHOLDS = (1.88, 1.70, 1.65)

#: The ladder: each rung's changes to the recipe, on top of every rung before it.
RUNGS = {
    "baseline": {},
    "muon": dict(optimizer="muon", muon_lr=0.02),
    "relu2": dict(mlp="relu2"),
    "qk_norm": dict(qk_norm=True),
    "zero_init": dict(tie_weights=False, zero_init=True),
    "softcap": dict(logit_softcap=15.0),
    "trapezoid": dict(schedule="trapezoid", cooldown_frac=0.4),
    "wider": dict(n_layer=4, block_size=128),
}
#: The extra rung that trains the speedrun preset itself, for its own step count rather than a budget.
PRESET = "speedrun"


def nanogpt_command(iters: int = 2000, eval_batches: int = 200) -> list[str]:
    """nanoGPT's documented CPU run (its README: 2000 steps), evaluating every 250 steps over
    ``eval_batches`` batches (``iters`` and ``eval_batches`` smaller only in the tests)."""
    return ["train.py", "config/train_shakespeare_char.py", "--device=cpu", "--compile=False",
            f"--eval_iters={eval_batches}", f"--eval_interval={min(250, iters)}", "--log_interval=1",
            "--block_size=64", "--batch_size=12", "--n_layer=4", "--n_head=4", "--n_embd=128",
            f"--max_iters={iters}", f"--lr_decay_iters={iters}", "--dropout=0.0"]


def rung_recipe(rung: str) -> dict:
    """The ``cpu`` preset with the changes of every rung up to and including ``rung``."""
    from lmlib import recipes

    recipe = recipes.shakespeare_char("cpu")
    for name, changes in RUNGS.items():
        recipe.update(changes)
        if name == rung:
            return recipe
    raise ValueError(f"unknown rung {rung!r}; the rungs are {list(RUNGS)}")


def crossing(curve: list[dict], threshold: float) -> float | None:
    """Training seconds at which the validation loss first reaches ``threshold``, linear between
    evaluations (None if it never does)."""
    before = {"train_seconds": 0.0, "val_loss": float("inf")}
    for point in curve:
        if point["val_loss"] <= threshold:
            if before["val_loss"] == float("inf"):
                return point["train_seconds"]
            frac = (before["val_loss"] - threshold) / (before["val_loss"] - point["val_loss"])
            return before["train_seconds"] + frac * (point["train_seconds"] - before["train_seconds"])
        before = point
    return None


def run_rung(rung: str, budget: float, device_name: str | None, threads: int | None, eval_batches: int = 200,
             points: int = 12) -> dict:
    """One rung, in this process: about ``budget`` seconds of training, evaluated at ``points`` points.

    A short probe gives a first step count. The run then trains in chunks; after each one the
    measured pace re-estimates how many steps fit in the budget, and
    :meth:`lmlib.train.Trainer.reschedule` moves the end of the learning-rate schedule there, so
    every rung decays its learning rate to the end of the same wall-clock budget however fast its
    steps are (evaluation time excluded). The ``speedrun`` rung is the preset
    :data:`lmlib.recipes.SHAKESPEARE_SPEEDRUN` as a reader runs it: its own step count, no budget.
    """
    from train_char_gpt import load_tokens, train_in_chunks

    from lmlib import recipes
    from lmlib import train as T
    from lmlib.device import best_device
    from lmlib.model import GPT

    if threads:
        torch.set_num_threads(threads)
    device = best_device(device_name)
    train, val, vocab = load_tokens()
    recipe = dict(recipes.SHAKESPEARE_SPEEDRUN) if rung == PRESET else rung_recipe(rung)

    def trainer_for(steps: int, warmup: int) -> T.Trainer:
        torch.manual_seed(0)
        return T.Trainer(GPT(recipes.model_config(recipe, vocab)).to(device),
                         recipes.train_config(dict(recipe, steps=steps, warmup=warmup), eval_every=None,
                                              progress=False, device=str(device), log_every=50),
                         T.token_batches(train, recipe["block_size"], recipe["batch"]))

    if rung == PRESET:
        total, budget_seconds = recipe["steps"], None
    else:
        probe_steps, warmup = 30, 5
        probe = trainer_for(warmup + probe_steps, warmup)
        probe.config.max_steps = warmup
        probe.fit()
        probe.config.max_steps = warmup + probe_steps
        sync(device)
        start = time.perf_counter()
        probe.fit()
        sync(device)
        total, budget_seconds = max(50, int(budget * probe_steps / (time.perf_counter() - start))), budget
    trainer = trainer_for(total, min(recipe["warmup"], total // 10))
    curve, wall, _ = train_in_chunks(trainer, val, recipe["block_size"], total, max(1, total // points), device,
                                     eval_batches, budget_seconds=budget_seconds)
    recipe.update(steps=trainer.step, warmup=trainer.config.warmup_steps)
    return dict(rung=rung, steps=trainer.step, step_seconds=wall / trainer.step, params=trainer.raw_model.num_params(),
                train_seconds=wall, val_loss=curve[-1]["val_loss"], curve=curve, recipe=dict(recipe, betas=list(recipe["betas"])),
                **{f"seconds_to_{t}": crossing(curve, t) for t in THRESHOLDS})


def run_nanogpt(folder: Path, text_file: Path, command: list[str]) -> dict:
    """nanoGPT's documented CPU run, in a temporary copy of ``folder``; its curve in training seconds."""
    with tempfile.TemporaryDirectory(prefix="nanogpt-") as tmp:
        work = Path(tmp) / "nanoGPT"
        shutil.copytree(folder, work)
        data = work / "data" / "shakespeare_char"
        shutil.copy(text_file, data / "input.txt")  # prepare.py downloads it otherwise
        subprocess.run([sys.executable, "prepare.py"], cwd=data, check=True, capture_output=True)
        done = subprocess.run([sys.executable, *command], cwd=work, capture_output=True, text=True)
    if done.returncode:
        raise RuntimeError(f"nanoGPT failed:\n{done.stderr[-3000:]}")
    iter_ms = {int(m[1]): float(m[2]) for m in re.finditer(r"^iter (\d+): loss [\d.]+, time ([\d.]+)ms",
                                                            done.stdout, re.M)}
    evals = {int(m[1]): float(m[2]) for m in re.finditer(r"^step (\d+): train loss [\d.]+, val loss ([\d.]+)",
                                                         done.stdout, re.M)}
    typical = statistics.median(iter_ms.values())
    # An iteration that evaluated first times the evaluation too: count a typical step there instead.
    step_ms = {i: (typical if i in evals else ms) for i, ms in iter_ms.items()}
    curve = [{"step": s, "train_seconds": sum(ms for i, ms in step_ms.items() if i <= s) / 1000, "val_loss": v}
             for s, v in sorted(evals.items()) if s > 0]
    return dict(rung="nanoGPT (real, documented CPU command)", steps=max(iter_ms) + 1, step_seconds=typical / 1000,
                train_seconds=curve[-1]["train_seconds"], val_loss=curve[-1]["val_loss"], curve=curve,
                command="python " + " ".join(command),
                **{f"seconds_to_{t}": crossing(curve, t) for t in THRESHOLDS})


def summarize(runs: list[dict]) -> dict:
    """Medians over rounds; a threshold counts as reached when most rounds reached it."""
    out = {"rounds": len(runs), "steps": statistics.median(r["steps"] for r in runs),
           "step_seconds": statistics.median(r["step_seconds"] for r in runs),
           "train_seconds": statistics.median(r["train_seconds"] for r in runs),
           "val_loss": statistics.median(r["val_loss"] for r in runs)}
    for t in THRESHOLDS:
        reached = [r[f"seconds_to_{t}"] for r in runs if r[f"seconds_to_{t}"] is not None]
        out[f"seconds_to_{t}"] = statistics.median(reached) if 2 * len(reached) > len(runs) else None
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--budget", type=float, default=90.0, help="training seconds per rung")
    parser.add_argument("--rounds", type=int, default=2, help="alternating rounds (medians reported)")
    parser.add_argument("--rungs", nargs="+", default=[*RUNGS, PRESET], choices=[*RUNGS, PRESET])
    parser.add_argument("--nanogpt", default=str(DEFAULT_NANOGPT),
                        help="nanoGPT's folder, run beside the ladder ('none' skips it)")
    parser.add_argument("--eval-batches", type=int, default=200, help="validation batches per evaluation")
    parser.add_argument("--nanogpt-iters", type=int, default=2000, help="nanoGPT's steps (its documented run: 2000)")
    parser.add_argument("--device", default=None, help="cpu, cuda or mps (default: lmlib's choice)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print_result(run_rung(args.child, args.budget, args.device, args.threads, args.eval_batches))
        return

    import lmlib.data
    from lmlib.device import best_device

    nanogpt = None if args.nanogpt == "none" else Path(args.nanogpt)
    if nanogpt is not None and not (nanogpt / "train.py").is_file():
        print(f"nanoGPT is not in {nanogpt}: clone github.com/karpathy/nanoGPT at the commit in "
              "shared/reference/nanoGPT/COMMIT and pass --nanogpt FOLDER. Running the ladder without it.")
        nanogpt = None
    load_before = os.getloadavg()
    runs: dict[str, list[dict]] = {r: [] for r in args.rungs}
    for rnd in range(args.rounds):
        for rung in args.rungs:
            cmd = ["--child", rung, "--budget", str(args.budget), "--eval-batches", str(args.eval_batches)]
            cmd += ["--device", args.device] if args.device else []
            cmd += ["--threads", str(args.threads)] if args.threads else []
            run = run_child(__file__, cmd, f"rung {rung}")
            runs[rung].append(run)
            print(f"round {rnd + 1}/{args.rounds} {rung:<10} {run['steps']:>5} steps {run['train_seconds']:6.1f} s "
                  f"-> validation loss {run['val_loss']:.3f}", flush=True)
        if nanogpt is not None:
            run = run_nanogpt(nanogpt, lmlib.data.path("tinyshakespeare"),
                              nanogpt_command(args.nanogpt_iters, args.eval_batches))
            runs.setdefault("nanoGPT", []).append(run)
            print(f"round {rnd + 1}/{args.rounds} nanoGPT    {run['steps']:>5} steps {run['train_seconds']:6.1f} s "
                  f"-> validation loss {run['val_loss']:.3f}", flush=True)

    table = {rung: summarize(r) for rung, r in runs.items()}
    device = best_device(args.device).type
    print(f"\n{cpu_name() if device == 'cpu' else device} | torch {torch.__version__} | budget {args.budget:.0f} s "
          f"of training per rung | medians of {args.rounds} rounds | load average before {load_before[0]:.2f}, "
          f"after {os.getloadavg()[0]:.2f}")
    print(f"{'rung':<12}{'steps':>7}{'ms/step':>9}{'val loss':>10}" + "".join(f"{'s to ' + str(t):>10}" for t in THRESHOLDS))

    def fmt(v):
        return f"{v:>10.1f}" if v is not None else f"{'-':>10}"

    for rung, row in table.items():
        print(f"{rung:<12}{row['steps']:>7.0f}{1000 * row['step_seconds']:>9.1f}{row['val_loss']:>10.3f}"
              + "".join(fmt(row[f"seconds_to_{t}"]) for t in THRESHOLDS))
    result = {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "device": device,
              "device_name": cpu_name() if device == "cpu" else torch.cuda.get_device_name(),
              "threads": args.threads or torch.get_num_threads(), "torch": torch.__version__,
              "budget_seconds": args.budget, "rounds": args.rounds, "thresholds": list(THRESHOLDS),
              "rungs": {rung: RUNGS.get(rung) for rung in runs if rung in RUNGS}, "table": table, "runs": runs,
              "load_average": {"before": load_before, "after": os.getloadavg()},
              "command": "python benchmarks/speedrun_ladder.py " + " ".join(sys.argv[1:])}
    write_results(result, args.out or RESULTS / f"{device}_speedrun_ladder.json")


if __name__ == "__main__":
    main()
