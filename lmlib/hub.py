"""Published GPT-2 checkpoints from the Hugging Face Hub, loaded into :class:`lmlib.model.GPT`.

Derived in chapter 4 ("Pretraining", notebook 04). The conversion of the weights is chapter 3's
:func:`lmlib.pretrained.gpt_from_hf_state_dict`; this module adds the two files a checkpoint on
the Hub consists of, ``config.json`` (the sizes) and ``model.safetensors`` (the tensors), fetched
with ``huggingface_hub.hf_hub_download`` (which caches them under ``~/.cache/huggingface``) or
read from a local folder with the same layout, e.g. one written by
``transformers.GPT2LMHeadModel.save_pretrained``. The tokenizer comes the same way, from the Hub
or from the files a tokenizer's ``save_pretrained`` writes into the folder. Chapter 5 fine-tunes
GPT-2 through :func:`gpt2_or_skip`, which says in one short line why it skipped when offline;
the tests run the same functions on a small random checkpoint with GPT-2's layout.

A damaged file never loads quietly: a ``config.json`` that is not a GPT-2 config, or a
``model.safetensors`` that is empty, cut short, a pickle, or differs from the sha256 the Hub cache
names it by, raises ``ValueError`` naming the file and saying how to get a good copy. A file in a
local folder has no such checksum; a weight damaged into NaN or infinity is still caught.

API::

    load_gpt2(name_or_folder="gpt2", revision=None) -> GPT     # on the CPU, in evaluation mode; ValueError names a bad file
    load_gpt2_tokenizer(name_or_folder="gpt2", revision=None) -> GPT2TokenizerFast
    load_gpt2_and_tokenizer(name_or_folder="gpt2", revision=None) -> (GPT, GPT2TokenizerFast)
    gpt2_or_skip(name_or_folder="gpt2", enabled=True, revision=None) -> ((GPT, tokenizer) or None, reason)
    checkpoint_files(name_or_folder="gpt2", revision=None) -> (config.json path, model.safetensors path)
    read_config(path) -> GPTConfig                             # ValueError naming the file and the field
    hub_reachable(timeout=3.0) -> bool                         # a quick check before downloading
    GPT2_SIZES: the four published GPT-2 checkpoints on the Hub
    HubUnavailable: raised when the files can be neither downloaded nor found in the cache
"""
from __future__ import annotations

import json
import re
import socket
from pathlib import Path
from types import SimpleNamespace

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from transformers import GPT2TokenizerFast

from lmlib.data import cached_sha256
from lmlib.model import GPT, GPTConfig
from lmlib.presets import scale
from lmlib.pretrained import config_from_hf, gpt_from_hf_state_dict

__all__ = ["load_gpt2", "load_gpt2_tokenizer", "load_gpt2_and_tokenizer", "gpt2_or_skip", "checkpoint_files",
           "read_config", "hub_reachable", "GPT2_SIZES", "HubUnavailable"]

CONFIG, WEIGHTS = "config.json", "model.safetensors"
# A tokenizer folder holds the fast tokenizer's tokenizer.json, or the vocabulary and merges of GPT-2's BPE.
TOKENIZER_FILES = (("tokenizer.json",), ("vocab.json", "merges.txt"))
HUB_HOST = "huggingface.co"
# The sizes a GPT-2 config.json must give, and the other names transformers accepts for them.
SIZES = ("vocab_size", "n_positions", "n_layer", "n_head", "n_embd")
SIZE_ALIASES = {"n_positions": "max_position_embeddings", "n_layer": "num_hidden_layers",
                "n_head": "num_attention_heads", "n_embd": "hidden_size"}
# How a pickle starts: torch.save's zip archive, or a bare pickle (protocol 2 and later).
PICKLE_MAGIC = (b"PK\x03\x04", b"\x80\x02", b"\x80\x03", b"\x80\x04", b"\x80\x05")
# The repository names OpenAI's GPT-2 weights have on the Hub, smallest first (124M to 1.5B parameters).
GPT2_SIZES = ("gpt2", "gpt2-medium", "gpt2-large", "gpt2-xl")


class HubUnavailable(OSError):
    """The checkpoint could not be downloaded (no network?) and is not in the local cache."""


def hub_reachable(timeout: float = 3.0) -> bool:
    """True if a connection to the Hub opens within ``timeout`` seconds.

    ``hf_hub_download`` retries for about half a minute before giving up offline; this check
    answers at once when there is no network, so a notebook can choose another path quickly.
    """
    try:
        with socket.create_connection((HUB_HOST, 443), timeout=timeout):
            return True
    except OSError:
        return False


