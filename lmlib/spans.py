"""Token-level and span tasks: named-entity recognition (NER) and extractive question answering.

Derived in chapter 5 ("Applications", notebook 04, token-level and span tasks). A classifier
gives one label per text; here the model labels every word (NER, with BIO tags) or points at a
span of its input (SQuAD-style question answering). Both heads sit on the hidden states of an
:class:`lmlib.model.GPT` (:class:`lmlib.model.GPTWithHead`). A decoder-only GPT is causal:
position t sees only positions <= t. Everything below is built with that in mind (labels on
sub-words, the question placed *before* the context).

API summary
-----------
NER data and metrics
    Sentence(tokens, tags); ConllReport
    parse_conll(lines, source) -> (sentences, report)   load_wnut17(split) -> (sentences, report)
    WNUT17_FILES: {split: file}
    WNUT17_TYPES, bio_labels(types) -> ["O", "B-x", "I-x", ...]
    bio_to_spans(tags) -> [(type, start, end)]            (CoNLL convention; end exclusive)
    spans_to_bio(spans, length) -> tags
    entity_scores(gold, pred) -> {"precision", "recall", "f1", "per_type", ...}   tag sequences
Sub-word alignment and the tagging head
    encode_words(tokenizer, words) -> (ids, word_of_token)
    align_labels(word_of_token, word_labels, position="first") -> token labels (-100 = ignored)
    word_predictions(token_pred, word_of_token, n_words, position="first") -> one label per word
    GPTTokenClassifier(gpt, n_labels, pad_id, dropout=0.0): forward(x, targets) -> (logits, loss)
    tagging_batches(ids, labels, batch_size, pad_id) -> batch_fn;  pad_rows(rows, value, length=None) -> (N, T)
SQuAD data and metrics (the official v1.1 definitions, rewritten)
    SquadExample; SquadReport; load_squad(name="squad-v1.1-dev", file=None) -> (examples, report)
    normalize_answer(s), exact_match(pred, golds), token_f1(pred, golds)
    squad_scores(predictions, examples) -> {"exact_match", "f1", "n"}   (percentages)
Span extraction
    token_offsets(tokenizer, text) -> [(char_start, char_end)] per token
    char_span_to_tokens(offsets, start, end) -> (first_token, last_token) or None
    context_windows(n_tokens, room, stride=None) -> [(start, end)]   overlapping windows covering n_tokens
    QAFeature; qa_features(tokenizer, example, sep_id, max_len, max_question, stride)
    GPTSpanExtractor(gpt, pad_id, sep_id, dropout=0.0): forward(x, targets (B, 2)) -> (logits (B, T, 2), loss)
    span_batches(features, batch_size, pad_id) -> batch_fn   over the features that hold their answer
    best_span(start_logits, end_logits, max_answer_tokens) -> (start, end, score)
    predict_answers(model, features, contexts, ..., with_scores=False) -> {question id: answer text (, score)}
"""
from __future__ import annotations

import json
import re
import string
from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from lmlib import data
from lmlib.data import IGNORE_INDEX, RowReport, pad_right, random_batches
from lmlib.device import eval_mode, model_device
from lmlib.model import GPT, GPTWithHead

Tensor = torch.Tensor

__all__ = [
    "Sentence", "ConllReport", "parse_conll", "load_wnut17", "WNUT17_FILES", "WNUT17_TYPES",
    "bio_labels", "bio_to_spans", "spans_to_bio", "entity_scores", "encode_words", "align_labels",
    "word_predictions", "GPTTokenClassifier", "tagging_batches", "pad_rows", "SquadExample", "SquadReport",
    "load_squad", "normalize_answer", "exact_match", "token_f1", "squad_scores", "token_offsets",
    "char_span_to_tokens", "context_windows", "QAFeature", "qa_features", "GPTSpanExtractor", "span_batches",
    "best_span", "predict_answers",
]


