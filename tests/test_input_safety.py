"""Bad input to configs, the model and the tokenizers gives a clear error, never a silent wrong result.

Each case is one bad input a careless or hostile caller could give: a config field of the wrong
type, targets the loss cannot score, token ids a tokenizer cannot decode, a pre-tokenization
pattern that loses text. The error must name the value and say what to do.
"""
from __future__ import annotations

import json
from dataclasses import fields

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from lmlib.llama2c import Llama2cTokenizer
from lmlib.model import GPT, BlockConfig, GPTConfig
from lmlib.seq2seq import Seq2SeqConfig
from lmlib.tokenizers import PRETOKENIZE, ByteBPE, CharTokenizer, Vocab, WordTokenizer, check_ids

V = 37


def tiny(**kw) -> GPTConfig:
    return GPTConfig(**(dict(vocab_size=V, block_size=8, n_layer=1, n_head=2, n_embd=16) | kw))


def int_fields(config_type) -> list[str]:
    return [f.name for f in fields(config_type) if str(f.type).replace(" ", "") in ("int", "int|None")]


# --- configs: integer fields ---------------------------------------------------------------------

def test_every_integer_field_of_the_configs_is_found():
    assert set(int_fields(GPTConfig)) == {"vocab_size", "block_size", "n_layer", "n_embd", "n_head",
                                          "n_kv_heads", "mlp_hidden_dim"}
    assert {"n_embd", "n_head", "n_kv_heads", "mlp_hidden_dim", "src_pad_id", "eos_id"} <= set(int_fields(Seq2SeqConfig))


GOOD = dict(vocab_size=V, block_size=8, n_layer=1, n_embd=16, n_head=2, n_kv_heads=1, mlp_hidden_dim=24)


@pytest.mark.parametrize("name", sorted(GOOD))
def test_numpy_integers_are_accepted_and_stored_as_int(name):
    config = tiny(**{name: np.int64(GOOD[name])})
    assert getattr(config, name) == GOOD[name] and type(getattr(config, name)) is int
    GPT(config)  # builds: the layers get plain ints


@pytest.mark.parametrize("bad", [2.0, 2.5, True, "2"], ids=["whole-float", "float", "bool", "str"])
@pytest.mark.parametrize("name", sorted(GOOD))
def test_non_integers_in_integer_fields_are_rejected_by_name(name, bad):
    with pytest.raises(ValueError, match=rf"GPTConfig\.{name} must be an integer"):
        tiny(**{name: bad})


def test_whole_float_error_says_what_to_write():
    with pytest.raises(ValueError, match=r"n_kv_heads must be an integer or None, got 2\.0 \(float\)\. Write 2\."):
        tiny(n_kv_heads=2.0)


def test_block_config_checks_its_own_fields():
    assert BlockConfig(n_embd=np.int32(32), n_head=np.int8(4)).head_dim == 8
    with pytest.raises(ValueError, match=r"BlockConfig\.n_head must be an integer"):
        BlockConfig(n_head=4.0)
    with pytest.raises(ValueError, match=r"n_kv_heads must be a positive integer or None"):
        BlockConfig(n_kv_heads=0)


@pytest.mark.parametrize("field, bad", [("bias", "False"), ("tie_weights", 0), ("prenorm", None),
                                        ("dropout", "0.1"), ("dropout", True)])
def test_bool_and_float_fields_take_only_their_type(field, bad):
    # bias="False" was truthy: a biased model, silently; dropout="0.1" failed in a comparison.
    with pytest.raises(ValueError, match=rf"GPTConfig\.{field} must be"):
        tiny(**{field: bad})
    assert tiny(bias=np.bool_(False)).bias is False and tiny(dropout=np.float32(0.25)).dropout == 0.25


def seq2seq(**kw) -> Seq2SeqConfig:
    return Seq2SeqConfig(**(dict(src_vocab_size=20, tgt_vocab_size=24, n_head=2, n_embd=16) | kw))


def test_seq2seq_config_gets_the_same_integer_checks():
    config = seq2seq(n_embd=np.int64(16), n_kv_heads=np.int64(1), src_vocab_size=np.int64(20), bos_id=np.int64(1))
    assert type(config.n_embd) is int and type(config.src_vocab_size) is int and config.bos_id == 1
    for name, bad in [("n_kv_heads", 2.0), ("mlp_hidden_dim", 8.5), ("n_head", True), ("max_src_len", 12.0),
                      ("eos_id", 2.0)]:
        with pytest.raises(ValueError, match=rf"Seq2SeqConfig\.{name} must be an integer"):
            seq2seq(**{name: bad})


# --- the model: targets --------------------------------------------------------------------------

@pytest.fixture(scope="module")
def model() -> GPT:
    torch.manual_seed(0)
    return GPT(tiny())


