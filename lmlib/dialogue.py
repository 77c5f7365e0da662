"""Conversations for the course assistant: three data sets in the chat format, a held-out split,
preference pairs, and fitting a conversation into the model's context.

Derived in chapter 5 ("Applications", the assistant notebook). A conversation is a dict
``{"id", "source", "messages"}`` whose messages follow :mod:`lmlib.chat` (user, then assistant,
alternating, ending with the assistant). The sources:

- HH-RLHF helpful-base: the ``chosen`` dialogue parsed into turns at its ``\\n\\nHuman:`` and
  ``\\n\\nAssistant:`` markers; the ``rejected`` dialogue's last reply is kept beside it
  (``"rejected"``), which makes every conversation a preference pair as well.
- The Self-Instruct seed tasks: instruction (and input) as the user's message, output as the reply.
- GSM8K: the question, and the worked solution with its calculator calls ``<<48/2=24>>`` kept;
  each result is rewritten to what :func:`lmlib.chat.calculate` returns (the tool writes it at
  chat time), an annotation the tool cannot compute is removed, and the final
  ``#### 72`` becomes the sentence ``The answer is 72.`` (:func:`final_answer` reads it back).

Every reader counts the rows it cannot use in a report (:class:`lmlib.data.RowReport`), never
dropping one silently. :func:`split_heldout` splits by conversation: all conversations that open
with the same user message fall on the same side, chosen by a seeded hash.

API summary
-----------
hh_messages(text) -> list[dict]                an HH-RLHF dialogue as chat messages; ValueError says why not
load_hh_rlhf() -> (conversations, report)      the chosen dialogues, each with its rejected last reply
self_instruct_conversations(rows) -> list[dict]   rows of lmlib.instruct.load_self_instruct
ANSWER = "The answer is {}."                   the sentence that ends a GSM8K solution
gsm8k_solution(answer, counts=None) -> str     GSM8K's worked answer in the assistant's words
gsm8k_conversations(rows, split="train") -> (conversations, rewrites)   each with "answer", the
    reference; ``rewrites`` counts what :func:`gsm8k_solution` changed
final_answer(text) -> str | None               the number after the last "The answer is", normalised
conversation_key(conversation) -> str          its first user message, lower case, spaces collapsed
split_heldout(conversations, fraction, seed=0) -> (train, heldout)   by key, seeded, reproducible
drop_overlap(conversations, seen) -> (kept, n_dropped)   leave out those whose key is in ``seen``
preference_pair(conversation) -> (prompt messages, chosen, rejected)
fit_to_context(tok, messages, max_len) -> (messages or None, "whole" | "cut" | "dropped")
    the longest run of whole turns from the start, ending with an assistant turn, that fits
conversation_examples(tok, conversations, max_len) -> (examples, counts)   chat_example of each, fitted
reply_example(tok, prompt, reply, max_len=None) -> (x, y) or None   the loss on the last reply only
pair_examples(tok, pairs, max_len) -> (list of (chosen, rejected) examples, counts)
    a prompt too long for both replies loses its earliest exchanges ("cut") or the pair is dropped
"""
from __future__ import annotations

import hashlib
import re
from collections import Counter
from collections.abc import Iterable, Sequence

import torch

from lmlib.chat import TOOL_CALL, calculate, chat_example, encode_chat
from lmlib.data import IGNORE_INDEX
from lmlib.instruct import JsonlReport, normalize_number, read_jsonl, split_dialogue
from lmlib.tokenizers import ByteBPE

Message = dict[str, str]
Conversation = dict
Example = tuple[torch.Tensor, torch.Tensor]

__all__ = [
    "hh_messages", "load_hh_rlhf", "self_instruct_conversations", "ANSWER",
    "gsm8k_solution", "gsm8k_conversations", "final_answer", "conversation_key", "split_heldout",
    "drop_overlap", "preference_pair", "fit_to_context", "conversation_examples", "reply_example", "pair_examples",
]


# --- HH-RLHF ------------------------------------------------------------------------------------

