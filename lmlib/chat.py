"""A chat assistant on the course model: the chat format, loss on the assistant's turns only, a
calculator tool for arithmetic, a streaming reply loop and a terminal chat.

Derived in chapter 5 ("Applications", the assistant notebook). A conversation is a list of
messages ``{"role": "system" | "user" | "assistant", "content": str}``. The model sees it as one
token sequence: each turn is a role tag, the content and :data:`END`, all four markers special
tokens (:data:`CHAT_TOKENS`) that the course tokenizer gains through
``lmlib.recipes.load_course_gpt(special_tokens=CHAT_TOKENS)``. Content is always encoded as plain
text, so a message that spells ``<|user|>`` cannot forge a turn; only the code places the special
ids. Training takes the loss on the assistant's tokens alone, through
:data:`lmlib.data.IGNORE_INDEX`; batch the examples with :func:`lmlib.instruct.sft_batches`.

The calculator follows GSM8K's annotations, ``<<48/2=24>>``: the model writes ``<<48/2=`` and the
tool, not the model, writes ``24>>``. Training leaves the tool's text out of the loss
(``tool_results=True``), and :func:`reply` computes it with :func:`calculate` when the model asks.

API summary
-----------
SYSTEM, USER, ASSISTANT, END                   "<|system|>", "<|user|>", "<|assistant|>", "<|end|>"
CHAT_TOKENS = (SYSTEM, USER, ASSISTANT, END)   the special tokens a chat tokenizer holds
ROLES = ("system", "user", "assistant")        a system message may only come first
render(messages, add_generation_prompt=False) -> str   tag + content + END per turn; the prompt adds ASSISTANT
parse(text) -> list[dict]                      the inverse of render
encode_chat(tok, messages, add_generation_prompt=False, tool_results=False) -> (T,) ids
    content encoded as plain text, the special ids placed between turns
chat_example(tok, messages, max_len=None, tool_results=False) -> (x, y) or None if longer than max_len
    y = IGNORE_INDEX except at the assistant's content and its END (and, with tool_results, not
    at the tool's text in ``<<expr=result>>``: result and ``>>``)
TOOL_CALL                                      the pattern of a calculator call, ``<<expr=result>>``
calculate(expression) -> str                   + - * / // ** and parentheses, exact, GSM8K-style number
MAX_EXPRESSION, MAX_DIGITS, PLACES             its limits: characters, digits of any value, decimals
reply(model, tok, messages, max_new_tokens=200, temperature=0.7, top_k=50, tools=True, on_token=None,
      generator=None) -> str                  the assistant's next message, streamed to on_token
reply_and_stop(model, tok, messages, ...) -> (str, stop)   the same, and the special token that ended it
    (END: the model closed its turn) or None when max_new_tokens ran out
ASSISTANT_NAME = "course-assistant"            the released assistant's name in the data registry
load_assistant(folder=None) -> (model, tok, config)   a release folder; chat tokens added if missing
main(argv=None) -> int                         ``python -m lmlib.chat [--model FOLDER] [--temperature T]
    [--max-new-tokens N] [--seed S]``: a terminal chat that reads stdin (a pipe too);
    /reset, /temp X, /quit
"""
from __future__ import annotations

import argparse
import ast
import codecs
import functools
import math
import operator
import re
import sys
from collections.abc import Callable, Sequence
from fractions import Fraction
from pathlib import Path

import torch
import torch.nn as nn

from lmlib import data
from lmlib.data import IGNORE_INDEX
from lmlib.device import eval_mode, model_device
from lmlib.generate import next_logits, next_token
from lmlib.model import GPT
from lmlib.recipes import load_course_gpt
from lmlib.tokenizers import ByteBPE

Tensor = torch.Tensor
Message = dict[str, str]

__all__ = [
    "SYSTEM", "USER", "ASSISTANT", "END", "CHAT_TOKENS", "ROLES", "render", "parse", "encode_chat",
    "chat_example", "TOOL_CALL", "calculate", "MAX_EXPRESSION", "MAX_DIGITS", "PLACES", "reply", "reply_and_stop",
    "ASSISTANT_NAME", "load_assistant", "main",
]

SYSTEM, USER, ASSISTANT, END = "<|system|>", "<|user|>", "<|assistant|>", "<|end|>"
CHAT_TOKENS = (SYSTEM, USER, ASSISTANT, END)
ROLES = ("system", "user", "assistant")
_TAG = dict(zip(ROLES, (SYSTEM, USER, ASSISTANT)))
_ROLE_OF = {tag: role for role, tag in _TAG.items()}


