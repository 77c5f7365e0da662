"""What every benchmark script shares: the CPU's name, waiting for the device, child runs, writing results."""
from __future__ import annotations

import json
import platform
import subprocess
import sys
from pathlib import Path

import torch

RESULTS = Path(__file__).parent / "results"


def cpu_name() -> str:
    """The CPU model from ``lscpu``, marked when it has AVX-512 bfloat16 instructions."""
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        flags = next((l for l in out.splitlines() if l.startswith("Flags")), "")
        name = next((l.split(":", 1)[1].strip() for l in out.splitlines() if l.startswith("Model name")), "")
        return name + (" (avx512_bf16)" if "avx512_bf16" in flags else "")
    except (OSError, subprocess.CalledProcessError):
        return platform.processor()


def sync(device: torch.device) -> None:
    """Wait for queued GPU work, so a timer measures the work and not its launch."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


def write_results(result: dict, out: Path) -> None:
    """Write a script's results as JSON (the file the book quotes) and say where."""
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")


def run_child(script: str, args: list[str], what: str) -> dict:
    """Run ``script`` again in a fresh process and return the dict it printed with :func:`print_result`.

    Scripts measure one configuration per process so that peak memory, compiled code and
    allocator state of one run cannot leak into the next.
    """
    done = subprocess.run([sys.executable, script, *args], capture_output=True, text=True)
    line = next((l for l in done.stdout.splitlines() if l.startswith("RESULT ")), None)
    if done.returncode or line is None:
        raise RuntimeError(f"{what} failed:\n{done.stderr[-3000:]}")
    return json.loads(line[len("RESULT "):])


def print_result(result: dict) -> None:
    """The child's side of :func:`run_child`."""
    print("RESULT " + json.dumps(result))