def test_float_targets_are_rejected_not_truncated(model):
    x = torch.randint(V, (2, 8))
    with pytest.raises(TypeError, match=r"targets must hold integer token ids .* got dtype torch\.float32"):
        model(x, targets=torch.full((2, 8), 3.7))
    with pytest.raises(TypeError, match="targets must be a tensor"):
        model(x, targets=x.tolist())


@pytest.mark.parametrize("bad", [V, -1, -99, 10**6])
def test_targets_outside_the_vocabulary_are_named(model, bad):
    x = torch.randint(V, (2, 8))
    y = x.clone()
    y[1, 3] = bad
    with pytest.raises(ValueError, match=rf"targets must be token ids in \[0, {V}\) .* or -100 .*got \[{bad}\]"):
        model(x, targets=y)


def test_ignored_targets_are_skipped_and_all_ignored_is_an_error(model):
    x = torch.randint(V, (2, 8))
    y = torch.randint(V, (2, 8))
    y[0, :5] = -100
    logits, loss = model(x, targets=y)
    keep = y != -100
    torch.testing.assert_close(loss, F.cross_entropy(logits[keep], y[keep]))
    with pytest.raises(ValueError, match=r"every target is -100 \(ignored\): the mean loss over no token is NaN"):
        model(x, targets=torch.full_like(x, -100))


def test_an_empty_batch_is_named(model):
    empty = torch.zeros(0, 8, dtype=torch.long)
    with pytest.raises(ValueError, match="empty batch"):
        model(empty, targets=empty)
    with pytest.raises(ValueError, match="empty batch"):
        model.hidden_states(empty)


def test_inside_a_compiled_graph_only_the_data_dependent_checks_are_skipped(model, monkeypatch):
    x = torch.randint(V, (2, 8))
    monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)
    assert model(x, targets=torch.full_like(x, -100))[1].isnan()  # skipped: the trainer checks each batch
    with pytest.raises(TypeError, match="targets must hold integer token ids"):
        model(x, targets=x.float())  # dtypes and shapes are known while tracing: still checked
    monkeypatch.undo()
    explained = torch._dynamo.explain(model)(x, x)
    assert explained.graph_break_count == 0, explained.break_reasons


def test_check_input_checks_targets_for_a_compiled_model(model):
    x = torch.randint(V, (2, 8))
    model.check_input(x, targets=x)
    with pytest.raises(ValueError, match=rf"got \[{V}\]"):
        model.check_input(x, targets=torch.full_like(x, V))


# --- tokenizers: decoding ------------------------------------------------------------------------

CHARS = CharTokenizer.from_text("abc")


@pytest.mark.parametrize("ids", [[-1], [0, 3], torch.tensor([-2])], ids=["negative", "too-large", "tensor"])
def test_char_decode_rejects_ids_outside_the_vocabulary(ids):
    # [-1] decoded to "c", the last character, before.
    with pytest.raises(ValueError, match=r"token ids \[-?\d\] are outside the vocabulary \[0, 3\)"):
        CHARS.decode(ids)


@pytest.mark.parametrize("ids", [[1.0], [0, 2.5], torch.tensor([1.0]), np.array([1.0]), [True], "ab", 1],
                         ids=["float", "float-later", "float-tensor", "float-array", "bool", "str", "bare-int"])
def test_decode_rejects_ids_that_are_not_integers(ids):
    with pytest.raises(TypeError, match="token ids must be integers|sequence of integer token ids"):
        CHARS.decode(ids)


def test_decode_accepts_every_integer_form():
    for ids in ([0, 2], (0, 2), torch.tensor([0, 2]), np.array([0, 2]), [np.int64(0), torch.tensor(2).item()]):
        assert CHARS.decode(ids) == "ac"
    assert CHARS.decode(torch.tensor(1)) == "b" and CHARS.decode([]) == ""
    with pytest.raises(ValueError, match="one sequence"):
        CHARS.decode(torch.zeros(2, 2, dtype=torch.long))
    assert check_ids(np.array([1, 2], dtype=np.uint8), 3) == [1, 2]


def test_word_vocab_decode_rejects_float_ids():
    vocab = Vocab(["x", "y"])
    with pytest.raises(TypeError, match=r"got 2\.7 \(float\) at position 0"):
        vocab.decode([2.7])  # was int(2.7) = 2: "y", silently
    with pytest.raises(ValueError, match=r"\[-1\] are outside"):
        WordTokenizer(["x"]).decode([-1])


def test_byte_bpe_decode_rejects_negative_and_float_ids():
    bpe = ByteBPE(special_tokens=["<|eot|>"])
    assert bpe.decode([104, 256]) == "h<|eot|>"
    with pytest.raises(ValueError, match=r"\[-1\] are outside the vocabulary \[0, 257\)"):
        bpe.decode([-1])
    with pytest.raises(TypeError, match="token ids must be integers"):
        bpe.decode([104.0])


