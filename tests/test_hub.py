"""lmlib.hub loads a GPT-2 checkpoint laid out as on the Hub: tested offline with a tiny local model."""
import json

import pytest
import torch

from lmlib import hub
from lmlib.model import GPT

transformers = pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
    """A random GPT-2 saved with save_pretrained: config.json + model.safetensors, the Hub's layout."""
    torch.manual_seed(0)
    config = transformers.GPT2Config(vocab_size=61, n_positions=24, n_embd=32, n_layer=2, n_head=4,
                                     resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
                                     bos_token_id=0, eos_token_id=0)
    model = transformers.GPT2LMHeadModel(config).eval()
    folder = tmp_path_factory.mktemp("gpt2-tiny")
    model.save_pretrained(folder, safe_serialization=True)
    return folder, model


def logits_match(ours: GPT, theirs) -> None:
    idx = torch.randint(0, 61, (3, 24), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = theirs(idx).logits
        got, _ = ours(idx)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)


def test_load_from_folder(tiny_checkpoint):
    folder, theirs = tiny_checkpoint
    ours = hub.load_gpt2(folder)
    assert isinstance(ours, GPT) and not ours.training
    assert ours.config.n_layer == 2 and ours.config.vocab_size == 61 and ours.config.block_size == 24
    logits_match(ours, theirs)


def test_download_path(tiny_checkpoint, monkeypatch):
    """The Hub code path, with hf_hub_download replaced by a copy from the local folder."""
    folder, theirs = tiny_checkpoint
    calls = []

    def fake_download(repo_id, filename, revision=None):
        calls.append((repo_id, filename, revision))
        return str(folder / filename)

    import huggingface_hub

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", fake_download)
    ours = hub.load_gpt2("gpt2")
    assert calls == [("gpt2", "config.json", None), ("gpt2", "model.safetensors", None)]
    logits_match(ours, theirs)


def test_offline_gives_a_clear_error(monkeypatch):
    import huggingface_hub

    def offline(repo_id, filename, revision=None):
        raise OSError("Name or service not known")

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", offline)
    with pytest.raises(hub.HubUnavailable, match="internet connection"):
        hub.load_gpt2("gpt2")


def test_bad_folders(tmp_path, tiny_checkpoint):
    with pytest.raises(FileNotFoundError, match="model.safetensors"):
        (tmp_path / "config.json").write_text("{}")
        hub.load_gpt2(tmp_path)
    with pytest.raises(FileNotFoundError, match="No folder"):
        hub.load_gpt2("./does-not-exist")
    bad = tmp_path / "bert.json"
    bad.write_text(json.dumps({"model_type": "bert"}))
    with pytest.raises(ValueError, match="GPT-2 checkpoints only"):
        hub.read_config(bad)
    folder, _ = tiny_checkpoint
    assert hub.read_config(folder / "config.json").n_embd == 32


def test_hub_reachable(monkeypatch):
    import contextlib
    import socket

    def refused(address, timeout):
        assert address == ("huggingface.co", 443) and timeout == 0.5
        raise OSError("Name or service not known")

    monkeypatch.setattr(socket, "create_connection", refused)
    assert hub.hub_reachable(timeout=0.5) is False
    monkeypatch.setattr(socket, "create_connection", lambda address, timeout: contextlib.nullcontext())
    assert hub.hub_reachable(timeout=0.5) is True