# --- CoNLL files and BIO tags -------------------------------------------------------------------

@dataclass
class Sentence:
    """One sentence of a CoNLL file: its tokens (words) and one tag per token."""

    tokens: list[str]
    tags: list[str]


@dataclass
class ConllReport(RowReport):
    """A :class:`lmlib.data.RowReport` of a CoNLL file: sentences, tokens and tags; malformed lines are rejected."""

    sentences: int = 0
    tokens: int = 0
    tag_counts: Counter = field(default_factory=Counter)

    def headline(self) -> str:
        return (f"{self.source}: {self.lines:,} lines, {self.sentences:,} sentences, {self.tokens:,} tokens, "
                f"{self.n_rejected:,} malformed lines")


def _valid_tag(tag: str) -> bool:
    return tag == "O" or (len(tag) > 2 and tag[:2] in ("B-", "I-"))


def parse_conll(lines: Sequence[str], source: str = "<lines>") -> tuple[list[Sentence], ConllReport]:
    """Sentences from ``token<TAB>tag`` lines, with a blank line between sentences (chapter 5).

    Nothing is dropped silently. A separator line that holds only whitespace (WNUT-17's training
    file uses a lone tab) still ends the sentence but is counted as malformed; a line without
    exactly one tab, with an empty token, or with a tag that is not ``O``, ``B-x`` or ``I-x`` is
    skipped and counted. A trailing newline (an empty last line) is not a line.
    """
    report = ConllReport(source)
    sentences: list[Sentence] = []
    tokens: list[str] = []
    tags: list[str] = []

    def close() -> None:
        if tokens:
            sentences.append(Sentence(list(tokens), list(tags)))
            tokens.clear()
            tags.clear()

    lines = list(lines)
    if lines and lines[-1] == "":
        lines.pop()
    for no, line in enumerate(lines, 1):
        report.lines += 1
        line = line.rstrip("\r\n")
        if not line.strip():
            if line:
                report.reject("separator line holds whitespace, not nothing", no, line)
            close()
            continue
        parts = line.split("\t")
        if len(parts) != 2:
            report.reject(f"{len(parts) - 1} tabs instead of 1", no, line)
            continue
        token, tag = parts[0], parts[1].strip()
        if not token.strip():
            report.reject("empty token", no, line)
            continue
        if not _valid_tag(tag):
            report.reject("tag is not O, B-type or I-type", no, line)
            continue
        tokens.append(token)
        tags.append(tag)
        report.tag_counts[tag] += 1
    close()
    report.sentences = len(sentences)
    report.tokens = sum(len(s.tokens) for s in sentences)
    return sentences, report


#: The three WNUT-17 files by split name (they are the splits the shared task used).
WNUT17_FILES = {"train": "wnut17train.conll", "dev": "emerging.dev.conll", "test": "emerging.test.annotated"}
WNUT17_TYPES = ("corporation", "creative-work", "group", "location", "person", "product")


def load_wnut17(split: str) -> tuple[list[Sentence], ConllReport]:
    """A WNUT-17 split (``"train"``, ``"dev"`` or ``"test"``) through :mod:`lmlib.data`."""
    if split not in WNUT17_FILES:
        raise ValueError(f"split must be one of {list(WNUT17_FILES)}, got {split!r}.")
    file = WNUT17_FILES[split]
    text = data.read_text("wnut17", file)
    return parse_conll(text.split("\n"), source=f"wnut17/{file}")


def bio_labels(types: Sequence[str]) -> list[str]:
    """The label set ``["O", "B-t1", "I-t1", "B-t2", ...]``; label id = position in this list."""
    if len(set(types)) != len(types) or not types:
        raise ValueError(f"types must be a non-empty list of distinct entity types, got {list(types)}.")
    return ["O"] + [f"{p}-{t}" for t in types for p in ("B", "I")]


