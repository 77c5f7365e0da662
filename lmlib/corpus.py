"""From raw Wikipedia to a pretraining corpus: parse, filter, normalize, deduplicate, split.

Derived in chapter 4 ("A pretraining data pipeline"), which runs it on ``enwiki-2018-slice``, the
raw output of WikiExtractor on part of an English Wikipedia dump. The stages follow the published
recipes of web-scale corpora, scaled down:

1. :func:`parse_wikiextractor` turns ``<doc id=.. url=.. title=..>`` records into
   :class:`Article` objects; a malformed record is counted in a :class:`lmlib.data.RowReport`,
   never dropped silently.
2. NFC normalization (SlimPajama): one byte sequence per character, so that equal text is equal.
3. :func:`keep_lines`, C4's line rule: keep only lines that end in terminal punctuation and hold
   at least five words. On WikiExtractor output this removes section headings and the dangling
   "... as follows:" lines whose lists the extractor dropped.
4. :func:`quality_problems`, Gopher's document rules (Rae et al. 2021, appendix A): length, mean
   word length, symbols, alphabetic words, stop words, plus a digit ratio for results tables.
5. Exact duplicates (same normalized text) and near duplicates (MinHash LSH,
   :mod:`lmlib.dedup`), keeping the first of each cluster.
6. A held-out split by document (never by position inside a document).

:func:`clean` runs them in order and returns a :class:`Cleaned` whose :attr:`Cleaned.stages`
table counts documents, words and bytes after each stage, like SlimPajama's table.

API summary
-----------
ENWIKI, ENWIKI_FILES                                the registry name and the 64 files of the slice
Article(id, title, text)                            one parsed record
parse_wikiextractor(text, source='<text>') -> (articles, RowReport)
read_enwiki(n_files=None) -> (articles, reports)    the first n_files files, through lmlib.data.path
keep_lines(text, min_words=5) -> (text, removed)    C4's line rule (TERMINAL punctuation, 5+ words)
QUALITY_RULES, STOP_WORDS                           Gopher's document rules, by name
quality_measures(text) -> dict                      the statistics the rules judge (words, shares, ...)
quality_problems(text) -> list[str]                 the rules a document breaks
words_and_bytes(texts) -> (docs, words, bytes)
clean(articles, n_val, seed=0, threshold=0.8, num_perm=128, examples=3, progress=True) -> Cleaned
held_out(articles, pages) -> list[str]             a held-out split rebuilt from page ids
Cleaned                                             what clean returns: stages, .table(), drops by reason, splits
"""
from __future__ import annotations

import html
import re
import unicodedata
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np

from lmlib.data import RowReport, path
from lmlib.dedup import MinHasher, clusters, exact_duplicates, near_duplicate_pairs

__all__ = [
    "ENWIKI", "ENWIKI_FILES", "Article", "parse_wikiextractor", "read_enwiki", "keep_lines", "TERMINAL",
    "QUALITY_RULES", "STOP_WORDS", "quality_measures", "quality_problems", "Cleaned", "clean", "words_and_bytes", "held_out",
]

ENWIKI = "enwiki-2018-slice"
ENWIKI_FILES = tuple(f"AA/wiki_{i:02d}" for i in range(64))

_HEADER = re.compile(r'<doc id="(\d+)" url="([^"]*)" title="([^"]*)">')


@dataclass(frozen=True)
class Article:
    """One Wikipedia article as WikiExtractor wrote it: page id, title and body (title line removed)."""

    id: int
    title: str
    text: str


def parse_wikiextractor(text: str, source: str = "<text>") -> tuple[list[Article], RowReport]:
    """The articles of one WikiExtractor file, and a report that counts every malformed record.

    A record is ``<doc id="N" url=".." title="T">``, the title on the next line, the body, then
    ``</doc>``. A header that does not parse, a record never closed, and text outside any record
    are rejected by reason (with line numbers); the report's ``lines`` counts records seen.
    """
    report = RowReport(source=source)
    articles: list[Article] = []
    lines = text.split("\n")
    i = 0
    while i < len(lines):
        line = lines[i]
        if not line.strip():
            i += 1
            continue
        if not line.startswith("<doc"):
            report.reject("text outside a <doc> record", i + 1, line)
            i += 1
            continue
        report.lines += 1
        start = i
        end = next((j for j in range(i + 1, len(lines)) if lines[j] == "</doc>" or lines[j].startswith("<doc")), None)
        if end is None or lines[end] != "</doc>":
            report.reject("record never closed by </doc>", start + 1, line)
            i = len(lines) if end is None else end
            continue
        header = _HEADER.fullmatch(line)
        if header is None:
            report.reject("header without id, url and title", start + 1, line)
            i = end + 1
            continue
        body = lines[start + 1:end]
        title = html.unescape(header.group(3))
        if body and body[0].strip() == title.strip():
            body = body[1:]
        articles.append(Article(int(header.group(1)), title, "\n".join(body).strip()))
        report.kept += 1
        i = end + 1
    return articles, report


