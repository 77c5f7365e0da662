"""Tokenizers: text to integer ids and back.

The character tokenizer and the word vocabulary are derived in chapter 1 ("What a language
model is", "N-gram models"); chapter 4 ("Tokenization") adds a word tokenizer and a byte-level BPE
written from scratch, and loads OpenAI's GPT-2 merges into that same BPE; chapter 5's translation
model uses the word vocabulary with its own special tokens.

API summary
-----------
check_ids(ids, vocab_size) -> list[int]        ids to decode as plain ints, each checked in [0, vocab_size)
CharTokenizer(chars)                           .from_text(text) .encode(text) .decode(ids) .vocab_size
UNK = "<unk>"
Vocab(words, specials=("<unk>",), unk="<unk>")  words to ids and back, the special tokens first
    .from_words(words, min_count=1, max_size=None, specials=("<unk>",), unk="<unk>")
    .encode(words, unknown="unk") -> Tensor  .encode_list(words, unknown="unk") -> list[int]
    .decode(ids) -> list[str]  .itos  .stoi  .unk  .vocab_size
pretokenize(text, pattern=PRETOKENIZE) -> list[str]   GPT-2-style pieces: words with their leading space
GPT2_PRETOKENIZE                               GPT-2's own pattern (Unicode classes: compiled with `regex`)
gpt2_byte_to_unicode() -> dict[int, str]       GPT-2's printable stand-in character for each byte
WordTokenizer(words)                           .from_text(text, max_vocab=None) .encode(text) .decode(ids)
merge_pair(ids, pair, new_id) -> list[int]
ByteBPE(merges=(), special_tokens=(), pattern=PRETOKENIZE, byte_order=None)
    .train(text, vocab_size, special_tokens=(), pattern=PRETOKENIZE, progress=True)
    .from_gpt2(encoder_json=None, vocab_bpe=None)   GPT-2's tokenizer, ids and all
    .encode(text) -> Tensor  .encode_list(text) -> list[int]  .decode(ids) -> str  .pieces(text)
    .save(path)  .load(path)  .vocab  .merges  .byte_order  .special_tokens  .vocab_size
"""
from __future__ import annotations

import heapq
import json
import numbers
import re
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import regex
import torch

from lmlib import data

__all__ = [
    "check_ids", "CharTokenizer", "UNK", "Vocab", "PRETOKENIZE", "GPT2_PRETOKENIZE", "pretokenize", "gpt2_byte_to_unicode",
    "WordTokenizer", "merge_pair", "ByteBPE",
]


def check_ids(ids: Iterable[int] | torch.Tensor, vocab_size: int) -> list[int]:
    """``ids`` (a 1-D tensor or array, or an iterable of integers) as plain ints in [0, ``vocab_size``).

    Every tokenizer's ``decode`` starts here, so that a negative id is an error rather than
    Python's count from the end, and a float id an error rather than a truncated one.
    """
    if isinstance(ids, (str, bytes)) or not isinstance(ids, (Iterable, torch.Tensor)):
        raise TypeError(f"decode takes a sequence of integer token ids, got {type(ids).__name__} {ids!r:.40}; "
                        "for one id write decode([i]).")
    if hasattr(ids, "dtype") and hasattr(ids, "tolist"):  # a tensor or a NumPy array
        if getattr(ids, "ndim", 1) > 1:
            raise ValueError(f"decode takes one sequence (1-D), got shape {tuple(ids.shape)}; decode each row.")
        kind = str(ids.dtype)
        if any(word in kind for word in ("float", "complex", "bool")):
            raise TypeError(f"token ids must be integers, got an array of dtype {kind}; convert whole-number "
                            "ids with .long() (a tensor) or .astype(int) (an array).")
        out = ids.tolist()  # plain ints
        out = [out] if isinstance(out, int) else out  # a 0-d tensor: one id
    else:
        out = list(ids)
        for pos, i in enumerate(out):
            if type(i) is not int:
                if isinstance(i, torch.Tensor) and i.dim() == 0 and not (i.is_floating_point() or i.is_complex()
                                                                         or i.dtype == torch.bool):
                    out[pos] = int(i)  # one id taken out of a tensor, such as ids[t]
                    continue
                if not isinstance(i, numbers.Integral) or isinstance(i, bool):
                    raise TypeError(f"token ids must be integers, got {i!r} ({type(i).__name__}) at position "
                                    f"{pos}; round or convert the ids to int first.")
                out[pos] = int(i)
    if out and not 0 <= min(out) <= max(out) < vocab_size:
        bad = sorted({i for i in out if not 0 <= i < vocab_size})
        raise ValueError(f"token ids {bad[:5]} are outside the vocabulary [0, {vocab_size}); were they made "
                         "by another tokenizer?")
    return out


