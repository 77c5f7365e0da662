"""Tokens/s of lmlib.train.Trainer against a plain float32 PyTorch loop, same model, same data.

The plain loop is what a first training script looks like: default AdamW, ``loss.item()`` every
step, ``zero_grad()``. The trainer adds warmup + cosine, clipping, logging, the precision policy,
and uses a fused AdamW, no per-step device sync, and optionally ``torch.compile``. Runs alternate
(plain, trainer, plain, ...) so a busy machine slows both alike; the table reports medians.

    python benchmarks/train_loop_overhead.py [--steps 30] [--repeats 3] [--compile] [--threads N]
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F
from torch import nn

from lmlib import train as T
from lmlib.device import best_device


class Block(nn.Module):
    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.ln1, self.ln2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.qkv, self.proj = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim))

    def forward(self, x):
        B, L, C = x.shape
        q, k, v = self.qkv(self.ln1(x)).view(B, L, 3, self.heads, C // self.heads).permute(2, 0, 3, 1, 4)
        att = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.proj(att.transpose(1, 2).reshape(B, L, C))
        return x + self.mlp(self.ln2(x))


class CharGPT(nn.Module):
    """A small decoder-only character model (a stand-in until lmlib.model.GPT exists)."""

    def __init__(self, vocab=65, block=64, dim=128, layers=2, heads=4):
        super().__init__()
        self.tok, self.pos = nn.Embedding(vocab, dim), nn.Embedding(block, dim)
        self.blocks = nn.Sequential(*[Block(dim, heads) for _ in range(layers)])
        self.ln, self.head = nn.LayerNorm(dim), nn.Linear(dim, vocab, bias=False)

    def forward(self, idx, targets=None):
        x = self.tok(idx) + self.pos(torch.arange(idx.shape[1], device=idx.device))
        logits = self.head(self.ln(self.blocks(x)))
        return logits, (None if targets is None else T.lm_loss(logits, targets))


def plain_loop(data, steps, block, batch, device) -> float:
    torch.manual_seed(0)
    model = CharGPT(block=block).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    draw = T.token_batches(data, block, batch)
    gen = torch.Generator().manual_seed(0)
    start = time.perf_counter()
    for _ in range(steps):
        x, y = (t.to(device) for t in draw(gen))
        _, loss = model(x, y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        loss.item()  # what a plain loop does to print or record the loss
    return steps * batch * block / (time.perf_counter() - start)


def trainer_run(data, steps, block, batch, device, compile_: bool) -> float:
    torch.manual_seed(0)
    cfg = T.TrainConfig(max_steps=steps, warmup_steps=steps // 10, lr=1e-3, eval_every=None,
                        log_every=steps, compile=compile_, device=str(device), progress=False)
    tr = T.Trainer(CharGPT(block=block), cfg, T.token_batches(data, block, batch))
    if compile_:  # compile before the clock starts: a fixed cost, not throughput
        warm = T.Trainer(CharGPT(block=block), T.TrainConfig(max_steps=2, warmup_steps=0, compile=True,
                         device=str(device), progress=False, eval_every=None), T.token_batches(data, block, batch))
        warm.fit()
    start = time.perf_counter()
    tr.fit()
    return steps * batch * block / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--block", type=int, default=64)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--compile", action="store_true", help="also time the trainer with torch.compile")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = best_device()
    data = torch.randint(0, 65, (200_000,), generator=torch.Generator().manual_seed(0))
    runs = {"plain float32 loop": [], "Trainer": []}
    if args.compile:
        runs["Trainer + compile"] = []
    plain_loop(data, 5, args.block, args.batch, device)  # warm-up (allocator, kernels)
    for _ in range(args.repeats):
        runs["plain float32 loop"].append(plain_loop(data, args.steps, args.block, args.batch, device))
        runs["Trainer"].append(trainer_run(data, args.steps, args.block, args.batch, device, False))
        if args.compile:
            runs["Trainer + compile"].append(trainer_run(data, args.steps, args.block, args.batch, device, True))
    base = statistics.median(runs["plain float32 loop"])
    print(f"device: {device} ({torch.get_num_threads()} threads) | torch {torch.__version__} | "
          f"{args.steps} steps x {args.batch} x {args.block} tokens, median of {args.repeats}")
    print(f"{'run':<22}{'tokens/s':>12}{'ratio':>8}")
    for name, values in runs.items():
        med = statistics.median(values)
        print(f"{name:<22}{med:>12,.0f}{med / base:>8.2f}")


if __name__ == "__main__":
    main()
