"""Exercise checkers for chapter 5, Applications.

Notebook 01 (text classification): ``check_f1_from_confusion``, ``check_last_token_pool``;
notebook 02 (translation): ``check_modified_precision``, ``check_corpus_bleu`` (the pieces of BLEU,
with sacrebleu's numbers as the reference), ``check_decoder_example`` (a translator's training
pair); notebook 03 (instruction tuning): ``check_sft_targets``,
``check_lora_forward``; notebook 04 (token tasks): ``check_bio_to_spans``, ``check_squad_f1``,
``check_align_labels``, ``check_context_windows``, ``check_bm25_scores`` (BM25 from its formula); notebook 05 (the assistant): ``check_assistant_mask`` (the loss mask of a
multi-turn chat), ``check_dpo_loss`` (DPO's loss from log-probabilities), ``check_choice_scores``
(the multiple-choice scorer).
"""
from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Sequence

import torch

from lmlib.chat import ASSISTANT, END, SYSTEM, USER
from lmlib.data import IGNORE_INDEX
from lmlib.evals import choice_logprobs
from lmlib.exercises.core import Case, Mistake, Result, check, f64, randint
from lmlib.instruct import dpo_loss, sft_targets
from lmlib.lora import lora_forward
from lmlib.model import GPT, GPTConfig
from lmlib.retrieval import BM25
from lmlib.seq2seq import decoder_example
from lmlib.spans import align_labels, bio_to_spans, context_windows, normalize_answer, token_f1

__all__ = [
    "check_f1_from_confusion", "reference_f1_from_confusion",
    "check_last_token_pool", "reference_last_token_pool",
    "check_modified_precision", "reference_modified_precision",
    "check_corpus_bleu", "reference_corpus_bleu",
    "check_decoder_example", "reference_decoder_example",
    "check_sft_targets", "reference_sft_targets",
    "check_lora_forward", "reference_lora_forward",
    "check_bio_to_spans", "reference_bio_to_spans",
    "check_squad_f1", "reference_squad_f1",
    "check_align_labels", "reference_align_labels",
    "check_context_windows", "reference_context_windows",
    "check_bm25_scores", "reference_bm25_scores",
    "check_assistant_mask", "reference_assistant_mask",
    "check_dpo_loss", "reference_dpo_loss",
    "check_choice_scores", "reference_choice_scores",
]


# --- notebook 01: text classification -----------------------------------------------------------

def reference_f1_from_confusion(cm: torch.Tensor, positive: int) -> float:
    """F1 of class ``positive`` from a confusion matrix (row = true class, column = predicted)."""
    cm = cm.double()
    tp = cm[positive, positive]
    predicted, actual = cm[:, positive].sum(), cm[positive].sum()
    if tp == 0:
        return 0.0
    precision, recall = tp / predicted, tp / actual
    return float(2 * precision * recall / (precision + recall))


def check_f1_from_confusion(fn: Callable[[torch.Tensor, int], float], **options) -> Result:
    """``fn(cm, positive) -> float``: F1 of one class from an (n, n) confusion matrix of counts."""

    def make_case(gen: torch.Generator) -> Case:
        n = randint(gen, 2, 5)
        return torch.randint(0, 30, (n, n), generator=gen), randint(gen, 0, n)

    def ratio(a, b):
        return float(a / b) if b else 0.0

    return check(
        fn, reference_f1_from_confusion, make_case,
        hint="rows are the true classes and columns the predictions: precision = TP / (column sum), "
        "recall = TP / (row sum), F1 = 2 P R / (P + R); define F1 = 0 when TP = 0.",
        edge_cases=((torch.tensor([[50, 10], [5, 35]]), 1), (torch.tensor([[50, 10], [5, 35]]), 0),
                    (torch.tensor([[9, 0], [3, 0]]), 1)),  # TP = 0: F1 = 0, not 0 / 0
        mistakes=(
            Mistake("you returned the accuracy (the diagonal over everything); F1 is about one class: "
                    "2 P R / (P + R)", lambda cm, k: ratio(cm.diag().sum(), cm.sum())),
            Mistake("you returned the precision TP / (column sum); F1 combines it with the recall "
                    "TP / (row sum)", lambda cm, k: ratio(cm[k, k], cm[:, k].sum())),
            Mistake("you returned the recall TP / (row sum); F1 combines it with the precision "
                    "TP / (column sum)", lambda cm, k: ratio(cm[k, k], cm[k].sum())),
        ),
        **options,
    )