class CharTokenizer:
    """One id per distinct character of a training text, in sorted order (ids are stable)."""

    def __init__(self, chars: Iterable[str]):
        self.chars = sorted(set(chars))
        if not self.chars:
            raise ValueError("CharTokenizer needs at least one character; got an empty text.")
        self.stoi = {c: i for i, c in enumerate(self.chars)}

    @classmethod
    def from_text(cls, text: str) -> "CharTokenizer":
        return cls(text)

    @property
    def vocab_size(self) -> int:
        return len(self.chars)

    def encode(self, text: str) -> torch.Tensor:
        """Ids of ``text`` as a 1-D int64 tensor; a character outside the vocabulary is an error."""
        try:
            return torch.tensor([self.stoi[c] for c in text], dtype=torch.long)
        except KeyError as err:
            raise ValueError(
                f"Character {err.args[0]!r} is not in this tokenizer's vocabulary of "
                f"{self.vocab_size} characters (it was built from a text without it)."
            ) from None

    def decode(self, ids: Iterable[int] | torch.Tensor) -> str:
        """The text of ``ids``; an id outside [0, vocab_size) or not an integer is an error."""
        chars = self.chars
        return "".join(chars[i] for i in check_ids(ids, self.vocab_size))

    def __repr__(self) -> str:
        return f"CharTokenizer(vocab_size={self.vocab_size})"


# --- Chapter 4: words and byte-level BPE ---------------------------------------------------------

UNK = "<unk>"


class Vocab:
    """Words to integer ids and back: the special tokens first, then the words, most frequent first.

    A word outside the vocabulary maps to the ``unk`` special (or raises, with
    ``unknown="error"``). Chapter 1 builds one over WikiText-2 for the n-gram and recurrent models,
    :class:`WordTokenizer` wraps one, and chapter 5's translation model adds ``<pad>``, ``<bos>``
    and ``<eos>`` as specials (:func:`lmlib.seq2seq.translation_vocab`).
    """

    def __init__(self, words: Iterable[str], specials: Sequence[str] = (UNK,), unk: str = UNK):
        words, specials = list(words), tuple(specials)
        if unk not in specials:
            raise ValueError(f"unk={unk!r} must be one of the specials {specials}.")
        clash = set(words) & set(specials)
        if clash:
            raise ValueError(f"{sorted(clash)} are reserved for the special tokens; remove them from words.")
        self.specials = specials
        self.itos = list(specials) + words
        self.stoi = {w: i for i, w in enumerate(self.itos)}
        if len(self.stoi) != len(self.itos):
            raise ValueError("Vocab words must be distinct: pass each word once.")
        self.unk = self.stoi[unk]

    @classmethod
    def from_words(cls, words: Iterable[str], min_count: int = 1, max_size: int | None = None,
                   specials: Sequence[str] = (UNK,), unk: str = UNK) -> Vocab:
        """The words seen at least ``min_count`` times, most frequent first (ties alphabetically).

        ``max_size`` caps the number of words (the specials come on top). A special that occurs in
        the text (WikiText-2 writes ``<unk>`` for its rare words) keeps its special id.
        """
        if min_count < 1 or (max_size is not None and max_size < 1):
            raise ValueError(f"min_count and max_size must be >= 1, got {min_count} and {max_size}.")
        counts = Counter(words)
        if not counts:
            raise ValueError("Cannot build a vocabulary from an empty corpus: pass some words.")
        for special in specials:
            counts.pop(special, None)
        kept = sorted((w for w, n in counts.items() if n >= min_count), key=lambda w: (-counts[w], w))
        return cls(kept[:max_size], specials, unk)

    @property
    def vocab_size(self) -> int:
        return len(self.itos)

    def __len__(self) -> int:
        return len(self.itos)

    def __repr__(self) -> str:
        return f"Vocab({len(self):,} entries, specials {list(self.specials)})"

    def encode_list(self, words: Sequence[str], unknown: str = "unk") -> list[int]:
        """Word ids as a list; ``unknown`` is ``"unk"`` (map to the unk id) or ``"error"``."""
        if unknown == "error":
            missing = [w for w in dict.fromkeys(words) if w not in self.stoi]
            if missing:
                raise KeyError(
                    f"{len(missing)} word(s) are not in the vocabulary, e.g. {missing[:5]}; "
                    "build the vocabulary from this text or use unknown='unk' to map them to <unk>."
                )
        elif unknown != "unk":
            raise ValueError(f"unknown must be 'unk' or 'error', got {unknown!r}.")
        get, unk = self.stoi.get, self.unk
        return [get(w, unk) for w in words]

    def encode(self, words: Sequence[str], unknown: str = "unk") -> torch.Tensor:
        """Word ids as a 1-D int64 tensor (like the other tokenizers); see :meth:`encode_list`."""
        return torch.tensor(self.encode_list(words, unknown), dtype=torch.int64)

    def decode(self, ids: Iterable[int] | torch.Tensor) -> list[str]:
        """The words of ``ids`` (special tokens included, as they are)."""
        itos = self.itos
        return [itos[i] for i in check_ids(ids, len(itos))]


