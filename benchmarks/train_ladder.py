"""What each training optimisation buys, one rung at a time, against a plain float32 loop.

The ablation ladder. Every rung keeps the previous ones and adds one setting:

    plain        float32, chapter 2's explicit attention, for-loop AdamW, loss read every step
    tf32         TensorFloat-32 for float32 matrix products (CUDA, compute capability >= 8.0)
    autocast     bfloat16 / float16 autocast by the lmlib.device policy (float32 on CPU: no change)
    sdpa         fused scaled-dot-product (flash) attention
    fused_adamw  AdamW fused into one kernel per step
    pad_vocab    vocabulary padded to a multiple of 64 (50257 -> 50304 for GPT-2)
    compile      torch.compile
    trainer      lmlib.train.Trainer with all of the above (the course's engine, clipping included)

Each rung runs in its own process (so compilation caches and the memory peak are its own) and
reports tokens/s, MFU against the GPU's dense peak for its precision (``lmlib.device.peak_flops``;
none on CPU) and peak memory (CUDA ``max_memory_allocated``; on CPU the process's peak RSS).
Models: ``gpt2`` (124M parameters, context 1024: the GPU target is 40% MFU), ``shakespeare``
(nanoGPT's GPU config: 6 layers, width 384, context 256, batch 64) and ``char`` (the CPU config
of chapter 4).

    .venv/bin/python benchmarks/train_ladder.py --model char                  # CPU, ~3 minutes
    .venv/bin/python benchmarks/train_ladder.py --model gpt2 --batch 16       # on a GPU
    .venv/bin/python benchmarks/train_ladder.py --model char --steps 5 --rungs plain trainer   # quick look

Results go to ``benchmarks/results/<device>_ladder_<model>.json`` and stdout. The script also
derives, from the measured memory, the largest GPT-2-shaped model that fits a 16 GB T4 (see
:func:`t4_fit`).
"""
from __future__ import annotations

import argparse
import os
import resource
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import torch
from common import RESULTS, print_result, run_child, sync, write_results

from lmlib import cost

RUNGS = ["plain", "tf32", "autocast", "sdpa", "fused_adamw", "pad_vocab", "compile", "trainer"]
MODELS = {
    "gpt2": dict(n_layer=12, n_head=12, n_embd=768, block_size=1024, vocab_size=50257, batch=8),
    "shakespeare": dict(n_layer=6, n_head=6, n_embd=384, block_size=256, vocab_size=65, batch=64),
    "char": dict(n_layer=4, n_head=4, n_embd=128, block_size=64, vocab_size=65, batch=12),
}