def bio_to_spans(tags: Sequence[str]) -> list[tuple[str, int, int]]:
    """Entity spans ``(type, start, end)`` (end exclusive) from BIO tags, the CoNLL way (chapter 5).

    ``B-x`` always starts an entity; ``I-x`` continues the open entity if it has type ``x`` and
    otherwise *starts* one (an ``I-`` without its ``B-``, as the conlleval script reads it);
    ``O`` closes the open entity.
    """
    spans: list[tuple[str, int, int]] = []
    open_type, start = None, 0
    for i, tag in enumerate(tags):
        if not _valid_tag(tag):
            raise ValueError(f"tag {i} is {tag!r}: BIO tags are 'O', 'B-<type>' or 'I-<type>'.")
        kind, typ = (tag[0], tag[2:]) if tag != "O" else ("O", None)
        if open_type is not None and (kind != "I" or typ != open_type):
            spans.append((open_type, start, i))
            open_type = None
        if kind == "B" or (kind == "I" and open_type is None):
            open_type, start = typ, i
    if open_type is not None:
        spans.append((open_type, start, len(tags)))
    return spans


def spans_to_bio(spans: Sequence[tuple[str, int, int]], length: int) -> list[str]:
    """BIO tags of ``length`` tokens from non-overlapping ``(type, start, end)`` spans."""
    tags = ["O"] * length
    for typ, start, end in sorted(spans, key=lambda s: s[1]):
        if not 0 <= start < end <= length:
            raise ValueError(f"span {(typ, start, end)} is empty or outside 0..{length}.")
        if any(t != "O" for t in tags[start:end]):
            raise ValueError(f"span {(typ, start, end)} overlaps another span; BIO cannot nest entities.")
        tags[start:end] = [f"B-{typ}"] + [f"I-{typ}"] * (end - start - 1)
    return tags


def _prf(tp: int, n_pred: int, n_gold: int) -> tuple[float, float, float]:
    p = tp / n_pred if n_pred else 0.0
    r = tp / n_gold if n_gold else 0.0
    return p, r, (2 * p * r / (p + r) if p + r else 0.0)


def entity_scores(gold: Sequence[Sequence[str]], pred: Sequence[Sequence[str]]) -> dict:
    """Entity-level precision, recall and F1 (chapter 5): an entity counts only if both its span
    and its type match exactly (the CoNLL shared tasks' definition). Overall and per type.

    ``gold`` and ``pred`` are lists of tag sequences, one per sentence, of equal lengths. A ratio
    with a zero denominator is 0.
    """
    if len(gold) != len(pred):
        raise ValueError(f"gold has {len(gold)} sentences and pred {len(pred)}: "
                         "give one tag list per sentence to both.")
    counts: dict[str, list[int]] = defaultdict(lambda: [0, 0, 0])  # type -> [tp, predicted, gold]
    for k, (g, p) in enumerate(zip(gold, pred)):
        if len(g) != len(p):
            raise ValueError(f"sentence {k}: {len(g)} gold tags but {len(p)} predicted tags.")
        g_spans, p_spans = set(bio_to_spans(g)), set(bio_to_spans(p))
        for typ, *_ in g_spans:
            counts[typ][2] += 1
        for span in p_spans:
            counts[span[0]][1] += 1
            counts[span[0]][0] += span in g_spans
    total = [sum(c[i] for c in counts.values()) for i in range(3)]
    p, r, f1 = _prf(*total)
    per_type = {t: dict(zip(("precision", "recall", "f1"), _prf(*c)), tp=c[0], predicted=c[1], gold=c[2])
                for t, c in sorted(counts.items())}
    return {"precision": p, "recall": r, "f1": f1, "tp": total[0], "predicted": total[1], "gold": total[2],
            "per_type": per_type}


# --- sub-word alignment and the tagging head ----------------------------------------------------

