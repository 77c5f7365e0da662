"""Chapter 4's published Llama: decoding speed of the course's GPT against llama2.c's C inference.

Both sides decode stories260K (llama2.c's 260K-parameter Llama, loaded into ``lmlib.model.GPT`` by
``lmlib.llama2c``) greedily from BOS for ``--new-tokens`` tokens (256, run.c's default) at batch 1:
the course with ``lmlib.generate.generate`` and its KV cache, llama2.c with ``run.c`` built by
``gcc -O3 -o run run.c -lm`` (single-threaded, like the course side at ``--threads 1``) in a
temporary folder, in the same run. The script checks that both write the same story, and reports
tokens/s of each and the ratio course / C (the course's target: 0.5x). run.c reports its own rate
("achieved tok/s", timed from its second token); the course's rate is new tokens over the wall time
of the ``generate`` call. Each side takes the median of ``--repeats`` runs.

It then profiles one course run with ``torch.profiler`` (how many ATen operations each token
dispatches and where the CPU time goes) and, with ``--compile``, times ``torch.compile`` of the
model (``dynamic=True``), compilation included in a separate figure.

    LMLIB_DATA=<mirror> .venv/bin/python benchmarks/decode_llama2c.py               # ~1 minute on 2 cores
    LMLIB_DATA=<mirror> .venv/bin/python benchmarks/decode_llama2c.py --compile     # + torch.compile

``--reference`` is llama2.c's folder (default ``../shared/reference/llama2.c`` beside the
repository); without it, or without gcc, the C side is skipped with a message. Results go to
``benchmarks/results/cpu_decode_llama2c.json``.
"""
from __future__ import annotations

import argparse
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
from common import RESULTS, cpu_name, write_results
from torch.profiler import ProfilerActivity, profile

from lmlib.data import path as data_path
from lmlib.generate import generate
from lmlib.llama2c import load_llama2c

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_REFERENCE = ROOT.parent / "shared" / "reference" / "llama2.c"
TARGET_RATIO = 0.5


def course_run(model, tok, new_tokens: int) -> tuple[str, int, float]:
    """(text, new tokens, seconds) of one greedy decode from BOS, stopping at BOS as run.c does."""
    bos = torch.tensor([[tok.bos_id]])
    start = time.perf_counter()
    out = generate(model, bos, new_tokens, greedy=True, eos_id=tok.bos_id)
    seconds = time.perf_counter() - start
    return tok.decode(out[0]), out.shape[1] - 1, seconds


def c_side(reference: Path, model_bin: Path, tok_bin: Path, new_tokens: int, repeats: int) -> dict:
    """Build run.c in a temporary folder and run it ``repeats`` times; a dict with 'skipped' if it cannot."""
    run_c = reference / "run.c"
    if not run_c.is_file():
        return {"skipped": f"no llama2.c at {reference} (get it with `git clone https://github.com/karpathy/llama2.c` "
                           "at the commit in shared/reference/llama2.c/COMMIT and pass --reference)"}
    if shutil.which("gcc") is None:
        return {"skipped": "gcc not found: install a C compiler to build llama2.c's run.c"}
    with tempfile.TemporaryDirectory(prefix="llama2c-") as tmp:
        shutil.copy(run_c, tmp)  # the reference folder is read-only
        subprocess.run(["gcc", "-O3", "-o", "run", "run.c", "-lm"], cwd=tmp, check=True, capture_output=True)
        rates, text = [], None
        for _ in range(repeats):
            done = subprocess.run([str(Path(tmp) / "run"), str(model_bin), "-z", str(tok_bin), "-t", "0.0",
                                   "-n", str(new_tokens)], capture_output=True, text=True, check=True)
            match = re.search(r"achieved tok/s: ([0-9.]+)", done.stderr)
            if match is None:
                raise RuntimeError(f"run.c printed no 'achieved tok/s':\n{done.stderr[-2000:]}")
            rates.append(float(match.group(1)))
            text = done.stdout.rstrip("\n")
    commit = reference / "COMMIT"
    return {"tokens_per_s": statistics.median(rates), "runs_tokens_per_s": rates, "text": text,
            "build": "gcc -O3 -o run run.c -lm", "commit": commit.read_text().strip() if commit.is_file() else None}


