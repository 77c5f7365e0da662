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

API::

    load_gpt2(name_or_folder="gpt2", revision=None) -> GPT     # on the CPU, in evaluation mode
    load_gpt2_tokenizer(name_or_folder="gpt2", revision=None) -> GPT2TokenizerFast
    load_gpt2_and_tokenizer(name_or_folder="gpt2", revision=None) -> (GPT, GPT2TokenizerFast)
    gpt2_or_skip(name_or_folder="gpt2", enabled=True, revision=None) -> ((GPT, tokenizer) or None, reason)
    checkpoint_files(name_or_folder="gpt2", revision=None) -> (config.json path, model.safetensors path)
    read_config(path) -> GPTConfig
    hub_reachable(timeout=3.0) -> bool                         # a quick check before downloading
    GPT2_SIZES: the four published GPT-2 checkpoints on the Hub
    HubUnavailable: raised when the files can be neither downloaded nor found in the cache
"""
from __future__ import annotations

import json
import socket
from pathlib import Path
from types import SimpleNamespace

from safetensors.torch import load_file
from transformers import GPT2TokenizerFast

from lmlib.model import GPT, GPTConfig
from lmlib.presets import scale
from lmlib.pretrained import config_from_hf, gpt_from_hf_state_dict

__all__ = ["load_gpt2", "load_gpt2_tokenizer", "load_gpt2_and_tokenizer", "gpt2_or_skip", "checkpoint_files",
           "read_config", "hub_reachable", "GPT2_SIZES", "HubUnavailable"]

CONFIG, WEIGHTS = "config.json", "model.safetensors"
# A tokenizer folder holds the fast tokenizer's tokenizer.json, or the vocabulary and merges of GPT-2's BPE.
TOKENIZER_FILES = (("tokenizer.json",), ("vocab.json", "merges.txt"))
HUB_HOST = "huggingface.co"
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


def read_config(path: str | Path) -> GPTConfig:
    """The :class:`GPTConfig` described by a GPT-2 ``config.json`` (no ``transformers`` needed)."""
    raw = json.loads(Path(path).read_text())
    if raw.get("model_type", "gpt2") != "gpt2":
        raise ValueError(f"{path} describes a {raw['model_type']!r} model; load_gpt2 reads GPT-2 checkpoints only.")
    missing = [k for k in ("vocab_size", "n_positions", "n_layer", "n_head", "n_embd") if k not in raw]
    if missing:
        raise ValueError(f"{path} lacks {missing}: is it the config.json of a GPT-2 checkpoint?")
    return config_from_hf(SimpleNamespace(**{"activation_function": "gelu_new", **raw}))


def load_gpt2(name_or_folder: str | Path = "gpt2", revision: str | None = None) -> GPT:
    """A :class:`GPT` holding a published GPT-2 checkpoint (a Hub name) or a local copy (a folder).

    ``load_gpt2("gpt2")`` downloads about 550 MB once (the 124M-parameter model in float32) and
    then reads it from the cache. Raises :class:`HubUnavailable` when offline with an empty cache.
    """
    config_path, weights_path = checkpoint_files(name_or_folder, revision)
    config = read_config(config_path)
    return gpt_from_hf_state_dict(load_file(weights_path), config)


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