def encode_words(tokenizer, words: Sequence[str]) -> tuple[list[int], list[int]]:
    """Token ids of a pre-split sentence and, for each token, the index of its word.

    Words are joined with single spaces, as GPT-2-style tokenizers expect (the space belongs to
    the next word's first token), and encoded one word at a time so that no token straddles two
    words. A word may become several sub-word tokens; every word gets at least one.
    """
    ids: list[int] = []
    word_of_token: list[int] = []
    for w, word in enumerate(words):
        if not word:
            raise ValueError(f"word {w} is empty; every word needs at least one character.")
        piece = tokenizer.encode_list(word if w == 0 else " " + word)
        ids += piece
        word_of_token += [w] * len(piece)
    return ids, word_of_token


def align_labels(word_of_token: Sequence[int], word_labels: Sequence[int], position: str = "first") -> list[int]:
    """One label per token: the word's label on one of its sub-tokens, :data:`lmlib.data.IGNORE_INDEX` elsewhere.

    ``position="first"`` labels each word's first sub-token (BERT's convention); ``"last"`` its
    last one, which in a causal model is the first position that has *seen* the whole word.
    Ignored positions add nothing to the loss, so each word counts once however it is split.
    """
    if position not in ("first", "last"):
        raise ValueError(f"position must be 'first' or 'last', got {position!r}.")
    n_words = len(word_labels)
    if any(not 0 <= w < n_words for w in word_of_token):
        raise ValueError(f"word_of_token refers to words outside 0..{n_words - 1}: labels and tokens do not match.")
    out = [IGNORE_INDEX] * len(word_of_token)
    for t, w in enumerate(word_of_token):
        if position == "first" and (t == 0 or word_of_token[t - 1] != w):
            out[t] = word_labels[w]
        if position == "last" and (t == len(word_of_token) - 1 or word_of_token[t + 1] != w):
            out[t] = word_labels[w]
    if sum(l != IGNORE_INDEX for l in out) != n_words:
        raise ValueError("some words have no token (or their tokens are not contiguous); encode with encode_words.")
    return out


def word_predictions(token_pred: Sequence[int], word_of_token: Sequence[int], n_words: int,
                     position: str = "first") -> list[int]:
    """Back from tokens to words: each word takes the prediction at the sub-token it was trained on."""
    labels = align_labels(word_of_token, list(range(n_words)), position)
    out = [0] * n_words
    for t, w in enumerate(labels):
        if w != IGNORE_INDEX:
            out[w] = int(token_pred[t])
    return out


class GPTTokenClassifier(GPTWithHead):
    """A GPT body with a linear head on *every* position: (B, T) ids -> (B, T, n_labels) logits.

    ``targets`` (B, T) hold a label id per position, :data:`lmlib.data.IGNORE_INDEX` where no label applies (padding,
    non-first sub-tokens); the loss is the mean cross-entropy over the labelled positions.
    Padding (``pad_id``) goes on the right; causal attention keeps it from changing earlier positions.
    """

    def __init__(self, gpt: GPT, n_labels: int, pad_id: int, dropout: float = 0.0) -> None:
        if not isinstance(n_labels, int) or n_labels < 2:
            raise ValueError(f"n_labels must be an integer >= 2, got {n_labels!r}.")
        super().__init__(gpt, n_labels, pad_id, dropout)

    def forward(self, x: Tensor, targets: Tensor | None = None) -> tuple[Tensor, Tensor | None]:
        logits = self.head(self.features(x))
        loss = None
        if targets is not None:
            if targets.shape != x.shape:
                raise ValueError(f"targets must have the shape of x {tuple(x.shape)} (one label per token), "
                                 f"got {tuple(targets.shape)}.")
            if not (targets != IGNORE_INDEX).any():
                raise ValueError(f"every target is {IGNORE_INDEX} (ignored): the batch has nothing to learn from.")
            loss = F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten().long(), ignore_index=IGNORE_INDEX)
        return logits, loss


