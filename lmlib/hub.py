"""Published GPT-2 checkpoints from the Hugging Face Hub, loaded into :class:`lmlib.model.GPT`.

Derived in chapter 4 ("Pretraining", notebook 04). The conversion of the weights is chapter 3's
:func:`lmlib.pretrained.gpt_from_hf_state_dict`; this module adds the two files a checkpoint on
the Hub consists of, ``config.json`` (the sizes) and ``model.safetensors`` (the tensors), fetched
with ``huggingface_hub.hf_hub_download`` (which caches them under ``~/.cache/huggingface``) or
read from a local folder with the same layout, e.g. one written by
``transformers.GPT2LMHeadModel.save_pretrained``.

API::

    load_gpt2(name_or_folder="gpt2", revision=None) -> GPT     # on the CPU, in evaluation mode
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

from lmlib.model import GPT, GPTConfig
from lmlib.pretrained import config_from_hf, gpt_from_hf_state_dict

__all__ = ["load_gpt2", "checkpoint_files", "read_config", "hub_reachable", "GPT2_SIZES", "HubUnavailable"]

CONFIG, WEIGHTS = "config.json", "model.safetensors"
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


def checkpoint_files(name_or_folder: str | Path = "gpt2", revision: str | None = None) -> tuple[Path, Path]:
    """Local paths of ``config.json`` and ``model.safetensors``: from a folder, else from the Hub (cached)."""
    folder = Path(name_or_folder)
    if folder.is_dir():
        files = folder / CONFIG, folder / WEIGHTS
        missing = [f.name for f in files if not f.is_file()]
        if missing:
            raise FileNotFoundError(
                f"{folder} lacks {', '.join(missing)}: a checkpoint folder needs {CONFIG} and {WEIGHTS} "
                "(what save_pretrained writes with safe_serialization=True)."
            )
        return files
    name = str(name_or_folder)
    if name.startswith((".", "/", "~")) or "\\" in name:
        raise FileNotFoundError(f"No folder at {name}; pass an existing folder or a Hub name such as 'gpt2'.")
    from huggingface_hub import hf_hub_download

    paths = []
    for filename in (CONFIG, WEIGHTS):
        try:
            paths.append(Path(hf_hub_download(repo_id=name, filename=filename, revision=revision)))
        except Exception as err:  # offline, unknown repository, missing file: say which and what to do
            raise HubUnavailable(
                f"Could not get {filename} of '{name}' from the Hugging Face Hub ({type(err).__name__}: "
                f"{str(err)[:200]}). Check the name (e.g. one of {GPT2_SIZES}) and your internet "
                "connection, or pass a local folder holding config.json and model.safetensors."
            ) from err
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