def _folder_or_name(name_or_folder: str | Path) -> Path | str:
    """An existing folder as a Path, else a Hub name; a path that is not a folder is an error."""
    folder = Path(name_or_folder)
    if folder.is_dir():
        return folder
    name = str(name_or_folder)
    if name.startswith((".", "/", "~")) or "\\" in name:
        raise FileNotFoundError(f"No folder at {name}; pass an existing folder or a Hub name such as 'gpt2'.")
    return name


def _unavailable(what: str, name: str, err: Exception) -> HubUnavailable:
    """The error for a download that failed: what, from where, why, and what to do instead."""
    return HubUnavailable(
        f"Could not get {what} of '{name}' from the Hugging Face Hub ({type(err).__name__}: "
        f"{str(err)[:200]}). Check the name (e.g. one of {GPT2_SIZES}) and your internet "
        "connection, or pass a local folder written by save_pretrained."
    )


def checkpoint_files(name_or_folder: str | Path = "gpt2", revision: str | None = None) -> tuple[Path, Path]:
    """Local paths of ``config.json`` and ``model.safetensors``: from a folder, else from the Hub (cached)."""
    source = _folder_or_name(name_or_folder)
    if isinstance(source, Path):
        files = source / CONFIG, source / WEIGHTS
        missing = [f.name for f in files if not f.is_file()]
        if missing:
            raise FileNotFoundError(
                f"{source} lacks {', '.join(missing)}: a checkpoint folder needs {CONFIG} and {WEIGHTS} "
                "(what save_pretrained writes with safe_serialization=True)."
            )
        return files
    from huggingface_hub import hf_hub_download

    paths = []
    for filename in (CONFIG, WEIGHTS):
        try:
            paths.append(Path(hf_hub_download(repo_id=source, filename=filename, revision=revision)))
        except Exception as err:  # offline, unknown repository, missing file: say which and what to do
            raise _unavailable(filename, source, err) from err
    return paths[0], paths[1]


def _redo(path: Path) -> str:
    """What to do about a damaged checkpoint file: fetch it again (a Hub cache entry) or write it again."""
    real = path.resolve()
    if real.parent.name == "blobs" and real.parent.parent.name.startswith("models--"):
        return (f"delete the cached copy {real} and load again, which downloads it afresh "
                "(or pass force_download=True to huggingface_hub.hf_hub_download).")
    return ("copy or download it again, or write the folder again with "
            "save_pretrained(folder, safe_serialization=True).")