def pad_rows(rows: Sequence[Sequence[int]], value: int, length: int | None = None) -> Tensor:
    """(N, length) long tensor: each row right-padded with ``value`` (length: the longest row)."""
    return pad_right(rows, value, length)


def tagging_batches(ids: Sequence[Sequence[int]], labels: Sequence[Sequence[int]], batch_size: int,
                    pad_id: int) -> Callable[[torch.Generator], tuple[Tensor, Tensor]]:
    """A ``batch_fn(generator) -> (x, y)`` of random sentences, right-padded to the longest drawn.

    Padding positions get the label :data:`lmlib.data.IGNORE_INDEX`.
    """
    if len(ids) != len(labels) or not ids:
        raise ValueError(f"need as many label rows as id rows (and at least one), got {len(ids)} and {len(labels)}.")
    if any(len(a) != len(b) for a, b in zip(ids, labels)):
        raise ValueError("every id row needs a label row of the same length (use align_labels).")
    return random_batches(len(ids), batch_size, lambda rows: (pad_rows([ids[r] for r in rows], pad_id),
                                                                pad_rows([labels[r] for r in rows], IGNORE_INDEX)))


# --- SQuAD: data and the official metrics -------------------------------------------------------

@dataclass
class SquadExample:
    """One question: its id, article title, paragraph, question, and gold answers (text, char start)."""

    id: str
    title: str
    context: str
    question: str
    answers: list[str]
    answer_starts: list[int]


@dataclass
class SquadReport:
    source: str
    articles: int = 0
    paragraphs: int = 0
    questions: int = 0
    answers: int = 0
    bad_offsets: int = 0  # answers whose text is not at answer_start in the context
    no_answer: int = 0    # questions with no gold answer (skipped)

    def __str__(self) -> str:
        return (f"{self.source}: {self.articles} articles, {self.paragraphs} paragraphs, {self.questions} questions, "
                f"{self.answers} answers; {self.bad_offsets} answers not found at their offset, "
                f"{self.no_answer} questions without an answer (skipped)")


def load_squad(name: str = "squad-v1.1-dev", file: str | None = None) -> tuple[list[SquadExample], SquadReport]:
    """SQuAD v1.1 JSON as one :class:`SquadExample` per question, and a report of what was odd.

    Each answer's ``answer_start`` is checked against its text; a mismatch is counted (and the
    answer is still kept for scoring, which uses only the text).
    """
    raw = json.loads(data.read_text(name, file))
    if not isinstance(raw, dict) or "data" not in raw:
        raise ValueError(f"{name} is not SQuAD JSON: expected an object with a 'data' list of articles.")
    report = SquadReport(f"{name}/{file or data.dataset(name).default}")
    examples = []
    for article in raw["data"]:
        report.articles += 1
        for para in article["paragraphs"]:
            report.paragraphs += 1
            context = para["context"]
            for qa in para["qas"]:
                report.questions += 1
                answers = [a["text"] for a in qa["answers"]]
                starts = [int(a["answer_start"]) for a in qa["answers"]]
                if not answers:
                    report.no_answer += 1
                    continue
                report.answers += len(answers)
                report.bad_offsets += sum(context[s:s + len(a)] != a for a, s in zip(answers, starts))
                examples.append(SquadExample(qa["id"], article["title"], context, qa["question"], answers, starts))
    return examples, report


_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCT = set(string.punctuation)


def normalize_answer(s: str) -> str:
    """SQuAD v1.1 normalisation: lowercase, drop ASCII punctuation, drop the words a/an/the,
    collapse whitespace. In that order (punctuation goes before articles, so "the-end" -> "theend")."""
    s = "".join(ch for ch in s.lower() if ch not in _PUNCT)
    s = _ARTICLES.sub(" ", s)
    return " ".join(s.split())


