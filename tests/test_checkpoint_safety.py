"""Checkpoints and the trainer under hostile conditions: nothing lost, nothing silently wrong.

Another run's checkpoints in the folder, a kill -9 in the middle of a save, flipped bytes,
a diverging run, a changed configuration on resume, bad targets, an unusable folder and a
pickled payload: each ends in a readable checkpoint or a clear error before any harm.
"""
from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
from test_checkpoint import config, trainer
from test_train import V, TinyLM, tokens
from torch import nn

from lmlib import checkpoint as ckpt
from lmlib import train as T
from lmlib.model import GPT, GPTConfig

REPO = Path(__file__).resolve().parents[1]


def steps(directory) -> list[int]:
    return [int(p.name.removeprefix("step_")) for p in ckpt.all_checkpoints(directory)]


def leftovers(directory) -> list[str]:
    return sorted(p.name for p in Path(directory).glob(".step_*"))


def dead_pid() -> int:
    """The id of a process that has exited (and been reaped)."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


# ----------------------------------------------------------------------------- 1. rotation
def test_a_fresh_run_refuses_a_folder_of_another_run_and_loses_nothing(tmp_path):
    old = config(tmp_path, max_steps=20, checkpoint_every=5, keep_last=3, grad_accum_steps=1)
    trainer(old).fit()
    assert steps(old.checkpoint_dir) == [10, 15, 20]
    calls = []
    data = T.token_batches(tokens(), 8, 4)
    fresh = trainer(config(tmp_path, max_steps=6, checkpoint_every=2, grad_accum_steps=1),
                    lambda g: calls.append(1) or data(g))
    with pytest.raises(ckpt.CheckpointError, match="did not resume from .*step_00000020.*load_checkpoint"):
        fresh.fit()
    assert not calls and steps(old.checkpoint_dir) == [10, 15, 20]  # refused before step 1


def test_rotation_only_deletes_checkpoints_older_than_the_new_one(tmp_path):
    model = nn.Linear(2, 2)
    for step in (10, 20):
        ckpt.save(tmp_path, step, model, {})
    ckpt.save(tmp_path, 2, model, {}, keep_last=1)
    ckpt.save(tmp_path, 4, model, {}, keep_last=1)
    assert steps(tmp_path) == [4, 10, 20]
    ckpt.save(tmp_path, 30, model, {}, keep_last=2)
    assert steps(tmp_path) == [20, 30]


def test_resuming_an_older_checkpoint_is_refused_while_newer_ones_exist(tmp_path):
    cfg = config(tmp_path, max_steps=8, checkpoint_every=2, keep_last=None)
    trainer(cfg).fit()
    back = trainer(cfg)
    back.load_checkpoint(cfg.checkpoint_dir / "step_00000004")
    with pytest.raises(ckpt.CheckpointError, match="newer than step 4"):
        back.fit()
    # Resumed from the newest, the same folder is fine, and so is fit() again after more steps.
    on = trainer(config(tmp_path, max_steps=10, checkpoint_every=2, keep_last=None))
    with pytest.warns(UserWarning, match="max_steps changed from 8 to 10"):
        on.load_checkpoint()
    on.fit()
    on.config.max_steps = 12
    on.fit()
    assert steps(cfg.checkpoint_dir) == [2, 4, 6, 8, 10, 12]


# ----------------------------------------------------------------------------- 2. kill -9 during a save
CHILD = textwrap.dedent("""
    import os, sys, torch
    from torch import nn
    from lmlib import checkpoint as ckpt
    directory, mode = sys.argv[1], sys.argv[2]
    model = nn.Linear(256, 256)
    if mode == "between-renames":  # die right after the old copy was moved aside
        ckpt.save(directory, 3, model, {"version": 1})
        real = os.replace
        def replace(src, dst):
            real(src, dst)
            if ".old-" in str(dst):
                os._exit(9)
        ckpt.os.replace = replace
        with torch.no_grad():
            model.weight.fill_(2.0)
        ckpt.save(directory, 3, model, {"version": 2})
    else:  # save in a loop, the same step twice, until killed
        step = int(mode)
        print("ready", flush=True)
        while True:
            for _ in range(2):
                ckpt.save(directory, step, model, {"version": step}, keep_last=2)
                print(step, flush=True)
            step += 1
