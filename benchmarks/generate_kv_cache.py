"""Chapter 3's inference claim: generation with a KV cache against recomputing the whole context.

For each number of new tokens (default 64, 256, 1024) and batch size (1 and 8) the script times
``lmlib.generate.generate(..., greedy=True)`` twice on the same model and prompt, with
``use_cache=True`` and ``use_cache=False``, checks that both produce the same tokens, and prints
tokens/s and the speed-up. It also measures the memory of the cache against the context length
(the bytes of the cached keys and values after generation) beside the formula of
:func:`lmlib.attention.kv_cache_bytes`, and derives the cache size of GPT-2-sized models for readers.

The model is a GPT with random weights (speed does not depend on what the weights are): by
default nanoGPT's Tiny Shakespeare GPU configuration (6 layers, 6 heads, width 384, 10.7M
parameters) with a context long enough for the prompt plus 1024 new tokens. The course's target
: the cached path at least 5x faster at 256 new tokens on CPU.

Without the cache, step t recomputes all t positions, so the uncached time grows with the square
of the length; ``--max-uncached-seconds`` skips an uncached run whose predicted time (from the
shorter runs) exceeds the budget, and the table says so.

    .venv/bin/python benchmarks/generate_kv_cache.py                       # CPU: ~6 minutes on 2 cores
    .venv/bin/python benchmarks/generate_kv_cache.py --device cuda         # on a GPU
    .venv/bin/python benchmarks/generate_kv_cache.py --lengths 64 --batches 1   # quick look

Results go to ``benchmarks/results/<device>_generate.json`` (quoted by the book) and to stdout.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import torch
from common import RESULTS, cpu_name, sync, write_results

from lmlib.attention import kv_cache_bytes
from lmlib.device import best_device
from lmlib.generate import generate
from lmlib.model import GPT, GPTConfig

PROMPT = 16
VOCAB = 65  # Tiny Shakespeare's characters
GPT2_SIZES = {"GPT-2 small (124M)": (12, 12, 64), "GPT-2 medium (350M)": (24, 16, 64),
              "GPT-2 large (774M)": (36, 20, 64), "GPT-2 XL (1.5B)": (48, 25, 64)}


def timed_generate(model: GPT, prompt: torch.Tensor, new: int, use_cache: bool) -> tuple[torch.Tensor, float]:
    sync(prompt.device)
    start = time.perf_counter()
    out = generate(model, prompt, new, greedy=True, use_cache=use_cache)
    sync(prompt.device)
    return out, time.perf_counter() - start


def cache_bytes_measured(model: GPT, prompt: torch.Tensor, length: int) -> int:
    """Bytes held by a cache filled with ``length`` positions (the prompt repeated), measured on the tensors."""
    cache = model.new_cache()
    ids = prompt.repeat(1, length // prompt.shape[1] + 1)[:, :length]
    with torch.no_grad():
        model(ids, cache=cache)
    return sum(c.k.nbytes + c.v.nbytes for c in cache)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--lengths", type=int, nargs="+", default=[64, 256, 1024], help="new tokens per run")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--layers", type=int, default=6)
    parser.add_argument("--heads", type=int, default=6)
    parser.add_argument("--width", type=int, default=384)
    parser.add_argument("--device", default=None, help="cpu, cuda or mps (default: lmlib's choice)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--max-uncached-seconds", type=float, default=120.0,
                        help="skip an uncached run predicted to take longer than this")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = best_device(args.device)
    torch.manual_seed(0)
    config = GPTConfig(vocab_size=VOCAB, n_layer=args.layers, n_head=args.heads, n_embd=args.width,
                       block_size=PROMPT + max(args.lengths), dropout=0.0)
    model = GPT(config).to(device).eval()
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else (cpu_name() if device.type == "cpu" else device.type)
    load_before = os.getloadavg()
    print(f"{name} | {torch.get_num_threads()} threads | torch {torch.__version__} | "
          f"GPT {args.layers} layers x {args.heads} heads x {args.width}, {model.num_params():,} parameters, "
          f"prompt {PROMPT} tokens, greedy | load average {load_before[0]:.2f}")
    print(f"{'new':>6}{'batch':>7}{'cached tok/s':>15}{'uncached tok/s':>16}{'speed-up':>10}")

    gen = torch.Generator().manual_seed(0)
    rows = []
    timed_generate(model, torch.randint(VOCAB, (1, PROMPT), generator=gen).to(device), 8, True)  # warm-up
    for batch in args.batches:
        prompt = torch.randint(VOCAB, (batch, PROMPT), generator=gen).to(device)
        prev: tuple[int, float] | None = None  # (length, seconds) of the last uncached run, for the prediction
        for new in sorted(args.lengths):
            cached_out, cached_s = timed_generate(model, prompt, new, True)
            row = {"new_tokens": new, "batch": batch, "cached_seconds": cached_s,
                   "cached_tokens_per_s": batch * new / cached_s}
            # Uncached cost ~ sum over steps of the context length: quadratic in the length.
            predicted = None if prev is None else prev[1] * ((PROMPT + new) ** 2 - PROMPT ** 2) / ((PROMPT + prev[0]) ** 2 - PROMPT ** 2)
            if predicted is not None and predicted > args.max_uncached_seconds:
                row.update(uncached_seconds=None, uncached_tokens_per_s=None, speedup=None,
                           skipped=f"predicted {predicted:.0f} s > --max-uncached-seconds {args.max_uncached_seconds:g}")
                print(f"{new:>6}{batch:>7}{row['cached_tokens_per_s']:>15,.0f}{'skipped':>16}{'':>10}  ({row['skipped']})")
            else:
                uncached_out, uncached_s = timed_generate(model, prompt, new, False)
                if not torch.equal(cached_out, uncached_out):
                    raise AssertionError(f"cached and uncached generation differ (new={new}, batch={batch})")
                row.update(uncached_seconds=uncached_s, uncached_tokens_per_s=batch * new / uncached_s,
                           speedup=uncached_s / cached_s, same_tokens=True)
                prev = (new, uncached_s)
                print(f"{new:>6}{batch:>7}{row['cached_tokens_per_s']:>15,.0f}"
                      f"{row['uncached_tokens_per_s']:>16,.0f}{row['speedup']:>9.1f}x", flush=True)
            rows.append(row)

    memory = []
    dtype = next(model.parameters()).dtype
    for length in (64, 256, 1024):
        if length > config.block_size:
            continue
        measured = cache_bytes_measured(model, torch.randint(VOCAB, (1, PROMPT), generator=gen).to(device), length)
        derived = kv_cache_bytes(args.layers, args.heads, args.width // args.heads, length, 1, dtype)
        memory.append({"context": length, "measured_bytes": measured, "derived_bytes": derived})
    print(f"\nKV cache of this model ({dtype}, batch 1): " + ", ".join(
        f"{m['context']} tokens {m['measured_bytes'] / 2**20:.2f} MiB (formula {m['derived_bytes'] / 2**20:.2f})" for m in memory))
    derived_gpt2 = {n: {str(ctx): kv_cache_bytes(l, h, d, ctx, 1, torch.float16) for ctx in (1024, 2048)}
                    for n, (l, h, d) in GPT2_SIZES.items()}
    print("Derived fp16 KV cache per sequence: " + "; ".join(
        f"{n} {v['1024'] / 2**20:.0f} MiB at 1024 tokens" for n, v in derived_gpt2.items()))
    if device.type == "cuda":
        print(f"peak GPU memory allocated: {torch.cuda.max_memory_allocated(device) / 2**20:.0f} MiB")

    at256 = [r["speedup"] for r in rows if r["new_tokens"] == 256 and r["batch"] == 1 and r["speedup"]]
    result = {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "device": name, "device_type": device.type, "threads": torch.get_num_threads(), "torch": torch.__version__,
        "model": {"n_layer": args.layers, "n_head": args.heads, "n_embd": args.width, "vocab_size": VOCAB,
                  "block_size": config.block_size, "params": model.num_params(), "prompt_tokens": PROMPT},
        "rows": rows, "cache_memory": memory, "derived_fp16_cache_bytes_gpt2": derived_gpt2,
        "speedup_256_batch1": at256[0] if at256 else None, "target_speedup_256_cpu": 5.0,
        "load_average_before_after": [load_before, os.getloadavg()],
        "peak_gpu_bytes": torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None,
        "command": "python benchmarks/generate_kv_cache.py " + " ".join(sys.argv[1:]),
    }
    if at256:
        verdict = "met" if device.type != "cpu" or at256[0] >= 5.0 else "NOT met"
        print(f"speed-up at 256 new tokens, batch 1: {at256[0]:.1f}x (CPU target >= 5x: {verdict})")
    out = args.out or RESULTS / f"{device.type}_generate.json"
    write_results(result, out)


if __name__ == "__main__":
    main()