def _as_golds(golds: str | Sequence[str]) -> list[str]:
    golds = [golds] if isinstance(golds, str) else list(golds)
    if not golds:
        raise ValueError("need at least one gold answer; SQuAD v1.1 scores against the best of several.")
    return golds


def exact_match(prediction: str, golds: str | Sequence[str]) -> float:
    """1.0 if the normalised prediction equals any normalised gold answer, else 0.0."""
    return float(any(normalize_answer(prediction) == normalize_answer(g) for g in _as_golds(golds)))


def _f1_one(prediction: str, gold: str) -> float:
    pred, ref = normalize_answer(prediction).split(), normalize_answer(gold).split()
    common = sum((Counter(pred) & Counter(ref)).values())
    if common == 0:
        return 0.0  # also when either side normalises to nothing
    precision, recall = common / len(pred), common / len(ref)
    return 2 * precision * recall / (precision + recall)


def token_f1(prediction: str, golds: str | Sequence[str]) -> float:
    """SQuAD v1.1 token F1: the bag-of-words overlap of normalised texts, best over the golds."""
    return max(_f1_one(prediction, g) for g in _as_golds(golds))


def squad_scores(predictions: dict[str, str], examples: Sequence[SquadExample]) -> dict:
    """Mean exact match and F1 in percent over ``examples``; a missing prediction scores 0."""
    if not examples:
        raise ValueError("squad_scores needs at least one example.")
    em = f1 = 0.0
    for ex in examples:
        if ex.id in predictions:
            em += exact_match(predictions[ex.id], ex.answers)
            f1 += token_f1(predictions[ex.id], ex.answers)
    n = len(examples)
    return {"exact_match": 100 * em / n, "f1": 100 * f1 / n, "n": n,
            "missing": sum(ex.id not in predictions for ex in examples)}


# --- span extraction ----------------------------------------------------------------------------

def token_offsets(tokenizer, text: str) -> tuple[list[int], list[tuple[int, int]]]:
    """Token ids of ``text`` and each token's character span ``(start, end)`` in ``text``.

    A byte-level tokenizer's tokens are byte strings that concatenate to the UTF-8 text, so the
    byte offsets are running sums of token lengths; a character map converts them. A token that
    cuts a multi-byte character in two shares that character with its neighbour.
    """
    ids = tokenizer.encode_list(text)
    raw = text.encode("utf-8")
    char_of_byte = []
    for i, ch in enumerate(text):
        char_of_byte += [i] * len(ch.encode("utf-8"))
    offsets, pos = [], 0
    for i in ids:
        n = len(tokenizer.decode_bytes([i]))
        if n == 0 or pos + n > len(raw):
            raise ValueError("the tokens do not spell the text byte for byte; is this a byte-level tokenizer "
                             "and does the text hold special tokens?")
        offsets.append((char_of_byte[pos], char_of_byte[pos + n - 1] + 1))
        pos += n
    if pos != len(raw):
        raise ValueError("the tokens do not cover the whole text; token_offsets needs a byte-level tokenizer.")
    return ids, offsets


def char_span_to_tokens(offsets: Sequence[tuple[int, int]], start: int, end: int) -> tuple[int, int] | None:
    """The first and last token (inclusive) that overlap characters ``[start, end)``; None if none do."""
    if not 0 <= start < end:
        raise ValueError(f"need 0 <= start < end for a character span, got ({start}, {end}).")
    hit = [t for t, (a, b) in enumerate(offsets) if a < end and b > start]
    return (hit[0], hit[-1]) if hit else None


