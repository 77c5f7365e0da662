"""The GPT-2 code of chapters 5 and 6, run offline on a small random checkpoint with GPT-2's layout.

Online, a reader's notebook loads the published GPT-2 through ``lmlib.hub``; here the same functions
read a folder that ``save_pretrained`` wrote: a GPT-2 of 2 layers x 64 features with GPT-2's
vocabulary (50257 tokens) and context (1024), random weights, and the real GPT-2 tokenizer from the
data mirror. Every path the notebooks take with GPT-2 runs on it: loading (from a folder and, with
the download replaced by a local copy, from a Hub name), the reasons for skipping, logits against
``transformers``, fine-tuning a classifier with GPT-2's padding, generation, and LoRA with
instruction tuning.
"""
import shutil

import pytest
import torch

import lmlib
from lmlib import classify, hub, instruct, lora
from lmlib.generate import generate
from lmlib.model import GPT, count_params, num_params

transformers = pytest.importorskip("transformers")

EOT = 50256  # <|endoftext|>, GPT-2's end of text; the chapter 5 classifier pads with it
TEXTS = ["Free entry in a weekly competition, text WIN now", "Are we still meeting for lunch today?",
         "URGENT! You have won a prize, call this number", "Sorry, I'll call you later tonight"]
LABELS = torch.tensor([1, 0, 1, 0])


@pytest.fixture(scope="module")
def gpt2_folder(tmp_path_factory):
    """A folder in the Hub's layout: a random GPT-2 (2 x 64) and GPT-2's real tokenizer."""
    folder = tmp_path_factory.mktemp("gpt2-small-random")
    # The mirrored encoder.json and vocab.bpe are the Hub's vocab.json and merges.txt under other names.
    shutil.copy(lmlib.data.path("gpt2-tokenizer", "encoder.json"), folder / "vocab.json")
    shutil.copy(lmlib.data.path("gpt2-tokenizer", "vocab.bpe"), folder / "merges.txt")
    tokenizer = transformers.GPT2TokenizerFast.from_pretrained(folder)
    tokenizer.save_pretrained(folder)
    torch.manual_seed(0)
    config = transformers.GPT2Config(vocab_size=50257, n_positions=1024, n_embd=64, n_layer=2, n_head=2,
                                     resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    model = transformers.GPT2LMHeadModel(config).eval()
    model.save_pretrained(folder, safe_serialization=True)
    return folder, model


@pytest.fixture
def loaded(gpt2_folder):
    """What the chapter 5 notebook gets back online: (GPT, tokenizer), via the function it calls."""
    folder, _ = gpt2_folder
    pair, why = hub.gpt2_or_skip(folder)
    assert why == "loaded"
    return pair


def test_loads_gpt2_and_its_tokenizer(gpt2_folder, loaded):
    _, theirs = gpt2_folder
    gpt, tok = loaded
    assert isinstance(gpt, GPT) and not gpt.training
    assert (gpt.config.vocab_size, gpt.config.block_size, gpt.config.n_layer) == (50257, 1024, 2)
    assert tok.eos_token_id == EOT and len(tok) == 50257
    ids = tok.encode("Hello world, free entry")
    assert ids == [15496, 995, 11, 1479, 5726] and tok.decode(ids) == "Hello world, free entry"
    x = torch.tensor([tok.encode(t)[:8] + [EOT] * (8 - len(tok.encode(t)[:8])) for t in TEXTS])
    with torch.no_grad():
        torch.testing.assert_close(gpt(x)[0], theirs(x).logits, rtol=1e-4, atol=1e-4)
    # The parameter formula of chapters 3 and 6 counts a GPT-2-shaped model exactly.
    assert count_params(gpt.config) == num_params(gpt)


def test_hub_name_path_offline(gpt2_folder, monkeypatch):
    """The online path of gpt2_or_skip("gpt2"), with the two downloads served from the folder."""
    folder, theirs = gpt2_folder
    calls = []

    def fake_download(repo_id, filename, revision=None):
        calls.append((repo_id, filename))
        return str(folder / filename)

    real_from_pretrained = transformers.GPT2TokenizerFast.from_pretrained.__func__

    def fake_tokenizer(cls, name, revision=None, **kwargs):
        calls.append((str(name), "tokenizer"))
        return real_from_pretrained(cls, folder if name == "gpt2" else name, **kwargs)

    import huggingface_hub

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", fake_download)
    monkeypatch.setattr(transformers.GPT2TokenizerFast, "from_pretrained", classmethod(fake_tokenizer))
    monkeypatch.setattr(hub, "hub_reachable", lambda timeout=3.0: True)
    pair, why = hub.gpt2_or_skip("gpt2")
    assert why == "loaded"
    assert calls == [("gpt2", "config.json"), ("gpt2", "model.safetensors"), ("gpt2", "tokenizer")]
    gpt, tok = pair
    x = torch.tensor([tok.encode(TEXTS[0])])
    with torch.no_grad():
        torch.testing.assert_close(gpt(x)[0], theirs(x).logits, rtol=1e-4, atol=1e-4)


def test_skip_reasons_are_short_and_clear(gpt2_folder, tmp_path, monkeypatch):
    assert hub.gpt2_or_skip("gpt2", enabled=False) == (None, f"GPT-2 skipped: switched off at the "
                                                             f"{lmlib.presets.scale()} preset")
    monkeypatch.setattr(hub, "hub_reachable", lambda timeout=3.0: False)
    assert hub.gpt2_or_skip("gpt2") == (None, "GPT-2 skipped: no network to huggingface.co")

    import huggingface_hub

    def blocked(repo_id, filename, revision=None):
        raise OSError("403 Forbidden")

    monkeypatch.setattr(hub, "hub_reachable", lambda timeout=3.0: True)
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", blocked)
    loaded, why = hub.gpt2_or_skip("gpt2")
    assert loaded is None and why.startswith("GPT-2 skipped: it could not be loaded (HubUnavailable")
    assert "403 Forbidden" in why
    # A folder with the weights but no tokenizer: skipped, and the reason names the missing files.
    folder, _ = gpt2_folder
    for name in ("config.json", "model.safetensors"):
        shutil.copy(folder / name, tmp_path / name)
    loaded, why = hub.gpt2_or_skip(tmp_path)
    assert loaded is None and "tokenizer.json" in why
    with pytest.raises(FileNotFoundError, match="vocab.json and merges.txt"):
        hub.load_gpt2_tokenizer(tmp_path)


def test_offline_tokenizer_download_gives_a_clear_error(monkeypatch):
    def offline(cls, name, revision=None, **kwargs):
        raise OSError("We couldn't connect to 'https://huggingface.co'")

    monkeypatch.setattr(transformers.GPT2TokenizerFast, "from_pretrained", classmethod(offline))
    with pytest.raises(hub.HubUnavailable, match="the tokenizer of 'gpt2'.*internet connection"):
        hub.load_gpt2_tokenizer("gpt2")
    with pytest.raises(FileNotFoundError, match="No folder"):
        hub.load_gpt2_tokenizer("./no-such-folder")


def test_classifier_fine_tuning_with_gpt2_padding(loaded):
    """Chapter 5, notebook 01: GPT-2 + a head, padded with <|endoftext|>, fine-tuned and evaluated."""
    gpt2, gpt2_tok = loaded
    eot = gpt2_tok.eos_token_id
    ids2 = classify.pad_batch([gpt2_tok.encode(t) for t in TEXTS], eot, max_len=128)
    assert ids2.shape[0] == 4 and (ids2 == eot).any()  # the shorter messages are padded
    clf2 = classify.GPTClassifier(gpt2.train(), n_classes=2, pad_id=eot, pooling="last")
    # Padding does not change a message's logits: the last real token is pooled, and attention is causal.
    short = gpt2_tok.encode(TEXTS[1])
    alone = classify.predict(clf2, torch.tensor([short]), pad_id=eot)
    torch.testing.assert_close(classify.predict(clf2, ids2, pad_id=eot)[1:2], alone, rtol=1e-4, atol=1e-5)
    before = clf2.head.weight.detach().clone()
    history = classify.train_classifier(clf2, ids2, LABELS, pad_id=eot, steps=2, batch_size=2, lr=5e-5,
                                        progress=False)
    assert history.train_loss and all(torch.isfinite(torch.tensor(history.train_loss)))
    assert not torch.equal(before, clf2.head.weight)
    result = classify.evaluate_classifier(clf2, ids2, LABELS, pad_id=eot)
    assert 0.0 <= result["accuracy"] <= 1.0 and result["confusion"].sum() == 4
    assert classify.predict(clf2, ids2, pad_id=eot).shape == (4, 2)


def test_generation_matches_transformers(gpt2_folder, loaded):
    _, theirs = gpt2_folder
    gpt, tok = loaded
    prompt = torch.tensor([tok.encode("Once upon a time")])
    ours = generate(gpt, prompt, max_new_tokens=6, greedy=True)
    with torch.no_grad():
        expected = theirs.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=6,
                                   do_sample=False, pad_token_id=EOT)
    assert torch.equal(ours, expected)
    assert tok.decode(ours[0]).startswith("Once upon a time")
    sampled = generate(gpt, prompt, max_new_tokens=4, top_k=50, generator=torch.Generator().manual_seed(0))
    assert sampled.shape == (1, prompt.shape[1] + 4) and int(sampled.max()) < 50257


