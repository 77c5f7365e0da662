"""An evaluation harness for chat models: one row of measures per model, on held-out data.

Derived in chapter 5 ("Applications", the assistant notebook), where it compares the course
model before fine-tuning, after supervised fine-tuning and after DPO. Any GPT with a chat
tokenizer (:data:`lmlib.chat.CHAT_TOKENS`) runs through :func:`evaluate`:

- **held-out loss**: nats per assistant token of held-out conversations (the loss SFT lowers);
- **preference accuracy**: the share of held-out HH-RLHF pairs where the model gives the
  preferred reply the higher log-probability (summed over the reply's tokens, the quantity DPO's
  reward is built from); a model that cannot tell them apart scores about 50%;
- **template adherence**: the share of replies to held-out user messages, sampled as in the chat
  (temperature 0.7, a fixed seed), that close the turn with ``<|end|>`` within ``reply_tokens``
  tokens (greedy decoding makes a small model loop, and a loop never ends);
- **exact match** on held-out GSM8K problems, greedy, without and with the calculator tool,
  reading the number after ``The answer is`` (:func:`lmlib.dialogue.final_answer`);
- **multiple choice** in HellaSwag's manner (Zellers et al. 2019): a context and a few endings,
  one of them the real one; the model picks the ending with the highest log-likelihood per token
  (:func:`choice_logprobs`). :func:`cloze_items` builds such items from held-out documents,
  with endings of sentences from other documents as distractors.

API summary
-----------
preference_logprobs(model, pairs, pad_id, batch_size=32) -> (chosen (N,), rejected (N,))
preference_accuracy(model, pairs, pad_id, batch_size=32) -> float   pairs from lmlib.dialogue.pair_examples
dpo_diagnostics(policy, reference, pairs, pad_id, beta=0.1) -> {"loss", "margin", "reward_accuracy"}
template_adherence(model, tok, prompts, max_new_tokens=64, temperature=0.7, seed=0) -> float
exact_match(model, tok, problems, max_new_tokens=160, tools=True) -> float
exact_match_pair(model, tok, problems, max_new_tokens=160) -> (without tools, with tools)
choice_logprobs(model, context, endings, per_token=True) -> (n,)   token ids in, one score per ending
multiple_choice_accuracy(model, tok, items, per_token=True) -> float   items {"context", "endings", "label"}
cloze_items(documents, n_items, n_choices=4, seed=0) -> list[dict]   sentence endings, distractors from other documents
EvalSet(conversations, pairs, prompts, problems, choices, reply_tokens=64, answer_tokens=160, reply_temperature=0.7)
    .prepared(tok, max_len) -> dict              its examples for one tokenizer and context, made once
evaluate(name, model, tok, evalset, progress=True) -> dict   one row: COLUMNS, and the counts behind them
COLUMNS                                        the measures of a row, with their headers
markdown_table(rows) -> str                    the rows as a Markdown table, shares in percent
"""
from __future__ import annotations

import random
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import torch
import torch.nn as nn
from tqdm.auto import tqdm

from lmlib.chat import END, reply, reply_and_stop
from lmlib.data import pad_right
from lmlib.device import eval_mode, model_device
from lmlib.dialogue import Conversation, conversation_examples, final_answer, pair_examples, preference_pair
from lmlib.generate import continuation_logprob
from lmlib.instruct import dpo_loss, pad_examples, response_nll, sequence_logprob
from lmlib.tokenizers import ByteBPE

Tensor = torch.Tensor
Pair = tuple[tuple[Tensor, Tensor], tuple[Tensor, Tensor]]

__all__ = [
    "preference_logprobs", "preference_accuracy", "dpo_diagnostics", "template_adherence", "exact_match", "exact_match_pair",
    "choice_logprobs", "multiple_choice_accuracy", "cloze_items", "EvalSet", "evaluate", "COLUMNS",
    "markdown_table",
]


# --- preferences ----------------------------------------------------------------------------------

