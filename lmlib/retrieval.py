"""Retrieval for question answering: BM25 over a pool of paragraphs, and a reader on top.

Derived in chapter 5 ("Applications", notebook 04, the retrieval part of extractive question
answering). A reader that points at an answer span needs the right paragraph; without one it has
nothing to point at. Retrieval-augmented QA finds that paragraph first: score every paragraph of
a pool against the question, keep the top ``k``, and let the reader answer from them.

BM25 (Robertson and Zaragoza 2009) scores a document d for a query q as

    sum over the query's terms t of  idf(t) * tf(t, d) / (tf(t, d) + k1 * (1 - b + b * |d| / avgdl))

with ``tf`` the term's count in d, ``|d|`` the document's length in terms, ``avgdl`` the mean
length, and ``idf(t) = log(1 + (N - n_t + 0.5) / (n_t + 0.5))`` for N documents, n_t of them
holding t (Lucene's idf, which never goes negative). ``k1`` bounds what repeating a term can add
(the tf part saturates at 1), ``b`` how much a long document is discounted. Textbooks often
multiply the tf part by ``k1 + 1``; that scales every score alike and changes no ranking, and the
form above is the one Lucene and the ``bm25s`` library use, which the tests compare with.

API summary
-----------
terms(text) -> [str]                lowercase word terms (``\\w+``): what BM25 counts
BM25(documents, k1=1.5, b=0.75)     ``documents`` are term lists
    .scores(query) -> (N,) float64 tensor    .top_k(query, k) -> [(document index, score)] best first
    .idf(term)                        .n_documents  .avgdl
overlap_scores(query, index) -> (N,) tensor   the number of distinct query terms each document of a BM25 index holds
recall_at_k(rankings, gold, ks) -> {k: share}     rankings: {question: [document index, ...] best first}
read_retrieved(reader, tokenizer, sep_id, examples, paragraphs, max_len, batch_size=64) -> {question id: answer}
    the extractive reader of :mod:`lmlib.spans` over several paragraphs per question: the best
    span of any of them (``paragraphs``: {question id: [paragraph text, ...]})
"""
from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Mapping, Sequence

import torch

from lmlib.spans import GPTSpanExtractor, SquadExample, predict_answers, qa_features

__all__ = ["terms", "BM25", "overlap_scores", "recall_at_k", "read_retrieved"]

_WORD = re.compile(r"\w+")


def terms(text: str) -> list[str]:
    """The terms BM25 counts in ``text``: its lowercase runs of letters, digits and underscores."""
    if not isinstance(text, str):
        raise ValueError(f"terms takes a text (str), got {type(text).__name__}.")
    return _WORD.findall(text.lower())


def _check_documents(documents: Sequence[Sequence[str]]) -> list[list[str]]:
    if not documents:
        raise ValueError("need at least one document to search.")
    bad = next((i for i, d in enumerate(documents)
                if isinstance(d, str) or any(not isinstance(t, str) for t in d)), None)
    if bad is not None:
        raise ValueError(f"document {bad} is not a list of terms (str); split texts with lmlib.retrieval.terms first.")
    return [list(d) for d in documents]


