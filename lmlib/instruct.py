"""Instruction tuning: prompt templates, response-only loss masks, answer checking, and DPO.

Derived in chapter 5 ("Applications", notebook 03). Supervised fine-tuning (SFT) on instructions
trains a language model on ``prompt + response`` texts, but only the response is the behaviour
we want: the loss is taken on response tokens only. Targets at prompt positions are set to
:data:`lmlib.data.IGNORE_INDEX` (-100), the value ``F.cross_entropy`` skips by default, so
:func:`lmlib.train.lm_loss` and ``lmlib.model.GPT(x, targets=y)`` average over the response
tokens and :class:`lmlib.train.Trainer` trains on these batches unchanged.

API summary
-----------
PromptTemplate(instruction=..., input=..., response=..., end=...)  .prompt(instruction, input="")
    .full(instruction, input, response) -> prompt + response + end marker
sft_targets(ids, prompt_len) -> (x, y)         next-token pairs, y = IGNORE_INDEX inside the prompt
encode_example(encode, prompt, response, end, max_len) -> (x, y) or None if too long
pad_examples(examples, pad_id) -> (X, Y)       right padding, Y = IGNORE_INDEX on padding
sft_batches(examples, batch_size, pad_id) -> batch_fn(generator) for lmlib.train.Trainer
respond(model, encode, decode, prompt, max_new_tokens, end) -> str   greedy answer, cut at ``end``
JsonlReport, read_jsonl(name, file, required) -> (rows, report)     counts malformed rows
load_self_instruct() / load_gsm8k(split) / load_preferences()
extract_answer(text) -> str | None             the number after '####', normalised
normalize_number(text) -> str | None
answer_accuracy(predictions, references) -> float   share of extracted answers equal to the reference
sequence_logprob(model, x, y) -> (B,)          summed log-probabilities of the non-ignored targets
response_nll(model, examples, pad_id, batch_size=64) -> float   held-out loss, nats per response token
split_dialogue(chosen, rejected, marker="\\n\\nAssistant:") -> (prompt, chosen reply, rejected reply) or None
dpo_loss(policy_chosen, policy_rejected, ref_chosen, ref_rejected, beta) -> (loss, reward margins)
"""
from __future__ import annotations

import gzip
import json
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation

import torch
import torch.nn as nn
import torch.nn.functional as F

from lmlib import data
from lmlib.data import IGNORE_INDEX, RowReport, pad_right, random_batches
from lmlib.device import eval_mode, model_device
from lmlib.generate import lm_logits, target_logprobs

Tensor = torch.Tensor
Example = tuple[Tensor, Tensor]

__all__ = [
    "IGNORE_INDEX", "PromptTemplate", "sft_targets", "encode_example", "pad_examples", "sft_batches",
    "respond", "JsonlReport", "read_jsonl", "load_self_instruct", "load_gsm8k", "load_preferences",
    "split_dialogue", "extract_answer", "normalize_number", "answer_accuracy", "sequence_logprob",
    "response_nll", "dpo_loss",
]

#: The target value that ``F.cross_entropy`` (and so ``lm_loss`` and ``GPT``) leaves out of the loss.


# --- the template -------------------------------------------------------------------------------

@dataclass(frozen=True)
class PromptTemplate:
    """How an (instruction, optional input, response) triple becomes one text.

    The model sees ``prompt(instruction, input)`` and learns to continue it with the response
    followed by the ``end`` marker, which tells generation where to stop. The section headers
    are plain text, so any tokenizer can encode them.
    """

    instruction: str = "### Instruction:\n"
    input: str = "### Input:\n"
    response: str = "### Response:\n"
    end: str = "<|end|>"

    def prompt(self, instruction: str, input: str = "") -> str:
        """The text the model is given; the input section appears only when ``input`` is not blank."""
        if not isinstance(instruction, str) or not instruction.strip():
            raise ValueError("instruction must be a non-empty string.")
        text = self.instruction + instruction.strip() + "\n"
        if input and input.strip():
            text += self.input + input.strip() + "\n"
        return text + self.response

    def full(self, instruction: str, input: str, response: str) -> str:
        """Prompt, response and end marker: one training text."""
        return self.prompt(instruction, input) + response.strip() + self.end


# --- tokenised examples with a loss mask --------------------------------------------------------