@torch.no_grad()
def preference_logprobs(model: nn.Module, pairs: Sequence[Pair], pad_id: int,
                        batch_size: int = 32) -> tuple[Tensor, Tensor]:
    """``log p(reply | prompt)`` of the chosen and of the rejected reply of each pair (two (N,) tensors)."""
    if not pairs:
        raise ValueError("preference_logprobs needs at least one pair; did every pair fail to fit the context?")
    device, chosen, rejected = model_device(model), [], []
    with eval_mode(model):
        for start in range(0, len(pairs), batch_size):
            rows = pairs[start: start + batch_size]
            X, Y = pad_examples([c for c, _ in rows] + [r for _, r in rows], pad_id)
            logp = sequence_logprob(model, X.to(device), Y.to(device)).float().cpu()
            chosen.append(logp[: len(rows)])
            rejected.append(logp[len(rows):])
    return torch.cat(chosen), torch.cat(rejected)


def preference_accuracy(model: nn.Module, pairs: Sequence[Pair], pad_id: int, batch_size: int = 32) -> float:
    """The share of pairs whose chosen reply the model finds more likely than the rejected one (ties: wrong)."""
    chosen, rejected = preference_logprobs(model, pairs, pad_id, batch_size)
    return float((chosen > rejected).float().mean())


def dpo_diagnostics(policy: nn.Module, reference: nn.Module, pairs: Sequence[Pair], pad_id: int,
                    beta: float = 0.1) -> dict[str, float]:
    """DPO's loss, mean reward margin and reward accuracy (share of margins > 0) on ``pairs``.

    The implicit reward of a reply is ``beta * (log pi - log pi_ref)``; before any DPO step the
    policy is the reference, every margin is 0, the loss is log 2 and the reward accuracy 0.
    """
    pc, pr = preference_logprobs(policy, pairs, pad_id)
    rc, rr = preference_logprobs(reference, pairs, pad_id)
    loss, margin = dpo_loss(pc, pr, rc, rr, beta)
    return {"loss": float(loss), "margin": float(margin.mean()), "reward_accuracy": float((margin > 0).float().mean())}


# --- generation: the format and the answers -------------------------------------------------------

def template_adherence(model: nn.Module, tok: ByteBPE, prompts: Sequence[Sequence[dict]],
                       max_new_tokens: int = 64, temperature: float = 0.7, seed: int = 0) -> float:
    """The share of replies to ``prompts`` (conversations ending with a user turn) that the model
    closes with :data:`lmlib.chat.END` within ``max_new_tokens`` tokens, sampled at ``temperature``
    (0: greedy) with one generator seeded with ``seed``, so the measure is repeatable."""
    if not prompts:
        raise ValueError("template_adherence needs at least one prompt.")
    generator = torch.Generator().manual_seed(seed)
    ended = [reply_and_stop(model, tok, p, max_new_tokens, temperature, generator=generator)[1] == END
             for p in prompts]
    return sum(ended) / len(ended)


def exact_match(model: nn.Module, tok: ByteBPE, problems: Sequence[Conversation], max_new_tokens: int = 160,
                tools: bool = True) -> float:
    """The share of problems (conversations with an ``"answer"``, such as GSM8K's from
    :func:`lmlib.dialogue.gsm8k_conversations`) whose greedy reply to the first user message ends
    with the right number (:func:`lmlib.dialogue.final_answer`); ``tools`` lets the calculator answer
    the model's ``<<expr=`` calls."""
    if not problems:
        raise ValueError("exact_match needs at least one problem.")
    right = 0
    for p in problems:
        text = reply(model, tok, p["messages"][:1], max_new_tokens, temperature=0, tools=tools)
        right += final_answer(text) == p["answer"]
    return right / len(problems)


def exact_match_pair(model: nn.Module, tok: ByteBPE, problems: Sequence[Conversation],
                     max_new_tokens: int = 160) -> tuple[float, float]:
    """:func:`exact_match` without and with the calculator, with less generation: greedy decoding
    takes the same path either way until the model first opens a call (``<<``), so a reply that
    never does is the reply without the tool too, and is generated once."""
    if not problems:
        raise ValueError("exact_match needs at least one problem.")
    right = [0, 0]
    for p in problems:
        prompt = p["messages"][:1]
        with_tool = reply(model, tok, prompt, max_new_tokens, temperature=0, tools=True)
        same = "<<" not in with_tool and not any("<<" in m["content"] for m in prompt)
        without = with_tool if same else reply(model, tok, prompt, max_new_tokens, temperature=0, tools=False)
        right[0] += final_answer(without) == p["answer"]
        right[1] += final_answer(with_tool) == p["answer"]
    return right[0] / len(problems), right[1] / len(problems)


