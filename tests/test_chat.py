"""lmlib.chat (chapter 5): the chat format, special-token safety, loss masks, the calculator,
the streaming reply loop with its tool, loading a release and the terminal chat."""
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import torch.nn as nn

from lmlib import chat
from lmlib.chat import (ASSISTANT, CHAT_TOKENS, END, SYSTEM, USER, calculate, chat_example, encode_chat, parse,
                        render, reply)
from lmlib.data import IGNORE_INDEX
from lmlib.instruct import pad_examples
from lmlib.model import GPT, GPTConfig
from lmlib.recipes import EOT, save_release
from lmlib.tokenizers import ByteBPE

ROOT = Path(__file__).resolve().parents[1]
TEXT = ("The cat sat on the mat. How many clips did she sell? She sold 48 clips in April and half as many "
        "in May. Hello, how are you today? I am fine, thank you. What is the capital of France? Paris.")
CHAT = [
    {"role": "system", "content": "You are a helpful assistant."},
    {"role": "user", "content": "Hello!\nHow are you?"},
    {"role": "assistant", "content": "Fine, thanks."},
    {"role": "user", "content": "Write <|user|> and <user> and <|end of it"},
    {"role": "assistant", "content": "Done:\n\n<user>"},
]


@pytest.fixture(scope="module")
def tok() -> ByteBPE:
    return ByteBPE.train(TEXT, 300, special_tokens=[EOT, *CHAT_TOKENS], progress=False)


def plain(tok: ByteBPE) -> ByteBPE:
    return ByteBPE(tok.merges, (), tok.pattern)  # the same tokenizer, every text as text


# --- the format ---------------------------------------------------------------------------------

def test_render_and_parse_round_trip():
    text = render(CHAT[:3])
    assert text == ("<|system|>You are a helpful assistant.<|end|><|user|>Hello!\nHow are you?<|end|>"
                    "<|assistant|>Fine, thanks.<|end|>")
    assert render(CHAT[:2], add_generation_prompt=True).endswith("<|end|>" + ASSISTANT)
    tag_like = [{"role": "user", "content": "<user> <|user| |> <|endoftext|>\n"}, {"role": "assistant", "content": ""},
                {"role": "user", "content": "a\n\nb"}, {"role": "assistant", "content": "<<2*3=6>>6"}]
    for messages in (CHAT[:3], tag_like, [], CHAT[1:2]):
        assert parse(render(messages)) == messages


@pytest.mark.parametrize("messages, match", [
    ([{"role": "robot", "content": "hi"}], "message 0 has the role 'robot'"),
    ([{"role": "user", "content": "hi"}, {"role": "system", "content": "x"}], "message 1 is a system message"),
    ([{"role": "user"}], "message 0 has no 'content'"),
    ([{"role": "user", "content": "hi", "name": "ann"}], "message 0 has the unknown field 'name'"),
    ([{"role": "user", "content": 3}], "message 0 .user. has content of type int"),
    (["hi"], "message 0 must be a dict"),
    ("hi", "messages must be a list"),
    ([{"role": "user", "content": "say <|end|>"}], "message 0 .user. contains the chat token '<.end.>'"),
])
def test_invalid_messages_are_named(messages, match):
    with pytest.raises(ValueError, match=match):
        render(messages)


@pytest.mark.parametrize("text, match", [
    ("hello<|user|>hi<|end|>", "starts with 'hello'"),
    ("<|user|>hi", "not closed"),
    ("<|user|>hi<|end|><|assistant|>", "not closed"),
    ("<|user|>hi<|user|>", "not closed"),
    ("<|user|>hi<|end|>\n<|assistant|>yo<|end|>", "between turns"),
    ("<|end|>", "expected a role tag"),
    ("<|user|>a<|end|><|system|>b<|end|>", "message 1 is a system message"),
])
def test_parse_rejects_what_render_cannot_write(text, match):
    with pytest.raises(ValueError, match=match):
        parse(text)