# --- the chat format ----------------------------------------------------------------------------

def _check_messages(messages: Sequence[Message]) -> None:
    """A clear error, naming the message, for anything that is not a valid conversation."""
    if isinstance(messages, (str, dict)) or not isinstance(messages, Sequence):
        raise ValueError(f"messages must be a list of {{'role': ..., 'content': ...}} dicts, got "
                         f"{type(messages).__name__}.")
    for i, m in enumerate(messages):
        if not isinstance(m, dict):
            raise ValueError(f"message {i} must be a dict with 'role' and 'content', got {type(m).__name__}.")
        for field in ("role", "content"):
            if field not in m:
                raise ValueError(f"message {i} has no {field!r} field: a message is {{'role': ..., 'content': ...}}.")
        extra = [k for k in m if k not in ("role", "content")]
        if extra:
            raise ValueError(f"message {i} has the unknown field {extra[0]!r}; a message holds only 'role' and "
                             "'content'.")
        if m["role"] not in ROLES:
            raise ValueError(f"message {i} has the role {m['role']!r}; the roles are {', '.join(ROLES)}.")
        if m["role"] == "system" and i > 0:
            raise ValueError(f"message {i} is a system message; only the first message may be one.")
        if not isinstance(m["content"], str):
            raise ValueError(f"message {i} ({m['role']}) has content of type {type(m['content']).__name__}; "
                             "content must be a string.")


def render(messages: Sequence[Message], add_generation_prompt: bool = False) -> str:
    """The conversation as text: ``<|user|>content<|end|>`` per turn, nothing between turns.

    With ``add_generation_prompt`` the text ends with ``<|assistant|>``, so a model continues it
    with the assistant's reply. Content that holds a chat token as text is an error here (the
    text could not be parsed back); :func:`encode_chat` encodes such content safely.
    """
    _check_messages(messages)
    for i, m in enumerate(messages):
        for token in CHAT_TOKENS:
            if token in m["content"]:
                raise ValueError(f"message {i} ({m['role']}) contains the chat token {token!r} as text, which a "
                                 "rendered text cannot tell from a real one; encode_chat encodes such content safely.")
    text = "".join(_TAG[m["role"]] + m["content"] + END for m in messages)
    return text + ASSISTANT if add_generation_prompt else text


_MARKER = re.compile("(" + "|".join(map(re.escape, CHAT_TOKENS)) + ")")


def parse(text: str) -> list[Message]:
    """The messages of a text made by :func:`render`: ``parse(render(m)) == m``.

    The text must be whole turns, each a role tag, content and :data:`END`, with nothing between
    them (a trailing ``<|assistant|>`` generation prompt is an unfinished turn: cut it off first).
    """
    if not isinstance(text, str):
        raise TypeError(f"parse takes the text of a conversation (str), got {type(text).__name__}.")
    parts = _MARKER.split(text)  # text, marker, text, marker, ..., text
    if parts[0]:
        raise ValueError(f"the text starts with {parts[0][:30]!r}, not with a role tag such as {USER!r}.")
    messages, at = [], 0
    for i in range(1, len(parts), 4):  # parts[i] tag, parts[i + 1] content, parts[i + 2] END
        tag = parts[i]
        if tag not in _ROLE_OF:
            raise ValueError(f"at character {at}: expected a role tag, found {tag!r}.")
        if i + 2 >= len(parts) or parts[i + 2] != END:
            found = "the end of the text" if i + 2 >= len(parts) else repr(parts[i + 2])
            raise ValueError(f"the {_ROLE_OF[tag]} turn at character {at} is not closed by {END!r} (found {found}).")
        messages.append({"role": _ROLE_OF[tag], "content": parts[i + 1]})
        at += len(tag) + len(parts[i + 1]) + len(END)
        if parts[i + 3]:
            raise ValueError(f"at character {at}: text {parts[i + 3][:30]!r} between turns.")
    _check_messages(messages)
    return messages


# --- tokens and loss masks ----------------------------------------------------------------------

@functools.lru_cache(maxsize=8)
def _plain(tok: ByteBPE) -> ByteBPE:
    """``tok`` without its special tokens: the same ids for any text, but ``"<|user|>"`` stays text."""
    return ByteBPE(tok.merges, (), tok.pattern, tok.byte_order)