# --- multiple choice ------------------------------------------------------------------------------

@torch.no_grad()
def choice_logprobs(model: nn.Module, context: Tensor, endings: Sequence[Tensor], per_token: bool = True) -> Tensor:
    """``log p(ending | context)`` for each ending (token ids), divided by the ending's length in
    tokens when ``per_token``: one score per ending, the highest is the model's pick.

    Every ending is scored in one padded batch; the context loses its first tokens when
    context and ending would not fit the model's context window.
    """
    context = torch.as_tensor(context, dtype=torch.long)
    endings = [torch.as_tensor(e, dtype=torch.long) for e in endings]
    if len(context) == 0 or not endings or any(len(e) == 0 for e in endings):
        raise ValueError("choice_logprobs needs a non-empty context and at least one non-empty ending.")
    block = getattr(getattr(model, "config", None), "block_size", None) or 10 ** 9
    longest = max(len(e) for e in endings)
    if longest >= block:
        raise ValueError(f"an ending of {longest} tokens leaves no room for the context in {block} positions.")
    context = context[-(block + 1 - longest):]  # x = ids[:-1] must fit in block positions
    rows = [torch.cat([context, e]) for e in endings]
    ids = pad_right(rows, 0)
    ends = torch.tensor([len(r) for r in rows])
    device = model_device(model)
    with eval_mode(model):
        logp = continuation_logprob(model, ids.to(device), len(context), ends.to(device)).float().cpu()
    return logp / torch.tensor([float(len(e)) for e in endings]) if per_token else logp


def multiple_choice_accuracy(model: nn.Module, tok: ByteBPE, items: Sequence[dict], per_token: bool = True) -> float:
    """The share of items ``{"context", "endings", "label"}`` where the ending with the highest
    :func:`choice_logprobs` is ``endings[label]``. Context and endings are plain text (no chat format):
    this measures what the model knows about ordinary text, before and after chat tuning."""
    if not items:
        raise ValueError("multiple_choice_accuracy needs at least one item.")
    right = 0
    for item in items:
        scores = choice_logprobs(model, tok.encode(item["context"]), [tok.encode(e) for e in item["endings"]],
                                 per_token)
        right += int(scores.argmax()) == item["label"]
    return right / len(items)


_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z0-9\"'(])")


def _sentences(document: str) -> list[str]:
    return [s.strip() for s in _SENTENCE_END.split(" ".join(document.split())) if s.strip()]


def cloze_items(documents: Sequence[str], n_items: int, n_choices: int = 4, seed: int = 0) -> list[dict]:
    """Multiple-choice items from ``documents``: finish a sentence, HellaSwag-style.

    From one sentence (10 to 40 words) of each of ``n_items`` documents (drawn at random), the
    context is the sentence before it and the first half of its words; the right ending is the
    other half (with its leading space). The ``n_choices - 1`` distractors are second halves of
    sentences from other documents, of the closest word counts among 30 drawn at random, so the
    length of an ending says little. ``label`` is the right ending's position, drawn at random.
    HellaSwag chose its distractors adversarially, to fool the models of its day; these are
    random, an easier test that a model passes by keeping to the topic and the grammar.
    """
    if not 2 <= n_choices:
        raise ValueError(f"n_choices must be at least 2, got {n_choices!r}.")
    rng = random.Random(seed)
    found = []  # (document index, context, ending)
    for d, doc in enumerate(documents):
        sentences = _sentences(doc)
        usable = [i for i, s in enumerate(sentences) if 10 <= len(s.split()) <= 40]
        if usable:
            i = rng.choice(usable)
            words = sentences[i].split()
            half = len(words) // 2
            before = sentences[i - 1] + " " if i > 0 else ""
            found.append((d, before + " ".join(words[:half]), " " + " ".join(words[half:])))
    if len(found) < max(n_items, n_choices):
        raise ValueError(f"only {len(found)} documents have a sentence of 10 to 40 words; need at least "
                         f"{max(n_items, n_choices)} for {n_items} items of {n_choices} choices.")
    chosen = rng.sample(found, n_items)
    items = []
    for d, context, ending in chosen:
        others = rng.sample([f for f in found if f[0] != d], min(30, len(found) - 1))
        others.sort(key=lambda f: abs(len(f[2].split()) - len(ending.split())))
        endings = [f[2] for f in others[: n_choices - 1]]
        label = rng.randrange(n_choices)
        endings.insert(label, ending)
        items.append({"context": context, "endings": endings, "label": label})
    return items