def reference_last_token_pool(h: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The hidden state (B, C) of the last True position of each row of ``mask`` (B, T)."""
    positions = torch.arange(mask.shape[1])
    last = torch.where(mask, positions, -1).max(dim=1).values
    return h[torch.arange(h.shape[0]), last]


def check_last_token_pool(fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], **options) -> Result:
    """``fn(h, mask) -> (B, C)``: pick each row's hidden state at its last real (unpadded) token."""

    def make_case(gen: torch.Generator) -> Case:
        B, T, C = randint(gen, 2, 7), randint(gen, 2, 12), randint(gen, 1, 9)
        lengths = torch.randint(1, T + 1, (B,), generator=gen)
        lengths[0] = max(1, T - 1)  # at least one padded row when T > 1
        return torch.randn(B, T, C, generator=gen), torch.arange(T)[None, :] < lengths[:, None]

    def at(h, positions):
        return h[torch.arange(h.shape[0]), positions]

    mask = torch.tensor([[True, True, False], [True, False, False], [True, True, True]])
    return check(
        fn, reference_last_token_pool, make_case,
        hint="padding is on the right, so the last real token of row b is at position mask[b].sum() - 1; "
        "h[:, -1] would read a padding position. Index with torch.arange(B) and those positions.",
        edge_cases=((torch.arange(18.0).view(3, 3, 2), mask),
                    (torch.arange(4.0).view(2, 1, 2), torch.ones(2, 1, dtype=torch.bool))),  # length-1 texts
        mistakes=(
            Mistake("you took the last position h[:, -1], which is padding in the shorter rows; take "
                    "position mask.sum(1) - 1 of each row", lambda h, m: h[:, -1]),
            Mistake("you took the first token of each row; the last real token has seen the whole text",
                    lambda h, m: h[:, 0]),
            Mistake("you averaged over the real tokens (mean pooling); this exercise asks for the last "
                    "real token", lambda h, m: (h * m[..., None]).sum(1) / m.sum(1, keepdim=True)),
        ),
        **options,
    )


# --- notebook 02: translation -------------------------------------------------------------------

def _ngrams(tokens: list, n: int) -> Counter:
    return Counter(tuple(tokens[i: i + n]) for i in range(len(tokens) - n + 1))


def reference_modified_precision(candidate: list[int], references: list[list[int]], n: int) -> tuple[int, int]:
    """(clipped matches, candidate n-grams): each n-gram counts at most its largest count in one reference."""
    counts = _ngrams(candidate, n)
    best: Counter = Counter()
    for ref in references:
        best |= _ngrams(ref, n)  # element-wise maximum over the references
    return sum(min(c, best[g]) for g, c in counts.items()), sum(counts.values())


def _token_list(gen: torch.Generator, vocab: int, lo: int, hi: int) -> list[int]:
    return torch.randint(vocab, (randint(gen, lo, hi),), generator=gen).tolist()


def check_modified_precision(fn: Callable[[list[int], list[list[int]], int], tuple[int, int]], **options) -> Result:
    """``fn(candidate, references, n) -> (clipped matches, total n-grams)`` for lists of token ids."""

    def make_case(gen: torch.Generator) -> Case:
        vocab = randint(gen, 2, 6)  # few distinct tokens: many repeats
        refs = [_token_list(gen, vocab, 1, 12) for _ in range(randint(gen, 1, 4))]
        return _token_list(gen, vocab, 0, 12), refs, randint(gen, 1, 5)

    def unclipped(cand, refs, n):
        seen = set().union(*(_ngrams(r, n) for r in refs))
        counts = _ngrams(cand, n)
        return sum(c for g, c in counts.items() if g in seen), sum(counts.values())

    def by_sum(cand, refs, n):
        total = sum((_ngrams(r, n) for r in refs), Counter())
        counts = _ngrams(cand, n)
        return sum(min(c, total[g]) for g, c in counts.items()), sum(counts.values())

    return check(
        fn, reference_modified_precision, make_case,
        hint="count the candidate's n-grams; for each one, the matches are min(its count in the candidate, "
        "the MAXIMUM of its counts over the references), not the sum over references and not unclipped. "
        "The total is the number of candidate n-grams (len - n + 1, or 0 when shorter than n).",
        edge_cases=(([7, 7, 7, 7], [[7, 3, 7], [3, 7]], 1),  # the "the the the" example: 2 of 4
                    ([1, 2], [[1, 2, 3]], 3), ([1, 2, 1, 2], [[1, 2], [2, 1, 2]], 2),
                    ([7, 7, 3], [[7, 3], [7, 3]], 1)),
        mistakes=(
            Mistake("you did not clip: each candidate n-gram counts at most as often as it occurs in "
                    "one reference, so 'the the the the' scores 2 of 4 against 'the cat the', not 4",
                    unclipped),
            Mistake("you clipped at the SUM of the reference counts; clip at the MAXIMUM over the "
                    "references (Counter | Counter)", by_sum),
            Mistake("you used only the first reference; clip at the maximum count over all of them",
                    lambda cand, refs, n: reference_modified_precision(cand, refs[:1], n)),
        ),
        parts=("matches", "total"),
        **options,
    )


def _sacrebleu(candidates: list[list[int]], references: list[list[int]]):
    """sacrebleu's corpus BLEU of token-id lists (one reference each, no smoothing)."""
    import sacrebleu  # imported when first needed: it takes a moment

    hyps = [" ".join(map(str, c)) for c in candidates]
    refs = [[" ".join(map(str, r)) for r in references]]
    return sacrebleu.corpus_bleu(hyps, refs, tokenize="none", smooth_method="none")


def reference_corpus_bleu(candidates: list[list[int]], references: list[list[int]]) -> float:
    """Corpus BLEU (0-100, one reference per sentence, no smoothing) as sacrebleu computes it."""
    return float(_sacrebleu(candidates, references).score)


def _bleu_without_brevity_penalty(candidates: list[list[int]], references: list[list[int]]) -> float:
    result = _sacrebleu(candidates, references)
    return float(result.score / result.bp) if result.bp > 0 else 0.0


def check_corpus_bleu(fn: Callable[[list[list[int]], list[list[int]]], float], **options) -> Result:
    """``fn(candidates, references) -> BLEU`` in [0, 100]; one reference per candidate, max order 4."""

    def make_case(gen: torch.Generator) -> Case:
        vocab = randint(gen, 5, 12)
        refs, cands = [], []
        for _ in range(randint(gen, 2, 8)):
            ref = _token_list(gen, vocab, 4, 15)
            cand = [t for t in ref if torch.rand(1, generator=gen) > 0.2]  # drop some words
            cand = [t if torch.rand(1, generator=gen) > 0.2 else randint(gen, 0, vocab) for t in cand]
            refs.append(ref)
            cands.append(cand + ref[:randint(gen, 0, 4)])  # sometimes longer
        return cands, refs

    def sentence_mean(cands, refs):
        return sum(reference_corpus_bleu([c], [r]) for c, r in zip(cands, refs)) / len(cands)

    return check(
        fn, reference_corpus_bleu, make_case,
        hint="sum clipped matches and candidate n-grams over the WHOLE corpus for each n = 1..4 before "
        "dividing (no per-sentence averages); BLEU = 100 * BP * exp(mean of the 4 log precisions), with "
        "BP = 1 if c > r else exp(1 - r / c), c and r the total candidate and reference lengths; any "
        "zero precision gives 0.",
        edge_cases=(([[1, 2, 3, 4, 5]], [[1, 2, 3, 4, 5]]), ([[1, 2, 3, 4]], [[1, 2, 3, 4, 5, 6]]),
                    ([[1, 2, 3]], [[3, 2, 1]]),
                    ([[1, 2, 3, 4, 5], [6, 7, 8, 9]], [[1, 2, 3, 4, 5, 6], [6, 7, 8, 9, 9]])),
        mistakes=(
            Mistake("you averaged per-sentence BLEU scores; corpus BLEU adds up the matches and n-gram "
                    "counts of all sentences first, then divides once", sentence_mean),
            Mistake("you left out the brevity penalty: when the candidates are shorter than the "
                    "references (c <= r), multiply by exp(1 - r / c)", _bleu_without_brevity_penalty),
        ),
        rtol=1e-6,
        atol=1e-6,
        **options,
    )


def reference_decoder_example(src_ids: list[int], tgt_ids: list[int], sep_id: int,
                              eos_id: int) -> tuple[list[int], list[int]]:
    return tuple(t.tolist() for t in decoder_example(src_ids, tgt_ids, sep_id, eos_id))


def _as_id_lists(out) -> tuple[list[int], list[int]]:
    if not isinstance(out, tuple | list) or len(out) != 2:
        raise TypeError(f"return a pair (x, y) of 1-D tensors, got {type(out).__name__}")
    return tuple(torch.as_tensor(t).tolist() for t in out)


def check_decoder_example(fn: Callable[[list[int], list[int], int, int], tuple], **options) -> Result:
    """``fn(src_ids, tgt_ids, sep_id, eos_id) -> (x, y)``: the next-token pair with the source's targets ignored."""

    def make_case(gen: torch.Generator) -> Case:
        return (torch.randint(3, 50, (randint(gen, 1, 9),), generator=gen).tolist(),
                torch.randint(3, 50, (randint(gen, 1, 9),), generator=gen).tolist(), 1, 2)

    def everything_trained(src, tgt, sep, eos):
        seq = list(src) + [sep] + list(tgt) + [eos]
        return seq[:-1], seq[1:]

    def separator_ignored(src, tgt, sep, eos):
        x, y = reference_decoder_example(src, tgt, sep, eos)
        y[len(src)] = IGNORE_INDEX
        return x, y

    return check(
        fn, reference_decoder_example, make_case,
        prepare=_as_id_lists,
        hint="build seq = src + [sep] + tgt + [eos]; x = seq[:-1] and y = seq[1:]; then set the first "
        "len(src_ids) entries of y to IGNORE_INDEX (their next tokens are the source's and <sep>); the "
        "first target token is predicted at <sep>'s position and is kept.",
        edge_cases=(([7], [8], 1, 2), ([5, 6, 7], [9], 1, 2)),
        parts=("x", "y"),
        mistakes=(
            Mistake("nothing is ignored: the model would also be trained to write the source, which it "
                    "is always given; set y to IGNORE_INDEX for the first len(src_ids) positions",
                    everything_trained),
            Mistake("one target too many is ignored: at <sep>'s position the model must predict the "
                    "first target token, so that position keeps its target", separator_ignored),
        ),
        **options,
    )


# --- notebook 03: instruction tuning ------------------------------------------------------------

def reference_sft_targets(ids: torch.Tensor, prompt_len: int) -> torch.Tensor:
    """The targets ``y`` of :func:`lmlib.instruct.sft_targets` (the inputs are ``ids[:-1]``)."""
    return sft_targets(ids, prompt_len)[1]


def check_sft_targets(fn: Callable[[torch.Tensor, int], torch.Tensor], **options) -> Result:
    """``fn(ids, prompt_len) -> y``: next-token targets of ``ids`` with -100 where the target is a prompt token."""

    def make_case(gen: torch.Generator) -> Case:
        n = randint(gen, 2, 40)
        return torch.randint(0, 100, (n,), generator=gen), randint(gen, 1, n)

    def unshifted(ids, p):
        y = ids.clone()
        y[:p] = IGNORE_INDEX
        return y

    return check(
        fn, reference_sft_targets, make_case,
        hint="y = ids[1:]: y[t] is the token after position t. It belongs to the prompt when t + 1 < prompt_len, "
        "so mask y[:prompt_len - 1] with -100 (not y[:prompt_len]: the last prompt position predicts the "
        "first response token, which must stay in the loss). The result has len(ids) - 1 entries.",
        edge_cases=((torch.tensor([5, 6, 7, 8]), 3), (torch.tensor([5, 6, 7, 8]), 1), (torch.tensor([1, 2]), 1),
                    (torch.tensor([9, 8, 7, 6, 5]), 4)),
        mistakes=(
            Mistake("you did not shift: the targets are the NEXT tokens, y = ids[1:] (one shorter than ids), "
                    "then mask y[:prompt_len - 1]", unshifted),
        ),
        **options,
    )


def reference_lora_forward(x: torch.Tensor, W: torch.Tensor, A: torch.Tensor, B: torch.Tensor,
                           scale: float) -> torch.Tensor:
    return lora_forward(x, W, A, B, scale)


def check_lora_forward(fn: Callable[..., torch.Tensor], **options) -> Result:
    """``fn(x, W, A, B, scale) -> x @ W^T + scale * x @ A^T @ B^T`` for x (..., in), W (out, in), A (r, in), B (out, r)."""

    def make_case(gen: torch.Generator) -> Case:
        d_in, d_out, r = (randint(gen, 2, 12) for _ in range(3))
        lead = tuple(randint(gen, 1, 4) for _ in range(randint(gen, 1, 3)))
        x = torch.randn(*lead, d_in, generator=gen, dtype=torch.float64)
        W = torch.randn(d_out, d_in, generator=gen, dtype=torch.float64)
        A = torch.randn(r, d_in, generator=gen, dtype=torch.float64)
        B = torch.randn(d_out, r, generator=gen, dtype=torch.float64)
        return x, W, A, B, float(torch.rand(1, generator=gen)) * 4 + 0.25

    return check(
        fn, reference_lora_forward, make_case,
        hint="weights are stored (out, in), so a linear layer computes x @ W.T; the low-rank path is "
        "(x @ A.T) @ B.T, multiplied by scale (alpha / r), then added to the base output. Work on the last "
        "axis of x only, so batch and sequence axes pass through.",
        edge_cases=((f64([[1.0, 2.0, 0.0], [0.0, 1.0, -1.0]]), f64([[1.0, 0.0, 2.0], [0.0, 3.0, 1.0], [1.0, 1.0, 1.0]]),
                     f64([[1.0, 0.0, 1.0]]), f64([[1.0], [0.0], [2.0]]), 2.0),),
        mistakes=(
            Mistake("you scaled the base output too; only the low-rank path is multiplied by scale",
                    lambda x, W, A, B, s: s * (x @ W.T + x @ A.T @ B.T)),
            Mistake("you left out scale: the low-rank path is multiplied by scale = alpha / r",
                    lambda x, W, A, B, s: x @ W.T + x @ A.T @ B.T),
            Mistake("you used W without transposing; weights are stored (out, in), so the base output is x @ W.T",
                    lambda x, W, A, B, s: x @ W + s * x @ A.T @ B.T),
        ),
        **options,
    )


# --- notebook 04: token tasks -------------------------------------------------------------------

_TYPES = ("per", "loc", "org")
_WORDS = ("the", "a", "an", "Denver", "Broncos", "1990", "river", "River", "Nile", "of", "in", "blue",
          "Theatre", "king", "Paris", "France's", "U.S.", "Super", "Bowl", "50")


def reference_bio_to_spans(tags: list[str]) -> list[tuple[str, int, int]]:
    return bio_to_spans(tags)


def _random_tags(gen: torch.Generator) -> list[str]:
    out = []
    for _ in range(randint(gen, 0, 14)):
        kind, typ = randint(gen, 0, 3), _TYPES[randint(gen, 0, len(_TYPES))]
        out.append("O" if kind == 0 else f"{'BI'[kind - 1]}-{typ}")
    return out


def _spans_b_only(tags):
    spans, open_ = [], None
    for i, t in enumerate(list(tags) + ["O"]):
        if open_ and not (t.startswith("I-") and t[2:] == open_[0]):
            spans.append((open_[0], open_[1], i))
            open_ = None
        if t.startswith("B-"):
            open_ = (t[2:], i)
    return spans


def _spans_any_type(tags):
    spans, open_ = [], None
    for i, t in enumerate(list(tags) + ["O"]):
        if open_ and (t == "O" or t.startswith("B-")):
            spans.append((open_[0], open_[1], i))
            open_ = None
        if t != "O" and open_ is None:
            open_ = (t[2:], i)
    return spans


def check_bio_to_spans(fn: Callable[[list[str]], list[tuple[str, int, int]]], **options) -> Result:
    """``fn(tags) -> [(type, start, end), ...]``: entity spans of a BIO tag list, end exclusive."""
    return check(
        fn, reference_bio_to_spans, lambda gen: (_random_tags(gen),),
        hint="walk the tags keeping the open entity: B-x always opens a new one; I-x continues the open "
        "entity only if it has type x, otherwise it opens one (an I- without its B-, as conlleval reads "
        "it); O closes it; close the last one at the end. Spans are (type, start, end) with end exclusive, "
        "in order of their start.",
        edge_cases=((["B-per", "I-per", "O"],), (["B-per"],), (["O", "I-loc", "I-loc"],),
                    (["B-per", "I-loc", "B-loc"],), (["B-org", "B-org"],), ([],)),
        mistakes=(
            Mistake("the end of a span is exclusive: (type, start, end) covers tags start ... end - 1, "
                    "so one tag at position 0 is (type, 0, 1)",
                    lambda tags: [(t, s, e - 1) for t, s, e in bio_to_spans(tags)]),
            Mistake("an I-x without an open entity of type x must start a new entity (as conlleval reads "
                    "it); you dropped it", _spans_b_only),
            Mistake("an I-x after an entity of another type starts a new entity; you let it extend the "
                    "open one", _spans_any_type),
            Mistake("you did not close the entity still open at the end of the tags",
                    lambda tags: [s for s in bio_to_spans(tags) if s[2] < len(tags)]),
        ),
        **options,
    )


def reference_squad_f1(prediction: str, gold: str) -> float:
    return token_f1(prediction, gold)


def _random_answer(gen: torch.Generator) -> str:
    words = [_WORDS[randint(gen, 0, len(_WORDS))] for _ in range(randint(gen, 0, 5))]
    return " ".join(w + ("", ",", ".", "!")[randint(gen, 0, 4)] for w in words)


def _f1_of(pred: list[str], gold: list[str], common: int) -> float:
    if not common:
        return 0.0
    p, r = common / len(pred), common / len(gold)
    return 2 * p * r / (p + r)


def check_squad_f1(fn: Callable[[str, str], float], **options) -> Result:
    """``fn(prediction, gold) -> float``: the SQuAD v1.1 token F1 of one prediction against one answer."""

    def words(s):
        return normalize_answer(s).split()

    def set_overlap(pred, gold):
        p, g = words(pred), words(gold)
        return _f1_of(p, g, len(set(p) & set(g)))

    def unnormalised(pred, gold):
        p, g = pred.split(), gold.split()
        return _f1_of(p, g, sum((Counter(p) & Counter(g)).values()))

    return check(
        fn, reference_squad_f1, lambda gen: (_random_answer(gen), _random_answer(gen)),
        hint="normalise both strings first (lowercase, remove ASCII punctuation, remove the words a/an/the, "
        "split on whitespace); count the common words with multiplicity (Counter & Counter); "
        "F1 = 2PR/(P+R) with P = common/len(pred), R = common/len(gold); 0 when nothing is in common.",
        edge_cases=(("the Denver Broncos", "Denver Broncos"), ("Denver Broncos team", "Broncos"),
                    ("river river", "the river river Nile"), ("The", "a"), ("U.S.", "US"),
                    ("Nile.", "the nile")),
        mistakes=(
            Mistake("you did not normalise: lowercase both texts, remove punctuation and the words "
                    "a/an/the before comparing words", unnormalised),
            Mistake("you counted shared words once (a set); count them with multiplicity "
                    "(Counter(pred) & Counter(gold))", set_overlap),
            Mistake("you returned the recall (common / len(gold)); F1 combines it with the precision "
                    "(common / len(prediction))", lambda pred, gold: (lambda p, g: (
                        sum((Counter(p) & Counter(g)).values()) / len(g) if g else 0.0))(words(pred), words(gold))),
        ),
        trials=20,
        **options,
    )


def reference_align_labels(word_of_token: list[int], word_labels: list[int]) -> list[int]:
    return align_labels(word_of_token, word_labels, position="first")


def check_align_labels(fn: Callable[[list[int], list[int]], list[int]], **options) -> Result:
    """``fn(word_of_token, word_labels) -> token labels``: first sub-token gets the word's label, others -100."""

    def make_case(gen: torch.Generator) -> Case:
        pieces = torch.randint(1, 4, (randint(gen, 1, 8),), generator=gen).tolist()
        word_of_token = [w for w, k in enumerate(pieces) for _ in range(k)]
        return word_of_token, torch.randint(0, 13, (len(pieces),), generator=gen).tolist()

    return check(
        fn, reference_align_labels, make_case,
        hint="a token is the first sub-token of its word when it is token 0 or the token before it belongs "
        "to another word; it gets word_labels[word]; every other token gets -100.",
        edge_cases=(([0, 0, 1, 2, 2, 2], [3, 0, 5]), ([0], [7]), ([0, 1, 1], [4, 2])),
        mistakes=(
            Mistake("you labelled every sub-token; only a word's first sub-token gets its label, the "
                    "others get -100 so that each word counts once in the loss",
                    lambda wot, labels: [labels[w] for w in wot]),
            Mistake("you labelled each word's LAST sub-token; this exercise labels the first one",
                    lambda wot, labels: align_labels(wot, labels, position="last")),
            Mistake("the other sub-tokens should get -100 (the ignore index the loss skips), not 0",
                    lambda wot, labels: [x if x != IGNORE_INDEX else 0 for x in align_labels(wot, labels)]),
        ),
        **options,
    )


def reference_context_windows(n_tokens: int, room: int, stride: int) -> list[tuple[int, int]]:
    return context_windows(n_tokens, room, stride)


def check_context_windows(fn: Callable[[int, int, int], list[tuple[int, int]]], **options) -> Result:
    """``fn(n_tokens, room, stride) -> [(start, end), ...]``: overlapping windows that cover the text."""

    def make_case(gen: torch.Generator) -> Case:
        room = randint(gen, 1, 65)
        return randint(gen, 1, 400), room, randint(gen, 1, room + 1)

    def one_window_too_many(n_tokens, room, stride):
        out, start = [], 0
        while start < n_tokens:
            out.append((start, min(start + room, n_tokens)))
            start += stride
        return out

    return check(
        fn, reference_context_windows, make_case,
        prepare=lambda windows: [tuple(w) for w in windows],
        hint="start at 0; the window is [start, min(start + room, n_tokens)); stop once a window reaches "
        "n_tokens, else move start on by stride.",
        edge_cases=((1, 8, 4), (8, 8, 4), (9, 8, 4), (10, 4, 2), (23, 8, 3)),
        mistakes=(
            Mistake("you kept going until the start passed the end: stop as soon as a window reaches "
                    "n_tokens, or the last windows only repeat the end of the one before",
                    one_window_too_many),
        ),
        **options,
    )


def reference_bm25_scores(query: list[str], documents: list[list[str]], k1: float, b: float) -> list[float]:
    """:meth:`lmlib.retrieval.BM25.scores` as a list: one BM25 score per document."""
    return BM25(documents, k1, b).scores(query).tolist()


def _bm25_variant(query, documents, k1, b, idf_plus_one=True, saturate=True, length=True):
    n_docs, avgdl = len(documents), sum(len(d) for d in documents) / len(documents)
    out = []
    for d in documents:
        score = 0.0
        for t in query:
            tf, n = d.count(t), sum(t in e for e in documents)
            ratio = (n_docs - n + 0.5) / (n + 0.5)
            idf = math.log(1 + ratio) if idf_plus_one else math.log(ratio)
            norm = k1 * (1 - b + b * len(d) / avgdl) if length else k1
            score += idf * (tf / (tf + norm) if saturate else tf) if tf else 0.0
        out.append(score)
    return out


def check_bm25_scores(fn: Callable[[list[str], list[list[str]], float, float], list[float]], **options) -> Result:
    """``fn(query, documents, k1, b) -> [score per document]``: BM25 with Lucene's idf (chapter 5)."""
    vocab = ["cat", "dog", "sat", "mat", "the", "a", "on", "ran", "fox", "red"]

    def make_case(gen: torch.Generator) -> Case:
        documents = [[vocab[randint(gen, 0, len(vocab))] for _ in range(randint(gen, 1, 12))]
                     for _ in range(randint(gen, 2, 8))]
        query = list(dict.fromkeys(vocab[randint(gen, 0, len(vocab))] for _ in range(randint(gen, 1, 4))))
        return query, documents, float(randint(gen, 5, 21)) / 10, float(randint(gen, 0, 5)) / 4

    return check(
        fn, reference_bm25_scores, make_case,
        prepare=lambda scores: f64([float(x) for x in scores]),
        hint="for each document and each query term: tf = its count in the document, n = how many documents "
        "hold it, idf = log(1 + (N - n + 0.5) / (n + 0.5)), and add idf * tf / (tf + k1 * (1 - b + b * len(doc) "
        "/ avgdl)); a term the document lacks adds 0.",
        edge_cases=((["cat"], [["cat", "sat"], ["dog"], ["cat", "cat", "cat", "on", "the", "mat"]], 1.5, 0.75),
                    (["the", "cat"], [["the", "cat"], ["the", "dog"], ["the", "fox"]], 1.2, 0.75),
                    (["fox"], [["a"], ["the"]], 1.5, 0.75)),
        mistakes=(
            Mistake("your idf is log((N - n + 0.5) / (n + 0.5)) without the 1 +: a term in most documents gets a "
                    "negative weight and lowers the score of the documents that hold it",
                    lambda q, d, k1, b: _bm25_variant(q, d, k1, b, idf_plus_one=False)),
            Mistake("the term count is not saturated: use tf / (tf + k1 * (...)), so that repeating a word "
                    "adds less and less", lambda q, d, k1, b: _bm25_variant(q, d, k1, b, saturate=False)),
            Mistake("document length plays no part: k1 is multiplied by 1 - b + b * len(doc) / avgdl",
                    lambda q, d, k1, b: _bm25_variant(q, d, k1, b, length=False)),
        ),
        trials=20,
        **options,
    )


# --- notebook 05: the assistant -----------------------------------------------------------------

def reference_assistant_mask(ids: torch.Tensor, special: dict[str, int]) -> torch.Tensor:
    """The targets of :func:`lmlib.chat.chat_example` (without tool results) from the ids alone.

    ``special`` maps the four chat tokens to their ids. A role tag opens a turn and :data:`END`
    closes it; the targets keep the tokens of an assistant turn's content and its closing END.
    """
    role_of = {special[SYSTEM]: "system", special[USER]: "user", special[ASSISTANT]: "assistant"}
    learn, role = [], None
    for token in ids.tolist():
        if token in role_of:
            role = role_of[token]
            learn.append(False)
        else:
            learn.append(role == "assistant")
            if token == special[END]:
                role = None
    y = ids[1:].clone()
    y[~torch.tensor(learn[1:], dtype=torch.bool)] = IGNORE_INDEX
    return y


def _conversation_ids(gen: torch.Generator) -> Case:
    """Random ids of a chat: an optional system turn, then user and assistant turns, some empty."""
    specials = (torch.randperm(10, generator=gen)[:4] + 90).tolist()
    special = dict(zip((SYSTEM, USER, ASSISTANT, END), specials))
    ids = []
    turns = randint(gen, 2, 7)
    roles = ([SYSTEM] if randint(gen, 0, 5) < 2 else []) + [(USER, ASSISTANT)[i % 2] for i in range(turns)]
    for tag in roles:
        n = randint(gen, 0, 6)
        ids += [special[tag], *torch.randint(0, 90, (n,), generator=gen).tolist(), special[END]]
    return torch.tensor(ids), special


def _tag_kept(ids: torch.Tensor, special: dict[str, int]) -> torch.Tensor:
    """A known mistake: the <|assistant|> tag is learned too (it is context, given by the code)."""
    y = reference_assistant_mask(ids, special)
    tags = ids[1:] == special[ASSISTANT]
    y[tags] = ids[1:][tags]
    return y


def _end_masked(ids: torch.Tensor, special: dict[str, int]) -> torch.Tensor:
    """A known mistake: the END that closes an assistant turn is masked (the model never learns to stop)."""
    y = reference_assistant_mask(ids, special)
    y[ids[1:] == special[END]] = IGNORE_INDEX
    return y


def check_assistant_mask(fn: Callable[[torch.Tensor, dict], torch.Tensor], **options) -> Result:
    """``fn(ids, special) -> y``: next-token targets of a chat's ids, -100 except on the assistant's turns."""
    s = {SYSTEM: 90, USER: 91, ASSISTANT: 92, END: 93}
    one_exchange = torch.tensor([91, 5, 6, 93, 92, 7, 8, 93])
    return check(
        fn,
        reference_assistant_mask,
        _conversation_ids,
        hint="y = ids[1:], then -100 wherever the target token is not the assistant's: walk through the ids "
        "keeping the role of the turn you are in (a role tag starts a turn, <|end|> closes it). Keep a target "
        "when it is content of an assistant turn or the <|end|> that closes one (that teaches the model to "
        "stop); mask the role tags themselves, so <|assistant|> is never a target.",
        edge_cases=((one_exchange, s), (torch.tensor([90, 1, 93, 91, 2, 93, 92, 93]), s),
                    (torch.tensor([91, 1, 93, 92, 3, 4, 93, 91, 5, 93, 92, 6, 93]), s)),
        mistakes=(
            Mistake("you kept the <|assistant|> tag as a target: the code writes the tag, the model only "
                    "writes what follows it, so mask it like the other role tags", _tag_kept),
            Mistake("you masked the <|end|> that closes an assistant turn: keep it, or the model never "
                    "learns to stop", _end_masked),
        ),
        **options,
    )


def reference_dpo_loss(policy_chosen: torch.Tensor, policy_rejected: torch.Tensor, ref_chosen: torch.Tensor,
                       ref_rejected: torch.Tensor, beta: float) -> float:
    """The mean DPO loss of :func:`lmlib.instruct.dpo_loss`, as a number."""
    return float(dpo_loss(policy_chosen, policy_rejected, ref_chosen, ref_rejected, beta)[0])


def _no_beta(pc, pr, rc, rr, beta):
    return reference_dpo_loss(pc, pr, rc, rr, 1.0)


def _no_reference(pc, pr, rc, rr, beta):
    return reference_dpo_loss(pc, pr, torch.zeros_like(rc), torch.zeros_like(rr), beta)


def check_dpo_loss(fn: Callable[..., torch.Tensor | float], **options) -> Result:
    """``fn(policy_chosen, policy_rejected, ref_chosen, ref_rejected, beta) -> mean DPO loss`` on (B,) log-probs."""

    def make_case(gen: torch.Generator) -> Case:
        b = randint(gen, 1, 9)
        logps = [-30 * torch.rand(b, generator=gen, dtype=torch.float64) for _ in range(4)]
        return (*logps, float(torch.rand(1, generator=gen)) * 0.9 + 0.05)

    same = torch.tensor([-5.0, -7.0], dtype=torch.float64)
    return check(
        fn,
        reference_dpo_loss,
        make_case,
        hint="each reply's implicit reward is beta * (policy log-prob - reference log-prob); the loss of a pair "
        "is -log sigmoid(reward of chosen - reward of rejected), and the result is the mean over the batch. "
        "torch.nn.functional.logsigmoid is stable where log(sigmoid(.)) overflows. With the policy equal to "
        "the reference the loss is log 2.",
        edge_cases=((same, same - 1, same, same - 1, 0.1), (same, same, same + 3, same - 3, 0.5)),
        mistakes=(
            Mistake("your loss does not depend on beta: multiply each log-ratio by beta", _no_beta),
            Mistake("you left out the reference model: the reward is beta * (log pi - log pi_ref)", _no_reference),
        ),
        rtol=1e-6,
        atol=1e-9,
        **options,
    )


def reference_choice_scores(model: torch.nn.Module, context: torch.Tensor,
                            endings: Sequence[torch.Tensor]) -> torch.Tensor:
    """:func:`lmlib.evals.choice_logprobs` per token: the mean log-probability of each ending's tokens."""
    return choice_logprobs(model, context, endings, per_token=True)


def _summed(model, context, endings):
    """A known mistake: the sum, not the mean per token (long endings lose)."""
    return choice_logprobs(model, context, endings, per_token=False)


def check_choice_scores(fn: Callable[..., torch.Tensor], **options) -> Result:
    """``fn(model, context, endings) -> (n,)``: mean log-probability per token of each ending after the context."""

    def make_case(gen: torch.Generator) -> Case:
        with torch.random.fork_rng():
            torch.manual_seed(int(torch.randint(2 ** 31, (1,), generator=gen)))
            model = GPT(GPTConfig(vocab_size=20, block_size=32, n_layer=1, n_head=2, n_embd=16)).eval()
        context = torch.randint(0, 20, (randint(gen, 1, 9),), generator=gen)
        endings = [torch.randint(0, 20, (randint(gen, 1, 6),), generator=gen) for _ in range(randint(gen, 2, 5))]
        return model, context, endings

    return check(
        fn,
        reference_choice_scores,
        make_case,
        hint="for each ending, run the model on torch.cat([context, ending]) (as a batch of one), take the "
        "log-softmax of the logits, and read the log-probability of every ending token from the position "
        "before it: ending token k sits at position len(context) + k and is predicted at position "
        "len(context) + k - 1. Sum them and divide by the ending's length. Run it without gradients; the "
        "model returns (logits, loss).",
        mistakes=(Mistake("you summed the log-probabilities: divide each ending's sum by its number of tokens",
                          _summed),),
        rtol=1e-4,
        atol=1e-5,
        **options,
    )