def _chat_ids(tok: ByteBPE) -> dict[str, int]:
    specials = getattr(tok, "special_tokens", {})
    missing = [t for t in CHAT_TOKENS if t not in specials]
    if missing:
        raise ValueError(f"the tokenizer has no special tokens {missing}: load the model with lmlib.chat."
                         "load_assistant, or with lmlib.recipes.load_course_gpt(special_tokens=CHAT_TOKENS).")
    return {t: specials[t] for t in CHAT_TOKENS}


#: A calculator call in GSM8K's notation: ``<<48/2=24>>``, groups (expression, result).
TOOL_CALL = re.compile(r"<<([^<>=\n]+)=([^<>=\n]*)>>")
_OPEN_CALL = re.compile(r"<<([^<>=\n]+)=$")  # the model has just asked for a result


def _segments(content: str, tool_results: bool) -> list[tuple[str, bool]]:
    """(text, written by the model) pieces of an assistant's content; the tool writes ``result>>``."""
    if not tool_results:
        return [(content, True)]
    out, start = [], 0
    for call in TOOL_CALL.finditer(content):
        out += [(content[start: call.start(2)], True), (content[call.start(2): call.end()], False)]
        start = call.end()
    return out + [(content[start:], True)]


def _encode(tok: ByteBPE, messages: Sequence[Message], add_generation_prompt: bool,
            tool_results: bool) -> tuple[list[int], list[bool]]:
    """Token ids of the conversation and, for each, whether the model learns to produce it."""
    _check_messages(messages)
    special, plain = _chat_ids(tok), _plain(tok)
    ids: list[int] = []
    learn: list[bool] = []

    def add(new: list[int], flag: bool) -> None:
        ids.extend(new)
        learn.extend([flag] * len(new))

    for m in messages:
        mine = m["role"] == "assistant"
        add([special[_TAG[m["role"]]]], False)
        for text, by_model in (_segments(m["content"], tool_results) if mine else [(m["content"], False)]):
            add(plain.encode_list(text), mine and by_model)  # each piece encoded alone, as in reply()
        add([special[END]], mine)
    if add_generation_prompt:
        add([special[ASSISTANT]], False)
    return ids, learn


def encode_chat(tok: ByteBPE, messages: Sequence[Message], add_generation_prompt: bool = False,
                tool_results: bool = False) -> Tensor:
    """The conversation's token ids (1-D int64): what :func:`render` writes, but never forgeable.

    Each content is encoded as plain text and the chat tokens' ids are placed between turns, so
    content that spells a chat token gives ordinary ids. ``tool_results`` encodes the tool's
    ``result>>`` of each ``<<expr=result>>`` in the assistant's content on its own, as
    :func:`reply` feeds it.
    """
    return torch.tensor(_encode(tok, messages, add_generation_prompt, tool_results)[0], dtype=torch.long)


def chat_example(tok: ByteBPE, messages: Sequence[Message], max_len: int | None = None,
                 tool_results: bool = False) -> tuple[Tensor, Tensor] | None:
    """One training example ``(x, y)``, next-token pairs with the loss on the assistant's turns only.

    Every assistant turn's content and its :data:`END` are learned (END teaches the model to
    stop); the role tags and the system and user turns are context, ``y = IGNORE_INDEX`` there.
    With ``tool_results``, the tool's text in each ``<<expr=result>>`` (``result>>``) is context
    too: the model learns to ask, ``<<48/2=``, and to go on after the answer, not the arithmetic.
    None when ``x`` is longer than ``max_len`` (drop such conversations rather than cut them).
    Batch the examples with :func:`lmlib.instruct.sft_batches` or :func:`lmlib.instruct.pad_examples`.
    """
    ids, learn = _encode(tok, messages, False, tool_results)
    if not any(learn):
        raise ValueError("the conversation has no assistant turn: there is nothing to learn from it.")
    if max_len is not None and len(ids) - 1 > max_len:
        return None
    x, y = torch.tensor(ids[:-1]), torch.tensor(ids[1:])
    y[~torch.tensor(learn[1:])] = IGNORE_INDEX
    return x, y


# --- the calculator -----------------------------------------------------------------------------

#: The longest expression :func:`calculate` reads, the most digits of any number it makes (integer
#: part or denominator), and the decimal places of a result.
MAX_EXPRESSION, MAX_DIGITS, PLACES = 100, 30, 4