def context_windows(n_tokens: int, room: int, stride: int | None = None) -> list[tuple[int, int]]:
    """Token windows ``(start, end)`` (end exclusive) of at most ``room`` tokens that cover ``n_tokens``.

    Windows start every ``stride`` tokens (default: half a window, ``room // 2``) until one reaches
    the end; consecutive windows overlap by ``room - stride`` tokens, so an answer cut by one
    window's edge lies whole inside a neighbour as long as it is at most that long. A text that
    fits gets one window.
    """
    stride = room // 2 if stride is None else stride
    if n_tokens < 1 or room < 1:
        raise ValueError(f"need n_tokens >= 1 and room >= 1, got n_tokens={n_tokens}, room={room}.")
    if not 1 <= stride <= room:
        raise ValueError(f"stride must be between 1 and room={room} (no token may be skipped), got {stride}.")
    out, w0 = [], 0
    while True:
        w1 = min(w0 + room, n_tokens)
        out.append((w0, w1))
        if w1 == n_tokens:
            return out
        w0 += stride


@dataclass
class QAFeature:
    """One model input: question tokens, the separator, then a window of the context's tokens.

    ``ids`` is the input row; ``context_start`` the position of the window's first token in it;
    ``offsets`` the character spans (in the context) of the window's tokens; ``target`` the input
    positions (start, end) of the answer when the window holds all of it, else None.
    """

    example_id: str
    ids: list[int]
    context_start: int
    offsets: list[tuple[int, int]]
    target: tuple[int, int] | None


def qa_features(tokenizer, example: SquadExample, sep_id: int, max_len: int, max_question: int = 24,
                stride: int | None = None) -> list[QAFeature]:
    """Inputs ``question + [sep] + context window`` covering the whole context (chapter 5).

    The question comes first: in a causal model a context token can attend to the question only
    if the question is before it. A context longer than ``max_len - len(question) - 1`` tokens is
    cut into overlapping windows that start every ``stride`` tokens (default: half a window; the
    last window reaches the end; see :func:`context_windows`).
    The first gold answer gives the target of each window that contains it; an example without
    answers (a retrieved paragraph at prediction time) gives windows without targets.
    """
    q = tokenizer.encode_list(example.question)[:max_question]
    room = max_len - len(q) - 1
    stride = room // 2 if stride is None else stride
    if room < 8 or stride < 1 or stride > room:
        raise ValueError(f"max_len={max_len} leaves {room} context tokens after the question; need >= 8 and "
                         f"1 <= stride <= {room}. Raise max_len or lower max_question.")
    ctx_ids, offsets = token_offsets(tokenizer, example.context)
    answer = None
    if example.answers:
        start_char = example.answer_starts[0]
        answer = char_span_to_tokens(offsets, start_char, start_char + len(example.answers[0]))
    if not ctx_ids:
        raise ValueError(f"question {example.id!r} has an empty context.")
    out = []
    for w0, w1 in context_windows(len(ctx_ids), room, stride):
        target = None
        if answer is not None and w0 <= answer[0] and answer[1] < w1:
            target = (len(q) + 1 + answer[0] - w0, len(q) + 1 + answer[1] - w0)
        out.append(QAFeature(example.id, q + [sep_id] + ctx_ids[w0:w1], len(q) + 1, offsets[w0:w1], target))
    return out


