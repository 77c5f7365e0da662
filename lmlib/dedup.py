"""Cleaning a corpus the SlimPajama way: normalization, exact and near-duplicate removal, packing.

Derived in chapter 4 ("A pretraining data pipeline"). The pieces, in the order a pipeline uses
them:

- :func:`normalize` puts text in one canonical form (Unicode NFC, lower case, no punctuation,
  single spaces), so that trivial differences do not hide a duplicate;
- :func:`exact_duplicates` groups documents whose normalized text has the same hash;
- :class:`MinHasher` turns a document's set of word n-grams (shingles) into a short signature
  whose entries agree, between two documents, with probability equal to their Jaccard similarity;
- :class:`LSHIndex` cuts signatures into bands and finds the pairs that share a band, which are the
  near-duplicate candidates, without comparing all pairs;
- :func:`deduplicate` keeps one document per cluster of (near-)duplicates;
- :func:`pack` writes token ids into one flat memory-mapped array, the format a trainer reads;
- :func:`leakage` finds validation documents that (nearly) occur in the training set.
"""
from __future__ import annotations

import hashlib
import json
import re
import unicodedata
from collections import defaultdict
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

PRIME = (1 << 31) - 1  # a Mersenne prime: hashes live in [0, PRIME), and a * x + b < 2**63
_trapezoid = getattr(np, "trapezoid", None) or np.trapz  # numpy 2 renamed trapz


class _PunctuationToSpace(dict):
    """A ``str.translate`` table, filled on first sight of each character: punctuation (Unicode
    category P*) becomes a space, anything else stays itself. One C-level pass per text instead
    of a Python call per character (about ten times faster on Wikipedia articles)."""

    def __missing__(self, code: int) -> str:
        ch = chr(code)
        self[code] = out = " " if unicodedata.category(ch).startswith("P") else ch
        return out


_PUNCTUATION_TO_SPACE = _PunctuationToSpace()


def normalize(text: str) -> str:
    """Canonical form for duplicate detection: NFC, lower case, punctuation removed, spaces collapsed."""
    text = unicodedata.normalize("NFC", text).lower().translate(_PUNCTUATION_TO_SPACE)
    return " ".join(text.split())


def content_hash(text: str) -> str:
    """sha256 of the normalized text: equal hashes mean duplicates up to normalization."""
    return hashlib.sha256(normalize(text).encode("utf-8")).hexdigest()


def exact_duplicates(docs: Sequence[str]) -> list[list[int]]:
    """Groups (lists of indices, in order) of documents with the same normalized text; size >= 2 only."""
    groups: dict[str, list[int]] = defaultdict(list)
    for i, doc in enumerate(docs):
        groups[content_hash(doc)].append(i)
    return [g for g in groups.values() if len(g) > 1]


def shingles(text: str, n: int = 5) -> set[str]:
    """The set of word n-grams of the normalized text (a text shorter than n words is one shingle)."""
    if n < 1:
        raise ValueError(f"shingle size n must be at least 1, got {n}.")
    words = normalize(text).split()
    if len(words) < n:
        return {" ".join(words)} if words else set()
    return {" ".join(words[i : i + n]) for i in range(len(words) - n + 1)}


def jaccard(a: set, b: set) -> float:
    """|a & b| / |a | b|, the similarity MinHash estimates (two empty sets count as identical)."""
    if not a and not b:
        return 1.0
    return len(a & b) / len(a | b)


def shingle_hash(shingle: str) -> int:
    """A stable hash of a string in ``[0, PRIME)`` (Python's ``hash`` changes between processes)."""
    return int.from_bytes(hashlib.blake2b(shingle.encode("utf-8"), digest_size=8).digest(), "little") % PRIME