_HH_TURN = re.compile(r"\n\n(Human|Assistant):")
_ROLE = {"Human": "user", "Assistant": "assistant"}


def hh_messages(text: str) -> list[Message]:
    """The turns of an HH-RLHF dialogue (``\\n\\nHuman: ...\\n\\nAssistant: ...``) as chat messages.

    Each turn's text is stripped of surrounding white space. Raises ValueError, with the reason,
    for text before the first marker, an empty turn, two turns in a row by the same speaker, or a
    dialogue that does not open with the human. A dialogue may end with either speaker here.
    """
    parts = _HH_TURN.split(text)
    if parts[0].strip():
        raise ValueError("text before the first Human/Assistant marker")
    messages: list[Message] = []
    for speaker, content in zip(parts[1::2], parts[2::2]):
        role = _ROLE[speaker]
        if not content.strip():
            raise ValueError(f"an empty {role} turn")
        if messages and messages[-1]["role"] == role:
            raise ValueError("two turns in a row by the same speaker")
        messages.append({"role": role, "content": content.strip()})
    if not messages:
        raise ValueError("no Human/Assistant turns")
    if messages[0]["role"] != "user":
        raise ValueError("the dialogue does not open with the human")
    return messages


def _hh_row(row: dict) -> tuple[list[Message], str]:
    """(chosen dialogue as messages, rejected last reply), or ValueError with the reason."""
    parts = split_dialogue(row["chosen"], row["rejected"])
    if parts is None:
        raise ValueError("chosen and rejected do not share the dialogue before the last reply")
    prompt, chosen, rejected = parts
    messages = hh_messages(prompt + chosen)
    if messages[-1]["role"] != "assistant":
        raise ValueError("the last turn is not the assistant's")
    rejected = rejected.strip()
    if not rejected or _HH_TURN.search(rejected):
        raise ValueError("the rejected reply is empty or holds more than one turn")
    if rejected == messages[-1]["content"]:
        raise ValueError("chosen and rejected replies are identical")
    return messages, rejected


def load_hh_rlhf() -> tuple[list[Conversation], JsonlReport]:
    """HH-RLHF helpful-base as conversations ``{"id", "source", "messages", "rejected"}``.

    ``messages`` is the chosen dialogue; ``rejected`` the reply the crowdworker liked less in the
    same place. Malformed rows (see :func:`hh_messages`) are counted in the report by reason.
    """
    def check(row: dict) -> str | None:
        try:
            _hh_row(row)
        except ValueError as err:
            return str(err)
        return None

    rows, report = read_jsonl("hh-rlhf-helpful-base", required=("chosen", "rejected"), check=check)
    out = []
    for i, row in enumerate(rows):
        messages, rejected = _hh_row(row)
        out.append({"id": f"hh-{i}", "source": "hh-rlhf", "messages": messages, "rejected": rejected})
    return out, report


# --- Self-Instruct and GSM8K --------------------------------------------------------------------

def self_instruct_conversations(rows: Iterable[dict]) -> list[Conversation]:
    """Seed tasks ``{"instruction", "input", "output"}`` as one exchange each: the instruction, then
    the input after a blank line (when there is one), as the user's message; the output as the reply."""
    out = []
    for i, row in enumerate(rows):
        user = row["instruction"].strip() + (f"\n\n{row['input'].strip()}" if row["input"].strip() else "")
        out.append({"id": f"self-instruct-{i}", "source": "self-instruct",
                    "messages": [{"role": "user", "content": user},
                                 {"role": "assistant", "content": row["output"].strip()}]})
    return out


#: The sentence that ends the assistant's GSM8K solutions, in place of ``#### 72``.
ANSWER = "The answer is {}."
_ANNOTATION = re.compile(r"<<([^<>]*)>>")
_FINAL = ANSWER.split("{")[0].strip()  # "The answer is"


