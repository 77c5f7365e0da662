"""The GPT-2 loader (lmlib.hub, lmlib.pretrained) never gives silently wrong logits and never fails unclearly.

Each case builds a small random GPT-2 with transformers' own ``GPT2Config`` and ``save_pretrained``,
then either loads it and compares the logits with ``GPT2LMHeadModel``'s, or damages a file and
checks that the error names the file (or the field, or the tensor) and says what to do.
"""
import hashlib
import json
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from lmlib import hub
from lmlib.pretrained import config_from_hf

transformers = pytest.importorskip("transformers")

SIZES = dict(vocab_size=61, n_positions=16, n_embd=32, n_layer=2, n_head=4)
# Large initial weights, so that any field handled wrongly moves the logits far beyond the tolerance.
QUIET = dict(resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, initializer_range=0.3, bos_token_id=0, eos_token_id=0)
IDX = torch.randint(0, 61, (2, 16), generator=torch.Generator().manual_seed(1))


def save_gpt2(folder, **fields):
    """A random GPT2LMHeadModel with these config fields, saved into ``folder`` as on the Hub."""
    torch.manual_seed(0)
    model = transformers.GPT2LMHeadModel(transformers.GPT2Config(**(SIZES | QUIET | fields))).eval()
    model.save_pretrained(folder, safe_serialization=True)
    return model


def logits(model):
    with torch.no_grad():
        out = model(IDX)
    return out.logits if hasattr(out, "logits") else out[0]


def edit_config(folder, **changes):
    raw = json.loads((folder / "config.json").read_text())
    for k, v in changes.items():
        if v is None:
            raw.pop(k, None)
        else:
            raw[k] = v
    (folder / "config.json").write_text(json.dumps(raw))


@pytest.fixture(scope="module")
def plain(tmp_path_factory):
    folder = tmp_path_factory.mktemp("gpt2-plain")
    return folder, save_gpt2(folder)


@pytest.fixture
def copy(plain, tmp_path):
    """A fresh copy of the plain checkpoint, to damage."""
    folder = tmp_path / "ckpt"
    shutil.copytree(plain[0], folder)
    return folder


# --- config fields: honoured exactly, or rejected by name ----------------------------------------

@pytest.mark.parametrize("fields", [
    dict(tie_word_embeddings=False),
    dict(n_inner=48),
    dict(n_inner=4 * 32),
    dict(activation_function="gelu_fast"),
    dict(activation_function="gelu_pytorch_tanh"),
    dict(reorder_and_upcast_attn=True),
    dict(n_head=2),
    dict(layer_norm_epsilon=1e-5),
], ids=lambda f: ",".join(f"{k}={v}" for k, v in f.items()))
def test_fields_the_course_gpt_honours_give_hugging_faces_logits(tmp_path, fields):
    theirs = save_gpt2(tmp_path, **fields)
    ours = hub.load_gpt2(tmp_path)
    torch.testing.assert_close(logits(ours), logits(theirs), rtol=1e-4, atol=1e-4)
    if "tie_word_embeddings" in fields:
        assert not ours.config.tie_weights and ours.lm_head.weight is not ours.wte.weight


@pytest.mark.parametrize("field, value, says", [
    ("scale_attn_by_inverse_layer_idx", True, "every layer"),
    ("scale_attn_weights", False, "1/sqrt(head_dim)"),
    ("layer_norm_epsilon", 1e-2, "eps=1e-5"),
    ("activation_function", "relu", "tanh GELU"),
    ("activation_function", "gelu", "tanh GELU"),
    ("add_cross_attention", True, "without cross-attention"),
])
def test_fields_it_cannot_honour_are_rejected_by_name(tmp_path, field, value, says):
    theirs = save_gpt2(tmp_path, **{field: value})
    with pytest.raises(ValueError, match=rf"config\.json: {field}={value!r} is not supported") as err:
        hub.load_gpt2(tmp_path)
    assert says in str(err.value)
    # The field matters: ignoring it (as the loader did) gives other logits than Hugging Face's.
    edit_config(tmp_path, **{field: None})
    if field == "add_cross_attention":  # its weights stay in the file; without them the model is GPT-2
        sd = {k: v.clone() for k, v in load_file(tmp_path / "model.safetensors").items() if "cross" not in k}
        save_file(sd, tmp_path / "model.safetensors")
        return
    assert not torch.allclose(logits(hub.load_gpt2(tmp_path)), logits(theirs), rtol=1e-4, atol=1e-4)
    # transformers' config object is checked the same way
    with pytest.raises(ValueError, match=field):
        config_from_hf(transformers.GPT2Config(**SIZES, **{field: value}))