#: Pre-tokenization in the style of GPT-2, written for Python's standard ``re``: English
#: contractions, then runs of letters, of digits, or of other symbols (each may carry one leading
#: space), then whitespace. A merge never crosses a piece boundary, so " the" and "the," stay
#: separate words. The last alternative catches any character the others miss, so pieces always
#: concatenate back to the input.
PRETOKENIZE = r"""'(?:[sdmt]|ll|ve|re)| ?[^\W\d_]+| ?\d+| ?(?:[^\s\w]|_)+|\s+(?!\S)|\s+|[\s\S]"""

#: GPT-2's own pattern, from OpenAI's ``encoder.py``: the same idea, with lower-case contractions
#: only and Unicode classes (``\p{L}`` letters, ``\p{N}`` numbers) that Python's ``re`` lacks.
GPT2_PRETOKENIZE = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""


def _compile_pattern(pattern: str) -> re.Pattern | regex.Pattern:
    r"""A pre-tokenization pattern, compiled by ``re``, or by ``regex`` when it uses Unicode classes.

    The course's own patterns keep Python's ``re`` (so training gives the same merges as always);
    a pattern with ``\p{...}`` (GPT-2's) needs the ``regex`` package, which reads them.
    """
    uses_classes = "\\p{" in pattern or "\\P{" in pattern
    return (regex if uses_classes else re).compile(pattern)


#: Text a pre-tokenization pattern must split into pieces that join back to it: letters, digits,
#: spaces, punctuation, newlines, tabs and non-ASCII characters (accents, CJK, an emoji, a
#: combining mark, a no-break space, a control character).
_PATTERN_PROBE = (
    "Hello, World! It's 42 o'clock -- isn't it?\n\n  Tabs\tand   spaces;  trailing  \r\n"
    "(x_1 + y[2]) * {z} / 3.14 = $5 & 100% @home #tag ~`^\"|\\<>\n"
    "café naïve Ünïcödé ñ 日本語 Здравствуй مرحبا ٣ e\u0301 \u00a0nbsp \u200bzw 😀 \x00\x7f end"
)