def gsm8k_solution(answer: str, counts: Counter | None = None) -> str:
    """A GSM8K worked answer as the assistant writes it: calls normalised, the last line a sentence.

    Each ``<<expr=result>>`` gets the result :func:`lmlib.chat.calculate` gives for ``expr``
    (counted in ``counts`` under "calculator results rewritten" when that differs from the data);
    an annotation the tool cannot compute is replaced by nothing (the text after it states the
    number anyway; counted as "annotations the calculator cannot compute, removed"). The final
    ``#### n`` line becomes ``The answer is n.`` with n normalised (``1,000`` -> ``1000``).
    """
    counts = counts if counts is not None else Counter()
    if "####" not in answer:
        raise ValueError("the answer has no '####' final line")
    work, final = answer.rsplit("####", 1)
    number = normalize_number(final)
    if number is None:
        raise ValueError(f"no number after '####' in {final.strip()[:30]!r}")

    def normalise(match: re.Match) -> str:
        call = TOOL_CALL.fullmatch(match.group())
        try:
            result = calculate(call.group(1)) if call else None
        except ValueError:
            result = None
        if result is None:
            counts["annotations the calculator cannot compute, removed"] += 1
            return ""
        if result != call.group(2):
            counts["calculator results rewritten"] += 1
        counts["calculator calls"] += 1
        return f"<<{call.group(1)}={result}>>"

    work = _ANNOTATION.sub(normalise, work).rstrip()
    return (work + "\n" if work else "") + ANSWER.format(number)


def gsm8k_conversations(rows: Iterable[dict], split: str = "train") -> tuple[list[Conversation], Counter]:
    """GSM8K rows ``{"question", "answer"}`` (from :func:`lmlib.instruct.load_gsm8k`) as conversations
    with the reference ``"answer"`` (a normalised number), and the rewrites of :func:`gsm8k_solution`
    counted by kind."""
    counts: Counter = Counter()
    out = []
    for i, row in enumerate(rows):
        solution = gsm8k_solution(row["answer"], counts)
        out.append({"id": f"gsm8k-{split}-{i}", "source": "gsm8k", "answer": final_answer(solution),
                    "messages": [{"role": "user", "content": row["question"].strip()},
                                 {"role": "assistant", "content": solution}]})
    return out, counts


def final_answer(text: str) -> str | None:
    """The number after the last ``The answer is`` in ``text``, normalised; None without one.

    A reply that never says ``The answer is`` gets no credit, as GSM8K's grading gives none to a
    solution without its ``####`` line.
    """
    if not isinstance(text, str) or _FINAL not in text:
        return None
    return normalize_number(text.rsplit(_FINAL, 1)[1].split("\n", 1)[0])


# --- a held-out split by conversation -----------------------------------------------------------

def conversation_key(conversation: Conversation) -> str:
    """What makes two conversations "the same" for the split: the first user message, in lower case
    with white space collapsed (HH-RLHF holds dialogues that open alike and go on differently)."""
    first = next(m["content"] for m in conversation["messages"] if m["role"] == "user")
    return " ".join(first.lower().split())