class MinHasher:
    """``num_perm`` random hash functions ``h_k(x) = (a_k x + b_k) mod p`` over shingle hashes.

    The signature of a set is, for each k, the minimum of ``h_k`` over the set. For two sets, the
    minimum is attained by the same element with probability (close to) |A & B| / |A | B|, so the
    fraction of equal signature entries estimates the Jaccard similarity with standard error about
    ``sqrt(J (1 - J) / num_perm)``. With ``p = 2**31 - 1`` and ``a, b, x < p``, ``a x + b`` fits in
    64 bits, so numpy computes it exactly. (``a`` must range over all of ``[1, p)``: a small ``a``
    makes ``h`` nearly increasing in ``x``, the minima of different functions then fall on the same
    elements, and the estimate's error grows far beyond the formula above.)
    """

    def __init__(self, num_perm: int = 128, seed: int = 0, n: int = 5):
        if num_perm < 1:
            raise ValueError(f"num_perm must be at least 1, got {num_perm}.")
        rng = np.random.default_rng(seed)
        self.num_perm, self.n = num_perm, n
        self.a = rng.integers(1, PRIME, size=num_perm, dtype=np.uint64)
        self.b = rng.integers(0, PRIME, size=num_perm, dtype=np.uint64)

    def signature_of_hashes(self, hashes: Iterable[int]) -> np.ndarray:
        """Signature (``num_perm`` uint64) of a set given as hashes in ``[0, PRIME)``; empty sets get all p."""
        x = np.fromiter(hashes, dtype=np.uint64)
        if x.size == 0:
            return np.full(self.num_perm, PRIME, dtype=np.uint64)
        if int(x.max()) >= PRIME:
            raise ValueError("shingle hashes must be below PRIME = 2**31 - 1; use shingle_hash().")
        return ((self.a[:, None] * x[None, :] + self.b[:, None]) % np.uint64(PRIME)).min(axis=1)

    def signature(self, text: str) -> np.ndarray:
        return self.signature_of_hashes(shingle_hash(s) for s in shingles(text, self.n))

    def signatures(self, docs: Sequence[str], progress: bool = True) -> np.ndarray:
        """A ``(len(docs), num_perm)`` array of signatures, with a progress bar."""
        from tqdm.auto import tqdm

        out = np.empty((len(docs), self.num_perm), dtype=np.uint64)
        for i, doc in enumerate(tqdm(docs, desc="MinHash", disable=not progress, leave=False)):
            out[i] = self.signature(doc)
        return out


def estimated_jaccard(sig_a: np.ndarray, sig_b: np.ndarray) -> float:
    if sig_a.shape != sig_b.shape:
        raise ValueError(f"signatures differ in length: {sig_a.shape} vs {sig_b.shape}; use one MinHasher.")
    return float((sig_a == sig_b).mean())


def candidate_probability(s: np.ndarray | float, bands: int, rows: int) -> np.ndarray | float:
    """P(two sets of Jaccard ``s`` share at least one band) = 1 - (1 - s**rows)**bands: the S-curve."""
    return 1 - (1 - np.asarray(s, dtype=float) ** rows) ** bands