class GPTSpanExtractor(GPTWithHead):
    """Start and end logits for every input position: ``(B, T) -> (B, T, 2)`` (chapter 5).

    The input is ``question, sep, context, pad...``; positions that are not context tokens (the
    question, the separator, padding) get a logit of -1e4, so softmax gives them ~0 probability.
    ``targets`` (B, 2) hold the input positions of the answer's first and last token; the loss
    is the mean of the start and end cross-entropies.
    """

    def __init__(self, gpt: GPT, pad_id: int, sep_id: int, dropout: float = 0.0) -> None:
        if pad_id == sep_id:
            raise ValueError("pad_id and sep_id must differ: one ends the input, the other opens the context.")
        super().__init__(gpt, 2, pad_id, dropout)
        self.sep_id = int(sep_id)

    def context_mask(self, x: Tensor) -> Tensor:
        """(B, T) bool: True on the context tokens (after the first separator, not padding)."""
        is_sep = x == self.sep_id
        if not is_sep.any(dim=1).all():
            raise ValueError(f"every row needs the separator (sep_id={self.sep_id}) between question and context.")
        return (is_sep.long().cumsum(1) > 0) & ~is_sep & (x != self.pad_id)

    def forward(self, x: Tensor, targets: Tensor | None = None) -> tuple[Tensor, Tensor | None]:
        mask = self.context_mask(x)
        logits = self.head(self.features(x)).float()
        logits = logits.masked_fill(~mask.unsqueeze(-1), -1e4)
        loss = None
        if targets is not None:
            if targets.shape != (x.shape[0], 2):
                raise ValueError(f"targets must be (B, 2) start/end positions, got {tuple(targets.shape)}.")
            inside = mask.gather(1, targets.clamp(0, x.shape[1] - 1))
            if not inside.all() or (targets[:, 0] > targets[:, 1]).any():
                raise ValueError("every target must be start <= end, both on context tokens of its row.")
            loss = (F.cross_entropy(logits[..., 0], targets[:, 0]) + F.cross_entropy(logits[..., 1], targets[:, 1])) / 2
        return logits, loss


def span_batches(features: Sequence[QAFeature], batch_size: int,
                 pad_id: int) -> Callable[[torch.Generator], tuple[Tensor, Tensor]]:
    """A ``batch_fn(generator) -> (x (B, T), y (B, 2))`` over the features that hold their answer."""
    usable = [f for f in features if f.target is not None]
    if not usable:
        raise ValueError("no feature contains its answer: nothing to train on.")
    return random_batches(len(usable), batch_size, lambda rows: (pad_rows([usable[r].ids for r in rows], pad_id),
                                                                   torch.tensor([usable[r].target for r in rows])))


def best_span(start_logits: Tensor, end_logits: Tensor, max_answer_tokens: int = 30) -> tuple[int, int, float]:
    """The ``(start, end)`` maximising ``start_logits[start] + end_logits[end]``, with
    ``start <= end < start + max_answer_tokens``; returns it and its score."""
    if start_logits.dim() != 1 or start_logits.shape != end_logits.shape:
        raise ValueError(f"need two 1-D logit vectors of one length, got {tuple(start_logits.shape)} and "
                         f"{tuple(end_logits.shape)}.")
    T = start_logits.shape[0]
    score = start_logits[:, None].float() + end_logits[None, :].float()
    i, j = torch.arange(T)[:, None], torch.arange(T)[None, :]
    score = score.masked_fill((j < i) | (j >= i + max_answer_tokens), float("-inf"))
    flat = int(score.argmax())
    return flat // T, flat % T, float(score.flatten()[flat])


@torch.no_grad()
def predict_answers(model: GPTSpanExtractor, features: Sequence[QAFeature], contexts: dict[str, str],
                    batch_size: int = 64, max_answer_tokens: int = 30,
                    with_scores: bool = False) -> dict[str, str] | dict[str, tuple[str, float]]:
    """The best-scoring answer text for each question, over all windows of its context;
    ``with_scores`` gives ``(text, score)`` pairs, the score being the span's start + end logit."""
    with eval_mode(model):
        device = model_device(model)
        best: dict[str, tuple[float, str]] = {}
        for k in range(0, len(features), batch_size):
            chunk = features[k:k + batch_size]
            logits = model(pad_rows([f.ids for f in chunk], model.pad_id).to(device))[0].cpu()
            for f, lg in zip(chunk, logits):
                n = len(f.offsets)
                s, e, score = best_span(lg[f.context_start:f.context_start + n, 0],
                                        lg[f.context_start:f.context_start + n, 1], max_answer_tokens)
                if f.example_id not in best or score > best[f.example_id][0]:
                    text = contexts[f.example_id][f.offsets[s][0]:f.offsets[e][1]].strip()
                    best[f.example_id] = (score, text)
    return {qid: (text, score) if with_scores else text for qid, (score, text) in best.items()}