def test_llama2c_decode_rejects_negative_and_float_ids():
    tok = Llama2cTokenizer([b"<unk>", b"<s>", b"</s>", b" ", b"a", b" a"], [0.0] * 6)
    assert tok.decode([1, 5]) == "a"
    with pytest.raises(ValueError, match=r"\[-1\] are outside the vocabulary \[0, 6\)"):
        tok.decode([-1])
    with pytest.raises(TypeError, match=r"got 4\.0 \(float\)"):
        tok.decode([4.0])
    with pytest.raises(TypeError, match="dtype torch.float32"):
        tok.decode(torch.tensor([4.0]))


# --- tokenizers: the pre-tokenization pattern and special tokens ----------------------------------

@pytest.mark.parametrize("pattern", [r"\w+", "", r"\w+|\s+", r"[^\W\d_]+|\d+|\s+|[^\s\w]"],
                         ids=["words", "empty", "words-spaces", "no-underscore"])
def test_patterns_that_drop_characters_are_rejected(pattern, tmp_path):
    with pytest.raises(ValueError, match="drops characters"):
        ByteBPE(pattern=pattern)
    with pytest.raises(ValueError, match="drops characters"):
        ByteBPE.train("some text", 260, pattern=pattern, progress=False)
    path = tmp_path / "tok.json"
    ByteBPE().save(path)
    fields_ = json.loads(path.read_text()) | {"pattern": pattern}
    path.write_text(json.dumps(fields_))
    with pytest.raises(ValueError, match=rf"{path.name} is a corrupt ByteBPE file .*drops characters"):
        ByteBPE.load(path)


def test_patterns_with_groups_or_syntax_errors_are_named():
    with pytest.raises(ValueError, match=r"capturing groups.*\(\?:"):
        ByteBPE(pattern=r"(\w+)|\s+|[\s\S]")
    with pytest.raises(ValueError, match="not a valid regular expression"):
        ByteBPE(pattern="[")


def test_good_patterns_round_trip():
    text = "It's 42°C — naïve café!\n\t日本 😀 x_1"
    for pattern in (PRETOKENIZE, r"[\s\S]", r"\w+|[\s\S]"):
        bpe = ByteBPE.train(text * 3, 270, pattern=pattern, progress=False)
        assert bpe.decode(bpe.encode(text)) == text
    gpt2_like = ByteBPE(pattern=r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+""")
    assert gpt2_like.decode(gpt2_like.encode(text)) == text


@pytest.mark.parametrize("specials, error", [
    ({"<|eot|>": 256}, TypeError), (None, TypeError), ("<|eot|>", TypeError), ([3], ValueError), ([""], ValueError),
], ids=["dict", "None", "str", "int-item", "empty-str"])
def test_special_tokens_must_be_a_list_of_strings(specials, error):
    # A str was split into one special token per character, silently.
    with pytest.raises(error, match="special_tokens must be a list of strings|special tokens must be non-empty strings"):
        ByteBPE(special_tokens=specials)
    with pytest.raises(error, match="special_tokens must be a list of strings|special tokens must be non-empty strings"):
        ByteBPE.train("some text", 270, special_tokens=specials, progress=False)


@pytest.mark.parametrize("specials", [["<|eot|>"], None, {"<|eot|>": "256"}, 7], ids=["list", "null", "str-id", "int"])
def test_a_file_with_malformed_special_tokens_names_the_file(specials, tmp_path):
    path = tmp_path / "tok.json"
    ByteBPE(special_tokens=["<|eot|>"]).save(path)
    path.write_text(json.dumps(json.loads(path.read_text()) | {"special_tokens": specials}))
    with pytest.raises(ValueError, match=rf"{path.name} is a corrupt ByteBPE file .*special_tokens must map each token"):
        ByteBPE.load(path)


def test_a_lone_surrogate_is_named_with_its_position():
    bpe = ByteBPE(special_tokens=["<|eot|>"])
    for text, pos in [("ab\ud800cd", 2), ("<|eot|>x\udc80", 8)]:
        with pytest.raises(ValueError, match=rf"unpaired surrogate '\\udc80' at position {pos}|"
                                             rf"unpaired surrogate '\\ud800' at position {pos}"):
            bpe.encode(text)
    assert bpe.decode(bpe.encode("ok 😀")) == "ok 😀"  # a paired (astral) character is fine


def test_decode_takes_ids_picked_out_of_a_tensor():
    """``decode([ids[t]])`` holds a 0-d integer tensor: an id, not an error (a 0-d float one is)."""
    tok = CharTokenizer("abc")
    ids = torch.tensor([0, 2])
    assert tok.decode([ids[1], ids[0]]) == "ca"
    with pytest.raises(TypeError, match="token ids must be integers"):
        tok.decode([torch.tensor(1.0)])
