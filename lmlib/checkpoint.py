"""Training checkpoints: written atomically, checked completely before anything is loaded.

Derived in chapter 4 ("Pretraining"), where :class:`lmlib.train.Trainer` uses it for exact resume.

A checkpoint is a folder ``<checkpoint_dir>/step_00000100/`` holding three files:

- ``model.safetensors``: the weights. safetensors holds tensors only, so loading it cannot run
  code (a pickled ``.pt`` file can). Tensors that share memory (tied embeddings) are stored once
  and their other names are recorded in the file's metadata.
- ``state.pt``: everything else (optimizer, scheduler, grad scaler, random number generators,
  data position, history, the training and model configurations) as plain containers of
  tensors and numbers, so that ``torch.load(path, weights_only=True)`` reads it.
- ``manifest.json``: the format and the sha256 of the other two files, written last. A
  truncated, corrupt or swapped file is detected before anything is loaded.

Writing goes to a hidden folder ``.step_*.tmp-<pid>`` that is renamed into place at the end, so
a crash or a full disk never leaves a half-written checkpoint. Saving a step that exists moves
the old copy aside (``.step_*.old-<pid>``) for a moment; if the process dies in between, the
next :func:`all_checkpoints` (and so :func:`latest` and :func:`save`) puts the complete copy
back in place and deletes what a dead process left behind. Weights that are not finite (nan,
inf) are never saved, and ``keep_last`` only ever deletes checkpoints older than the one just
written. Reading a ``checkpoint_dir`` (rather than one checkpoint folder) falls back to the
newest checkpoint that passes every check, with a warning naming each damaged one it skipped.

API::

    CheckpointError                                              a checkpoint that cannot be written or used
    WEIGHTS, STATE, MANIFEST, FORMAT                             file names and format version
    split_shared(state_dict) -> (unique tensors, {alias: name})  tied weights stored once
    check_writable(directory) -> Path                            a folder checkpoints can be written into
    save(directory, step, model, state, keep_last=None) -> Path
    all_checkpoints(directory) -> list[Path]; resolve(path) -> Path; step_of(folder) -> int
    read(path) -> (weights: dict[str, Tensor], state: dict)      # every file checked
    read_valid(path) -> (folder, weights, state)                 # a checkpoint_dir: newest valid one
    check_weights(weights, model) -> None                        # keys and shapes, else CheckpointError
    latest(directory) -> Path | None
    model_config(model) -> dict | None                           # model.config (a dataclass) as plain values
    check_model_config(saved, model) -> None                     # same architecture, else CheckpointError
    rng_state() -> dict; set_rng_state(state)                    # torch, CUDA, Python, NumPy
    check_trainer_state(state, optimizer, world_size) -> None    # before anything is applied
"""
from __future__ import annotations

import dataclasses
import json
import numbers
import os
import pickle
import random
import re
import shutil
import warnings
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from lmlib.data import sha256_of

WEIGHTS = "model.safetensors"
STATE = "state.pt"
MANIFEST = "manifest.json"
FORMAT = 2

# Model config fields that may differ on resume: they change no weight's meaning.
_MODEL_FIELDS_MAY_CHANGE = ("dropout", "fast")
_LEFTOVER = re.compile(r"^\.(step_\d+)\.(tmp|old)-(\d+)$")

__all__ = [
    "CheckpointError", "WEIGHTS", "STATE", "MANIFEST", "FORMAT", "split_shared", "check_writable", "save",
    "all_checkpoints", "step_of", "latest", "resolve", "read", "read_valid", "check_weights", "model_config",
    "check_model_config", "rng_state", "set_rng_state", "check_trainer_state",
]


class CheckpointError(RuntimeError):
    """A checkpoint cannot be written, or is missing, damaged or does not fit; nothing was loaded."""


def _step_dir(directory: Path, step: int) -> Path:
    return directory / f"step_{step:08d}"


def step_of(folder: Path) -> int:
    """The step of a checkpoint folder ``step_00000100`` (here 100)."""
    return int(folder.name[len("step_"):])


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


def _write_synced(path: Path, write) -> None:
    with open(path, "wb") as f:
        write(f)
        f.flush()
        os.fsync(f.fileno())


