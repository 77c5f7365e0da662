"""How big can the course model be? Training throughput of five GPT sizes, and Chinchilla's ratio.

The course model (``lmlib.recipes.course_gpt``) must train in about 90 minutes on 2 CPU cores. This
script times a few AdamW steps of five sizes at the course model's context (256 tokens), batch (16
windows) and vocabulary (4,096 BPE tokens), and reports for each the tokens per second, the tokens
a ``--minutes`` budget buys, and how many training tokens per parameter that is. Chinchilla
(Hoffmann et al. 2022) found about 20 tokens per parameter compute-optimal; the size closest to
it for the budget is the natural choice, a larger one trains on too few tokens and a smaller one
wastes compute.

    .venv/bin/python benchmarks/course_gpt_sizing.py --minutes 90 --precision bf16   # ~1 minute on 2 cores

``--precision bf16`` times the steps under bf16 autocast, as the release was trained.

Results go to ``benchmarks/results/cpu_course_gpt_sizing.json``. Measure on a quiet machine.
"""
from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch

from common import RESULTS, cpu_name, write_results
from lmlib.model import GPT, GPTConfig

SIZES = [(3, 192, 3), (4, 256, 4), (6, 256, 4), (4, 384, 6), (6, 384, 6)]  # (layers, width, heads)


def throughput(n_layer: int, n_embd: int, n_head: int, steps: int, batch: int, block: int, vocab: int,
               precision: str = "fp32") -> tuple[int, float]:
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=vocab, block_size=block, n_layer=n_layer, n_embd=n_embd, n_head=n_head))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    x = torch.randint(0, vocab, (batch, block))
    times = []
    for i in range(steps + 2):  # two warm-up steps
        start = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
            _, loss = model(x, x)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if i >= 2:
            times.append(time.perf_counter() - start)
    return model.num_params(), batch * block / statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--minutes", type=float, default=45.0, help="the training budget to size for")
    parser.add_argument("--precision", choices=["fp32", "bf16"], default="fp32", help="bf16: under bf16 autocast")
    parser.add_argument("--sizes", type=int, default=len(SIZES), help="how many of the sizes to time")
    parser.add_argument("--out", default=str(RESULTS / "cpu_course_gpt_sizing.json"))
    args = parser.parse_args()
    rows = []
    for n_layer, n_embd, n_head in SIZES[: args.sizes]:
        params, tok_s = throughput(n_layer, n_embd, n_head, args.steps, batch=16, block=256, vocab=4096,
                                   precision=args.precision)
        tokens = tok_s * args.minutes * 60
        rows.append(dict(n_layer=n_layer, n_embd=n_embd, n_head=n_head, params=params, tokens_per_s=tok_s,
                         budget_tokens=tokens, tokens_per_param=tokens / params))
        print(f"{n_layer} x {n_embd}: {params / 1e6:.2f}M parameters, {tok_s:,.0f} tokens/s, "
              f"{tokens / 1e6:.1f}M tokens in {args.minutes:g} min = {tokens / params:.1f} per parameter", flush=True)
    best = min(rows, key=lambda r: abs(r["tokens_per_param"] - 20))
    print(f"closest to Chinchilla's 20 tokens per parameter: {best['n_layer']} x {best['n_embd']}")
    write_results(dict(cpu=cpu_name(), threads=torch.get_num_threads(), torch=torch.__version__, minutes=args.minutes,
                       precision=args.precision,
                       rows=rows, chinchilla_choice=best), Path(args.out))


if __name__ == "__main__":
    main()