def sft_targets(ids: Tensor, prompt_len: int) -> Example:
    """Next-token pairs ``(x, y)`` of a tokenised ``prompt + response`` whose first ``prompt_len`` ids are the prompt.

    ``x = ids[:-1]`` and ``y = ids[1:]``; ``y[t]`` is the token that follows position ``t``, and it
    is set to :data:`IGNORE_INDEX` when that token is part of the prompt (``t + 1 < prompt_len``).
    The first response token is predicted from the last prompt position, so it is kept.
    """
    ids = torch.as_tensor(ids, dtype=torch.long)
    if ids.dim() != 1:
        raise ValueError(f"ids must be a 1-D sequence of token ids, got shape {tuple(ids.shape)}.")
    if not 1 <= prompt_len < len(ids):
        raise ValueError(
            f"prompt_len={prompt_len} must be between 1 and len(ids) - 1 = {len(ids) - 1}: the prompt "
            "needs at least one token and the response at least one token after it."
        )
    x, y = ids[:-1].clone(), ids[1:].clone()
    y[: prompt_len - 1] = IGNORE_INDEX
    return x, y


def encode_example(encode: Callable[[str], Sequence[int] | Tensor], prompt: str, response: str,
                   end: str = "", max_len: int | None = None) -> Example | None:
    """Tokenise one example into ``(x, y)`` with the prompt masked; None if it is longer than ``max_len``.

    Prompt and response are encoded separately and concatenated, so the boundary between them is
    exact whatever the tokenizer would merge across it. ``max_len`` counts the ids of ``x``
    (the model's context length); too-long examples are for the caller to count, not to cut (a
    cut response would teach the model to stop mid-answer).
    """
    p = torch.as_tensor(encode(prompt), dtype=torch.long)
    r = torch.as_tensor(encode(response + end), dtype=torch.long)
    if len(p) == 0 or len(r) == 0:
        raise ValueError("prompt and response must both encode to at least one token.")
    ids = torch.cat([p, r])
    if max_len is not None and len(ids) - 1 > max_len:
        return None
    return sft_targets(ids, len(p))


def pad_examples(examples: Sequence[Example], pad_id: int) -> tuple[Tensor, Tensor]:
    """Stack examples into ``(B, T)`` tensors, right-padded: ``x`` with ``pad_id``, ``y`` with IGNORE_INDEX.

    Right padding is safe for a causal model: real tokens never attend to the padding after them,
    and the padding's own predictions are ignored by the loss. ``T`` is the longest example.
    """
    if not examples:
        raise ValueError("pad_examples needs at least one example.")
    for i, (x, y) in enumerate(examples):
        if x.shape != y.shape:
            raise ValueError(f"example {i}: x and y must have the same length, got {len(x)} and {len(y)}.")
    return pad_right([x for x, _ in examples], int(pad_id)), pad_right([y for _, y in examples], IGNORE_INDEX)


def sft_batches(examples: Sequence[Example], batch_size: int, pad_id: int) -> Callable[[torch.Generator], tuple[Tensor, Tensor]]:
    """A ``batch_fn(generator) -> (x, y)`` for :class:`lmlib.train.Trainer`: random examples, padded."""
    examples = list(examples)
    if not examples:
        raise ValueError("sft_batches needs at least one example.")
    if any(bool((y == IGNORE_INDEX).all()) for _, y in examples):
        raise ValueError("some examples have no response tokens to learn (every target is IGNORE_INDEX).")
    return random_batches(len(examples), batch_size, lambda rows: pad_examples([examples[i] for i in rows], pad_id))


@torch.no_grad()
def respond(model: nn.Module, encode: Callable[[str], Sequence[int] | Tensor], decode: Callable, prompt: str,
            max_new_tokens: int, end: str = PromptTemplate.end) -> str:
    """The model's greedy continuation of ``prompt``, cut at the first ``end`` marker (chapter 5).

    Decodes one token at a time with a KV cache and stops as soon as the marker appears.
    """
    device = model_device(model)
    idx = torch.as_tensor(encode(prompt), dtype=torch.long, device=device)[None]
    block = model.config.block_size
    if idx.shape[1] + max_new_tokens > block:
        max_new_tokens = max(0, block - idx.shape[1])
    out: list[int] = []
    with eval_mode(model):
        cache = model.new_cache()
        logits, _ = model(idx, cache=cache)
        for _ in range(max_new_tokens):
            nxt = int(logits[0, -1].argmax())
            out.append(nxt)
            text = decode(out)
            if end and end in text:
                return text[: text.index(end)]
            if len(out) == max_new_tokens:
                break
            logits, _ = model(torch.tensor([[nxt]], device=device), cache=cache)
    return decode(out)