def test_lora_instruction_tuning_on_gpt2(loaded):
    """Chapter 5, notebook 03: LoRA on GPT-2's projections, trained on a response-only loss."""
    gpt, tok = loaded
    x = torch.tensor([tok.encode(TEXTS[0])])
    with torch.no_grad():
        base = gpt(x)[0]
    lora.apply_lora(gpt, targets=("q_proj", "k_proj", "v_proj", "out_proj", "fc", "proj"), r=8, alpha=16)
    trainable = num_params(gpt, trainable_only=True)
    assert 0 < trainable < num_params(gpt) and len(lora.lora_layers(gpt)) == 2 * 6
    with torch.no_grad():
        torch.testing.assert_close(gpt(x)[0], base)  # B starts at zero: the model is unchanged
    template = instruct.PromptTemplate()
    examples = [instruct.encode_example(tok.encode, template.prompt(q), a, template.end, max_len=64)
                for q, a in [("What is 2 + 3?", "5"), ("Name a colour.", "Blue")]]
    assert all(e is not None for e in examples)
    xb, yb = instruct.sft_batches(examples, batch_size=2, pad_id=EOT)(torch.Generator().manual_seed(0))
    gpt.train()
    opt = torch.optim.AdamW([p for p in gpt.parameters() if p.requires_grad], lr=1e-3)
    for _ in range(2):
        _, loss = gpt(xb, targets=yb)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert torch.isfinite(loss)
    assert all(p.grad is None for n, p in gpt.named_parameters() if not p.requires_grad)
    gpt.eval()
    with torch.no_grad():
        tuned = gpt(x)[0]
        lora.merge_lora(gpt)
        torch.testing.assert_close(gpt(x)[0], tuned, rtol=1e-4, atol=1e-4)
    answer = instruct.respond(gpt, tok.encode, tok.decode, template.prompt("What is 2 + 3?"),
                              max_new_tokens=4, end=template.end)
    assert isinstance(answer, str)