def _complete(folder: Path) -> bool:
    return folder.is_dir() and all((folder / name).is_file() for name in (WEIGHTS, STATE, MANIFEST))


def _alive(pid: int) -> bool:
    """Whether process ``pid`` still runs (so its temporary folders are in use). Unsure: True."""
    if pid == os.getpid() or os.name == "nt":  # Windows' os.kill(pid, 0) would stop the process
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # e.g. PermissionError: it exists, under another user
        return True
    return True


def _recover(directory: Path) -> None:
    """Finish or undo what a dead process left: an interrupted re-save, stale temporary folders.

    Saving an existing step renames ``step_N`` to ``.step_N.old-PID`` and then the finished
    ``.step_N.tmp-PID`` to ``step_N``. A process killed between the two renames leaves no
    ``step_N``: the new copy (complete, since its manifest is written last) or else the old one
    is put back. Every other leftover of a dead process is deleted. Leftovers of a live process
    are left alone (it may be saving right now).
    """
    groups: dict[str, dict[str, list[Path]]] = {}
    for sub in directory.glob(".step_*"):
        match = _LEFTOVER.match(sub.name)
        if match and sub.is_dir() and not _alive(int(match.group(3))):
            groups.setdefault(match.group(1), {"tmp": [], "old": []})[match.group(2)].append(sub)
    for name, found in groups.items():
        final = directory / name
        try:
            if not final.exists() and found["old"]:  # a re-save died between its two renames
                for candidate in found["tmp"] + found["old"]:  # the new copy first
                    if _complete(candidate):
                        os.replace(candidate, final)
                        _fsync_dir(directory)
                        break
            for leftover in found["tmp"] + found["old"]:
                if leftover.exists():
                    shutil.rmtree(leftover, ignore_errors=True)
        except OSError:  # a read-only folder: leave it as it is
            pass


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


def check_writable(directory: str | Path) -> Path:
    """Create ``directory`` if needed and check that checkpoints can be written into it.

    Raises CheckpointError naming the folder when it is a file, cannot be created or is not
    writable, so a run can fail before its first step rather than at its first save.
    """
    directory = Path(directory)
    if directory.exists() and not directory.is_dir():
        raise CheckpointError(
            f"checkpoint_dir {directory} is a file, not a folder. Choose a folder path (it is created "
            "if it does not exist)."
        )
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise CheckpointError(
            f"checkpoint_dir {directory} cannot be created ({type(err).__name__}: {err.strerror}); a part "
            "of the path is a file or is not writable. Choose another folder."
        ) from err
    if not os.access(directory, os.W_OK | os.X_OK):
        raise CheckpointError(
            f"checkpoint_dir {directory} is not writable (read-only or owned by another user). Choose a "
            "folder you can write to."
        )
    return directory


def save(
    directory: str | Path,
    step: int,
    model: torch.nn.Module,
    state: dict,
    keep_last: int | None = None,
) -> Path:
    """Write ``model``'s weights and ``state`` as checkpoint ``step`` under ``directory``; return its folder.

    Raises CheckpointError, writing nothing, when a weight is not finite. ``keep_last`` then
    deletes checkpoints older than ``step`` until ``keep_last`` remain up to ``step``; newer
    ones are never deleted.
    """
    directory = check_writable(directory)
    tensors, aliases = split_shared(model.state_dict())
    bad = [name for name, t in tensors.items() if t.is_floating_point() and not bool(torch.isfinite(t).all())]
    if bad:
        raise CheckpointError(
            f"Checkpoint step {step} was not written: the weights {', '.join(bad[:5])}"
            f"{' ...' if len(bad) > 5 else ''} hold nan or inf (training diverged). Earlier checkpoints "
            f"in {directory} are kept; resume from one with a lower lr or with grad_clip."
        )
    _recover(directory)
    final = _step_dir(directory, step)
    tmp = directory / f".{final.name}.tmp-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    try:
        save_file(tensors, tmp / WEIGHTS, metadata={"format": str(FORMAT), "aliases": json.dumps(aliases)})
        with open(tmp / WEIGHTS, "rb+") as f:
            os.fsync(f.fileno())
        _write_synced(tmp / STATE, lambda f: torch.save(dict(state, format=FORMAT, step=step), f))
        manifest = {"format": FORMAT, "step": step,
                    "sha256": {WEIGHTS: sha256_of(tmp / WEIGHTS), STATE: sha256_of(tmp / STATE)}}
        _write_synced(tmp / MANIFEST, lambda f: f.write(json.dumps(manifest, indent=1).encode()))
        _fsync_dir(tmp)
        if final.exists():  # saving the same step again: move the old copy aside first
            old = directory / f".{final.name}.old-{os.getpid()}"
            if old.exists():
                shutil.rmtree(old)
            os.replace(final, old)
            os.replace(tmp, final)  # a crash before this line is undone by _recover
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, final)
        _fsync_dir(directory)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if keep_last is not None:
        older = [c for c in all_checkpoints(directory) if step_of(c) < step]
        for old in older[: max(0, len(older) - (keep_last - 1))]:
            shutil.rmtree(old, ignore_errors=True)
    return final