def test_fields_of_the_wrong_type_are_rejected(copy):
    edit_config(copy, tie_word_embeddings="false")
    with pytest.raises(ValueError, match="config.json: tie_word_embeddings must be true or false, got 'false'"):
        hub.load_gpt2(copy)
    edit_config(copy, tie_word_embeddings=True, n_inner=48.0)
    with pytest.raises(ValueError, match="config.json: n_inner must be a positive integer, or null"):
        hub.load_gpt2(copy)


def test_transformers_names_for_the_sizes(copy, plain):
    """transformers reads num_attention_heads over n_head: a changed head count must not be ignored."""
    edit_config(copy, num_attention_heads=2)
    with pytest.raises(ValueError, match=r"n_head=4 and num_attention_heads=2.*keep one"):
        hub.load_gpt2(copy)
    edit_config(copy, n_head=None)  # only transformers' name: read as transformers reads it
    theirs = transformers.GPT2LMHeadModel.from_pretrained(copy).eval()
    assert theirs.config.n_head == 2
    ours = hub.load_gpt2(copy)
    assert ours.config.n_head == 2
    torch.testing.assert_close(logits(ours), logits(theirs), rtol=1e-4, atol=1e-4)


# --- config.json that is not a GPT-2 config ------------------------------------------------------

@pytest.mark.parametrize("text, says", [
    ("{\"n_embd\": 32,", "is not valid JSON"),
    ("", "is empty"),
    ("  \n", "is empty"),
    ("[1, 2]", "holds a JSON list"),
    ("null", "holds a JSON NoneType"),
    (json.dumps(SIZES | {"n_embd": None}), "n_embd=None, which must be a positive integer"),
    (json.dumps(SIZES | {"n_embd": "32"}), "n_embd='32', which must be a positive integer"),
    (json.dumps(SIZES | {"n_layer": 2.0}), "n_layer=2.0, which must be a positive integer"),
    (json.dumps(SIZES | {"n_head": True}), "n_head=True, which must be a positive integer"),
    (json.dumps(SIZES | {"n_head": 5}), "not divisible by n_head=5"),
    (json.dumps({k: v for k, v in SIZES.items() if k != "n_embd"}), r"lacks \['n_embd'\]"),
])
def test_bad_config_json_names_the_file(copy, text, says):
    (copy / "config.json").write_text(text)
    with pytest.raises(ValueError, match=says) as err:
        hub.load_gpt2(copy)
    assert str(copy / "config.json") in str(err.value)


def test_config_json_that_is_not_text(copy):
    (copy / "config.json").write_bytes(b"\xff\xfe{\x00}")
    with pytest.raises(ValueError, match="is not UTF-8 text.*save_pretrained"):
        hub.read_config(copy / "config.json")


# --- model.safetensors that is damaged or not safetensors ----------------------------------------

def damage(path, offset, value=None):
    data = bytearray(path.read_bytes())
    data[offset] = data[offset] ^ 0xFF if value is None else value
    path.write_bytes(bytes(data))


def header_end(path):
    return 8 + int.from_bytes(path.read_bytes()[:8], "little")