_OPERATORS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv,
              ast.FloorDiv: operator.floordiv, ast.Pow: operator.pow, ast.USub: operator.neg, ast.UAdd: operator.pos}
_ALLOWED = "only numbers, + - * / // ** and parentheses are allowed"


def _describe(node: ast.AST) -> str:
    if isinstance(node, ast.Name):
        return f"the name {node.id!r}"
    if isinstance(node, ast.Constant):
        return f"the constant {node.value!r}"
    if isinstance(node, (ast.BinOp, ast.UnaryOp)):
        return f"the operator {type(node.op).__name__}"
    return {ast.Call: "a function call", ast.Attribute: "an attribute"}.get(type(node), f"a {type(node).__name__}")


def _evaluate(node: ast.AST, fail: Callable[[str], ValueError]) -> Fraction:
    if isinstance(node, ast.Constant) and type(node.value) in (int, float):
        if not math.isfinite(node.value):
            raise fail("a number in it is too large")
        value = Fraction(repr(node.value))  # the literal as written: 0.1 is exactly 1/10
    elif isinstance(node, ast.UnaryOp) and type(node.op) in _OPERATORS:
        value = _OPERATORS[type(node.op)](_evaluate(node.operand, fail))
    elif isinstance(node, ast.BinOp) and type(node.op) in _OPERATORS:
        a, b = _evaluate(node.left, fail), _evaluate(node.right, fail)
        if isinstance(node.op, ast.Pow):
            if b.denominator != 1:
                raise fail("an exponent must be a whole number")
            if abs(b) * max(abs(a.numerator).bit_length(), a.denominator.bit_length()) > 4 * MAX_DIGITS:
                raise fail("the power is too large")  # checked before computing it: 9**9**9 never runs
        try:
            value = Fraction(_OPERATORS[type(node.op)](a, b))  # a // b is an int
        except ZeroDivisionError:
            raise fail("it divides by zero") from None
    else:
        raise fail(f"it uses {_describe(node)}; {_ALLOWED}")
    if abs(value.numerator) >= 10 ** MAX_DIGITS * value.denominator or value.denominator >= 10 ** MAX_DIGITS:
        raise fail(f"a value in it has more than {MAX_DIGITS} digits")
    return value


def calculate(expression: str) -> str:
    """The value of an arithmetic expression, written like GSM8K's numbers: ``"48/2"`` -> ``"24"``.

    Numbers, ``+ - * / //``, ``**`` with a whole exponent, unary minus and parentheses; anything else
    (names, calls, attributes, strings), more than :data:`MAX_EXPRESSION` characters or a value
    beyond :data:`MAX_DIGITS` digits raises ValueError naming the expression. The expression is
    parsed with :mod:`ast` and computed exactly with fractions, never run by Python. The result has
    no trailing zeros (``24``, ``0.2``) and at most :data:`PLACES` decimals, rounded half away from
    zero (``10/3`` -> ``3.3333``).
    """
    if not isinstance(expression, str):
        raise ValueError(f"calculate takes an expression (str), got {type(expression).__name__}.")
    shown = repr(expression) if len(expression) <= 60 else repr(expression[:60]) + "..."

    def fail(why: str) -> ValueError:
        return ValueError(f"cannot calculate {shown}: {why}.")

    if len(expression) > MAX_EXPRESSION:
        raise fail(f"it is longer than {MAX_EXPRESSION} characters")
    try:
        tree = ast.parse(expression.strip(), mode="eval")
    except SyntaxError:
        raise fail("it is not an arithmetic expression") from None
    value = _evaluate(tree.body, fail)
    scaled = math.floor(abs(value) * 10 ** PLACES + Fraction(1, 2))  # rounded half away from zero
    whole, frac = divmod(scaled, 10 ** PLACES)
    decimals = f"{frac:0{PLACES}d}".rstrip("0")
    return ("-" if value < 0 and scaled else "") + str(whole) + ("." + decimals if decimals else "")


def _tool(expression: str) -> str:
    try:
        return calculate(expression)
    except ValueError:
        return "?"


# --- replies ------------------------------------------------------------------------------------