def all_checkpoints(directory: str | Path) -> list[Path]:
    """Complete checkpoint folders under ``directory``, oldest first (temporary folders ignored).

    Leftovers of a dead process's save are recovered or deleted first.
    """
    directory = Path(directory)
    if not directory.is_dir():
        return []
    _recover(directory)
    found = []
    for sub in directory.glob("step_*"):
        suffix = sub.name[len("step_"):]
        if suffix.isdigit() and _complete(sub):
            found.append((int(suffix), sub))
    return [path for _, path in sorted(found)]


def latest(directory: str | Path) -> Path | None:
    """The newest complete checkpoint under ``directory``, or None (its files are not verified)."""
    found = all_checkpoints(directory)
    return found[-1] if found else None


def _is_folder(path: Path) -> bool:
    return any((path / name).exists() for name in (WEIGHTS, STATE, MANIFEST))


def _not_found(path: Path) -> CheckpointError:
    return CheckpointError(
        f"No checkpoint found at {path}: expected a folder holding {WEIGHTS}, {STATE} and {MANIFEST}, "
        "or a checkpoint_dir holding step_* folders. Train with checkpoint_dir set to write one."
    )


def resolve(path: str | Path) -> Path:
    """A checkpoint folder from either the folder itself or a ``checkpoint_dir`` (its newest one)."""
    path = Path(path)
    if _is_folder(path):
        return path
    newest = latest(path)
    if newest is None:
        raise _not_found(path)
    return newest