# --- data sets ----------------------------------------------------------------------------------

#: What :func:`read_jsonl` returns beside the rows: kept rows and rejected rows by reason.
JsonlReport = RowReport


def _open_lines(name: str, file: str | None) -> list[str]:
    path = data.path(name, file)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as f:
        return f.read().split("\n")


def read_jsonl(name: str, file: str | None = None, required: Sequence[str] = (),
               check: Callable[[dict], str | None] | None = None) -> tuple[list[dict], JsonlReport]:
    """Rows of a registered JSON Lines file (``.gz`` too), with every malformed row counted, not hidden.

    A row is skipped if it is not valid JSON, not an object, misses a ``required`` key or has an
    empty value there, or if ``check(row)`` returns a reason.
    """
    lines = _open_lines(name, file)
    if lines and lines[-1] == "":
        lines.pop()
    report = JsonlReport(f"{name}/{file or data.dataset(name).default}")
    rows = []
    for no, line in enumerate(lines, 1):
        report.lines += 1
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            report.reject("not valid JSON", no, line)
            continue
        if not isinstance(row, dict):
            report.reject("not a JSON object", no, line)
            continue
        missing = [k for k in required if not (isinstance(row.get(k), str) and row[k].strip())]
        if missing:
            report.reject(f"missing or empty {missing[0]!r}", no, line)
            continue
        reason = check(row) if check else None
        if reason:
            report.reject(reason, no, line)
            continue
        rows.append(row)
        report.kept += 1
    return rows, report


def load_self_instruct() -> tuple[list[dict], JsonlReport]:
    """The Self-Instruct seed tasks as ``{"instruction", "input", "output"}`` (first instance of each task)."""

    def check(row: dict) -> str | None:
        inst = row.get("instances")
        if not (isinstance(inst, list) and inst and isinstance(inst[0], dict)):
            return "no instances"
        if not isinstance(inst[0].get("output"), str) or not inst[0]["output"].strip():
            return "empty output"
        return None

    rows, report = read_jsonl("self-instruct-seed-tasks", required=("instruction",), check=check)
    return [{"instruction": r["instruction"], "input": r["instances"][0].get("input") or "",
             "output": r["instances"][0]["output"]} for r in rows], report


def load_gsm8k(split: str = "train") -> tuple[list[dict], JsonlReport]:
    """GSM8K ``{"question", "answer"}`` rows of ``split`` ("train" or "test"); answers without '####' are skipped."""
    if split not in ("train", "test"):
        raise ValueError(f"GSM8K has the splits 'train' and 'test', got {split!r}.")

    def check(row: dict) -> str | None:
        return None if extract_answer(row["answer"]) is not None else "no number after '####'"

    return read_jsonl("gsm8k", f"{split}.jsonl", required=("question", "answer"), check=check)


def split_dialogue(chosen: str, rejected: str, marker: str = "\n\nAssistant:") -> tuple[str, str, str] | None:
    """(shared prompt, chosen reply, rejected reply) of two dialogues that differ in the last assistant turn.

    The prompt runs up to and including the last ``marker`` of ``chosen``; None if the two
    dialogues do not share that prompt (such pairs are counted as malformed by the loader).
    """
    cut = chosen.rfind(marker)
    if cut < 0:
        return None
    prompt = chosen[: cut + len(marker)]
    if not rejected.startswith(prompt):
        return None
    return prompt, chosen[len(prompt):], rejected[len(prompt):]


def load_preferences() -> tuple[list[dict], JsonlReport]:
    """HH-RLHF helpful-base (test split) as ``{"prompt", "chosen", "rejected"}`` with the replies split off."""

    def check(row: dict) -> str | None:
        parts = split_dialogue(row["chosen"], row["rejected"])
        if parts is None:
            return "chosen and rejected do not share the prompt"
        if not parts[1].strip() or not parts[2].strip():
            return "empty final reply"
        if parts[1] == parts[2]:
            return "chosen and rejected replies are identical"
        return None

    rows, report = read_jsonl("hh-rlhf-helpful-base", required=("chosen", "rejected"), check=check)
    out = []
    for r in rows:
        prompt, chosen, rejected = split_dialogue(r["chosen"], r["rejected"])
        out.append({"prompt": prompt, "chosen": chosen, "rejected": rejected})
    return out, report


# --- answers and exact match --------------------------------------------------------------------