# --- one row per model ----------------------------------------------------------------------------

#: The measures of an :func:`evaluate` row, each with its table header.
COLUMNS = {
    "loss": "held-out loss (nats/token)",
    "preference": "preference acc.",
    "adherence": "ends its turn",
    "gsm8k": "GSM8K exact",
    "gsm8k_tool": "GSM8K exact, calculator",
    "choice": "multiple choice",
}


@dataclass
class EvalSet:
    """What :func:`evaluate` measures on, all held out from training.

    ``conversations`` for the loss (any source), ``pairs`` HH-RLHF conversations with a rejected
    reply, ``prompts`` conversations whose first user message is replied to, ``problems`` GSM8K
    conversations with their ``"answer"``, ``choices`` multiple-choice items (:func:`cloze_items`).
    ``reply_tokens`` and ``answer_tokens`` limit the replies of the adherence and exact-match tests;
    ``reply_temperature`` is the adherence test's sampling temperature (exact match is greedy).
    """

    conversations: list
    pairs: list
    prompts: list
    problems: list
    choices: list
    reply_tokens: int = 64
    answer_tokens: int = 160
    reply_temperature: float = 0.7
    _prepared: dict = field(default_factory=dict, init=False, repr=False)

    def prepared(self, tok: ByteBPE, max_len: int) -> dict:
        """The tokenised examples for one tokenizer and context length, made once and kept."""
        key = (id(tok), max_len)
        if key not in self._prepared:
            examples, fit = conversation_examples(tok, self.conversations, max_len)
            pairs, pair_fit = pair_examples(tok, [preference_pair(c) for c in self.pairs], max_len)
            self._prepared[key] = dict(examples=examples, fit=fit, pairs=pairs, pair_fit=pair_fit, tok=tok)
        return self._prepared[key]


def evaluate(name: str, model: nn.Module, tok: ByteBPE, evalset: EvalSet, progress: bool = True) -> dict:
    """One table row: every measure of :data:`COLUMNS` for ``model``, with the counts behind them.

    Conversations and pairs are fitted to the model's context as in training
    (:func:`lmlib.dialogue.conversation_examples`, :func:`lmlib.dialogue.pair_examples`); each
    prompt keeps only its first user message, and each problem its question.
    """
    block = model.config.block_size
    ready = evalset.prepared(tok, block)
    pad = tok.special_tokens[END]
    prompts = [c["messages"][:1] for c in evalset.prompts]
    steps = [
        ("loss", lambda: response_nll(model, ready["examples"], pad)),
        ("preference", lambda: preference_accuracy(model, ready["pairs"], pad)),
        ("adherence", lambda: template_adherence(model, tok, prompts, evalset.reply_tokens,
                                                 evalset.reply_temperature)),
        (("gsm8k", "gsm8k_tool"), lambda: exact_match_pair(model, tok, evalset.problems, evalset.answer_tokens)),
        ("choice", lambda: multiple_choice_accuracy(model, tok, evalset.choices)),
    ]
    row: dict = {"model": name}
    for key, measure in tqdm(steps, desc=f"evaluating {name}", disable=not progress):
        if isinstance(key, tuple):
            row.update(zip(key, measure()))
        else:
            row[key] = measure()
    row["counts"] = dict(conversations=len(ready["examples"]), pairs=len(ready["pairs"]), prompts=len(prompts),
                         problems=len(evalset.problems), choices=len(evalset.choices),
                         n_choices=len(evalset.choices[0]["endings"]) if evalset.choices else 0)
    return row


def markdown_table(rows: Iterable[dict]) -> str:
    """Rows of :func:`evaluate` as a Markdown table: the loss with 3 decimals, shares in percent."""
    lines = ["| model | " + " | ".join(COLUMNS.values()) + " |", "|---" * (len(COLUMNS) + 1) + "|"]
    for row in rows:
        cells = [f"{row['loss']:.3f}"] + [f"{100 * row[k]:.1f}%" for k in COLUMNS if k != "loss"]
        lines.append(f"| {row['model']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)