def _read_folder(folder: Path) -> tuple[dict[str, torch.Tensor], dict]:
    weights_file, state_file, manifest_file = folder / WEIGHTS, folder / STATE, folder / MANIFEST
    for file in (weights_file, state_file, manifest_file):
        if not file.is_file():
            raise CheckpointError(
                f"Checkpoint {folder} is incomplete: {file.name} is missing (or it was written by an older "
                f"lmlib, before checkpoint format {FORMAT}). Resume from another checkpoint."
            )
    try:
        manifest = json.loads(manifest_file.read_text(encoding="utf-8"))
        expected = {name: str(manifest["sha256"][name]) for name in (WEIGHTS, STATE)}
        fmt = manifest["format"]
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise CheckpointError(f"{manifest_file} is damaged ({type(err).__name__}); resume from another checkpoint.") from err
    if fmt != FORMAT:
        raise CheckpointError(f"{folder} has checkpoint format {fmt!r}; this lmlib reads format {FORMAT}.")
    for file in (weights_file, state_file):
        actual = sha256_of(file)
        if actual != expected[file.name]:
            raise CheckpointError(
                f"{file} does not match {folder / MANIFEST} (sha256 {actual[:12]}..., expected "
                f"{expected[file.name][:12]}...): the file is truncated, corrupt or from another "
                "checkpoint. Resume from an earlier checkpoint."
            )
    try:
        state = torch.load(state_file, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:  # never suggest weights_only=False: that would run its code
        raise CheckpointError(
            f"{state_file} is not a course checkpoint: it holds Python objects beyond plain tensors and "
            "numbers, and a pickled file can run code when it is loaded, so it was not loaded. Use a "
            "checkpoint written by lmlib.checkpoint.save."
        ) from None
    except Exception as err:  # truncated zip, wrong kind of file
        raise CheckpointError(
            f"{state_file} cannot be read ({type(err).__name__}). The file is truncated, corrupt or not "
            "a course checkpoint; resume from an earlier checkpoint."
        ) from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointError(f"{state_file} is not a course checkpoint state (format {FORMAT}).")
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


def read_valid(path: str | Path) -> tuple[Path, dict[str, torch.Tensor], dict]:
    """Read and verify a checkpoint: returns (its folder, weights with aliases restored, state).

    ``path`` is one checkpoint folder (any damage raises CheckpointError) or a
    ``checkpoint_dir``: then the newest checkpoint that passes every check is read, and each
    newer, damaged one is skipped with a warning naming it. Loads nothing into any model.
    """
    path = Path(path)
    if _is_folder(path):
        return (path, *_read_folder(path))
    found = all_checkpoints(path)
    if not found:
        raise _not_found(path)
    problems = []
    for folder in reversed(found):
        try:
            weights, state = _read_folder(folder)
        except CheckpointError as err:
            problems.append(f"{folder.name}: {err}")
            warnings.warn(f"Skipping damaged checkpoint {folder}: {err} Falling back to an older one.",
                          stacklevel=2)
            continue
        return folder, weights, state
    raise CheckpointError(f"No readable checkpoint in {path}; every one is damaged: " + " | ".join(problems))


def read(path: str | Path) -> tuple[dict[str, torch.Tensor], dict]:
    """Read and verify a checkpoint: returns (weights with aliases restored, state). See :func:`read_valid`."""
    return read_valid(path)[1:]


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


def model_config(model: torch.nn.Module) -> dict | None:
    """``model.config`` as plain values ``{"type": class name, "fields": {...}}``, or None without one.

    Only a dataclass config is recorded (as :class:`lmlib.model.GPT` has): it names the
    architecture beyond the weights' shapes (``n_head`` 2 and 4 give the same shapes).
    """
    config = getattr(model, "config", None)
    if not dataclasses.is_dataclass(config) or isinstance(config, type):
        return None
    return {"type": type(config).__name__, "fields": _plain(dataclasses.asdict(config))}


def check_model_config(saved: dict | None, model: torch.nn.Module) -> None:
    """Raise CheckpointError unless ``model``'s config equals ``saved`` (what :func:`model_config` stored).

    ``dropout`` and ``fast`` may differ (they change no weight's meaning). A field the saved
    config lacks (one added to the class later) counts as its default. Nothing is compared when
    either side has no dataclass config.
    """
    mine = model_config(model)
    if saved is None or mine is None:
        return
    if saved.get("type") != mine["type"]:
        raise CheckpointError(
            f"The checkpoint was written for a {saved.get('type')}, this model has a {mine['type']}. Build "
            "the model the checkpoint was trained with. Nothing was loaded."
        )
    # a field added to the config class after the checkpoint was written has its default there
    defaults = {f.name: f.default for f in dataclasses.fields(model.config) if f.default is not dataclasses.MISSING}
    theirs = {**{k: _plain(v) for k, v in defaults.items()}, **saved.get("fields", {})}
    ours = mine["fields"]
    differ = [f"{k}={ours.get(k)!r} here, {theirs.get(k)!r} in the checkpoint"
              for k in sorted(set(theirs) | set(ours))
              if k not in _MODEL_FIELDS_MAY_CHANGE and _plain(theirs.get(k)) != _plain(ours.get(k))]
    if differ:
        raise CheckpointError(
            f"The checkpoint's {mine['type']} differs from this model's: {'; '.join(differ)}. The weights "
            "would load but compute another function. Build the model with the checkpoint's config, "
            f"{mine['type']}(**lmlib.checkpoint.read(path)[1]['model_config']['fields']). Nothing was loaded."
        )


def _plain(value):
    """Values ``torch.load(weights_only=True)`` reads back: lists for tuples, ``repr`` for other objects."""
    if isinstance(value, (tuple, list)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, numbers.Integral):  # NumPy integers too
        return int(value)
    if isinstance(value, numbers.Real):
        return float(value)
    return repr(value)


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
