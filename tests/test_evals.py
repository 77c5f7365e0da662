"""lmlib.evals (chapter 5, the assistant): each measure on stub models whose answers are known,
and one row of the harness on a tiny GPT."""
import copy
import math
import re
from types import SimpleNamespace

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from lmlib import evals as E
from lmlib.chat import ASSISTANT, CHAT_TOKENS, END
from lmlib.dialogue import reply_example
from lmlib.model import GPT, GPTConfig
from lmlib.recipes import EOT
from lmlib.tokenizers import ByteBPE

TEXT = ("Hello! How are you? I am fine, thank you. What is six times seven? It is 42. The answer is 42. "
        "Paris is the capital of France. Stop here, please. OK.")


@pytest.fixture(scope="module")
def tok() -> ByteBPE:
    return ByteBPE.train(TEXT, 300, special_tokens=[EOT, *CHAT_TOKENS], progress=False)


class Writer(nn.Module):
    """Test scaffolding: a 'model' that writes, one token at a time, the reply ``policy(written)``
    asks for, given what the assistant's turn holds so far (tool results included); <|end|> when
    the reply is complete. The context is read from the ids, so it reacts to the calculator."""

    def __init__(self, tok: ByteBPE, policy):
        super().__init__()
        self.tok, self.policy = tok, policy
        self.plain = ByteBPE(tok.merges, (), tok.pattern, tok.byte_order)
        self.config = SimpleNamespace(block_size=4096, vocab_size=tok.vocab_size)

    def new_cache(self):
        return [SimpleNamespace(length=0, ids=[])]

    def forward(self, idx, cache=None):
        ids = (cache[0].ids if cache is not None else []) + idx[0].tolist()
        if cache is not None:
            cache[0].ids, cache[0].length = ids, len(ids)
        start = max(i for i, t in enumerate(ids) if t == self.tok.special_tokens[ASSISTANT]) + 1
        user = self.tok.decode(ids[:start])
        written = self.tok.decode(ids[start:])
        wanted = self.policy(user, written)
        assert wanted.startswith(written), (wanted, written)
        rest = wanted[len(written):]
        token = self.plain.encode_list(rest)[0] if rest else self.tok.special_tokens[END]
        logits = torch.full((1, idx.shape[1], self.tok.vocab_size), -1e4)
        logits[0, -1, token] = 0.0
        return logits, None


def solver(user, written):
    """Asks the calculator for 6*7, then reads its result; without the tool it guesses 41 itself."""
    head = "Six times seven: <<6*7="
    if len(written) < len(head):
        return head
    done = re.match(r"Six times seven: <<6\*7=(\d+)>>", written)
    if done is None:
        return head + "41>>"
    return done.group(0) + f" The answer is {done.group(1)}."


def test_exact_match_with_and_without_the_calculator(tok):
    problems = [{"messages": [{"role": "user", "content": "What is six times seven?"}], "answer": "42"},
                {"messages": [{"role": "user", "content": "What is six times seven?"}], "answer": "41"}]
    model = Writer(tok, solver)
    assert E.exact_match(model, tok, problems, tools=True) == 0.5  # the tool's 42 is right for the first
    assert E.exact_match(model, tok, problems[:1], tools=True) == 1.0
    assert E.exact_match(model, tok, problems[:1], tools=False) == 0.0  # the model's own 41 is wrong
    assert E.exact_match(model, tok, problems[1:], tools=False) == 1.0
    assert E.exact_match(model, tok, problems[:1], max_new_tokens=5, tools=True) == 0.0  # cut before the answer
    with pytest.raises(ValueError, match="at least one problem"):
        E.exact_match(model, tok, [])