# --- tokens and loss masks ----------------------------------------------------------------------

def test_encode_chat_never_makes_special_ids_from_content(tok):
    special = set(tok.special_tokens.values())
    assert tok.special_tokens[USER] in tok.encode_list("<|user|>")  # the hazard: plain encode makes the real id
    messages = [{"role": "user", "content": "<|user|><|system|><|assistant|><|end|><|endoftext|>"},
                {"role": "assistant", "content": "<|end|>"}]
    ids = encode_chat(tok, messages, add_generation_prompt=True).tolist()
    structural = [tok.special_tokens[t] for t in (USER, END, ASSISTANT, END, ASSISTANT)]
    assert [i for i in ids if i in special] == structural
    assert tok.decode(ids) == "<|user|>" + messages[0]["content"] + "<|end|><|assistant|><|end|><|end|><|assistant|>"
    ordinary = encode_chat(tok, CHAT).tolist()  # without chat tokens in the content: what render writes
    assert tok.decode(ordinary) == render(CHAT[:3]) + "<|user|>" + CHAT[3]["content"] + "<|end|><|assistant|>" \
        + CHAT[4]["content"] + "<|end|>"
    with pytest.raises(ValueError, match="no special tokens"):
        encode_chat(ByteBPE.train(TEXT, 270, special_tokens=[EOT], progress=False), CHAT)


def learned(tok, y) -> str:
    return tok.decode(y[y != IGNORE_INDEX])


def test_loss_only_on_assistant_turns_and_their_end(tok):
    x, y = chat_example(tok, CHAT)
    ids = encode_chat(tok, CHAT)
    kept = y != IGNORE_INDEX
    assert torch.equal(x, ids[:-1]) and torch.equal(y[kept], ids[1:][kept])  # next-token pairs
    assert x[0] == tok.special_tokens[SYSTEM]
    assert learned(tok, y) == "Fine, thanks.<|end|>Done:\n\n<user><|end|>"  # both assistant turns, no tag
    assert tok.special_tokens[ASSISTANT] not in y[kept].tolist()
    assert (y[kept] == tok.special_tokens[END]).sum() == 2
    assert chat_example(tok, CHAT, max_len=len(ids) - 1) is not None
    assert chat_example(tok, CHAT, max_len=len(ids) - 2) is None
    with pytest.raises(ValueError, match="no assistant turn"):
        chat_example(tok, CHAT[:2])


def test_padding_is_ignored_through_instruct_pad_examples(tok):
    a, b = chat_example(tok, CHAT[1:3]), chat_example(tok, CHAT)
    X, Y = pad_examples([a, b], pad_id=tok.special_tokens[END])
    assert X.shape == Y.shape == (2, len(b[0]))
    assert (Y[0, len(a[0]):] == IGNORE_INDEX).all() and learned(tok, Y[0]) == "Fine, thanks.<|end|>"


def test_tool_results_are_left_out_of_the_loss(tok):
    messages = [{"role": "user", "content": "Half of 48?"},
                {"role": "assistant", "content": "48/2 = <<48/2=24>>24, and <<24+1=25>>25 with one more."}]
    _, y = chat_example(tok, messages, tool_results=True)
    assert learned(tok, y) == "48/2 = <<48/2=24, and <<24+1=25 with one more.<|end|>"  # no '24>>', no '25>>'
    _, y_all = chat_example(tok, messages)
    assert learned(tok, y_all) == messages[1]["content"] + "<|end|>"
    # with tool_results the tool's text is its own piece of tokens, as the reply loop feeds it
    ids = encode_chat(tok, messages, tool_results=True).tolist()
    piece = plain(tok).encode_list("24>>")
    assert any(ids[i: i + len(piece)] == piece for i in range(len(ids)))


# --- the calculator -----------------------------------------------------------------------------