_NUMBER = re.compile(r"-?\$?\s*\d[\d,]*(?:\.\d+)?|-?\.\d+")


def normalize_number(text: str) -> str | None:
    """The first number in ``text`` in a canonical form (``"1,000.50"`` -> ``"1000.5"``), or None.

    Thousands separators and a dollar sign are dropped, trailing zeros after a decimal point too,
    so two ways of writing the same number compare equal.
    """
    m = _NUMBER.search(text)
    if m is None:
        return None
    raw = m.group().replace(",", "").replace("$", "").replace(" ", "")
    try:
        value = Decimal(raw)
    except InvalidOperation:
        return None
    if value == value.to_integral_value():
        return str(int(value))
    return format(value.normalize(), "f")


def extract_answer(text: str) -> str | None:
    """The final answer of a GSM8K-style solution: the number after the last ``####``, normalised.

    None when there is no ``####`` or no number after it: a model that does not follow the
    answer format gets no credit, as in GSM8K's own grading.
    """
    if not isinstance(text, str) or "####" not in text:
        return None
    return normalize_number(text.rsplit("####", 1)[1])


def answer_accuracy(predictions: Sequence[str | None], references: Sequence[str | None]) -> float:
    """Fraction of predictions equal to their reference; a missing (None) prediction is wrong."""
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions for {len(references)} references.")
    if not references:
        raise ValueError("answer_accuracy needs at least one reference.")
    if any(r is None for r in references):
        raise ValueError("a reference answer is None: drop the examples whose answer could not be extracted.")
    return sum(p is not None and p == r for p, r in zip(predictions, references)) / len(references)


# --- preference tuning: DPO ---------------------------------------------------------------------

def sequence_logprob(model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
    """(B,) sum over positions of ``log p(y_t | x_<=t)`` where ``y`` is not IGNORE_INDEX.

    With ``(x, y)`` from :func:`encode_example`, that is the log-probability of the response given
    the prompt, the quantity DPO compares between two responses.
    """
    return target_logprobs(lm_logits(model, x), y).sum(dim=1)


@torch.no_grad()
def response_nll(model: nn.Module, examples: Sequence[Example], pad_id: int, batch_size: int = 64) -> float:
    """Mean negative log-likelihood (nats) per response token of ``examples`` from :func:`encode_example`.

    Every response token of every example counts once, whatever the batching and the padding:
    the sums of :func:`sequence_logprob` are added up and divided by the number of targets that
    are not IGNORE_INDEX. A graded measure for held-out examples, useful where exact match is
    too coarse (near zero for every model compared). Runs in evaluation mode, without gradients.
    """
    examples = list(examples)
    if not examples:
        raise ValueError("response_nll needs at least one example.")
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size!r}.")
    device = model_device(model)
    total, count = 0.0, 0
    with eval_mode(model):
        for start in range(0, len(examples), batch_size):
            X, Y = pad_examples(examples[start: start + batch_size], pad_id)
            X, Y = X.to(device), Y.to(device)
            total -= float(sequence_logprob(model, X, Y).sum())
            count += int((Y != IGNORE_INDEX).sum())
    if count == 0:
        raise ValueError("the examples have no response tokens (every target is IGNORE_INDEX).")
    return total / count


def dpo_loss(policy_chosen: Tensor, policy_rejected: Tensor, ref_chosen: Tensor, ref_rejected: Tensor,
             beta: float = 0.1) -> tuple[Tensor, Tensor]:
    """Direct preference optimisation (Rafailov et al. 2023) on (B,) sequence log-probabilities.

    The implicit reward of a response is ``beta * (log pi(y|x) - log pi_ref(y|x))``. The loss is
    ``-log sigmoid(reward(chosen) - reward(rejected))``, averaged over the batch: it raises the
    chosen response's probability relative to the rejected one, measured against the frozen
    reference model. Returns the loss and the (B,) reward margins (positive: the pair is ranked right).
    """
    shapes = {t.shape for t in (policy_chosen, policy_rejected, ref_chosen, ref_rejected)}
    if len(shapes) != 1 or policy_chosen.dim() != 1:
        raise ValueError(f"dpo_loss needs four (B,) tensors of the same shape, got {sorted(map(tuple, shapes))}.")
    if not beta > 0:
        raise ValueError(f"beta must be positive, got {beta!r}.")
    margin = beta * ((policy_chosen - ref_chosen) - (policy_rejected - ref_rejected))
    return -F.logsigmoid(margin).mean(), margin.detach()