def read_enwiki(n_files: int | None = None) -> tuple[list[Article], list[RowReport]]:
    """The articles of the first ``n_files`` files of ``enwiki-2018-slice`` (all 64 by default).

    Files come through :func:`lmlib.data.path` (mirror, cache or download, checked by sha256).
    """
    n = len(ENWIKI_FILES) if n_files is None else n_files
    if not 1 <= n <= len(ENWIKI_FILES):
        raise ValueError(f"n_files must be between 1 and {len(ENWIKI_FILES)}, got {n_files}.")
    articles, reports = [], []
    for name in ENWIKI_FILES[:n]:
        found, report = parse_wikiextractor(path(ENWIKI, name).read_text(encoding="utf-8"), source=name)
        articles += found
        reports.append(report)
    return articles, reports


# --- line and document filters ---------------------------------------------------------------------

#: What counts as the end of a sentence for the line rule (C4 also accepts a closing quote).
TERMINAL = (".", "!", "?", '"', "\u201d", "'")


def keep_lines(text: str, min_words: int = 5) -> tuple[str, int]:
    """C4's line rule: the lines that end in :data:`TERMINAL` punctuation and have ``min_words``+ words.

    Returns the kept text and the number of lines removed. Raffel et al. (2020, section 2.2) keep
    only such lines because menus, headings and fragments rarely end a sentence.
    """
    kept, removed = [], 0
    for line in text.split("\n"):
        s = line.strip()
        if not s:
            continue
        if s.endswith(TERMINAL) and len(s.split()) >= min_words:
            kept.append(s)
        else:
            removed += 1
    return "\n".join(kept), removed


#: Gopher's stop words: a real English document holds at least two of them.
STOP_WORDS = frozenset({"the", "be", "to", "of", "and", "that", "have", "with"})

#: Each document rule: its name, what it demands, and where it comes from.
QUALITY_RULES = {
    "too short": "at least 50 words (Gopher)",
    "too long": "at most 100,000 words (Gopher)",
    "odd word length": "mean word length between 3 and 10 characters (Gopher)",
    "symbols": "at most one '#' or '...' per 10 words (Gopher)",
    "few alphabetic words": "at least 80% of words contain a letter (Gopher)",
    "no stop words": "at least 2 of the 8 stop words the, be, to, of, and, that, have, with (Gopher)",
    "digits": "at most 15% of non-space characters are digits (results tables, lists of numbers)",
}


def quality_measures(text: str) -> dict[str, float]:
    """The statistics :func:`quality_problems` judges a document by, so a reader can see why a rule fired.

    ``words`` (whitespace-separated), ``mean_word_length`` (characters), ``symbols_per_word`` ('#',
    '...' and the ellipsis character per word), ``alphabetic_share`` (words that contain a letter),
    ``stop_words`` (how many of :data:`STOP_WORDS` occur) and ``digit_share`` (digits among the
    non-space characters). An empty text has zeros everywhere.
    """
    words = text.split()
    n = len(words)
    if n == 0:
        return dict(words=0, mean_word_length=0.0, symbols_per_word=0.0, alphabetic_share=0.0, stop_words=0,
                    digit_share=0.0)
    chars = sum(map(len, words))
    return dict(
        words=n,
        mean_word_length=chars / n,
        symbols_per_word=(text.count("#") + text.count("...") + text.count("\u2026")) / n,
        alphabetic_share=sum(any(ch.isalpha() for ch in w) for w in words) / n,
        stop_words=len(STOP_WORDS & {w.lower() for w in words}),
        digit_share=sum(ch.isdigit() for ch in text) / chars,
    )


def quality_problems(text: str) -> list[str]:
    """The names of the :data:`QUALITY_RULES` that ``text`` breaks (empty: the document is kept)."""
    m = quality_measures(text)
    problems = []
    if m["words"] < 50:
        problems.append("too short")
    if m["words"] > 100_000:
        problems.append("too long")
    if m["words"] == 0:
        return problems
    if not 3 <= m["mean_word_length"] <= 10:
        problems.append("odd word length")
    if m["symbols_per_word"] > 0.1:
        problems.append("symbols")
    if m["alphabetic_share"] < 0.8:
        problems.append("few alphabetic words")
    if m["stop_words"] < 2:
        problems.append("no stop words")
    if m["digit_share"] > 0.15:
        problems.append("digits")
    return problems


def held_out(articles: Sequence[Article], pages: Sequence[int]) -> list[str]:
    """The cleaned texts of the articles with page ids ``pages`` (in that order): a held-out split
    rebuilt from the raw files without rerunning deduplication (NFC, then the line rule)."""
    by_page = {a.id: a for a in articles}
    missing = [p for p in pages if p not in by_page]
    if missing:
        raise ValueError(f"{len(missing)} held-out page ids are not among the articles (e.g. {missing[:3]}): "
                         "read every file the split was made from.")
    return [keep_lines(unicodedata.normalize("NFC", by_page[p].text))[0] for p in pages]


# --- the pipeline ----------------------------------------------------------------------------------

def words_and_bytes(texts: Iterable[str]) -> tuple[int, int, int]:
    """Documents, words (whitespace-separated) and UTF-8 bytes of ``texts``."""
    docs = words = size = 0
    for t in texts:
        docs += 1
        words += len(t.split())
        size += len(t.encode("utf-8"))
    return docs, words, size