def read_config(path: str | Path) -> GPTConfig:
    """The :class:`GPTConfig` described by a GPT-2 ``config.json`` (no ``transformers`` needed).

    Reads the names ``transformers`` reads (``n_head`` or ``num_attention_heads`` and the like) and
    raises ``ValueError`` naming the file for a file that is not a JSON object, lacks a size, or
    sets a field the course's GPT cannot honour (see :func:`lmlib.pretrained.config_from_hf`).
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise ValueError(f"{path} is not UTF-8 text ({err.reason} at byte {err.start}), so not a config.json: "
                         + _redo(path)) from err
    if not text.strip():
        raise ValueError(f"{path} is empty: " + _redo(path))
    try:
        raw = json.loads(text)
    except json.JSONDecodeError as err:
        raise ValueError(f"{path} is not valid JSON ({err.msg}, line {err.lineno} column {err.colno}): "
                         + _redo(path)) from err
    if not isinstance(raw, dict):
        raise ValueError(f"{path} holds a JSON {type(raw).__name__}, where a config.json holds an object of "
                         "fields ({\"n_embd\": 768, ...}): " + _redo(path))
    if raw.get("model_type", "gpt2") != "gpt2":
        raise ValueError(f"{path} describes a {raw['model_type']!r} model; load_gpt2 reads GPT-2 checkpoints only.")
    for ours, theirs in SIZE_ALIASES.items():  # transformers takes the second name over the first
        if theirs in raw:
            if ours in raw and raw[ours] != raw[theirs]:
                raise ValueError(f"{path} sets {ours}={raw[ours]!r} and {theirs}={raw[theirs]!r}, two names of one "
                                 "size: keep one of them.")
            raw[ours] = raw.pop(theirs)
    missing = [k for k in SIZES if k not in raw]
    if missing:
        raise ValueError(f"{path} lacks {missing}: is it the config.json of a GPT-2 checkpoint?")
    for k in SIZES:
        if not isinstance(raw[k], int) or isinstance(raw[k], bool) or raw[k] < 1:
            raise ValueError(f"{path} sets {k}={raw[k]!r}, which must be a positive integer.")
    try:
        return config_from_hf(SimpleNamespace(**raw))
    except ValueError as err:
        raise ValueError(f"{path}: {err}") from err


def _read_weights(path: Path) -> dict[str, torch.Tensor]:
    """The tensors of a ``model.safetensors``, or a ``ValueError`` naming the file and what to do."""
    if path.stat().st_size == 0:
        raise ValueError(f"{path} is empty (0 bytes): " + _redo(path))
    expected = path.resolve().name
    if path.resolve().parent.name == "blobs" and re.fullmatch(r"[0-9a-f]{64}", expected):
        # The Hub cache names a large file after its sha256: a check that the copy is whole
        # (hashed once per process while the file is unchanged).
        actual = cached_sha256(path)
        if actual != expected:
            raise ValueError(f"{path} is damaged: its sha256 is {actual}, the Hub's is {expected}. " + _redo(path))
    try:
        return load_file(path)
    except (SafetensorError, OSError, ValueError) as err:
        with path.open("rb") as f:
            head = f.read(4)
        if head.startswith(PICKLE_MAGIC):
            raise ValueError(f"{path} holds a pickle (PyTorch's torch.save format), not safetensors. load_gpt2 "
                             "reads only safetensors, because loading a pickle can run any code it contains; get "
                             "the model.safetensors of this checkpoint instead (save_pretrained writes it with "
                             "safe_serialization=True).") from err
        raise ValueError(f"{path} is not a readable safetensors file, truncated or damaged ({err}): "
                         + _redo(path)) from err


def load_gpt2(name_or_folder: str | Path = "gpt2", revision: str | None = None) -> GPT:
    """A :class:`GPT` holding a published GPT-2 checkpoint (a Hub name) or a local copy (a folder).

    ``load_gpt2("gpt2")`` downloads about 550 MB once (the 124M-parameter model in float32) and
    then reads it from the cache. Raises :class:`HubUnavailable` when offline with an empty cache,
    and ``ValueError`` naming the file when ``config.json`` or ``model.safetensors`` is damaged, the
    config asks for something the course's GPT does not do, or the tensors do not fit the config.
    """
    config_path, weights_path = checkpoint_files(name_or_folder, revision)
    config = read_config(config_path)
    state_dict = _read_weights(weights_path)
    try:
        return gpt_from_hf_state_dict(state_dict, config)
    except (KeyError, ValueError) as err:
        raise ValueError(f"{weights_path} does not fit {config_path.name}: {err.args[0]}") from err


def load_gpt2_tokenizer(name_or_folder: str | Path = "gpt2", revision: str | None = None) -> GPT2TokenizerFast:
    """GPT-2's byte-level BPE tokenizer (``transformers.GPT2TokenizerFast``) from the Hub or a folder.

    A folder needs what a tokenizer's ``save_pretrained`` writes: ``tokenizer.json``, or
    ``vocab.json`` and ``merges.txt``. Its ``eos_token_id`` is ``<|endoftext|>`` (50256).
    """
    source = _folder_or_name(name_or_folder)
    if isinstance(source, Path):
        if not any(all((source / f).is_file() for f in files) for files in TOKENIZER_FILES):
            raise FileNotFoundError(
                f"{source} holds no tokenizer: it needs tokenizer.json, or vocab.json and merges.txt "
                "(what a tokenizer's save_pretrained writes into the checkpoint folder)."
            )
        return GPT2TokenizerFast.from_pretrained(source)
    try:
        return GPT2TokenizerFast.from_pretrained(source, revision=revision)
    except OSError as err:  # transformers reports a failed download or a missing file as an OSError
        raise _unavailable("the tokenizer", source, err) from err


def load_gpt2_and_tokenizer(name_or_folder: str | Path = "gpt2",
                            revision: str | None = None) -> tuple[GPT, GPT2TokenizerFast]:
    """GPT-2 in our :class:`GPT` (on the CPU, in evaluation mode) and its tokenizer, from one source."""
    return load_gpt2(name_or_folder, revision), load_gpt2_tokenizer(name_or_folder, revision)


def gpt2_or_skip(name_or_folder: str | Path = "gpt2", enabled: bool = True,
                 revision: str | None = None) -> tuple[tuple[GPT, GPT2TokenizerFast] | None, str]:
    """``((model, tokenizer), "loaded")``, or ``(None, why it was skipped)`` for a section that may run offline.

    Skips when ``enabled`` is False (a preset that leaves GPT-2 out), when a Hub name is given and
    the Hub cannot be reached (checked first, so an offline run answers at once), and when the
    files cannot be loaded. A local folder is read without any network.
    """
    if not enabled:
        return None, f"GPT-2 skipped: switched off at the {scale()} preset"
    source = _folder_or_name(name_or_folder)
    if isinstance(source, str) and not hub_reachable():
        return None, f"GPT-2 skipped: no network to {HUB_HOST}"
    try:
        return load_gpt2_and_tokenizer(source, revision), "loaded"
    except (OSError, ValueError, KeyError) as err:  # download failed, or not a GPT-2 checkpoint
        return None, f"GPT-2 skipped: it could not be loaded ({type(err).__name__}: {str(err)[:200]})"
