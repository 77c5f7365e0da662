"""Training checkpoints: written atomically, checked completely before anything is loaded.

Derived in chapter 4 ("Pretraining"), where :class:`lmlib.train.Trainer` uses it for exact resume.

A checkpoint is a folder ``<checkpoint_dir>/step_00000100/`` holding two files:

- ``model.safetensors``: the weights. safetensors holds tensors only, so loading it cannot run
  code (a pickled ``.pt`` file can). Tensors that share memory (tied embeddings) are stored once
  and their other names are recorded in the file's metadata.
- ``state.pt``: everything else (optimizer, scheduler, grad scaler, random number generators,
  data position, history) as plain containers of tensors and numbers, so that
  ``torch.load(path, weights_only=True)`` reads it. It also records the sha256 of the weights
  file, so a truncated, corrupt or swapped weights file is detected before any load.

Writing goes to a hidden temporary folder that is renamed into place at the end: a crash or a
full disk can leave a stray ``.step_*.tmp-*`` folder behind, never a half-written checkpoint.

API::

    CheckpointError                                              a checkpoint that cannot be used
    WEIGHTS, STATE, FORMAT                                       file names and format version
    split_shared(state_dict) -> (unique tensors, {alias: name})  tied weights stored once
    save(directory, step, model, state, keep_last=None) -> Path
    all_checkpoints(directory) -> list[Path]; resolve(path) -> Path
    read(path) -> (weights: dict[str, Tensor], state: dict)      # both files checked
    check_weights(weights, model) -> None                        # keys and shapes, else CheckpointError
    latest(directory) -> Path | None
    rng_state() -> dict; set_rng_state(state)                    # torch, CUDA, Python, NumPy
    check_trainer_state(state, optimizer, world_size) -> None    # before anything is applied
"""
from __future__ import annotations

import json
import os
import random
import shutil
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from lmlib.data import sha256_of

WEIGHTS = "model.safetensors"
STATE = "state.pt"
FORMAT = 1

__all__ = [
    "CheckpointError", "WEIGHTS", "STATE", "FORMAT", "split_shared", "save", "all_checkpoints",
    "latest", "resolve", "read", "check_weights", "rng_state", "set_rng_state",
    "check_trainer_state",
]


class CheckpointError(RuntimeError):
    """A checkpoint is missing, damaged or does not fit the model; nothing was loaded."""


def _step_dir(directory: Path, step: int) -> Path:
    return directory / f"step_{step:08d}"


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # some platforms (Windows) cannot open folders; the rename is still atomic
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _fsync_file(path: Path) -> None:
    with open(path, "rb+") as f:
        os.fsync(f.fileno())