def _checked_pattern(pattern: str) -> re.Pattern | regex.Pattern:
    """``pattern`` compiled, if its pieces always join back to the text; a clear error otherwise."""
    if not isinstance(pattern, str):
        raise TypeError(f"the pre-tokenization pattern must be a regular expression (str), got {type(pattern).__name__}.")
    try:
        compiled = _compile_pattern(pattern)
    except (re.error, regex.error) as err:
        raise ValueError(f"the pre-tokenization pattern {pattern!r} is not a valid regular expression ({err}).") from None
    if compiled.groups:
        raise ValueError(
            f"the pre-tokenization pattern {pattern!r} has capturing groups, so findall would return the "
            "groups instead of the pieces; write its groups as (?:...)."
        )
    covered = [False] * len(_PATTERN_PROBE)
    for match in compiled.finditer(_PATTERN_PROBE):
        covered[match.start():match.end()] = [True] * (match.end() - match.start())
    if not all(covered):
        lost = list(dict.fromkeys(ch for ch, ok in zip(_PATTERN_PROBE, covered) if not ok))
        raise ValueError(
            f"the pre-tokenization pattern {pattern!r} drops characters: on a test text its pieces do not "
            f"join back to the text (lost e.g. {lost[:8]}), so encoding would lose text. End the pattern "
            "with an alternative that matches any character, such as |[\\s\\S], or use the default PRETOKENIZE."
        )
    return compiled


def _special_list(special_tokens: Iterable[str]) -> list[str]:
    """The special tokens as a list of distinct non-empty strings, in the order given."""
    if isinstance(special_tokens, (str, bytes, Mapping)) or not isinstance(special_tokens, Iterable):
        raise TypeError(
            f"special_tokens must be a list of strings such as ['<|endoftext|>'], got {type(special_tokens).__name__} "
            f"{special_tokens!r:.60}; their ids follow the merges, in the order of the list."
        )
    specials = list(dict.fromkeys(special_tokens))
    bad = [t for t in specials if not isinstance(t, str) or not t]
    if bad:
        raise ValueError(f"special tokens must be non-empty strings, got {bad[:3]!r}.")
    return specials


def pretokenize(text: str, pattern: str = PRETOKENIZE) -> list[str]:
    """Split ``text`` into the pieces that BPE merges within (chapter 4, "Tokenization")."""
    return _compile_pattern(pattern).findall(text)


def gpt2_byte_to_unicode() -> dict[int, str]:
    """GPT-2's stand-in character for each byte, the alphabet its token files are written in.

    Printable bytes stand for themselves (``"!"`` to ``"~"``, ``"¡"`` to ``"¬"``, ``"®"`` to ``"ÿ"``);
    the other 68 (space, newline, control bytes...) get U+0100 onwards in byte order, so the
    space 0x20 is written ``"Ġ"`` and the newline 0x0A ``"Ċ"``. GPT-2 numbers its 256 byte
    tokens in this order: printable bytes first.
    """
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    others = [b for b in range(256) if b not in printable]
    return {b: chr(b) for b in printable} | {b: chr(256 + k) for k, b in enumerate(others)}


class WordTokenizer:
    """One id per frequent pre-token (a word with its leading space, a number, a symbol run).

    The middle ground of chapter 4: short sequences, but a fixed vocabulary cannot cover every word,
    so rare and unseen pieces become ``<unk>`` and decoding loses them.
    """

    UNK = UNK

    def __init__(self, words: Iterable[str]):
        self.vocab = Vocab(sorted(set(words) - {UNK}))  # <unk> is id 0
        self.words, self.stoi = self.vocab.itos, self.vocab.stoi

    @classmethod
    def from_text(cls, text: str, max_vocab: int | None = None) -> "WordTokenizer":
        if max_vocab is not None and max_vocab < 1:
            raise ValueError(f"max_vocab must be at least 1 (room for <unk>), got {max_vocab}.")
        counts = Counter(pretokenize(text))
        keep = counts.most_common(None if max_vocab is None else max_vocab - 1)
        return cls(w for w, _ in keep)

    @property
    def vocab_size(self) -> int:
        return len(self.words)

    def encode(self, text: str) -> torch.Tensor:
        return self.vocab.encode(pretokenize(text))

    def decode(self, ids: Iterable[int] | torch.Tensor) -> str:
        return "".join(self.vocab.decode(ids))

    def __repr__(self) -> str:
        return f"WordTokenizer(vocab_size={self.vocab_size})"