def test_exact_match_pair_equals_the_two_runs(tok):
    problems = [{"messages": [{"role": "user", "content": "What is six times seven?"}], "answer": "42"},
                {"messages": [{"role": "user", "content": "What is six times seven?"}], "answer": "41"}]
    plain = Writer(tok, lambda user, written: "The answer is 41.")  # never calls the calculator
    for model in (Writer(tok, solver), plain):
        for n in (5, 160):
            assert E.exact_match_pair(model, tok, problems, n) == (
                E.exact_match(model, tok, problems, n, tools=False), E.exact_match(model, tok, problems, n, tools=True))
    assert E.exact_match_pair(plain, tok, problems) == (0.5, 0.5)
    assert E.exact_match_pair(Writer(tok, solver), tok, problems) == (0.5, 0.5)  # 41 without the tool, 42 with it
    with pytest.raises(ValueError, match="at least one problem"):
        E.exact_match_pair(plain, tok, [])


def test_template_adherence_counts_replies_closed_within_the_limit(tok):
    def polite(user, written):
        return "OK." if "Stop" in user else "la " * 200

    model = Writer(tok, polite)
    prompts = [[{"role": "user", "content": "Stop here, please."}], [{"role": "user", "content": "Hello!"}],
               [{"role": "user", "content": "Stop."}]]
    assert E.template_adherence(model, tok, prompts, max_new_tokens=20) == pytest.approx(2 / 3)
    assert E.template_adherence(model, tok, prompts[:1], max_new_tokens=1) == 0.0  # "OK." needs more tokens


class Counting(nn.Module):
    """Test scaffolding: token t is followed by t + 1 (mod V) with probability 0.9."""

    def __init__(self, vocab: int = 30, block_size: int = 64):
        super().__init__()
        self.vocab = vocab
        self.config = SimpleNamespace(block_size=block_size, vocab_size=vocab)
        self.dummy = nn.Parameter(torch.zeros(()))

    def forward(self, idx, targets=None):
        probs = torch.full((*idx.shape, self.vocab), 0.1 / (self.vocab - 1))
        probs.scatter_(-1, ((idx + 1) % self.vocab)[..., None], 0.9)
        return probs.log() + self.dummy, None


def test_choice_logprobs_picks_the_planted_ending_and_normalises_by_length():
    model = Counting()
    context = torch.tensor([3, 4, 5])
    endings = [torch.tensor([9, 2]), torch.tensor([6, 7, 8, 9]), torch.tensor([1])]
    scores = E.choice_logprobs(model, context, endings)
    assert int(scores.argmax()) == 1
    assert scores[1].item() == pytest.approx(math.log(0.9), rel=1e-5)
    sums = E.choice_logprobs(model, context, endings, per_token=False)
    torch.testing.assert_close(sums / torch.tensor([2.0, 4.0, 1.0]), scores)
    # a context longer than the window keeps its end, where the pattern is
    long = torch.arange(200) % 30
    assert E.choice_logprobs(model, long, [torch.tensor([200 % 30]), torch.tensor([0])]).argmax() == 0
    with pytest.raises(ValueError, match="non-empty"):
        E.choice_logprobs(model, context, [torch.tensor([], dtype=torch.long)])


def test_choice_logprobs_equals_the_scores_by_hand():
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=20, block_size=16, n_layer=1, n_head=2, n_embd=16)).eval()
    context, endings = torch.tensor([1, 2, 3, 4]), [torch.tensor([5, 6]), torch.tensor([7, 8, 9])]
    want = []
    for e in endings:
        ids = torch.cat([context, e])
        logp = F.log_softmax(model(ids[None])[0][0], dim=-1)
        want.append(sum(logp[len(context) + k - 1, t] for k, t in enumerate(e.tolist())) / len(e))
    torch.testing.assert_close(E.choice_logprobs(model, context, endings), torch.stack(want))


def test_multiple_choice_accuracy_with_text_items():
    model = Counting(vocab=128)
    ascii_tok = SimpleNamespace(encode=lambda s: torch.tensor([ord(c) for c in s]))
    items = [{"context": "abc", "endings": ["xyq", "def"], "label": 1},
             {"context": "klm", "endings": ["nop", "zzz"], "label": 0},
             {"context": "rst", "endings": ["uvw", "aaa"], "label": 1}]  # the label says the wrong one
    assert E.multiple_choice_accuracy(model, ascii_tok, items) == pytest.approx(2 / 3)