def reply(model: nn.Module, tok: ByteBPE, messages: Sequence[Message], max_new_tokens: int = 200,
          temperature: float = 0.7, top_k: int | None = 50, tools: bool = True,
          on_token: Callable[[str], None] | None = None, generator: torch.Generator | None = None) -> str:
    """The assistant's next message after ``messages``, sampled token by token with a KV cache.

    Each new piece of text goes to ``on_token`` as soon as it is decoded (a character split across
    tokens waits for its last byte). Stops at :data:`END` (or any other special token, which no
    content holds) or after ``max_new_tokens`` sampled tokens. ``temperature=0`` is greedy. With
    ``tools``, whenever the reply ends with ``<<expr=``, the loop computes ``calculate(expr)`` and
    appends ``result>>`` itself (``?>>`` when the expression cannot be calculated); those tokens
    are streamed and returned like the model's. A conversation longer than the model's context
    keeps its last ``block_size`` tokens. ``generator`` makes sampling repeatable.
    :func:`reply_and_stop` also says why the reply stopped.
    """
    return reply_and_stop(model, tok, messages, max_new_tokens, temperature, top_k, tools, on_token, generator)[0]


@torch.no_grad()
def reply_and_stop(model: nn.Module, tok: ByteBPE, messages: Sequence[Message], max_new_tokens: int = 200,
                   temperature: float = 0.7, top_k: int | None = 50, tools: bool = True,
                   on_token: Callable[[str], None] | None = None,
                   generator: torch.Generator | None = None) -> tuple[str, str | None]:
    """:func:`reply`'s message and what ended it: the special token the model wrote (:data:`END` when
    it closed its turn as trained, another chat token when it broke the format), or None when
    ``max_new_tokens`` ran out first. Evaluations of the chat format count the first case.
    """
    if not (isinstance(temperature, (int, float)) and 0 <= temperature < math.inf):
        raise ValueError(f"temperature must be a number >= 0 (0 = greedy), got {temperature!r}.")
    if not isinstance(max_new_tokens, int) or max_new_tokens < 0:
        raise ValueError(f"max_new_tokens must be a non-negative integer, got {max_new_tokens!r}.")
    device = model_device(model)
    stops = set(tok.special_tokens.values())
    idx = encode_chat(tok, messages, add_generation_prompt=True, tool_results=tools).to(device)[None]
    utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")
    text = ""

    def emit(ids: list[int], final: bool = False) -> str:
        piece = utf8.decode(tok.decode_bytes(ids), final=final)
        if piece and on_token is not None:
            on_token(piece)
        return piece

    stop = None
    with eval_mode(model):
        logits, cache = next_logits(model, idx)
        for step in range(max_new_tokens):
            token = int(next_token(logits, temperature, top_k, greedy=temperature == 0, generator=generator))
            if token in stops:
                stop = tok.decode([token])
                break
            new = [token]
            text += emit(new)
            call = _OPEN_CALL.search(text) if tools else None
            if call:
                new += _plain(tok).encode_list(_tool(call.group(1)) + ">>")
                text += emit(new[1:])
            if step + 1 < max_new_tokens:
                idx = torch.cat([idx, torch.tensor([new], device=device)], dim=1)
                logits, cache = next_logits(model, idx, cache, n_new=len(new))
    return text + emit([], final=True), stop


# --- loading and the terminal chat --------------------------------------------------------------

#: The released assistant's name in the data registry (``lmlib/datasets.toml``), once it is released.
ASSISTANT_NAME = "course-assistant"
_FILES = ("model.safetensors", "tokenizer.json", "config.json")


def load_assistant(folder: str | Path | None = None) -> tuple[GPT, ByteBPE, dict]:
    """A chat model, its tokenizer and its config, from a release folder (float32, CPU, eval mode).

    The folder holds ``model.safetensors``, ``tokenizer.json`` and ``config.json``, as
    :func:`lmlib.recipes.save_release` writes them. A tokenizer that already holds the
    :data:`CHAT_TOKENS` (a fine-tuned assistant) is used as it is; a base course model gets them
    added, with new rows in the model (:func:`lmlib.recipes.load_course_gpt`), to be fine-tuned.
    Without ``folder``: the course's released assistant, :data:`ASSISTANT_NAME`.
    """
    if folder is None:
        if ASSISTANT_NAME not in data.registry():
            raise FileNotFoundError(f"the course's assistant ({ASSISTANT_NAME!r}) is not released yet: it is not "
                                    "in the data registry (lmlib/datasets.toml).")
        folder = data.path(ASSISTANT_NAME, "config.json").parent
        if any(data.path(ASSISTANT_NAME, name).parent != folder for name in _FILES):
            raise FileNotFoundError(f"the files of {ASSISTANT_NAME!r} are not in one folder; put them together "
                                    f"in {folder}.")
    folder = Path(folder)
    missing = [name for name in _FILES if not (folder / name).is_file()]
    if missing:
        raise FileNotFoundError(f"{folder} is not a model release folder: it has no {', '.join(missing)}.")
    held = [t for t in CHAT_TOKENS if t in ByteBPE.load(folder / "tokenizer.json").special_tokens]
    if not held:
        return load_course_gpt(folder, special_tokens=CHAT_TOKENS)
    if len(held) < len(CHAT_TOKENS):
        raise ValueError(f"the tokenizer in {folder} holds only some chat tokens, {held}, of {list(CHAT_TOKENS)}.")
    return load_course_gpt(folder)