def merge_pair(ids: list[int], pair: tuple[int, int], new_id: int) -> list[int]:
    """Replace every occurrence of ``pair`` in ``ids``, left to right, by ``new_id``.

    Occurrences do not overlap: in ``[a, a, a]`` the pair ``(a, a)`` merges once, at the left.
    """
    out, i, n = [], 0, len(ids)
    a, b = pair
    while i < n:
        if i + 1 < n and ids[i] == a and ids[i + 1] == b:
            out.append(new_id)
            i += 2
        else:
            out.append(ids[i])
            i += 1
    return out


class ByteBPE:
    """Byte-level byte-pair encoding (chapter 4, "Tokenization").

    The base vocabulary is the 256 byte values, so every string (any Unicode) has an encoding and
    decodes back exactly. Training repeatedly merges the most frequent adjacent pair of ids into
    a new id; ``merges[k]`` is the pair that became id ``256 + k``. Special tokens such as
    ``"<|endoftext|>"`` get the ids after the merges and are never split.

    Ids 0 to 255 are the bytes: by default id ``i`` is byte ``i``. A tokenizer trained elsewhere
    may number them in another order; ``byte_order[i]`` is then the byte that id ``i`` stands for
    (GPT-2 puts the printable bytes first: :meth:`from_gpt2`). Only the first step of encoding,
    bytes to ids, and the vocabulary's single bytes depend on it; merges work on ids as always.
    """

    FORMAT = "lmlib-bytebpe"
    VERSION = 2  # version 2 added "byte_order"; version 1 files (byte i = id i) still load

    def __init__(
        self,
        merges: Iterable[tuple[int, int]] = (),
        special_tokens: Iterable[str] = (),
        pattern: str = PRETOKENIZE,
        byte_order: Iterable[int] | None = None,
    ):
        self.merges = [tuple(int(x) for x in m) for m in merges]
        self.pattern = pattern
        self._compiled = _checked_pattern(pattern)
        self.byte_order = list(range(256)) if byte_order is None else [int(b) for b in byte_order]
        if sorted(self.byte_order) != list(range(256)):
            raise ValueError(
                f"byte_order must list each of the 256 byte values once (got {len(self.byte_order)} "
                "values): byte_order[i] is the byte that id i stands for."
            )
        self.id_of_byte = [0] * 256  # the inverse: id_of_byte[b] is the id of byte b
        for i, b in enumerate(self.byte_order):
            self.id_of_byte[b] = i
        self.vocab = [bytes([b]) for b in self.byte_order]
        self.ranks: dict[tuple[int, int], int] = {}
        for k, merge in enumerate(self.merges):
            new_id = 256 + k
            if len(merge) != 2:
                raise ValueError(f"Merge {k} is {merge}; a merge is a pair of ids: the merge list is corrupt.")
            a, b = merge
            if not (0 <= a < new_id and 0 <= b < new_id):
                raise ValueError(
                    f"Merge {k} is {(a, b)}, but merge {k} may only join ids below {new_id} "
                    "(the 256 bytes and the earlier merges): the merge list is corrupt."
                )
            self.ranks[(a, b)] = new_id
            self.vocab.append(self.vocab[a] + self.vocab[b])
        specials = _special_list(special_tokens)
        self.special_tokens = {s: len(self.vocab) + i for i, s in enumerate(specials)}
        self._special_of_id = {i: s for s, i in self.special_tokens.items()}
        self._special_re = (
            re.compile("(" + "|".join(re.escape(s) for s in sorted(specials, key=len, reverse=True)) + ")")
            if specials else None
        )
        self._cache: dict[str, tuple[int, ...]] = {}

    # -- training -------------------------------------------------------------------------------

    @classmethod
    def train(
        cls,
        text: str,
        vocab_size: int,
        special_tokens: Iterable[str] = (),
        pattern: str = PRETOKENIZE,
        progress: bool = True,
    ) -> "ByteBPE":
        """Learn ``vocab_size - 256 - len(special_tokens)`` merges from ``text``.

        Training works on the table of distinct pre-tokens and their counts, not on the running
        text, and keeps the count of every adjacent pair up to date: a merge re-counts only the
        words that contain the merged pair. A heap with lazy deletion finds the most frequent
        pair; ties go to the smallest pair of ids, so training is deterministic.
        """
        from tqdm.auto import tqdm

        specials = _special_list(special_tokens)
        _checked_pattern(pattern)
        n_merges = vocab_size - 256 - len(specials)
        if n_merges < 0:
            raise ValueError(
                f"vocab_size={vocab_size} is too small: a byte-level BPE needs 256 byte tokens plus "
                f"{len(specials)} special token(s). Use vocab_size >= {256 + len(specials)}."
            )
        if specials:  # special tokens in the training text are boundaries, not text to learn from
            text = re.sub("|".join(re.escape(s) for s in specials), " ", text)
        counts = Counter(pretokenize(text, pattern))
        words = [list(w.encode("utf-8")) for w in counts]
        freqs = list(counts.values())
        pair_counts: dict[tuple[int, int], int] = defaultdict(int)
        where: dict[tuple[int, int], set[int]] = defaultdict(set)
        for wi, w in enumerate(words):
            for p in zip(w, w[1:]):
                pair_counts[p] += freqs[wi]
                where[p].add(wi)
        heap = [(-c, p) for p, c in pair_counts.items()]
        heapq.heapify(heap)
        merges: list[tuple[int, int]] = []
        for new_id in tqdm(range(256, 256 + n_merges), desc="BPE merges", disable=not progress, leave=False):
            while heap:
                neg, pair = heapq.heappop(heap)
                if pair_counts.get(pair, 0) == -neg:
                    break
            else:
                break  # every word is a single token: nothing left to merge
            merges.append(pair)
            touched = set()
            for wi in where.pop(pair):
                w, f = words[wi], freqs[wi]
                for p in zip(w, w[1:]):
                    pair_counts[p] -= f
                    touched.add(p)
                w = words[wi] = merge_pair(w, pair, new_id)
                for p in zip(w, w[1:]):
                    pair_counts[p] += f
                    where[p].add(wi)
                    touched.add(p)
            for p in touched:
                c = pair_counts[p]
                if c > 0:
                    heapq.heappush(heap, (-c, p))
                else:
                    del pair_counts[p]
        return cls(merges, specials, pattern)

    # -- GPT-2's tokenizer ------------------------------------------------------------------------

    @classmethod
    def from_gpt2(cls, encoder_json: str | Path | None = None, vocab_bpe: str | Path | None = None) -> "ByteBPE":
        """OpenAI's GPT-2 tokenizer as a ``ByteBPE``: the same ids for every text, and back.

        GPT-2's tokenizer is a byte-level BPE like ours, published as two files (by default the
        registry's ``gpt2-tokenizer``, through :func:`lmlib.data.path`): ``vocab.bpe`` lists the
        50,000 merges in the order they were learned, and ``encoder.json`` gives every token's id.
        Both spell tokens in GPT-2's printable byte alphabet (:func:`gpt2_byte_to_unicode`).
        GPT-2 numbers its byte tokens in that alphabet's order, which becomes ``byte_order``; the
        merge on line ``k`` makes id ``256 + k``, exactly as in a ``ByteBPE`` (checked against
        ``encoder.json``), and ``<|endoftext|>`` takes the next id, 50256.
        """
        encoder_json = Path(encoder_json) if encoder_json is not None else data.path("gpt2-tokenizer", "encoder.json")
        vocab_bpe = Path(vocab_bpe) if vocab_bpe is not None else data.path("gpt2-tokenizer", "vocab.bpe")
        for file in (encoder_json, vocab_bpe):
            if not file.is_file():
                raise FileNotFoundError(f"No GPT-2 tokenizer file at {file}; leave the argument out to use "
                                        "the course's copy (lmlib.data.path('gpt2-tokenizer', ...)).")
        try:
            encoder = json.loads(encoder_json.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise ValueError(f"{encoder_json} is not GPT-2's encoder.json (not JSON: {err}).") from None
        lines = vocab_bpe.read_text(encoding="utf-8").splitlines()
        lines = [line for line in lines if line and not line.startswith("#version")]

        def id_of(token: str) -> int:
            if token not in encoder:
                raise ValueError(f"{vocab_bpe} names the token {token!r}, which {encoder_json} does not list: "
                                 "pass the encoder.json and vocab.bpe of the same tokenizer.")
            return encoder[token]

        byte_of = {ch: b for b, ch in gpt2_byte_to_unicode().items()}
        by_id = {i: token for token, i in encoder.items()}
        try:
            byte_order = [byte_of[by_id[i]] for i in range(256)]
        except KeyError:
            raise ValueError(f"{encoder_json} does not give ids 0-255 to the 256 single bytes, as GPT-2's "
                             "encoder.json does.") from None
        merges = []
        for k, line in enumerate(lines):
            pair = line.split(" ")
            if len(pair) != 2:
                raise ValueError(f"Line {k + 2} of {vocab_bpe} is {line!r}; each line holds two tokens "
                                 "separated by one space.")
            a, b = pair
            if id_of(a + b) != 256 + k:
                raise ValueError(f"{encoder_json} gives the merge {a!r} + {b!r} (line {k + 2} of {vocab_bpe}) "
                                 f"id {id_of(a + b)}, not {256 + k}: the two files do not belong together.")
            merges.append((id_of(a), id_of(b)))
        special = "<|endoftext|>"
        if encoder.get(special) != 256 + len(merges) or len(encoder) != 257 + len(merges):
            raise ValueError(f"{encoder_json} should list {257 + len(merges)} tokens, the last {special!r} "
                             f"with id {256 + len(merges)}; it lists {len(encoder)}, {special!r} at "
                             f"{encoder.get(special)}.")
        return cls(merges, [special], GPT2_PRETOKENIZE, byte_order)

    # -- encoding and decoding ------------------------------------------------------------------

    @property
    def vocab_size(self) -> int:
        return len(self.vocab) + len(self.special_tokens)

    def _encode_piece(self, piece: str) -> tuple[int, ...]:
        cached = self._cache.get(piece)
        if cached is not None:
            return cached
        id_of_byte = self.id_of_byte
        ids = [id_of_byte[b] for b in piece.encode("utf-8")]
        while len(ids) > 1:
            # apply the earliest-learned merge present, exactly as training would have
            pair = min(zip(ids, ids[1:]), key=lambda p: self.ranks.get(p, 1 << 62))
            if pair not in self.ranks:
                break
            ids = merge_pair(ids, pair, self.ranks[pair])
        if len(self._cache) > 200_000:
            self._cache.clear()
        out = self._cache[piece] = tuple(ids)
        return out

    def encode_list(self, text: str) -> list[int]:
        """Ids of ``text`` as a Python list (special tokens in the text map to their ids)."""
        if not isinstance(text, str):
            raise TypeError(f"encode expects a str, got {type(text).__name__}; decode bytes first.")
        out: list[int] = []
        parts = self._special_re.split(text) if self._special_re else [text]
        try:
            for k, part in enumerate(parts):
                if k % 2 == 1:  # re.split with one group puts the separators at odd positions
                    out.append(self.special_tokens[part])
                    continue
                pieces = self._compiled.findall(part)
                if sum(map(len, pieces)) != len(part):  # pieces are in order: equal length = all covered
                    raise ValueError(
                        f"the pre-tokenization pattern {self.pattern!r} does not cover every character of "
                        f"{part[:40]!r}; encoding would drop text. Use a pattern that matches any character."
                    )
                for piece in pieces:
                    out.extend(self._encode_piece(piece))
        except UnicodeEncodeError:
            pos = next(i for i, ch in enumerate(text) if "\ud800" <= ch <= "\udfff")
            raise ValueError(
                f"the text holds an unpaired surrogate {text[pos]!r} at position {pos}, which is not a "
                "character and has no UTF-8 bytes; it usually comes from decoding with errors='surrogateescape' "
                "or a broken UTF-16 source. Remove it or replace it (text.encode('utf-8', "
                "'replace').decode()) first."
            ) from None
        return out

    def encode(self, text: str) -> torch.Tensor:
        """Ids of ``text`` as a 1-D int64 tensor (like :class:`CharTokenizer`)."""
        return torch.tensor(self.encode_list(text), dtype=torch.long)

    def decode_bytes(self, ids: Iterable[int] | torch.Tensor) -> bytes:
        """The bytes of ``ids`` (a special token as its UTF-8 text)."""
        out = []
        n, vocab = len(self.vocab), self.vocab
        for i in check_ids(ids, self.vocab_size):
            out.append(vocab[i] if i < n else self._special_of_id[i].encode("utf-8"))
        return b"".join(out)

    def decode(self, ids: Iterable[int] | torch.Tensor) -> str:
        """The text of ``ids``. A slice that cuts a multi-byte character shows U+FFFD there."""
        return self.decode_bytes(ids).decode("utf-8", errors="replace")

    def pieces(self, text: str) -> list[str]:
        """The tokens of ``text`` as strings, to look at (partial characters shown as U+FFFD)."""
        return [self.decode([i]) for i in self.encode_list(text)]

    # -- saving and loading ---------------------------------------------------------------------

    def save(self, path: str | Path) -> None:
        """Write the tokenizer as JSON: format, version, pattern, byte order, merges, special tokens."""
        fields = {
            "format": self.FORMAT,
            "version": self.VERSION,
            "pattern": self.pattern,
            "byte_order": self.byte_order,
            "merges": [list(m) for m in self.merges],
            "special_tokens": self.special_tokens,
        }
        Path(path).write_text(json.dumps(fields, ensure_ascii=False), encoding="utf-8")

    @classmethod
    def load(cls, path: str | Path) -> "ByteBPE":
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"No tokenizer file at {path}; save one with ByteBPE.save(path).")
        try:
            fields = json.loads(path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise ValueError(f"{path} is not a valid tokenizer file (not JSON: {err}). Train and save it again.") from None
        if not isinstance(fields, dict) or fields.get("format") != cls.FORMAT:
            got = fields.get("format") if isinstance(fields, dict) else type(fields).__name__
            raise ValueError(f"{path} is not a ByteBPE file: its format is {got!r}, expected {cls.FORMAT!r}.")
        if fields.get("version") not in (1, cls.VERSION):
            raise ValueError(
                f"{path} has ByteBPE format version {fields.get('version')!r}; this lmlib reads versions 1 to "
                f"{cls.VERSION}. Re-save it with a matching lmlib."
            )
        try:
            merges = [tuple(m) for m in fields["merges"]]
            if any(len(m) != 2 or not all(isinstance(x, int) for x in m) for m in merges):
                raise ValueError("every merge must be a pair of integer ids")
            specials = fields["special_tokens"]
            if not isinstance(specials, dict) or not all(
                    isinstance(t, str) and isinstance(i, int) and not isinstance(i, bool) for t, i in specials.items()):
                raise ValueError(f"special_tokens must map each token (a string) to its id, got {specials!r:.80}")
            byte_order = fields["byte_order"] if fields["version"] >= 2 else None
            tok = cls(merges, sorted(specials, key=specials.get), fields["pattern"], byte_order)
        except (KeyError, TypeError, ValueError, re.error, regex.error) as err:
            raise ValueError(f"{path} is a corrupt ByteBPE file ({type(err).__name__}: {err}).") from None
        if tok.special_tokens != specials:
            raise ValueError(
                f"{path} is corrupt: its special-token ids {specials} do not follow the "
                f"{len(merges)} merges (expected {tok.special_tokens})."
            )
        return tok

    def __repr__(self) -> str:
        return f"ByteBPE(vocab_size={self.vocab_size}, merges={len(self.merges)}, special={list(self.special_tokens)})"