""")


def run_child(directory, mode, **kw) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    return subprocess.Popen([sys.executable, "-c", CHILD, str(directory), str(mode)], env=env,
                            stdout=subprocess.PIPE, text=True, **kw)


def test_a_crash_between_the_two_renames_of_a_resave_is_recovered(tmp_path):
    child = run_child(tmp_path, "between-renames")
    assert child.wait(timeout=60) == 9
    assert [n.split("-")[0] for n in leftovers(tmp_path)] == [".step_00000003.old", ".step_00000003.tmp"]
    assert ckpt.latest(tmp_path).name == "step_00000003"  # not a step back, nor None
    weights, state = ckpt.read(tmp_path)
    assert state["version"] == 2 and bool((weights["weight"] == 2.0).all())  # the new copy won
    assert leftovers(tmp_path) == []


def test_leftovers_of_dead_processes_are_recovered_or_cleaned(tmp_path):
    model = nn.Linear(2, 2)
    ckpt.save(tmp_path, 5, model, {})
    pid = dead_pid()
    (tmp_path / f".step_00000006.tmp-{pid}").mkdir()  # a first save of step 6, killed half-way
    os.replace(tmp_path / "step_00000005", tmp_path / f".step_00000005.old-{pid}")  # only the old copy
    live = tmp_path / f".step_00000007.tmp-{os.getppid()}"  # a live process may be saving now
    live.mkdir()
    assert steps(tmp_path) == [5]
    assert leftovers(tmp_path) == [live.name]


def test_kill_9_at_random_moments_always_leaves_a_readable_checkpoint(tmp_path):
    rng = random.Random(0)
    done = 0  # the newest step a child reported as fully saved
    for _ in range(4):
        child = run_child(tmp_path, done + 1)
        assert child.stdout.readline().strip() == "ready"
        time.sleep(rng.uniform(0.05, 0.5))
        child.kill()
        out, _ = child.communicate(timeout=30)
        reported = [int(line) for line in out.split()]
        done = max([done, *reported])
        folder, weights, state = ckpt.read_valid(tmp_path)  # checks every file
        assert int(folder.name.removeprefix("step_")) >= done
        assert not [n for n in leftovers(tmp_path) if n.endswith(f"-{child.pid}")]
    assert done >= 1  # at least one save finished between the kills


# ----------------------------------------------------------------------------- 3. state checksum
def test_flipped_bytes_in_the_state_are_detected_and_loading_falls_back(tmp_path):
    cfg = config(tmp_path, max_steps=4, checkpoint_every=2)
    trainer(cfg).fit()
    newest = cfg.checkpoint_dir / "step_00000004" / ckpt.STATE
    data = bytearray(newest.read_bytes())
    for i in range(4):
        data[len(data) // 2 + 97 * i] ^= 0xFF
    newest.write_bytes(bytes(data))
    with pytest.raises(ckpt.CheckpointError, match="state.pt does not match"):
        ckpt.read(newest.parent)
    tr = trainer(cfg)
    with pytest.warns(UserWarning, match="Skipping damaged checkpoint .*step_00000004"):
        assert tr.load_checkpoint().name == "step_00000002"
    assert tr.step == 2
    tr.fit()  # the damaged newer folder is not another run: training on is allowed
    assert ckpt.read(cfg.checkpoint_dir)[1]["step"] == 4
    (cfg.checkpoint_dir / "step_00000002" / ckpt.WEIGHTS).write_bytes(b"x")
    (cfg.checkpoint_dir / "step_00000004" / ckpt.MANIFEST).write_text("{")
    with pytest.warns(UserWarning), pytest.raises(ckpt.CheckpointError, match="No readable checkpoint"):
        ckpt.read(cfg.checkpoint_dir)


# ----------------------------------------------------------------------------- 4. non-finite loss
def test_a_diverging_run_stops_and_never_saves_nan(tmp_path):
    cfg = config(tmp_path, max_steps=20, lr=1e10, warmup_steps=0, grad_clip=None, checkpoint_every=1)
    with pytest.raises((FloatingPointError, ckpt.CheckpointError), match="lower lr|grad_clip"):
        trainer(cfg).fit()
    for folder in ckpt.all_checkpoints(cfg.checkpoint_dir):
        weights, _ = ckpt.read(folder)
        assert all(bool(torch.isfinite(w).all()) for w in weights.values())


def test_the_first_nan_loss_names_its_step_before_the_update(tmp_path):
    class NanAt3(TinyLM):
        calls = 0

        def forward(self, idx, targets=None):
            logits, loss = super().forward(idx, targets)
            NanAt3.calls += 1
            return logits, loss * float("nan") if NanAt3.calls == 3 else loss

    torch.manual_seed(0)
    tr = T.Trainer(NanAt3(), config(tmp_path, grad_accum_steps=1, checkpoint_dir=None),
                   T.token_batches(tokens(), 8, 4))
    tr.config.max_steps = 2
    tr.fit()
    before = {k: v.clone() for k, v in tr.raw_model.state_dict().items()}
    tr.config.max_steps = 8
    with pytest.raises(FloatingPointError, match=r"not finite \(nan on this process\) at step 3 .*lower lr.*grad_clip"):
        tr.fit()
    assert tr.step == 2 and all(torch.equal(before[k], v) for k, v in tr.raw_model.state_dict().items())


def test_save_refuses_non_finite_weights(tmp_path):
    model = nn.Linear(2, 2)
    ckpt.save(tmp_path, 1, model, {})
    with torch.no_grad():
        model.weight[0, 0] = float("inf")
    with pytest.raises(ckpt.CheckpointError, match="weight hold nan or inf"):
        ckpt.save(tmp_path, 2, model, {}, keep_last=1)
    assert steps(tmp_path) == [1] and leftovers(tmp_path) == []


# ----------------------------------------------------------------------------- 5. changed configuration
def gpt_trainer(cfg, n_head=4) -> T.Trainer:
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=V, block_size=8, n_layer=1, n_head=n_head, n_embd=16))
    return T.Trainer(model, cfg, T.token_batches(tokens(), 8, 4))


def test_resume_refuses_a_change_it_would_ignore(tmp_path):
    cfg = config(tmp_path, max_steps=4)
    gpt_trainer(cfg).fit()
    with pytest.raises(ckpt.CheckpointError, match=r"lr=0\.05 here, 0\.005 in the checkpoint.*max_steps"):
        gpt_trainer(config(tmp_path, max_steps=4, lr=5e-2)).load_checkpoint()
    with pytest.raises(ckpt.CheckpointError, match="seed=1 here, 0"):
        gpt_trainer(config(tmp_path, max_steps=4, seed=1)).load_checkpoint()
    with pytest.raises(ckpt.CheckpointError, match="n_head=2 here, 4 in the checkpoint"):
        gpt_trainer(cfg, n_head=2).load_checkpoint()  # same shapes, another function


def test_resume_accepts_the_fields_that_may_change(tmp_path):
    cfg = config(tmp_path, max_steps=4)
    gpt_trainer(cfg).fit()
    same = gpt_trainer(config(tmp_path, max_steps=4, eval_every=1, log_every=1, progress=True, keep_last=1,
                              checkpoint_every=1, device="cpu"))
    same.load_checkpoint()
    longer = gpt_trainer(config(tmp_path, max_steps=12))
    with pytest.warns(UserWarning, match="cosine schedule now ends at step 12"):
        longer.load_checkpoint()
    h = longer.fit()
    cfg12 = longer.config
    expected = [T.lr_at(s - 1, cfg12.lr, cfg12.min_lr, cfg12.warmup_steps, 12) for s in h.step[-4:]]
    assert h.lr[-4:] == pytest.approx(expected)


# ----------------------------------------------------------------------------- 6. targets
def run_one(model, x, y, **kw):
    cfg = T.TrainConfig(max_steps=1, warmup_steps=0, progress=False, eval_every=None, **kw)
    return T.Trainer(model, cfg, lambda g: (x, y)).fit()


@pytest.mark.parametrize("case, error, match", [
    ("all_ignored", ValueError, r"every target is -100 \(ignored\)"),
    ("float", TypeError, r"torch.float32 \(first value 3.7"),
    ("too_big", ValueError, r"in \[0, 16\) \(vocab_size\) or -100 \(ignored\), got \[16\]"),
    ("minus_one", ValueError, r"got \[-1\]"),
    ("below", ValueError, r"got \[-101\]"),
    ("empty", ValueError, "empty batch"),
])
def test_bad_targets_are_named_before_the_step(case, error, match):
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=V, block_size=8, n_layer=1, n_head=2, n_embd=16))
    x = torch.randint(V, (2, 8))
    y = {"all_ignored": torch.full((2, 8), -100), "float": torch.full((2, 8), 3.7),
         "too_big": x.clone().fill_(V), "minus_one": x.clone().fill_(-1), "below": x.clone().fill_(-101),
         "empty": x[:0]}[case]
    if case == "empty":
        x = x[:0]
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(error, match=match):
        run_one(model, x, y)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_a_model_without_config_learns_its_classes_from_the_logits():
    x = torch.randint(V, (2, 8))
    good, bad = (x, x), (x, x.clone().fill_(V))
    batches = iter([good, bad])
    cfg = T.TrainConfig(max_steps=2, warmup_steps=0, progress=False, eval_every=None)
    with pytest.raises(ValueError, match=r"in \[0, 16\) \(the model's classes\) or -100 \(ignored\), got \[16\]"):
        T.Trainer(TinyLM(), cfg, batches).fit()
    run_one(TinyLM(), x, x.clone().masked_fill_(x > 3, -100))  # some ignored: fine


# ----------------------------------------------------------------------------- 7. unusable checkpoint_dir
def test_an_unusable_checkpoint_dir_fails_before_step_1(tmp_path):
    calls = []
    data = T.token_batches(tokens(), 8, 4)
    a_file = tmp_path / "a_file"
    a_file.write_text("not a folder")
    for target, match in ((a_file, "is a file, not a folder"), (a_file / "sub", "cannot be created")):
        tr = trainer(config(tmp_path, checkpoint_dir=target), lambda g: calls.append(1) or data(g))
        with pytest.raises(ckpt.CheckpointError, match=match):
            tr.fit()
    if os.geteuid() != 0:  # root writes anywhere
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o500)
        with pytest.raises(ckpt.CheckpointError, match="not writable"):
            trainer(config(tmp_path, checkpoint_dir=locked), lambda g: calls.append(1) or data(g)).fit()
    assert not calls


# ----------------------------------------------------------------------------- 8. pickled payload
class Payload:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


@pytest.mark.parametrize("fix_manifest", [False, True])
def test_a_pickled_state_is_not_loaded_and_no_unsafe_advice_is_given(tmp_path, fix_manifest):
    folder = ckpt.save(tmp_path, 1, nn.Linear(2, 2), {})
    marker = tmp_path / "code_ran"
    torch.save({"format": ckpt.FORMAT, "evil": Payload(marker)}, folder / ckpt.STATE)
    if fix_manifest:  # a forged manifest: the hash matches, the unpickler must still refuse
        manifest = json.loads((folder / ckpt.MANIFEST).read_text())
        manifest["sha256"][ckpt.STATE] = ckpt.sha256_of(folder / ckpt.STATE)
        (folder / ckpt.MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(ckpt.CheckpointError, match="not a course checkpoint" if fix_manifest else "does not match") as err:
        ckpt.read(folder)
    assert "weights_only" not in str(err.value) and err.value.__cause__ is None
    assert not marker.exists()