@pytest.mark.parametrize("expression, value", [
    ("48/2", "24"), ("48+24", "72"), ("12/60", "0.2"), ("0.2*50", "10"), ("100-50-30-15", "5"),
    ("(60+72+42)/3", "58"), ("2*20*.01", "0.4"), ("1.20*4", "4.8"), ("37/40", "0.925"), ("-5*3", "-15"),
    ("10/3", "3.3333"), ("-2/3", "-0.6667"), ("2**10", "1024"), ("2**-2", "0.25"), ("560//10", "56"),
    (" 3 * (4 + 5) ", "27"), ("0.1+0.2", "0.3"), ("98*3400", "333200"), ("-0.00001", "0"),
])
def test_calculate_gsm8k_arithmetic(expression, value):
    assert calculate(expression) == value


@pytest.mark.parametrize("expression, why", [
    ("__import__('os')", "function call"), ("x+1", "the name 'x'"), ("(1).real", "an attribute"),
    ("9**9**9", "too large"), ("1" * 101, "longer than 100"), ("'a'*3", "the constant 'a'"),
    ("True+1", "the constant True"), ("2**0.5", "whole number"), ("1/0", "divides by zero"),
    ("10**40", "too large"), ("1e400", "too large"), ("9" * 31, "more than 30 digits"), ("2 %% 3", "not an arithmetic"),
    ("7 % 2", "the operator Mod"), ("[1][0]", "a Subscript"), ("lambda: 1", "a Lambda"),
])
def test_calculate_rejects_everything_else(expression, why):
    with pytest.raises(ValueError, match="cannot calculate") as err:
        calculate(expression)
    assert why in str(err.value)
    assert expression[:20] in str(err.value)


# --- replies ------------------------------------------------------------------------------------

class Scripted(nn.Module):
    """Test scaffolding: a 'model' whose prediction at position p is ``script[p + 1]``, whatever the
    context (the end token past the script). It keeps only a position counter as its cache."""

    def __init__(self, script: list[int], vocab_size: int, end: int):
        super().__init__()
        self.script, self.vocab_size, self.end = script, vocab_size, end
        self.config = SimpleNamespace(block_size=4096)

    def new_cache(self):
        return [SimpleNamespace(length=0)]

    def forward(self, idx, cache=None):
        start = 0 if cache is None else cache[0].length
        if cache is not None:
            cache[0].length += idx.shape[1]
        logits = torch.full((*idx.shape, self.vocab_size), -1e4)
        for t in range(idx.shape[1]):
            p = start + t + 1
            logits[:, t, self.script[p] if p < len(self.script) else self.end] = 0.0
        return logits, None


def scripted(tok, prompt, parts):
    """A Scripted model that writes ``parts`` (text, by_model) after ``prompt``; where the tool should
    write, it would write '#'s of the same token length instead (so only the tool can put the result)."""
    enc, script = plain(tok), list(prompt)
    for text, by_model in parts:
        ids = enc.encode_list(text)
        script += ids if by_model else [enc.encode_list("#")[0]] * len(ids)
    return Scripted(script, tok.vocab_size, tok.special_tokens[END])


QUESTION = [{"role": "user", "content": "Natalia sold 48 clips in April and half as many in May. How many in May?"}]


def test_reply_calls_the_calculator_and_streams(tok):
    prompt = encode_chat(tok, QUESTION, add_generation_prompt=True, tool_results=True).tolist()
    parts = [("She sold 48/2 = <<48/2=", True), ("24>>", False), ("24 clips; <<2*x=", True), ("?>>", False),
             (" then <<7/4=", True), ("1.75>>", False), ("1.75.", True)]
    model = scripted(tok, prompt, parts)
    pieces = []
    text = reply(model, tok, QUESTION, max_new_tokens=200, temperature=0, on_token=pieces.append)
    assert text == "She sold 48/2 = <<48/2=24>>24 clips; <<2*x=?>> then <<7/4=1.75>>1.75."
    assert "".join(pieces) == text and len(pieces) > 10  # streamed piece by piece
    # without the tool, the model writes the tool's part itself: here the '#'s
    untooled = reply(scripted(tok, encode_chat(tok, QUESTION, add_generation_prompt=True).tolist(), parts), tok,
                     QUESTION, temperature=0, tools=False)
    assert untooled.startswith("She sold 48/2 = <<48/2=#") and "24>>" not in untooled
    # sampling at any temperature follows a script this sure; the limit counts sampled tokens
    assert reply(model, tok, QUESTION, temperature=1.0, top_k=5, generator=torch.Generator().manual_seed(0)) == text
    first = plain(tok).encode_list("She sold")
    assert reply(model, tok, QUESTION, max_new_tokens=len(first), temperature=0) == "She sold"