class BM25:
    """An inverted index over ``documents`` (term lists) that ranks them for a query with BM25.

    The postings map each term to the documents that hold it and its count there, so scoring a
    query touches only the documents that share a term with it.
    """

    def __init__(self, documents: Sequence[Sequence[str]], k1: float = 1.5, b: float = 0.75) -> None:
        if not (k1 >= 0 and 0 <= b <= 1):
            raise ValueError(f"BM25 needs k1 >= 0 and 0 <= b <= 1, got k1={k1!r}, b={b!r}.")
        documents = _check_documents(documents)
        self.k1, self.b = float(k1), float(b)
        self.lengths = torch.tensor([len(d) for d in documents], dtype=torch.float64)
        self.n_documents = len(documents)
        self.avgdl = float(self.lengths.mean()) or 1.0  # all-empty documents: any positive value
        self.postings: dict[str, list[tuple[int, int]]] = {}
        for i, d in enumerate(documents):
            for term, count in Counter(d).items():
                self.postings.setdefault(term, []).append((i, count))

    def idf(self, term: str) -> float:
        """``log(1 + (N - n + 0.5) / (n + 0.5))`` for a term held by n of the N documents."""
        n = len(self.postings.get(term, ()))
        return math.log(1 + (self.n_documents - n + 0.5) / (n + 0.5))

    def scores(self, query: Sequence[str]) -> torch.Tensor:
        """The BM25 score of every document for ``query`` (a term list; a repeated term counts again)."""
        if isinstance(query, str):
            raise ValueError("the query must be a list of terms; split it with lmlib.retrieval.terms first.")
        out = torch.zeros(self.n_documents, dtype=torch.float64)
        norm = self.k1 * (1 - self.b + self.b * self.lengths / self.avgdl)
        for term in query:
            hits = self.postings.get(term)
            if hits:
                docs = torch.tensor([d for d, _ in hits])
                tf = torch.tensor([c for _, c in hits], dtype=torch.float64)
                out[docs] += self.idf(term) * tf / (tf + norm[docs])
        return out

    def top_k(self, query: Sequence[str], k: int) -> list[tuple[int, float]]:
        """The ``k`` best documents for ``query`` as ``(index, score)``, best first (ties: lower index)."""
        if not isinstance(k, int) or k < 1:
            raise ValueError(f"k must be a positive integer, got {k!r}.")
        scores = self.scores(query)
        order = torch.sort(-scores, stable=True).indices[:k]
        return [(int(i), float(scores[i])) for i in order]


def overlap_scores(query: Sequence[str], index: BM25) -> torch.Tensor:
    """The baseline BM25 improves on, from the same index: how many distinct query terms each
    document holds, every term counting alike however common, every document alike however long."""
    if isinstance(query, str):
        raise ValueError("the query must be a list of terms; split it with lmlib.retrieval.terms first.")
    out = torch.zeros(index.n_documents, dtype=torch.float64)
    for term in set(query):
        out[[d for d, _ in index.postings.get(term, ())]] += 1
    return out


def recall_at_k(rankings: Mapping[str, Sequence[int]], gold: Mapping[str, int], ks: Sequence[int]) -> dict[int, float]:
    """For each k, the share of questions whose gold document is among their first k ranked ones."""
    missing = [q for q in gold if q not in rankings]
    if not gold or missing:
        raise ValueError(f"need a ranking for every gold question; missing: {missing[:3]}" if missing
                         else "recall_at_k needs at least one question.")
    return {k: sum(gold[q] in list(rankings[q])[:k] for q in gold) / len(gold) for k in ks}


@torch.no_grad()
def read_retrieved(reader: GPTSpanExtractor, tokenizer, sep_id: int, examples: Sequence[SquadExample],
                   paragraphs: Mapping[str, Sequence[str]], max_len: int, batch_size: int = 64) -> dict[str, str]:
    """The reader's answer to each question from its retrieved ``paragraphs`` (question id -> texts).

    Every window of every paragraph is scored as in :func:`lmlib.spans.predict_answers`, and the
    answer is the best-scoring span of them all: the start and end logits of spans in different
    paragraphs are compared as they are, the simplest rule (a reader trained on one paragraph
    per question was never taught to make them comparable).
    """
    features, contexts = [], {}
    for ex in examples:
        if not paragraphs.get(ex.id):
            raise ValueError(f"question {ex.id!r} has no paragraph to read; retrieve at least one.")
        for j, text in enumerate(paragraphs[ex.id]):
            key = f"{ex.id}\t{j}"
            contexts[key] = text
            features += qa_features(tokenizer, SquadExample(key, ex.title, text, ex.question, [], []), sep_id, max_len)
    found = predict_answers(reader, features, contexts, batch_size, with_scores=True)
    best: dict[str, tuple[float, str]] = {}
    for key, (text, score) in found.items():
        qid = key.rsplit("\t", 1)[0]
        if qid not in best or score > best[qid][0]:
            best[qid] = (score, text)
    return {qid: text for qid, (_, text) in best.items()}