@dataclass
class Cleaned:
    """What :func:`clean` produced.

    ``stages`` is the table: one dict per stage with the documents, words and bytes left after
    it. ``dropped`` maps a reason (a rule name, ``"empty"``, ``"exact duplicate"``, ``"near
    duplicate"``) to up to ``examples`` ``(title, text)`` pairs it removed; ``kept_examples``
    holds documents that passed every rule. ``train`` and ``val`` are the cleaned texts of the
    two splits, ``train_titles`` and ``val_titles`` their titles, ``val_pages`` the page ids of the
    held-out documents (what :func:`held_out` needs to rebuild them from the raw files).
    """

    stages: list[dict] = field(default_factory=list)
    dropped: dict[str, list[tuple[str, str]]] = field(default_factory=dict)
    drop_counts: dict[str, int] = field(default_factory=dict)
    kept_examples: list[tuple[str, str]] = field(default_factory=list)
    train: list[str] = field(default_factory=list)
    val: list[str] = field(default_factory=list)
    train_titles: list[str] = field(default_factory=list)
    val_titles: list[str] = field(default_factory=list)
    val_pages: list[int] = field(default_factory=list)
    near_duplicate_groups: list[list[str]] = field(default_factory=list)

    def table(self) -> list[dict]:
        """The stage table with the share of documents, words and bytes each stage removed."""
        out, prev = [], None
        for row in self.stages:
            r = dict(row)
            for key in ("docs", "words", "bytes"):
                r[f"{key} removed %"] = 0.0 if prev is None or prev[key] == 0 else 100 * (1 - row[key] / prev[key])
            out.append(r)
            prev = row
        return out


def clean(
    articles: Sequence[Article], n_val: int, seed: int = 0, threshold: float = 0.8, num_perm: int = 128,
    examples: int = 3, progress: bool = True,
) -> Cleaned:
    """Run the pipeline of the module docstring on ``articles``; hold out ``n_val`` documents.

    Every stage is counted, and every removal is kept by reason (the first ``examples`` of each).
    Deterministic for a given ``seed`` (the MinHash functions and the held-out draw).
    """
    out = Cleaned()

    def stage(name: str, texts: Sequence[str]) -> None:
        docs, words, size = words_and_bytes(texts)
        out.stages.append(dict(stage=name, docs=docs, words=words, bytes=size))

    def drop(reason: str, title: str, text: str) -> None:
        out.drop_counts[reason] = out.drop_counts.get(reason, 0) + 1
        shown = out.dropped.setdefault(reason, [])
        if len(shown) < examples:
            shown.append((title, text))

    titles = [a.title for a in articles]
    pages = [a.id for a in articles]
    texts = [a.text for a in articles]
    stage("parsed records", texts)

    texts = [unicodedata.normalize("NFC", t) for t in texts]
    stage("NFC normalization", texts)

    def keep(mask: Sequence[bool]) -> None:
        nonlocal titles, pages, texts
        titles = [t for t, m in zip(titles, mask) if m]
        pages = [p for p, m in zip(pages, mask) if m]
        texts = [t for t, m in zip(texts, mask) if m]

    lined = [keep_lines(text)[0] for text in texts]
    for title, text, kept in zip(titles, texts, lined):
        if not kept:
            drop("empty" if not text.strip() else "no sentence lines", title, text)
    texts = lined
    keep([bool(t) for t in lined])
    stage("line filter (C4)", texts)

    mask = []
    for title, text in zip(titles, texts):
        problems = quality_problems(text)
        if problems:
            drop(problems[0], title, text)
        elif len(out.kept_examples) < examples:
            out.kept_examples.append((title, text))
        mask.append(not problems)
    keep(mask)
    stage("quality filters (Gopher)", texts)

    exact = {j for group in exact_duplicates(texts) for j in group[1:]}
    for j in sorted(exact):
        drop("exact duplicate", titles[j], texts[j])
    keep([j not in exact for j in range(len(texts))])
    stage("exact duplicates", texts)

    signatures = MinHasher(num_perm, seed).signatures(texts, progress=progress)
    groups = clusters(len(texts), near_duplicate_pairs(signatures, threshold))
    near = {j for group in groups for j in group[1:]}
    out.near_duplicate_groups = [[titles[j] for j in g] for g in groups]
    for j in sorted(near):
        drop("near duplicate", titles[j], texts[j])
    keep([j not in near for j in range(len(texts))])
    stage("near duplicates (MinHash LSH)", texts)

    if not 0 < n_val < len(texts):
        raise ValueError(f"n_val={n_val} must be between 1 and {len(texts) - 1}: only {len(texts)} documents survived.")
    held = set(np.random.default_rng(seed).permutation(len(texts))[:n_val].tolist())
    for j, (title, page, text) in enumerate(zip(titles, pages, texts)):
        if j in held:
            out.val.append(text)
            out.val_titles.append(title)
            out.val_pages.append(page)
        else:
            out.train.append(text)
            out.train_titles.append(title)
    stage("training split", out.train)
    return out