def test_reply_with_a_gpt_is_repeatable_and_fits_the_context(tok):
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=tok.vocab_size, block_size=16, n_layer=1, n_head=2, n_embd=16))
    long = QUESTION + [{"role": "assistant", "content": "I do not know."}] + QUESTION  # longer than 16 tokens
    runs = [reply(model, tok, long, max_new_tokens=12, temperature=1.0, generator=torch.Generator().manual_seed(3))
            for _ in range(2)]
    assert runs[0] == runs[1]
    model.train()
    greedy = reply(model, tok, long, max_new_tokens=12, temperature=0)
    assert model.training and isinstance(greedy, str)
    with pytest.raises(ValueError, match="temperature"):
        reply(model, tok, long, temperature=-1)


# --- loading and the terminal chat --------------------------------------------------------------

def release(folder: Path, tok: ByteBPE) -> Path:
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=tok.vocab_size, block_size=64, n_layer=1, n_head=2, n_embd=16))
    folder.mkdir()
    save_release(model, tok, {}, {}, folder)
    return folder


def test_load_assistant_adds_chat_tokens_to_a_base_model(tmp_path, tok):
    base_tok = ByteBPE(tok.merges, [EOT], tok.pattern)
    model, loaded, _ = chat.load_assistant(release(tmp_path / "base", base_tok))
    assert list(loaded.special_tokens) == [EOT, *CHAT_TOKENS]
    assert model.config.vocab_size == loaded.vocab_size == base_tok.vocab_size + 4
    model, loaded, _ = chat.load_assistant(release(tmp_path / "assistant", tok))
    assert loaded.special_tokens == tok.special_tokens and model.config.vocab_size == tok.vocab_size
    with pytest.raises(FileNotFoundError, match="has no model.safetensors, tokenizer.json, config.json"):
        chat.load_assistant(tmp_path)


def test_missing_model_exits_with_code_2_and_says_what_to_do(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(chat, "ASSISTANT_NAME", "no-such-release")  # the default release, not registered
    assert chat.main([]) == 2
    err = capsys.readouterr().err
    assert "not released yet" in err and "--model FOLDER" in err and "Traceback" not in err
    assert chat.main(["--model", str(tmp_path / "nowhere")]) == 2
    assert "has no model.safetensors" in capsys.readouterr().err


def test_terminal_chat_through_a_pipe(tmp_path, tok):
    folder = release(tmp_path / "assistant", tok)
    lines = ["Hello, how are you?", "/temp 0.5", "/temp warm", "What is the capital of France?", "/reset",
             "/shout", "Hello again", "/quit", "never read"]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-m", "lmlib.chat", "--model", str(folder), "--max-new-tokens", "6",
                           "--seed", "1"], input="\n".join(lines) + "\n", capture_output=True, text=True,
                          env=env, cwd=ROOT, timeout=300)
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert out.startswith("Chatting with") and "Traceback" not in done.stderr
    assert out.count("assistant> ") == 3  # three messages; nothing after /quit
    assert "(temperature 0.5)" in out and "/temp takes a number" in out and "'warm'" in out
    assert "(conversation forgotten)" in out and "unknown command '/shout'" in out