def _unit(seed: int, key: str) -> float:
    digest = hashlib.sha256(f"{seed}\0{key}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2 ** 64


def split_heldout(conversations: Sequence[Conversation], fraction: float,
                  seed: int = 0) -> tuple[list[Conversation], list[Conversation]]:
    """(train, held-out): a conversation is held out when a hash of ``seed`` and its
    :func:`conversation_key` falls below ``fraction``, so the split is the same on every machine,
    every conversation with the same key lands on the same side, and order does not matter."""
    if not 0 < fraction < 1:
        raise ValueError(f"fraction must be between 0 and 1 (the held-out share), got {fraction!r}.")
    train, heldout = [], []
    for c in conversations:
        (heldout if _unit(seed, conversation_key(c)) < fraction else train).append(c)
    return train, heldout


def drop_overlap(conversations: Sequence[Conversation], seen: Iterable[str]) -> tuple[list[Conversation], int]:
    """The conversations whose key is not in ``seen`` (keys of training conversations), and how many went."""
    seen = set(seen)
    kept = [c for c in conversations if conversation_key(c) not in seen]
    return kept, len(conversations) - len(kept)


def preference_pair(conversation: Conversation) -> tuple[list[Message], str, str]:
    """(the dialogue before the last reply, the chosen reply, the rejected reply) of an HH-RLHF conversation."""
    if "rejected" not in conversation:
        raise ValueError(f"conversation {conversation.get('id')!r} has no rejected reply: only HH-RLHF "
                         "conversations (load_hh_rlhf) are preference pairs.")
    messages = conversation["messages"]
    return list(messages[:-1]), messages[-1]["content"], conversation["rejected"]


# --- the model's context ------------------------------------------------------------------------

def fit_to_context(tok: ByteBPE, messages: Sequence[Message], max_len: int) -> tuple[list[Message] | None, str]:
    """The messages cut at a turn boundary so that their training example fits ``max_len`` inputs.

    "whole" when the conversation fits; "cut" when a shorter run of whole turns from the start,
    ending with an assistant turn, fits (the later turns are left out: a reply is never cut in
    the middle, which would teach the model to stop mid-sentence); "dropped" (and None) when not
    even the first exchange fits. Lengths are those of :func:`lmlib.chat.chat_example` with
    ``tool_results=True`` (each turn is encoded on its own, so turn lengths add up).
    """
    total, best = 0, None
    for k, m in enumerate(messages):
        total += len(encode_chat(tok, [m], tool_results=True))
        if total - 1 > max_len:
            break
        if m["role"] == "assistant":
            best = k + 1
    if best == len(messages):
        return list(messages), "whole"
    if best is None:
        return None, "dropped"
    return list(messages[:best]), "cut"


def conversation_examples(tok: ByteBPE, conversations: Iterable[Conversation],
                          max_len: int) -> tuple[list[Example], Counter]:
    """Training examples (:func:`lmlib.chat.chat_example`, loss on the assistant's turns, none on the
    calculator's results) of the conversations, each fitted by :func:`fit_to_context`; the
    counts say how many were whole, cut at a turn boundary, or dropped."""
    examples, counts = [], Counter()
    for c in conversations:
        messages, status = fit_to_context(tok, c["messages"], max_len)
        counts[status] += 1
        if messages is not None:
            examples.append(chat_example(tok, messages, max_len, tool_results=True))
    return examples, counts


def reply_example(tok: ByteBPE, prompt: Sequence[Message], reply: str, max_len: int | None = None) -> Example | None:
    """``(x, y)`` of the dialogue ``prompt`` followed by the assistant's ``reply``, with the loss on
    the reply (and its END) only: earlier assistant turns are context here. None if too long.

    :func:`lmlib.instruct.sequence_logprob` of it is ``log p(reply | prompt)``, what DPO compares.
    """
    example = chat_example(tok, [*prompt, {"role": "assistant", "content": reply}], max_len, tool_results=True)
    if example is None:
        return None
    x, y = example
    start = len(encode_chat(tok, prompt, add_generation_prompt=True))  # prompt ids and the ASSISTANT tag
    y[: start - 1] = IGNORE_INDEX
    return x, y


def pair_examples(tok: ByteBPE, pairs: Iterable[tuple[Sequence[Message], str, str]],
                  max_len: int) -> tuple[list[tuple[Example, Example]], Counter]:
    """(chosen, rejected) :func:`reply_example` pairs for ``(prompt, chosen, rejected)`` triples.

    When a reply does not fit after the whole prompt, the prompt's earliest exchanges (a user
    turn and the reply to it) are left out until both fit ("cut"; the last user turn always
    stays); a pair that never fits is "dropped". The counts say how many of each.
    """
    out, counts = [], Counter()
    for prompt, chosen, rejected in pairs:
        status = "dropped"
        for start in range(0, len(prompt), 2):
            c = reply_example(tok, prompt[start:], chosen, max_len)
            r = reply_example(tok, prompt[start:], rejected, max_len) if c is not None else None
            if c is not None and r is not None:
                out.append((c, r))
                status = "whole" if start == 0 else "cut"
                break
        counts[status] += 1
    return out, counts