def split_shared(state_dict: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Store each block of memory once: returns (unique tensors, {alias name: stored name})."""
    unique: dict[str, torch.Tensor] = {}
    aliases: dict[str, str] = {}
    seen: dict[tuple, str] = {}
    for name, tensor in state_dict.items():
        key = (tensor.device, tensor.untyped_storage().data_ptr(), tensor.storage_offset(),
               tuple(tensor.shape), tuple(tensor.stride()), tensor.dtype)
        if tensor.numel() > 0 and key in seen:
            aliases[name] = seen[key]
        else:
            seen[key] = name
            unique[name] = tensor.detach().cpu().contiguous()
    return unique, aliases


def save(
    directory: str | Path,
    step: int,
    model: torch.nn.Module,
    state: dict,
    keep_last: int | None = None,
) -> Path:
    """Write ``model``'s weights and ``state`` as checkpoint ``step`` under ``directory``; return its folder.

    ``keep_last`` deletes all but the newest ``keep_last`` checkpoints afterwards.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    final = _step_dir(directory, step)
    tmp = directory / f".{final.name}.tmp-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    try:
        tensors, aliases = split_shared(model.state_dict())
        save_file(tensors, tmp / WEIGHTS, metadata={"format": str(FORMAT), "aliases": json.dumps(aliases)})
        _fsync_file(tmp / WEIGHTS)
        full_state = dict(state, format=FORMAT, step=step, weights_sha256=sha256_of(tmp / WEIGHTS))
        with open(tmp / STATE, "wb") as f:
            torch.save(full_state, f)
            f.flush()
            os.fsync(f.fileno())
        _fsync_dir(tmp)
        if final.exists():  # saving the same step again: move the old copy aside first
            old = directory / f".{final.name}.old-{os.getpid()}"
            os.replace(final, old)
            os.replace(tmp, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, final)
        _fsync_dir(directory)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if keep_last is not None:
        for old in all_checkpoints(directory)[:-keep_last]:
            shutil.rmtree(old, ignore_errors=True)
    return final


def all_checkpoints(directory: str | Path) -> list[Path]:
    """Complete checkpoint folders under ``directory``, oldest first (temporary folders ignored)."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    found = []
    for sub in directory.glob("step_*"):
        suffix = sub.name[len("step_"):]
        if sub.is_dir() and suffix.isdigit() and (sub / WEIGHTS).is_file() and (sub / STATE).is_file():
            found.append((int(suffix), sub))
    return [path for _, path in sorted(found)]


def latest(directory: str | Path) -> Path | None:
    """The newest complete checkpoint under ``directory``, or None."""
    found = all_checkpoints(directory)
    return found[-1] if found else None


def resolve(path: str | Path) -> Path:
    """A checkpoint folder from either the folder itself or a ``checkpoint_dir`` (its newest one)."""
    path = Path(path)
    if (path / STATE).exists() or (path / WEIGHTS).exists():
        return path
    newest = latest(path)
    if newest is None:
        raise CheckpointError(
            f"No checkpoint found at {path}: expected a folder holding {WEIGHTS} and {STATE}, or a "
            "checkpoint_dir holding step_* folders. Train with checkpoint_dir set to write one."
        )
    return newest


def read(path: str | Path) -> tuple[dict[str, torch.Tensor], dict]:
    """Read and verify a checkpoint: returns (weights with aliases restored, state). Loads nothing."""
    folder = resolve(path)
    weights_file, state_file = folder / WEIGHTS, folder / STATE
    for file in (weights_file, state_file):
        if not file.is_file():
            raise CheckpointError(f"Checkpoint {folder} is incomplete: {file.name} is missing.")
    try:
        state = torch.load(state_file, map_location="cpu", weights_only=True)
    except Exception as err:  # truncated zip, wrong file, pickled code: all unreadable here
        raise CheckpointError(
            f"{state_file} cannot be read ({type(err).__name__}: {err}). The file is truncated or "
            "corrupt; resume from an earlier checkpoint."
        ) from err
    if not isinstance(state, dict) or state.get("format") != FORMAT or "weights_sha256" not in state:
        raise CheckpointError(f"{state_file} is not an lmlib checkpoint state (format {FORMAT}).")
    actual = sha256_of(weights_file)
    if actual != state["weights_sha256"]:
        raise CheckpointError(
            f"{weights_file} does not match its {STATE} (sha256 {actual[:12]}..., expected "
            f"{state['weights_sha256'][:12]}...): the weights file is truncated, corrupt or from "
            "another checkpoint. Resume from an earlier checkpoint."
        )
    try:
        weights = load_file(weights_file)
        with open(weights_file, "rb") as f:  # the aliases live in the header's metadata
            header_len = int.from_bytes(f.read(8), "little")
            meta = json.loads(f.read(header_len)).get("__metadata__", {})
        aliases = json.loads(meta.get("aliases", "{}"))
    except (SafetensorError, OSError, ValueError) as err:
        raise CheckpointError(f"{weights_file} cannot be read ({err}); it is corrupt.") from err
    for alias, name in aliases.items():
        weights[alias] = weights[name]
    return weights, state


def check_weights(weights: dict[str, torch.Tensor], model: torch.nn.Module) -> None:
    """Raise CheckpointError unless ``weights`` has exactly ``model``'s keys, shapes and dtypes."""
    expected = model.state_dict()
    missing = sorted(set(expected) - set(weights))
    unexpected = sorted(set(weights) - set(expected))
    wrong = [
        f"{k}: checkpoint {tuple(weights[k].shape)} {weights[k].dtype}, model {tuple(v.shape)} {v.dtype}"
        for k, v in expected.items()
        if k in weights and (weights[k].shape != v.shape or weights[k].dtype != v.dtype)
    ]
    if missing or unexpected or wrong:
        parts = []
        if missing:
            parts.append(f"missing from the checkpoint: {', '.join(missing[:5])}" + (" ..." if len(missing) > 5 else ""))
        if unexpected:
            parts.append(f"not in the model: {', '.join(unexpected[:5])}" + (" ..." if len(unexpected) > 5 else ""))
        if wrong:
            parts.append("different shapes or dtypes: " + "; ".join(wrong[:5]))
        raise CheckpointError(
            "The checkpoint does not fit this model (" + " | ".join(parts) + "). Build the model with "
            "the configuration the checkpoint was trained with. Nothing was loaded."
        )


def rng_state() -> dict:
    """Every global random generator a training step may use (torch, CUDA, Python, NumPy)."""
    np_state = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "python": random.getstate(),
        "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]],
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    """Restore what :func:`rng_state` captured."""
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    kind, keys, *rest = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), *rest))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def check_trainer_state(state: dict, optimizer: torch.optim.Optimizer, world_size: int) -> None:
    """Raise CheckpointError unless ``state`` can be loaded into ``optimizer`` for ``world_size`` processes."""
    def fail(why: str) -> CheckpointError:
        return CheckpointError(f"The checkpoint's training state does not fit this trainer: {why}. Nothing was loaded.")

    for key in ("optimizer", "scheduler", "scaler", "ranks", "history", "step"):
        if key not in state:
            raise fail(f"it has no {key!r} entry")
    if len(state["ranks"]) != world_size:
        raise fail(f"it was written by {len(state['ranks'])} process(es), this run has {world_size}")
    saved = state["optimizer"]
    groups = optimizer.param_groups
    if len(saved.get("param_groups", [])) != len(groups):
        raise fail(f"{len(saved.get('param_groups', []))} optimizer groups, expected {len(groups)}")
    for mine, theirs in zip(groups, saved["param_groups"]):
        if mine.get("names") != theirs.get("names"):
            raise fail(f"the {mine.get('group')} group holds other parameters")
        for p, index in zip(mine["params"], theirs["params"]):
            for name, value in saved["state"].get(index, {}).items():
                if isinstance(value, torch.Tensor) and value.dim() > 0 and value.shape != p.shape:
                    raise fail(f"optimizer {name} of shape {tuple(value.shape)} for a parameter of shape {tuple(p.shape)}")
