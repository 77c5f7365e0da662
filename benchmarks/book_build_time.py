"""How long the whole ``make book`` takes at a scale preset: every notebook executed, then the site built.

The book's goal is 30 minutes on a 2-core CPU at the ``cpu`` preset, for a new reader with an empty
cache. This script runs the same build as ``make book`` (``jupyter-book build . -W --keep-going``)
into a temporary output folder, with ``LMLIB_CACHE`` pointed at a fresh folder so nothing prepared
by an earlier run (the course corpus, for one) is reused, and prints the wall time against the goal
beside the sum of the notebooks' own times from ``results/<preset>_notebook_times.json``.

    LMLIB_DATA=<mirror> .venv/bin/python benchmarks/book_build_time.py        # cpu preset, ~30 min

Results: ``benchmarks/results/<preset>_book_build.json`` and stdout. Run it on a quiet machine:
any other work on the two cores slows every training step of every notebook. The speed of a
shared machine also drifts by tens of percent over a day, so the script times the plain training
loop of ``train_char_gpt.py`` (30 steps of nanoGPT's CPU configuration of the character GPT)
before and after the build: the same probe, in the same units, as that benchmark's plain-loop row
in ``RESULTS.md``.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import torch

from common import RESULTS, cpu_name, write_results
from train_char_gpt import load_tokens, plain_loop

ROOT = Path(__file__).resolve().parents[1]


def notebook_seconds(log: str, root: Path = ROOT) -> dict[str, float]:
    """Each notebook's execution time from the build log (myst-nb's "<path>: Executed notebook in X
    seconds"), keyed by its path relative to the repository."""
    times = {}
    for path, seconds in re.findall(r"(\S+\.ipynb): Executed notebook in ([\d.]+) seconds", log):
        path = Path(path)
        times[str(path.relative_to(root) if path.is_absolute() else path)] = float(seconds)
    return times


def host_speed() -> float:
    """Tokens per second of 30 plain training steps of nanoGPT's CPU configuration of the character
    GPT: how fast this machine is right now, comparable with ``train_char_gpt.py``'s plain-loop figure."""
    train, _, vocab = load_tokens()
    return plain_loop(train, vocab, 30, torch.device("cpu"))[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--preset", default="cpu", choices=["smoke", "cpu", "gpu"])
    parser.add_argument("--goal-minutes", type=float, default=30.0)
    parser.add_argument("--keep-cache", action="store_true", help="use the usual LMLIB_CACHE instead of a fresh one")
    args = parser.parse_args()

    jupyter_book = Path(sys.executable).parent / "jupyter-book"
    with tempfile.TemporaryDirectory(prefix="book-build-") as tmp:
        env = dict(os.environ, LMLIB_SCALE=args.preset)
        if not args.keep_cache:
            env["LMLIB_CACHE"] = str(Path(tmp) / "cache")
        command = [str(jupyter_book), "build", ".", "-W", "--keep-going", "--path-output", str(Path(tmp) / "out")]
        load_before, speed_before = os.getloadavg(), host_speed()
        start = time.perf_counter()
        done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True)
        seconds = time.perf_counter() - start
        load_after, speed_after = os.getloadavg(), host_speed()
    log_file = Path(tempfile.gettempdir()) / f"book_build_{args.preset}.log"
    log_file.write_text(done.stdout + "\n" + done.stderr)
    if done.returncode:
        print(done.stderr[-3000:])
        raise SystemExit(f"the book build failed (exit {done.returncode}); the end of its output is above, "
                         f"all of it in {log_file}")

    pages = notebook_seconds(done.stdout + done.stderr)  # the build ran in ROOT, so paths are under it
    times_file = RESULTS / f"{args.preset}_notebook_times.json"
    notebooks = json.loads(times_file.read_text())["total_seconds"] if times_file.is_file() else None
    result = dict(
        date=datetime.now(timezone.utc).isoformat(timespec="seconds"), preset=args.preset, machine=cpu_name(),
        cpu_count=os.cpu_count(), build_seconds=seconds, goal_minutes=args.goal_minutes,
        notebook_seconds_from_times_file=notebooks, fresh_cache=not args.keep_cache,
        executed_seconds=sum(pages.values()), pages=pages,
        load_average=dict(before=load_before, after=load_after),
        host_tokens_per_s=dict(before=speed_before, after=speed_after),
        command="LMLIB_DATA=<mirror> .venv/bin/python benchmarks/book_build_time.py"
                + (f" --preset {args.preset}" if args.preset != "cpu" else ""),
    )
    print(f"make book at {args.preset}: {seconds / 60:.1f} min, {seconds / 60 / args.goal_minutes:.2f}x the "
          f"{args.goal_minutes:.0f}-minute goal"
          + (f"; executing the notebooks took {sum(pages.values()) / 60:.1f} min of it" if pages else "")
          + (f"; {times_file.name} sums them to {notebooks / 60:.1f} min" if notebooks else "")
          + f"; host probe {speed_before:,.0f} tokens/s before, {speed_after:,.0f} after")
    write_results(result, RESULTS / f"{args.preset}_book_build.json")


if __name__ == "__main__":
    main()
