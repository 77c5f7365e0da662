"""lmlib.checkpoint and Trainer resume: exact (bitwise on CPU), atomic, and never half-loaded."""
from __future__ import annotations

import os
import signal

import pytest
import torch
from test_train import TinyLM, tokens
from torch import nn

from lmlib import checkpoint as ckpt
from lmlib import train as T


def config(tmp_path, **kw) -> T.TrainConfig:
    base = dict(max_steps=8, warmup_steps=2, lr=5e-3, grad_accum_steps=2, grad_clip=0.5, eval_every=None,
                log_every=2, checkpoint_dir=tmp_path / "ckpt", progress=False)
    return T.TrainConfig(**(base | kw))


def trainer(cfg, batches=None, **model_kw) -> T.Trainer:
    torch.manual_seed(0)
    model = TinyLM(dropout=0.2, **model_kw)  # dropout: resume must restore the global RNG too
    return T.Trainer(model, cfg, batches if batches is not None else T.token_batches(tokens(), 8, 4))


def assert_same_weights(a: nn.Module, b: nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert torch.equal(sa[k], sb[k]), f"{k} differs"


def snapshot(tr: T.Trainer) -> dict:
    return {k: v.clone() for k, v in tr.raw_model.state_dict().items()}


@pytest.mark.parametrize("source", ["function", "iterable"])
def test_interrupted_and_resumed_equals_uninterrupted(tmp_path, source):
    def batches():
        if source == "function":
            return None
        gen = torch.Generator().manual_seed(3)
        return [T.token_batches(tokens(), 8, 4)(gen) for _ in range(16)]

    full = trainer(config(tmp_path / "a", log_every=1), batches())
    full.fit()

    first = trainer(config(tmp_path / "b", log_every=1, checkpoint_every=3), batches())
    first.config.max_steps = 5  # stop early, as if the run had been killed after step 5
    first.fit()
    assert ckpt.latest(tmp_path / "b" / "ckpt").name == "step_00000005"
    torch.manual_seed(123)  # scramble the global RNG: the checkpoint must restore it

    resumed = trainer(config(tmp_path / "b", log_every=1), batches())
    resumed.load_checkpoint()
    assert resumed.step == 5
    history = resumed.fit()
    assert_same_weights(full.raw_model, resumed.raw_model)
    assert history.step == full.history.step  # the history continues across the restart
    assert history.train_loss[-1] == full.history.train_loss[-1]


def test_ctrl_c_finishes_the_step_saves_and_resumes_exactly(tmp_path):
    full = trainer(config(tmp_path / "a"))
    full.fit()

    calls = {"n": 0}
    data = T.token_batches(tokens(), 8, 4)

    def interrupting(gen):
        calls["n"] += 1
        if calls["n"] == 7:  # in the middle of step 4's gradient accumulation
            os.kill(os.getpid(), signal.SIGINT)
        return data(gen)

    cfg = config(tmp_path / "b")
    run = trainer(cfg, interrupting)
    h = run.fit()
    assert h.interrupted and run.step == 4
    assert ckpt.latest(cfg.checkpoint_dir).name == "step_00000004"

    resumed = trainer(cfg)
    resumed.load_checkpoint()
    resumed.fit()
    assert_same_weights(full.raw_model, resumed.raw_model)


def test_state_file_loads_with_weights_only_and_tied_weights_survive(tmp_path):
    cfg = config(tmp_path, max_steps=2)
    tr = trainer(cfg, tied=True)
    tr.fit()
    folder = ckpt.latest(cfg.checkpoint_dir)
    state = torch.load(folder / ckpt.STATE, weights_only=True)
    assert state["step"] == 2 and set(state) >= {"optimizer", "scheduler", "ranks", "history"}
    fresh = trainer(config(tmp_path, max_steps=2), tied=True)
    fresh.load_checkpoint()
    assert fresh.raw_model.head.weight is fresh.raw_model.emb.weight  # still tied
    assert_same_weights(tr.raw_model, fresh.raw_model)


def test_atomic_writes_and_keep_last(tmp_path):
    cfg = config(tmp_path, max_steps=6, checkpoint_every=1, keep_last=2)
    tr = trainer(cfg)
    tr.fit()
    names = [p.name for p in ckpt.all_checkpoints(cfg.checkpoint_dir)]
    assert names == ["step_00000005", "step_00000006"]
    # A crash while writing leaves only a hidden temporary folder, which is ignored.
    (cfg.checkpoint_dir / ".step_00000007.tmp-999").mkdir()
    (cfg.checkpoint_dir / ".step_00000007.tmp-999" / ckpt.WEIGHTS).write_bytes(b"partial")
    assert ckpt.latest(cfg.checkpoint_dir).name == "step_00000006"
    # Saving the same step again replaces it in one piece.
    assert tr.save_checkpoint().name == "step_00000006"
    assert not list(cfg.checkpoint_dir.glob(".step_00000006*"))


# ----------------------------------------------------------------------------- bad checkpoints
@pytest.fixture
def saved(tmp_path):
    cfg = config(tmp_path, max_steps=3)
    trainer(cfg).fit()
    return ckpt.latest(cfg.checkpoint_dir)


def untouched_after_error(tr: T.Trainer, path, match: str) -> None:
    before = snapshot(tr)
    opt_before = str(tr.optimizer.state_dict()["param_groups"])
    with pytest.raises(ckpt.CheckpointError, match=match):
        tr.load_checkpoint(path)
    after = snapshot(tr)
    assert all(torch.equal(before[k], after[k]) for k in before), "the model was partly loaded"
    assert str(tr.optimizer.state_dict()["param_groups"]) == opt_before
    assert tr.step == 0 and not tr.optimizer.state


def test_truncated_weights(tmp_path, saved):
    data = (saved / ckpt.WEIGHTS).read_bytes()
    (saved / ckpt.WEIGHTS).write_bytes(data[: len(data) // 2])
    untouched_after_error(trainer(config(tmp_path / "new")), saved, "truncated, corrupt")


def test_truncated_state(tmp_path, saved):
    data = (saved / ckpt.STATE).read_bytes()
    (saved / ckpt.STATE).write_bytes(data[: len(data) // 2])
    untouched_after_error(trainer(config(tmp_path / "new")), saved, "truncated, corrupt")


def test_missing_file(tmp_path, saved):
    (saved / ckpt.STATE).unlink()
    untouched_after_error(trainer(config(tmp_path / "new")), saved, "missing")


def test_weights_from_another_checkpoint(tmp_path, saved):
    other = config(tmp_path / "other", max_steps=2)
    trainer(other).fit()
    os.replace(ckpt.latest(other.checkpoint_dir) / ckpt.WEIGHTS, saved / ckpt.WEIGHTS)
    untouched_after_error(trainer(config(tmp_path / "new")), saved, "does not match")


def test_wrong_shapes(tmp_path, saved):
    torch.manual_seed(0)
    tr = T.Trainer(TinyLM(dim=24), config(tmp_path / "new"), T.token_batches(tokens(), 8, 4))
    untouched_after_error(tr, saved, "different shapes")


def test_missing_keys(tmp_path, saved):
    class Bigger(TinyLM):
        def __init__(self):
            super().__init__()
            self.extra = nn.Linear(4, 4)

    torch.manual_seed(0)
    tr = T.Trainer(Bigger(), config(tmp_path / "new"), T.token_batches(tokens(), 8, 4))
    untouched_after_error(tr, saved, "missing from the checkpoint: extra.bias, extra.weight")


def test_other_optimizer_layout(tmp_path, saved):
    # Same weights, but biases frozen: the optimizer groups differ, so the state must not load.
    tr = trainer(config(tmp_path / "new"))
    for name, p in tr.raw_model.named_parameters():
        p.requires_grad_(not name.endswith("bias"))
    tr.optimizer = torch.optim.AdamW(T.param_groups(tr.raw_model, 0.1), lr=1e-3)
    untouched_after_error(tr, saved, "holds other parameters")


def test_other_batch_source(tmp_path, saved):
    tr = trainer(config(tmp_path / "new"), [(torch.zeros(2, 8, dtype=torch.long),) * 2] * 10)
    untouched_after_error(tr, saved, "kind of train_batches")


def test_iterable_shorter_than_the_saved_position(tmp_path):
    cfg = config(tmp_path, max_steps=3)
    gen = torch.Generator().manual_seed(3)
    windows = [T.token_batches(tokens(), 8, 4)(gen) for _ in range(6)]
    trainer(cfg, windows).fit()
    untouched_after_error(trainer(config(tmp_path), windows[:4]), cfg.checkpoint_dir, "fewer than the 6 batches")


def test_no_checkpoint_at_all(tmp_path):
    tr = trainer(config(tmp_path))
    with pytest.raises(ckpt.CheckpointError, match="No checkpoint found"):
        tr.load_checkpoint()
    with pytest.raises(ValueError, match="checkpoint_dir"):
        trainer(T.TrainConfig(max_steps=2, warmup_steps=0, progress=False)).load_checkpoint()
