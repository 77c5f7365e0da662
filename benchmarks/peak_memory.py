"""Peak memory of training at each scale preset, and the largest model each preset's shape fits on a T4.

For every preset of :data:`lmlib.recipes.SHAKESPEARE_CHAR` (``smoke``, ``cpu``, ``gpu``) a fresh
process builds the preset's model and runs a few :class:`lmlib.train.Trainer` steps (not
compiled), once at the preset's batch and once at half of it. It records the peak memory of
training: on a GPU ``torch.cuda.max_memory_allocated``; on a CPU the process's peak RSS minus its
RSS just before the model was built (Python, torch and the data are not training memory).

The difference between the two batch sizes is activation memory, so it gives the activation
bytes per token x layer x unit of width at the preset's context. With 16 bytes per parameter for
float32 AdamW, :func:`lmlib.cost.largest_gpt2_shape` turns that constant into the largest
GPT-2-shaped model a 16 GB T4 could train at the preset's batch and context: the planning figure
a reader needs before renting a GPU. It is an estimate from CPU float32 activations; with fp16
autocast on the T4 the activations are smaller, so it errs on the safe side.

    LMLIB_DATA=<mirror> .venv/bin/python benchmarks/peak_memory.py          # ~3 minutes on 2 cores
    .venv/bin/python benchmarks/peak_memory.py --presets smoke cpu --steps 2          # quick look

Results: ``benchmarks/results/<device>_peak_memory.json`` and stdout.
"""
from __future__ import annotations

import argparse
import os
import resource
import sys
from datetime import datetime, timezone
from pathlib import Path

import torch
from common import RESULTS, cpu_name, print_result, run_child, write_results

from lmlib import cost, recipes

T4_BYTES = 16e9


def _rss_peak_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # kilobytes on Linux


def measure(preset: str, batch: int, steps: int, device_name: str | None) -> dict:
    """In this process: train ``steps`` steps of ``preset`` at ``batch``; the peak training memory."""
    from lmlib import train as T
    from lmlib.device import best_device
    from lmlib.model import GPT

    device = best_device(device_name)
    recipe = dict(recipes.shakespeare_char(preset), batch=batch)
    vocab = 65  # Tiny Shakespeare's characters; random ids keep the script independent of the data files
    def batches(g):
        x = torch.randint(vocab, (batch, recipe["block_size"] + 1), generator=g)
        return x[:, :-1], x[:, 1:]

    baseline = _rss_peak_bytes()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    torch.manual_seed(0)
    model = GPT(recipes.model_config(recipe, vocab))
    cfg = recipes.train_config(recipe, max_steps=steps, warmup_steps=0, eval_every=None, log_every=steps,
                               device=str(device), progress=False)
    T.Trainer(model, cfg, batches).fit()
    if device.type == "cuda":
        peak, kind = torch.cuda.max_memory_allocated(device), "cuda max_memory_allocated"
    else:
        peak, kind = _rss_peak_bytes() - baseline, "process peak RSS minus the RSS before the model"
    return {"preset": preset, "batch": batch, "block_size": recipe["block_size"], "n_layer": recipe["n_layer"],
            "n_embd": recipe["n_embd"], "params": model.num_params(), "steps": steps, "peak_bytes": peak,
            "memory_kind": kind, "device": device.type,
            "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_name()}


def measure_in_child(preset: str, batch: int, args) -> dict:
    cmd = ["--one", preset, "--batch", str(batch), "--steps", str(args.steps)]
    cmd += ["--device", args.device] if args.device else []
    cmd += ["--threads", str(args.threads)] if args.threads else []
    return run_child(__file__, cmd, f"preset {preset} at batch {batch}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--presets", nargs="+", default=list(recipes.SHAKESPEARE_CHAR),
                        choices=list(recipes.SHAKESPEARE_CHAR))
    parser.add_argument("--steps", type=int, default=3, help="training steps per measurement")
    parser.add_argument("--device", default=None)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--one", default=None, help=argparse.SUPPRESS)  # internal: one measurement, print JSON
    parser.add_argument("--batch", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.one:
        print_result(measure(args.one, args.batch, args.steps, args.device))
        return

    rows = []
    print(f"{'preset':<7}{'batch x context':>16}{'params':>10}{'peak (batch)':>14}{'peak (half)':>13}"
          f"{'act. bytes':>12}  largest GPT-2 shape on a 16 GB T4 at this batch x context")
    for preset in args.presets:
        batch = recipes.SHAKESPEARE_CHAR[preset]["batch"]
        full, half = measure_in_child(preset, batch, args), measure_in_child(preset, batch // 2, args)
        tokens = (batch - batch // 2) * full["block_size"]
        per_token = max(0.0, (full["peak_bytes"] - half["peak_bytes"]) / tokens)
        a = per_token / (full["n_layer"] * full["n_embd"])
        fit = cost.largest_gpt2_shape(T4_BYTES, batch, full["block_size"], a) if a > 0 else None
        row = {"preset": preset, "batch": batch, "block_size": full["block_size"], "n_layer": full["n_layer"],
               "n_embd": full["n_embd"], "params": full["params"],
               "peak_bytes": full["peak_bytes"], "peak_bytes_half_batch": half["peak_bytes"],
               "model_state_bytes": 16 * full["params"], "activation_bytes_per_token_layer_width": a,
               "t4_largest": fit, "memory_kind": full["memory_kind"], "device": full["device"],
               "device_name": full["device_name"]}
        rows.append(row)
        shape = (f"{fit['n_layer']} layers x {fit['n_embd']} ({fit['params'] / 1e6:,.0f}M parameters)" if fit
                 else "not measurable (no difference between the batch sizes)")
        shape_in = f"{batch} x {full['block_size']}"
        print(f"{preset:<7}{shape_in:>16}{full['params'] / 1e6:>9.2f}M"
              f"{full['peak_bytes'] / 2**20:>10,.0f} MiB{half['peak_bytes'] / 2**20:>9,.0f} MiB{a:>12.1f}  {shape}",
              flush=True)

    device = rows[0]["device"]
    result = {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "torch": torch.__version__,
              "device": device, "device_name": rows[0]["device_name"],
              "threads": args.threads or torch.get_num_threads(), "t4_bytes": T4_BYTES, "rows": rows,
              "load_average": os.getloadavg(),
              "command": "python benchmarks/peak_memory.py " + " ".join(sys.argv[1:])}
    write_results(result, args.out or RESULTS / f"{device}_peak_memory.json")


if __name__ == "__main__":
    main()