def test_cloze_items_are_reproducible_sentence_endings():
    docs = [f"Topic {d} begins here today. " + " ".join(
        f"Sentence {s} of document {d} talks about item {d}x{s} in some detail, quite calmly." for s in range(4))
        for d in range(12)]
    items = E.cloze_items(docs, 6, n_choices=4, seed=1)
    assert items == E.cloze_items(docs, 6, n_choices=4, seed=1) and items != E.cloze_items(docs, 6, 4, seed=2)
    for item in items:
        assert len(item["endings"]) == 4 and len(set(item["endings"])) == 4
        right = item["endings"][item["label"]]
        assert right.startswith(" ")
        doc = re.search(r"document (\d+)", item["context"]).group(1)
        sentence = (item["context"] + right).split(". ")[-1]
        assert sentence in docs[int(doc)]
        distractors = [e for i, e in enumerate(item["endings"]) if i != item["label"]]
        assert all(f" item {doc}x" not in e for e in distractors)  # from other documents
    with pytest.raises(ValueError, match="only 12 documents"):
        E.cloze_items(docs, 20)


def test_preferences_and_dpo_diagnostics(tok):
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=tok.vocab_size, block_size=64, n_layer=1, n_head=2, n_embd=16))
    prompt = [{"role": "user", "content": "How are you?"}]
    pairs = [(reply_example(tok, prompt, "I am fine."), reply_example(tok, prompt, "Go away, thank you."))] * 3
    chosen, rejected = E.preference_logprobs(model, pairs, tok.special_tokens[END], batch_size=2)
    assert chosen.shape == rejected.shape == (3,)
    assert E.preference_accuracy(model, pairs, 0) == float(chosen[0] > rejected[0])
    same = E.dpo_diagnostics(model, copy.deepcopy(model), pairs, 0, beta=0.1)
    assert same["loss"] == pytest.approx(math.log(2), abs=1e-5) and same["margin"] == 0 and same["reward_accuracy"] == 0
    with pytest.raises(ValueError, match="at least one pair"):
        E.preference_logprobs(model, [], 0)


def test_evaluate_gives_one_row_and_a_table(tok):
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=tok.vocab_size, block_size=128, n_layer=1, n_head=2, n_embd=16))
    chat = [{"role": "user", "content": "How are you?"}, {"role": "assistant", "content": "I am fine."}]
    hh = {"id": "hh-0", "messages": chat, "rejected": "Go away."}
    gsm = {"id": "g", "messages": [{"role": "user", "content": "What is six times seven?"},
                                   {"role": "assistant", "content": "<<6*7=42>> The answer is 42."}], "answer": "42"}
    choices = [{"context": "Paris is the capital of", "endings": [" France.", " thank you."], "label": 0}]
    evalset = E.EvalSet([hh, gsm], [hh], [hh], [gsm], choices, reply_tokens=4, answer_tokens=4)
    row = E.evaluate("tiny", model, tok, evalset, progress=False)
    assert row["model"] == "tiny" and set(E.COLUMNS) <= set(row)
    assert row["loss"] > 0 and all(0 <= row[k] <= 1 for k in E.COLUMNS if k != "loss")
    assert row["counts"] == dict(conversations=2, pairs=1, prompts=1, problems=1, choices=1, n_choices=2)
    assert evalset.prepared(tok, 128) is evalset.prepared(tok, 128)  # tokenised once
    table = E.markdown_table([row, dict(row, model="again")])
    lines = table.split("\n")
    assert len(lines) == 4 and lines[0].count("|") == len(E.COLUMNS) + 2 and "| again |" in lines[3]
    assert f"{row['loss']:.3f}" in lines[2] and f"{100 * row['choice']:.1f}%" in lines[2]
