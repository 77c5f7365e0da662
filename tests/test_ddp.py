"""The trainer under DistributedDataParallel: 2 CPU processes (gloo) equal 1 process on the combined batch.

The test launches this same file with ``torchrun``; run as a script it is the worker. Gradient
accumulation (``no_sync`` on all but the last micro-batch), clipping of the averaged gradient and
a distributed checkpoint are all exercised. It takes about 10-20 s on 2 cores.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist

from lmlib import train as T

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from test_train import TinyLM, tokens  # noqa: E402

BLOCK, BATCH = 8, 4


def config(out: Path) -> T.TrainConfig:
    return T.TrainConfig(max_steps=6, warmup_steps=2, lr=5e-3, grad_clip=0.05, grad_accum_steps=2,
                         eval_every=3, eval_steps=2, log_every=3, checkpoint_dir=out / "ckpt",
                         device="cpu", progress=False)


def worker(out: Path) -> None:
    """One DDP process (started by torchrun): train, then rank 0 saves the final weights."""
    torch.manual_seed(0)  # the same initial model everywhere (DDP also broadcasts rank 0's)
    data = tokens()
    tr = T.Trainer(TinyLM(), config(out), T.token_batches(data, BLOCK, BATCH), T.token_batches(data, BLOCK, BATCH))
    assert tr.world_size == 2, "expected to run under torchrun with 2 processes"
    history = tr.fit()
    if tr.rank == 0:
        torch.save({"weights": tr.raw_model.state_dict(), "val_loss": history.val_loss}, out / "ddp.pt")
    dist.destroy_process_group()


def test_two_processes_equal_one_on_the_combined_batch(tmp_path):
    if not (dist.is_available() and dist.is_gloo_available()):
        pytest.skip("this PyTorch has no gloo backend")
    env = dict(os.environ, OMP_NUM_THREADS="1", LMLIB_DEVICE="cpu", PYTHONPATH=str(HERE.parent))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           str(Path(__file__).resolve()), str(tmp_path)]
    result = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=180)
    assert result.returncode == 0, f"torchrun failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    ddp = torch.load(tmp_path / "ddp.pt", weights_only=True)

    # One process, each batch = rank 0's batch stacked on rank 1's (drawn with their generators).
    gens = [torch.Generator().manual_seed(T.data_seed(0, rank)) for rank in range(2)]
    data = tokens()
    draw = T.token_batches(data, BLOCK, BATCH)

    def combined(_generator):
        parts = [draw(g) for g in gens]
        return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])

    torch.manual_seed(0)
    single = T.Trainer(TinyLM(), config(tmp_path / "single"), combined)
    single.fit()
    for name, value in single.raw_model.state_dict().items():
        torch.testing.assert_close(ddp["weights"][name], value, rtol=1e-5, atol=1e-6,
                                   msg=f"{name}: DDP differs from one process on the combined batch")
    assert len(ddp["val_loss"]) == 2
    # The distributed checkpoint holds both ranks' data positions.
    state = torch.load(tmp_path / "ckpt" / "step_00000006" / "state.pt", weights_only=True)
    assert len(state["ranks"]) == 2
    assert not torch.equal(state["ranks"][0]["data"]["generator"], state["ranks"][1]["data"]["generator"])


if __name__ == "__main__":
    worker(Path(sys.argv[1]))