@pytest.mark.parametrize("how", ["truncated", "short", "empty", "length flipped", "header flipped"])
def test_unreadable_safetensors_names_the_file_and_what_to_do(copy, how):
    weights = copy / "model.safetensors"
    data = weights.read_bytes()
    if how == "truncated":
        weights.write_bytes(data[: len(data) // 2])
    elif how == "short":
        weights.write_bytes(data[:5])
    elif how == "empty":
        weights.write_bytes(b"")
    elif how == "length flipped":
        damage(weights, 6)
    else:
        damage(weights, 8)  # the '{' that opens the JSON header
    with pytest.raises(ValueError, match="download it again|save_pretrained") as err:
        hub.load_gpt2(copy)
    assert str(weights) in str(err.value)
    assert "weights_only" not in str(err.value)


def test_a_flipped_weight_that_becomes_nan_is_caught(copy):
    weights = copy / "model.safetensors"
    damage(weights, header_end(weights) + 3, 0x7F)  # a float32's sign and exponent bits: NaN or huge
    damage(weights, header_end(weights) + 2, 0xFF)
    with pytest.raises(ValueError, match="NaN or infinite values.*damaged") as err:
        hub.load_gpt2(copy)
    assert str(weights) in str(err.value)


@pytest.mark.parametrize("legacy", [False, True])
def test_a_pickle_is_refused_without_suggesting_to_unpickle_it(copy, legacy):
    weights = copy / "model.safetensors"
    torch.save({k: v.clone() for k, v in load_file(weights).items()}, weights, _use_new_zipfile_serialization=not legacy)
    with pytest.raises(ValueError, match="holds a pickle.*can run any code") as err:
        hub.load_gpt2(copy)
    message = str(err.value)
    assert str(weights) in message and "weights_only" not in message and "torch.load" not in message


def test_a_damaged_hub_cache_entry_is_caught_by_its_sha256(plain, tmp_path, monkeypatch):
    """The Hub cache keeps a file as blobs/<sha256> behind a link in snapshots/: a flipped weight shows."""
    folder, _ = plain
    repo = tmp_path / "models--openai-community--gpt2"
    blobs, snapshot = repo / "blobs", repo / "snapshots" / "0123abc"
    blobs.mkdir(parents=True)
    snapshot.mkdir(parents=True)
    data = (folder / "model.safetensors").read_bytes()
    blob = blobs / hashlib.sha256(data).hexdigest()
    blob.write_bytes(data)
    (snapshot / "model.safetensors").symlink_to(blob)
    shutil.copy(folder / "config.json", snapshot / "config.json")
    import huggingface_hub

    monkeypatch.setattr(huggingface_hub, "hf_hub_download",
                        lambda repo_id, filename, revision=None: str(snapshot / filename))
    hub.load_gpt2("gpt2")  # whole: loads
    damage(blob, header_end(blob) + 100)  # one byte of one weight, still a finite number
    with pytest.raises(ValueError, match=f"sha256.*delete the cached copy {blob}") as err:
        hub.load_gpt2("gpt2")
    assert str(snapshot / "model.safetensors") in str(err.value)
    # gpt2_or_skip gives the reason instead of raising
    monkeypatch.setattr(hub, "hub_reachable", lambda timeout=3.0: True)
    loaded, why = hub.gpt2_or_skip("gpt2")
    assert loaded is None and "damaged" in why


# --- tensors that do not fit the config ----------------------------------------------------------

def rewrite(folder, change):
    weights = folder / "model.safetensors"
    # Copies (the file is memory-mapped), named as in the published GPT-2 (h.0..., no "transformer.").
    sd = {k.removeprefix("transformer."): v.clone() for k, v in load_file(weights).items()}
    change(sd)
    save_file(sd, weights)


@pytest.mark.parametrize("change, says", [
    # one column too many in the fused q/k/v projection: slicing alone would have hidden it
    (lambda sd: sd.update({"h.0.attn.c_attn.weight": torch.randn(32, 97)}), r"h\.0\.attn\.c_attn\.weight has shape \(32, 97\)"),
    (lambda sd: sd.update({"h.1.attn.c_attn.bias": torch.randn(97)}), r"h\.1\.attn\.c_attn\.bias has shape \(97,\)"),
    (lambda sd: sd.update({"wte.weight": torch.randn(62, 32)}), r"wte\.weight has shape \(62, 32\) where the config needs \(61, 32\)"),
    (lambda sd: sd.update({"h.0.mlp.c_fc.weight": torch.randn(128, 32)}), r"h\.0\.mlp\.c_fc\.weight has shape \(128, 32\)"),
    (lambda sd: sd.update({"h.0.ln_1.weight": torch.ones(32, dtype=torch.int64)}), r"h\.0\.ln_1\.weight holds torch\.int64"),
    (lambda sd: sd.pop("h.1.mlp.c_proj.bias"), r"lacks 1 GPT-2 tensors.*h\.1\.mlp\.c_proj\.bias"),
    (lambda sd: sd.update({"lm_head.weight": torch.randn(61, 32)}), "lm_head.weight differs.*tie_word_embeddings"),
])
def test_tensors_that_do_not_fit_name_the_tensor(copy, change, says):
    rewrite(copy, change)
    with pytest.raises(ValueError, match=says) as err:
        hub.load_gpt2(copy)
    assert str(copy / "model.safetensors") in str(err.value)


def test_a_config_with_fewer_layers_than_the_weights(copy):
    """n_layer=1 over two layers of weights used to load the first layer and drop the second."""
    edit_config(copy, n_layer=1)
    with pytest.raises(ValueError, match=r"tensors the config does not use, e\.g\. \['h\.1\."):
        hub.load_gpt2(copy)


def test_an_untied_config_needs_the_head(copy):
    edit_config(copy, tie_word_embeddings=False)
    with pytest.raises(ValueError, match=r"lacks 1 GPT-2 tensors.*lm_head\.weight.*untied head"):
        hub.load_gpt2(copy)