def dispatch_profile(model, tok, new_tokens: int, top: int = 8) -> dict:
    """ATen operations per token and the top operations by self CPU time, from one profiled decode."""
    bos = torch.tensor([[tok.bos_id]])
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        out = generate(model, bos, new_tokens, greedy=True, eos_id=tok.bos_id)
    n = out.shape[1] - 1
    events = [e for e in prof.key_averages() if e.key.startswith("aten::")]
    total_us = sum(e.self_cpu_time_total for e in events)
    calls = sum(e.count for e in events)
    rows = sorted(events, key=lambda e: e.self_cpu_time_total, reverse=True)[:top]
    return {
        "new_tokens": n, "aten_calls_per_token": calls / n, "aten_self_us_per_token": total_us / n,
        "mean_us_per_aten_call": total_us / calls,
        "top_self_cpu": [{"op": e.key, "calls_per_token": e.count / n, "self_us_per_token": e.self_cpu_time_total / n,
                          "share": e.self_cpu_time_total / total_us} for e in rows],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--new-tokens", type=int, default=256, help="greedy steps (run.c's -n; default its 256)")
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per side (the median is reported)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (run.c is single-threaded)")
    parser.add_argument("--reference", type=Path, default=DEFAULT_REFERENCE, help="llama2.c's folder (run.c)")
    parser.add_argument("--model-bin", type=Path, default=None, help="default: the registry's stories260K.bin")
    parser.add_argument("--tokenizer-bin", type=Path, default=None, help="default: the registry's tok512.bin")
    parser.add_argument("--compile", action="store_true", help="also time torch.compile(model, dynamic=True)")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model_bin = args.model_bin or data_path("stories260k", "stories260K.bin")
    tok_bin = args.tokenizer_bin or data_path("stories260k", "tok512.bin")
    model, tok = load_llama2c(model_bin, tok_bin)
    load_before = os.getloadavg()
    print(f"{cpu_name()} | {torch.get_num_threads()} torch threads | torch {torch.__version__} | "
          f"stories260K ({model.num_params():,} parameters), greedy from BOS, {args.new_tokens} steps, batch 1 | "
          f"load average {load_before[0]:.2f}")

    course_run(model, tok, 8)  # warm-up
    runs = [course_run(model, tok, args.new_tokens) for _ in range(args.repeats)]
    text, n_new = runs[0][0], runs[0][1]
    rates = [n / s for _, n, s in runs]
    course = {"tokens_per_s": statistics.median(rates), "runs_tokens_per_s": rates, "new_tokens": n_new,
              "text": text, "how": "lmlib.generate.generate(greedy=True, use_cache=True, eos_id=BOS)"}
    print(f"course GPT + KV cache: {course['tokens_per_s']:,.0f} tokens/s ({n_new} new tokens)")

    c = c_side(args.reference, model_bin, tok_bin, args.new_tokens, args.repeats)
    ratio = None
    if "skipped" in c:
        print(f"llama2.c side skipped: {c['skipped']}")
    else:
        c["same_text"] = c["text"] == text
        if not c["same_text"]:
            raise AssertionError(f"run.c and the course wrote different stories:\nC:      {c['text'][:200]!r}\n"
                                 f"course: {text[:200]!r}")
        ratio = course["tokens_per_s"] / c["tokens_per_s"]
        verdict = "met" if ratio >= TARGET_RATIO else "NOT met"
        print(f"llama2.c run.c:        {c['tokens_per_s']:,.0f} tokens/s (same story: yes)")
        print(f"ratio course / C: {ratio:.3f}x (target >= {TARGET_RATIO}x: {verdict})")

    prof = dispatch_profile(model, tok, min(args.new_tokens, 64))
    prof["wall_us_per_token"] = 1e6 / course["tokens_per_s"]  # the rest of it is Python around the ops
    print(f"per token: {prof['wall_us_per_token']:.0f} us of wall time, of which ATen ops "
          f"{prof['aten_self_us_per_token']:.0f} us (unprofiled run vs profiled run, so a rough split)")
    print(f"profile: {prof['aten_calls_per_token']:.0f} ATen calls per token, {prof['mean_us_per_aten_call']:.2f} us "
          f"each on average ({prof['aten_self_us_per_token']:.0f} us of self time per token)")
    for row in prof["top_self_cpu"]:
        print(f"  {row['op']:<52}{row['calls_per_token']:>7.1f} calls/token {row['share']:>6.1%}")

    compiled = None
    if args.compile:
        cmodel = torch.compile(model, dynamic=True)
        t0 = time.perf_counter()
        course_run(cmodel, tok, args.new_tokens)  # compiles (and recompiles as the cache grows)
        first = time.perf_counter() - t0
        cruns = [course_run(cmodel, tok, args.new_tokens) for _ in range(args.repeats)]
        crates = [n / s for _, n, s in cruns]
        compiled = {"first_run_seconds": first, "tokens_per_s": statistics.median(crates), "runs_tokens_per_s": crates,
                    "same_text": cruns[0][0] == text,
                    "speedup_over_eager": statistics.median(crates) / course["tokens_per_s"]}
        print(f"torch.compile(dynamic=True): first run {first:.1f} s, then {compiled['tokens_per_s']:,.0f} tokens/s "
              f"({compiled['speedup_over_eager']:.2f}x eager; same story: {compiled['same_text']})")

    result = {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "device": cpu_name(), "threads": torch.get_num_threads(), "torch": torch.__version__,
        "model": {"name": "stories260K", "params": model.num_params(), "n_layer": model.config.n_layer,
                  "n_embd": model.config.n_embd, "n_head": model.config.n_head, "n_kv_heads": model.config.kv_heads,
                  "vocab_size": model.config.vocab_size},
        "new_tokens": args.new_tokens, "repeats": args.repeats,
        "course": course, "llama2c": c, "ratio_course_to_c": ratio, "target_ratio": TARGET_RATIO,
        "profile": prof, "compiled": compiled,
        "load_average_before_after": [load_before, os.getloadavg()],
        "command": "python benchmarks/decode_llama2c.py " + " ".join(sys.argv[1:]),
    }
    write_results(result, args.out or RESULTS / "cpu_decode_llama2c.json")


if __name__ == "__main__":
    main()