def run_rung(model_name: str, rung: str, steps: int, warmup: int, batch: int, device_name: str | None) -> dict:
    """One rung, in this process: build the model with the rung's settings and time ``steps`` steps."""
    from lmlib import train as T
    from lmlib.device import runtime
    from lmlib.model import GPT, GPTConfig

    on = set(RUNGS[: RUNGS.index(rung) + 1])
    # One decision about the device, TF32 and precision (float32 until the autocast rung).
    rt = runtime(device_name, precision=None if "autocast" in on else "fp32", tf32="tf32" in on)
    device, precision = rt.device, rt.precision
    spec = dict(MODELS[model_name])
    spec.pop("batch")
    if "pad_vocab" in on:
        spec["vocab_size"] = -(-spec["vocab_size"] // 64) * 64
    torch.manual_seed(0)
    model = GPT(GPTConfig(dropout=0.0, fast="sdpa" in on, **spec)).to(device)
    true_vocab = MODELS[model_name]["vocab_size"]
    gen = torch.Generator().manual_seed(0)

    def batch_fn(g=gen):
        x = torch.randint(true_vocab, (batch, spec["block_size"]), generator=g)
        return x, torch.roll(x, -1, dims=1)

    flops_per_token = model.flops_per_token() if hasattr(model, "flops_per_token") else 6 * model.num_params()
    peak = rt.peak_flops
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)

    if rung == "trainer":
        cfg = T.TrainConfig(max_steps=warmup, warmup_steps=0, log_every=max(1, steps // 2), eval_every=None,
                            compile=True, device=str(device), progress=False,
                            precision={torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[precision.dtype])
        trainer = T.Trainer(model, cfg, lambda g: batch_fn(g), flops_per_token=flops_per_token)
        trainer.fit()  # warm-up and compilation
        sync(device)
        cfg.max_steps = warmup + steps
        start = time.perf_counter()
        trainer.fit()
        sync(device)
        seconds = time.perf_counter() - start
    else:
        step_model = torch.compile(model) if "compile" in on else model
        fused = "fused_adamw" in on
        opt = torch.optim.AdamW(model.parameters(), lr=3e-4, fused=True if fused else None,
                                foreach=None if fused else False)
        scaler = precision.make_grad_scaler()
        for i in range(warmup + steps):
            if i == warmup:
                sync(device)
                start = time.perf_counter()
            x, y = (t.to(device) for t in batch_fn())
            with precision.autocast():
                _, loss = step_model(x, y)
            opt.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
            loss.item()  # the plain habit: read the loss every step
        sync(device)
        seconds = time.perf_counter() - start
    tokens_per_s = steps * batch * spec["block_size"] / seconds
    if device.type == "cuda":
        memory = torch.cuda.max_memory_allocated(device)
    else:
        memory = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # kilobytes on Linux
    return {"rung": rung, "tokens_per_s": tokens_per_s, "seconds": seconds, "steps": steps, "batch": batch,
            "precision": str(precision.dtype).replace("torch.", ""), "mfu": None if peak is None else flops_per_token * tokens_per_s / peak,
            "peak_memory_bytes": memory, "memory_kind": "cuda max_memory_allocated" if device.type == "cuda" else "process peak RSS",
            "params": model.num_params(), "vocab_size": spec["vocab_size"], "device": device.type,
            "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
            "applies": _applies(rung, device)}


def _applies(rung: str, device: torch.device) -> bool:
    """Whether the rung changes anything on this device (TF32 and autocast do nothing on CPU)."""
    if rung == "tf32":
        return device.type == "cuda" and torch.cuda.get_device_capability(device) >= (8, 0)
    if rung == "autocast":
        return device.type == "cuda"
    return True


def t4_fit(activation_bytes: float, block: int = 1024, batch: int = 8) -> dict:
    """The largest GPT-2-shaped model whose float32 AdamW training step fits a 16 GB T4 (:mod:`lmlib.cost`)."""
    best = cost.largest_gpt2_shape(16e9, batch, block, activation_bytes)
    return {"budget_bytes": 16e9 * 0.9, "batch": batch, "block": block,
            "largest": best and {"layers": best["n_layer"], "width": best["n_embd"], "params": best["params"],
                                 "estimated_bytes": best["bytes"]}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", choices=list(MODELS), default="char")
    parser.add_argument("--rungs", nargs="+", choices=RUNGS, default=RUNGS)
    parser.add_argument("--steps", type=int, default=30, help="timed steps per rung")
    parser.add_argument("--warmup", type=int, default=5, help="untimed steps first (compilation happens here)")
    parser.add_argument("--batch", type=int, default=None, help="batch size (default: the model's)")
    parser.add_argument("--device", default=None)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--t4", action="store_true",
                        help="also measure memory at batch and 2x batch (last rung) and derive what fits a 16 GB T4")
    parser.add_argument("--one", default=None, help=argparse.SUPPRESS)  # internal: run one rung, print JSON
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    batch = args.batch or MODELS[args.model]["batch"]
    if args.one:
        print_result(run_rung(args.model, args.one, args.steps, args.warmup, batch, args.device))
        return

    def one(rung: str, batch: int, steps: int) -> dict:
        cmd = ["--model", args.model, "--one", rung, "--steps", str(steps), "--warmup", str(args.warmup),
               "--batch", str(batch)]
        cmd += ["--device", args.device] if args.device else []
        cmd += ["--threads", str(args.threads)] if args.threads else []
        return run_child(__file__, cmd, f"rung {rung}")

    rows = []
    print(f"model {args.model} {MODELS[args.model]} batch {batch} | torch {torch.__version__} | "
          f"load average {os.getloadavg()[0]:.2f}")
    print(f"{'rung':<13}{'tokens/s':>12}{'x plain':>9}{'MFU':>7}{'peak memory':>14}  note")
    for rung in args.rungs:
        row = one(rung, batch, args.steps)
        rows.append(row)
        base = rows[0]["tokens_per_s"]
        mfu = "-" if row["mfu"] is None else f"{row['mfu']:.0%}"
        note = "" if row["applies"] else "no effect on this device"
        print(f"{rung:<13}{row['tokens_per_s']:>12,.0f}{row['tokens_per_s'] / base:>9.2f}{mfu:>7}"
              f"{row['peak_memory_bytes'] / 2**20:>11,.0f} MiB  {note}", flush=True)

    device = rows[0]["device"]
    result = {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "model": args.model,
              "config": MODELS[args.model], "batch": batch, "torch": torch.__version__,
              "device": rows[0]["device_name"], "rows": rows,
              "ratio_to_plain": {r["rung"]: r["tokens_per_s"] / rows[0]["tokens_per_s"] for r in rows},
              "command": "python benchmarks/train_ladder.py " + " ".join(a for a in sys.argv[1:])}
    if args.t4:
        last = args.rungs[-1]
        small, large = one(last, batch, 2), one(last, 2 * batch, 2)
        cfg = MODELS[args.model]
        per_sample = max(0.0, (large["peak_memory_bytes"] - small["peak_memory_bytes"]) / batch)
        a = per_sample / (cfg["block_size"] * cfg["n_layer"] * cfg["n_embd"])
        fit = t4_fit(a)
        result["memory"] = {"rung": last, "batch": [batch, 2 * batch],
                            "peak_bytes": [small["peak_memory_bytes"], large["peak_memory_bytes"]],
                            "activation_bytes_per_token_layer_width": a, "t4_fit": fit}
        best = fit["largest"]
        print(f"\nmemory ({small['memory_kind']}): {small['peak_memory_bytes'] / 2**20:,.0f} MiB at batch {batch}, "
              f"{large['peak_memory_bytes'] / 2**20:,.0f} MiB at {2 * batch}: {a:.1f} bytes of activations per "
              f"token x layer x width")
        if best:
            print(f"derived: the largest GPT-2-shaped model for a 16 GB T4 (batch {fit['batch']}, context {fit['block']}, "
                  f"16 bytes per parameter for AdamW in float32) has {best['layers']} layers x {best['width']} "
                  f"({best['params'] / 1e6:,.0f}M parameters)")
    out = args.out or RESULTS / f"{device}_ladder_{args.model}.json"
    write_results(result, out)


if __name__ == "__main__":
    main()