def _cannot_load(folder: str | None, err: Exception) -> str:
    reason = str(err).rstrip(".") if isinstance(err, (OSError, ValueError)) else f"{type(err).__name__}: {err}"
    if folder is None:
        return (f"python -m lmlib.chat: no assistant to chat with, because {reason}. Train one in chapter 5's "
                "assistant notebook, which saves a release folder, or with python -m lmlib.assistant --scale cpu "
                "--out FOLDER, and pass that folder with --model FOLDER. "
                "Any release folder works, for example --model models/course-gpt, the pretrained course model "
                "(it continues text but has not learned to chat).")
    return (f"python -m lmlib.chat: cannot load a model from {folder}: {reason}. --model takes a release folder "
            f"holding {', '.join(_FILES)}, such as models/course-gpt; leave it out for the course's assistant.")


def main(argv: list[str] | None = None) -> int:
    """Chat with a model in the terminal: type a message, read the reply as it is written."""
    parser = argparse.ArgumentParser(prog="python -m lmlib.chat", description=main.__doc__, epilog=(
        "Commands: /reset forgets the conversation, /temp X sets the temperature (0 = greedy), /quit ends "
        "(so does the end of the input). Lines can also come through a pipe."))
    parser.add_argument("--model", metavar="FOLDER", help="a release folder (default: the course's released assistant)")
    parser.add_argument("--temperature", type=float, default=0.7, help="sampling temperature, 0 = greedy (default 0.7)")
    parser.add_argument("--max-new-tokens", type=int, default=200, help="longest reply in tokens (default 200)")
    parser.add_argument("--seed", type=int, default=0, help="random seed of the sampling (default 0)")
    args = parser.parse_args(argv)
    if not 0 <= args.temperature < math.inf:
        parser.error(f"--temperature must be a number >= 0, got {args.temperature}")
    if args.max_new_tokens < 1:
        parser.error(f"--max-new-tokens must be at least 1, got {args.max_new_tokens}")
    try:
        model, tok, _ = load_assistant(args.model)
    except Exception as err:  # a missing or broken release is the user's to fix: a message, not a traceback
        print(_cannot_load(args.model, err), file=sys.stderr)
        return 2
    generator, temperature = torch.Generator().manual_seed(args.seed), args.temperature
    messages: list[Message] = []
    ask = sys.stdin.isatty()
    print(f"Chatting with {args.model or ASSISTANT_NAME}. Commands: /reset, /temp X, /quit.", flush=True)
    try:
        while True:
            if ask:
                print("you> ", end="", flush=True)
            line = sys.stdin.readline()
            if not line:  # end of the input
                break
            line = line.strip()
            if not line:
                continue
            command, _, value = line.partition(" ")
            if command == "/quit":
                break
            if command == "/reset":
                messages.clear()
                print("(conversation forgotten)", flush=True)
            elif command == "/temp":
                try:
                    new = float(value)
                    if not 0 <= new < math.inf:
                        raise ValueError
                except ValueError:
                    print(f"(/temp takes a number >= 0, 0 = greedy; got {value.strip()!r})", flush=True)
                    continue
                temperature = new
                print(f"(temperature {temperature:g})", flush=True)
            elif command.startswith("/"):
                print(f"(unknown command {command!r}: use /reset, /temp X or /quit)", flush=True)
            else:
                messages.append({"role": "user", "content": line})
                print("assistant> ", end="", flush=True)
                answer = reply(model, tok, messages, args.max_new_tokens, temperature, generator=generator,
                               on_token=lambda piece: print(piece, end="", flush=True))
                print(flush=True)
                messages.append({"role": "assistant", "content": answer})
    except KeyboardInterrupt:
        print()
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