def lsh_params(threshold: float, num_perm: int, fp_weight: float = 0.5) -> tuple[int, int]:
    """Bands and rows (``bands * rows <= num_perm``) whose S-curve best separates at ``threshold``.

    Minimizes ``fp_weight * area(false positives below threshold) + (1 - fp_weight) * area(false
    negatives above it)`` under the S-curve, over every split of the signature.
    """
    if not 0 < threshold < 1:
        raise ValueError(f"threshold must be strictly between 0 and 1, got {threshold}.")
    below = np.linspace(0, threshold, 200)
    above = np.linspace(threshold, 1, 200)
    best, best_cost = (1, num_perm), float("inf")
    for bands in range(1, num_perm + 1):
        for rows in range(1, num_perm // bands + 1):
            fp = _trapezoid(candidate_probability(below, bands, rows), below)
            fn = _trapezoid(1 - candidate_probability(above, bands, rows), above)
            cost = fp_weight * fp + (1 - fp_weight) * fn
            if cost < best_cost:
                best, best_cost = (bands, rows), cost
    return best


class LSHIndex:
    """Locality-sensitive hashing over MinHash signatures: documents that agree on a whole band
    of ``rows`` signature entries land in the same bucket and become candidate pairs."""

    def __init__(self, bands: int, rows: int):
        if bands < 1 or rows < 1:
            raise ValueError(f"bands and rows must be positive, got bands={bands}, rows={rows}.")
        self.bands, self.rows = bands, rows
        self.buckets: list[dict[bytes, list[int]]] = [defaultdict(list) for _ in range(bands)]

    def _keys(self, sig: np.ndarray) -> list[bytes]:
        if len(sig) < self.bands * self.rows:
            raise ValueError(
                f"signature has {len(sig)} entries but the index needs bands*rows = {self.bands * self.rows}."
            )
        return [sig[k * self.rows : (k + 1) * self.rows].tobytes() for k in range(self.bands)]

    def insert(self, key: int, sig: np.ndarray) -> None:
        for band, h in zip(self.buckets, self._keys(sig)):
            band[h].append(key)

    def query(self, sig: np.ndarray) -> set[int]:
        """Keys of inserted documents that share at least one band with ``sig``."""
        found: set[int] = set()
        for band, h in zip(self.buckets, self._keys(sig)):
            found.update(band.get(h, ()))
        return found

    def candidate_pairs(self) -> set[tuple[int, int]]:
        """All pairs ``(i, j)``, ``i < j``, of inserted keys that share a bucket."""
        pairs: set[tuple[int, int]] = set()
        for band in self.buckets:
            for members in band.values():
                if len(members) > 1:
                    members = sorted(members)
                    pairs.update((members[x], members[y]) for x in range(len(members)) for y in range(x + 1, len(members)))
        return pairs


def near_duplicate_pairs(
    signatures: np.ndarray, threshold: float = 0.8, bands: int | None = None, rows: int | None = None, verify: bool = True
) -> set[tuple[int, int]]:
    """Pairs of rows of ``signatures`` found by LSH; with ``verify``, only those whose estimated
    Jaccard (fraction of equal signature entries) reaches ``threshold``."""
    if signatures.ndim != 2:
        raise ValueError(f"signatures must be a 2-D (docs, num_perm) array, got shape {signatures.shape}.")
    if bands is None or rows is None:
        bands, rows = lsh_params(threshold, signatures.shape[1])
    index = LSHIndex(bands, rows)
    for i, sig in enumerate(signatures):
        index.insert(i, sig)
    pairs = index.candidate_pairs()
    if verify:
        pairs = {(i, j) for i, j in pairs if estimated_jaccard(signatures[i], signatures[j]) >= threshold}
    return pairs


def clusters(n: int, pairs: Iterable[tuple[int, int]]) -> list[list[int]]:
    """Connected components (union-find) of ``n`` items linked by ``pairs``; singletons omitted."""
    parent = list(range(n))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for i, j in pairs:
        ri, rj = find(i), find(j)
        if ri != rj:
            parent[max(ri, rj)] = min(ri, rj)
    groups: dict[int, list[int]] = defaultdict(list)
    for i in range(n):
        groups[find(i)].append(i)
    return [g for g in groups.values() if len(g) > 1]


def deduplicate(
    docs: Sequence[str], threshold: float = 0.8, num_perm: int = 128, n: int = 5, seed: int = 0, progress: bool = True
) -> list[int]:
    """Indices of the documents to keep: the first of every exact or near-duplicate cluster."""
    pairs = {(g[0], j) for g in exact_duplicates(docs) for j in g[1:]}
    sigs = MinHasher(num_perm, seed, n).signatures(docs, progress=progress)
    pairs |= near_duplicate_pairs(sigs, threshold)
    drop = {i for group in clusters(len(docs), pairs) for i in group[1:]}
    return [i for i in range(len(docs)) if i not in drop]


def leakage(
    train_docs: Sequence[str], val_docs: Sequence[str], threshold: float = 0.8, num_perm: int = 128, n: int = 5,
    seed: int = 0, progress: bool = True,
) -> list[tuple[int, int, float]]:
    """Validation documents with an exact or near-duplicate in training: ``(val_i, train_j, jaccard)``
    where the Jaccard similarity of their shingle sets is computed exactly for each LSH candidate."""
    hasher = MinHasher(num_perm, seed, n)
    bands, rows = lsh_params(threshold, num_perm)
    index = LSHIndex(bands, rows)
    exact = {}
    for j, sig in enumerate(hasher.signatures(train_docs, progress=progress)):
        index.insert(j, sig)
        exact.setdefault(content_hash(train_docs[j]), j)
    found = []
    for i, sig in enumerate(hasher.signatures(val_docs, progress=progress)):
        j = exact.get(content_hash(val_docs[i]))
        if j is not None:
            found.append((i, j, 1.0))
            continue
        val_set = shingles(val_docs[i], n)
        best = max(((jaccard(val_set, shingles(train_docs[j], n)), j) for j in index.query(sig)), default=None)
        if best is not None and best[0] >= threshold:
            found.append((i, best[1], best[0]))
    return found


# --- packing tokens for training -----------------------------------------------------------------


def token_dtype(vocab_size: int) -> np.dtype:
    """The smallest unsigned type that holds every id: uint16 up to 65,536 ids, else uint32."""
    if vocab_size < 1:
        raise ValueError(f"vocab_size must be positive, got {vocab_size}.")
    if vocab_size <= 1 << 16:
        return np.dtype(np.uint16)
    if vocab_size <= 1 << 32:
        return np.dtype(np.uint32)
    raise ValueError(f"vocab_size={vocab_size} does not fit in 32 bits.")


def pack(
    docs: Iterable[Sequence[int]], path: str | Path, vocab_size: int, eot_id: int | None = None, progress: bool = True
) -> np.memmap:
    """Write every document's ids, each followed by ``eot_id`` (if given), into one flat file.

    Returns a read-only ``np.memmap`` of the result; a JSON sidecar ``<path>.json`` records the
    dtype, vocabulary size and lengths so :func:`open_packed` can check the file. Documents are
    streamed, so the corpus never has to fit in memory.
    """
    from tqdm.auto import tqdm

    path = Path(path)
    dtype = token_dtype(vocab_size)
    if eot_id is not None and not 0 <= eot_id < vocab_size:
        raise ValueError(f"eot_id={eot_id} is outside the vocabulary (size {vocab_size}).")
    n_tokens = n_docs = 0
    with open(path, "wb") as f:
        for doc in tqdm(docs, desc="packing", unit="doc", disable=not progress, leave=False):
            ids = np.asarray(list(doc) + ([] if eot_id is None else [eot_id]), dtype=np.int64)
            if ids.size and (ids.min() < 0 or ids.max() >= vocab_size):
                raise ValueError(
                    f"Document {n_docs} has ids outside [0, {vocab_size}); encode it with the tokenizer "
                    "whose vocab_size you passed."
                )
            ids.astype(dtype).tofile(f)
            n_tokens += ids.size
            n_docs += 1
    meta = {"dtype": dtype.name, "vocab_size": vocab_size, "n_tokens": n_tokens, "n_docs": n_docs, "eot_id": eot_id}
    Path(str(path) + ".json").write_text(json.dumps(meta))
    return open_packed(path)


def open_packed(path: str | Path) -> np.memmap:
    """Open a file written by :func:`pack` as a read-only memmap, checking it against its sidecar."""
    path = Path(path)
    meta_file = Path(str(path) + ".json")
    if not path.is_file() or not meta_file.is_file():
        raise FileNotFoundError(f"{path} or its sidecar {meta_file.name} is missing; write it with lmlib.dedup.pack().")
    meta = json.loads(meta_file.read_text())
    dtype = np.dtype(meta["dtype"])
    expected = meta["n_tokens"] * dtype.itemsize
    if path.stat().st_size != expected:
        raise ValueError(
            f"{path} has {path.stat().st_size} bytes but its sidecar promises {meta['n_tokens']} {dtype.name} "
            f"tokens ({expected} bytes): the file is truncated or from another run. Pack it again."
        )
    if meta["n_tokens"] == 0:
        return np.zeros(0, dtype=dtype)  # np.memmap cannot map an empty file
    return np.memmap(path, dtype=dtype, mode="r")


def edit_words(text: str, rate: float, rng: np.random.Generator) -> str:
    """A near-duplicate of ``text``: each word is deleted, replaced or followed by an inserted word
    (a word drawn from the same text) with total probability ``rate``."""
    if not 0 <= rate <= 1:
        raise ValueError(f"edit rate must be in [0, 1], got {rate}.")
    words = text.split()
    out = []
    for w in words:
        u = rng.random()
        if u < rate / 3:
            continue  # delete
        if u < 2 * rate / 3:
            out.append(words[rng.integers(len(words))])  # substitute
        elif u < rate:
            out.extend([w, words[rng.integers(len(words))]])  # insert after
        else:
            out.append(w)
    return " ".join(out)


def plant_duplicates(
    docs: Sequence[str], n_exact: int, n_near: int, rates: tuple[float, float] = (0.0, 0.5), seed: int = 0
) -> tuple[list[str], list[tuple[int, int, str, float]]]:
    """A corpus with known duplicates: ``docs`` followed by ``n_exact`` copies that differ only in
    case and spacing and ``n_near`` copies edited at a rate drawn uniformly from ``rates``.

    Returns the corpus and the planted pairs ``(original, copy, "exact" | "near", rate)``.
    """
    if n_exact + n_near > len(docs):
        raise ValueError(f"cannot plant {n_exact + n_near} copies of {len(docs)} distinct documents; plant fewer.")
    rng = np.random.default_rng(seed)
    sources = rng.choice(len(docs), size=n_exact + n_near, replace=False)
    corpus, truth = list(docs), []
    for k, src in enumerate(sources.tolist()):
        if k < n_exact:
            copy = "  ".join(docs[src].upper().split()) if k % 2 else docs[src].lower() + " "
            truth.append((src, len(corpus), "exact", 0.0))
        else:
            rate = float(rng.uniform(*rates))
            copy = edit_words(docs[src], rate, rng)
            truth.append((src, len(corpus), "near", rate))
        corpus.append(copy)
    return corpus, truth


def paragraphs(text: str, min_words: int = 20) -> list[str]:
    """Paragraphs of a WikiText-style file: non-blank lines that are not ``= Heading =`` lines."""
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not re.fullmatch(r"=+ .* =+", line) and len(line.split()) >= min_words:
            out.append(line)
    return out
