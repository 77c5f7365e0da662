"""Counting n-gram language models: a word vocabulary, fast n-gram counts, add-k and Kneser-Ney.

Derived in chapter 1, "N-gram models on WikiText-2" (chapters/01_background/02_ngram_models).

Counting 5-grams over two million words in Python dictionaries is slow and memory-hungry, so
every n-gram gets an integer id instead. The id of the 1-gram ``w`` is ``w``. The id of an
n-gram is its rank among the distinct keys ``prefix_id * V + last_word``, where ``prefix_id`` is
the id of its first n - 1 words: the keys are exact (no hashing collisions, since prefix ids are
dense), and one ``torch.unique`` per order counts everything. Looking up n-grams of new text is a
``torch.searchsorted`` in the sorted keys.

Words become ids with the course's word vocabulary, :class:`lmlib.tokenizers.Vocab`, which maps
every word it has not seen to ``<unk>`` (WikiText-2 already replaced rare words by ``<unk>``, so
its validation and test text have no new words); pass ``unknown="error"`` to
:meth:`lmlib.tokenizers.Vocab.encode` to raise instead.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from lmlib.data import read_text
from lmlib.metrics import perplexity

EOS = "<eos>"


def wikitext_words(split: str = "train", max_lines: int | None = None) -> list[str]:
    """The words of a WikiText-2 split, with ``<eos>`` closing every line (blank lines too).

    That is the convention of the PyTorch word-language-model example and of the published token
    counts (2,088,628 training tokens). ``max_lines`` keeps only the first lines (for quick runs).
    """
    if split not in ("train", "valid", "test"):
        raise ValueError(f"split must be 'train', 'valid' or 'test', got {split!r}.")
    if max_lines is not None and max_lines < 1:
        raise ValueError(f"max_lines must be a positive number of lines or None, got {max_lines}.")
    lines = read_text("wikitext-2", f"wiki.{split}.tokens").split("\n")
    if lines and lines[-1] == "":
        lines.pop()  # the file ends with a newline: no line after it
    return [w for line in lines[:max_lines] for w in line.split() + [EOS]]


def _check_ids(ids: torch.Tensor, vocab_size: int, what: str) -> torch.Tensor:
    ids = torch.as_tensor(ids)
    if ids.dim() != 1 or ids.dtype not in (torch.int64, torch.int32, torch.int16, torch.uint8):
        raise ValueError(f"{what} must be a 1-D tensor of integer token ids, got {ids.dtype} of shape {tuple(ids.shape)}.")
    if ids.numel() and (ids.min() < 0 or ids.max() >= vocab_size):
        raise ValueError(
            f"{what} holds ids outside [0, {vocab_size}): encode the text with the model's vocabulary "
            "(unknown words map to <unk>)."
        )
    return ids.long()


@dataclass
class _Order:
    """The n-grams of one order n: sorted keys, counts, and the statistics smoothing needs."""

    keys: torch.Tensor  # (G,) sorted; key = prefix_id * V + last word
    count: torch.Tensor  # (G,) how often each n-gram occurs
    continuation: torch.Tensor  # (G,) how many distinct words precede it, N1+(. g)
    context_count: torch.Tensor  # (P,) for each prefix id: sum of counts of n-grams that extend it
    context_types: torch.Tensor  # (P,) how many distinct words follow the prefix
    context_continuation: torch.Tensor  # (P,) sum of continuation counts of n-grams that extend it
    context_continuation_types: torch.Tensor  # (P,) distinct words w with N1+(. prefix w) > 0


class NGramCounts:
    """All n-gram counts of orders 1..``n`` of a token stream, with continuation counts.

    ``ngram_ids(ids, k)`` gives, for every position t, the id of the k-gram that ends at t (or -1
    where it never occurred in training or where fewer than k tokens precede). ``count(ids, k)``
    and ``continuation_count(ids, k)`` look up their counts.
    """

    def __init__(self, ids: torch.Tensor, n: int, vocab_size: int):
        if not isinstance(n, int) or n < 1:
            raise ValueError(f"The n-gram order n must be an integer >= 1, got {n!r}.")
        if vocab_size < 1:
            raise ValueError(f"vocab_size must be positive, got {vocab_size}.")
        ids = _check_ids(ids, vocab_size, "ids")
        if len(ids) < n:
            raise ValueError(f"Need at least n={n} training tokens to count {n}-grams, got {len(ids)}.")
        self.n, self.V, self.num_tokens = n, vocab_size, len(ids)
        V = vocab_size
        # Order 1: the id of a word is the word itself.
        ends = [ids]  # ends[k-1][t] = id of the k-gram ending at t (invalid for t < k-1)
        orders_raw = [(torch.arange(V), torch.bincount(ids, minlength=V))]
        for k in range(2, n + 1):
            key = ends[-1][:-1] * V + ids[1:]  # positions t = 1..L-1 (meaningful from t = k-1)
            key = key[k - 2:]
            uniq, inverse, count = torch.unique(key, return_inverse=True, return_counts=True)
            ends.append(torch.cat([torch.full((k - 1,), -1), inverse]))
            orders_raw.append((uniq, count))
        self._orders = []
        for k in range(1, n + 1):
            keys, count = orders_raw[k - 1]
            continuation = self._continuation(k, ends, orders_raw)
            prefix = keys // V if k > 1 else torch.zeros_like(keys)
            P = len(orders_raw[k - 2][0]) if k > 1 else 1
            self._orders.append(_Order(
                keys=keys,
                count=count,
                continuation=continuation,
                context_count=torch.bincount(prefix, weights=count.double(), minlength=P).long(),
                context_types=torch.bincount(prefix[count > 0], minlength=P),
                context_continuation=torch.bincount(prefix, weights=continuation.double(), minlength=P).long(),
                context_continuation_types=torch.bincount(prefix[continuation > 0], minlength=P),
            ))

    def _continuation(self, k: int, ends: list[torch.Tensor], orders_raw) -> torch.Tensor:
        """N1+(. g) for every k-gram g: how many distinct words occur right before g."""
        G = len(orders_raw[k - 1][0])
        if k < self.n:
            # Each (k+1)-gram (ending at t >= k) has the k-gram ending at t as its suffix.
            suffix_of = torch.empty(len(orders_raw[k][0]), dtype=torch.int64)
            suffix_of[ends[k][k:]] = ends[k - 1][k:]
            return torch.bincount(suffix_of, minlength=G)
        # Top order: count the distinct (previous word, g) pairs directly.
        t = torch.arange(k, self.num_tokens)
        pairs = torch.unique(ends[0][t - k] * G + ends[k - 1][t])
        return torch.bincount(pairs % G, minlength=G)

    def order(self, k: int) -> _Order:
        if not 1 <= k <= self.n:
            raise ValueError(f"Order k must be between 1 and n={self.n}, got {k}.")
        return self._orders[k - 1]

    def num_ngrams(self, k: int) -> int:
        """How many distinct k-grams occur in training."""
        return int((self.order(k).count > 0).sum())

    def ngram_ids(self, ids: torch.Tensor, k: int) -> torch.Tensor:
        """For each position t, the training id of the k-gram ``ids[t-k+1 .. t]``, or -1 if unseen."""
        ids = _check_ids(ids, self.V, "ids")
        self.order(k)
        ends = ids.clone()
        for j in range(2, k + 1):
            prev = torch.cat([torch.full((1,), -1), ends[:-1]])
            ends = self._lookup(j, prev, ids)
        if k > 1:
            ends[: k - 1] = -1
        return ends

    def _lookup(self, k: int, prefix: torch.Tensor, word: torch.Tensor) -> torch.Tensor:
        """Ids of the k-grams (prefix id, word), -1 where the prefix is -1 or the k-gram is unseen."""
        keys = self.order(k).keys
        query = prefix.clamp(min=0) * self.V + word
        pos = torch.searchsorted(keys, query).clamp(max=len(keys) - 1)
        found = (keys[pos] == query) & (prefix >= 0)
        return torch.where(found, pos, torch.full_like(pos, -1))

    def count(self, ids: torch.Tensor, k: int) -> torch.Tensor:
        """c(g) of the k-gram ending at each position (0 if unseen or too close to the start)."""
        g = self.ngram_ids(ids, k)
        return torch.where(g >= 0, self.order(k).count[g.clamp(min=0)], 0)

    def continuation_count(self, ids: torch.Tensor, k: int) -> torch.Tensor:
        """N1+(. g): distinct words seen before the k-gram g ending at each position (0 if unseen)."""
        g = self.ngram_ids(ids, k)
        return torch.where(g >= 0, self.order(k).continuation[g.clamp(min=0)], 0)


def _contexts(counts: NGramCounts, history: torch.Tensor, n: int) -> list[torch.Tensor]:
    """ctx[j] = id of the j-gram ending at each position of ``history`` (ctx[0]: the empty context)."""
    out = [torch.zeros(len(history), dtype=torch.int64)]
    if n > 1:
        out.append(history.clone())
    for j in range(2, n):  # extend the (j-1)-gram ending one step earlier by the current word
        prev = torch.cat([torch.full((1,), -1), out[-1][:-1]])
        out.append(counts._lookup(j, prev, history))
    return out


class NGramLM:
    """An n-gram language model over counts: add-k or interpolated Kneser-Ney smoothing.

    - ``smoothing="add-k"``: P(w | h) = (c(h w) + k) / (c(h) + k V) with the full (n-1)-word
      history h; a history never seen in training gives the uniform 1 / V.
    - ``smoothing="kneser-ney"``: interpolated Kneser-Ney (Kneser and Ney 1995; Chen and Goodman
      1999). The top order uses counts, lower orders use continuation counts N1+(. h w), each
      order subtracts an absolute discount D_k and gives the freed mass to the next lower order,
      and the unigram level is interpolated with the uniform distribution, so no word gets zero.
      By default D_k = n1 / (n1 + 2 n2) from the numbers of k-grams seen once and twice.
    """

    def __init__(
        self,
        ids: torch.Tensor,
        n: int,
        vocab_size: int,
        smoothing: str = "kneser-ney",
        k: float = 1.0,
        discount: float | Sequence[float] | None = None,
        counts: NGramCounts | None = None,
    ):
        if smoothing not in ("add-k", "kneser-ney"):
            raise ValueError(f"smoothing must be 'add-k' or 'kneser-ney', got {smoothing!r}.")
        if smoothing == "add-k" and not k > 0:
            raise ValueError(f"add-k smoothing needs k > 0 (k = 0 gives zero probabilities), got k={k}.")
        if counts is None:
            counts = NGramCounts(ids, n, vocab_size)
        elif counts.n < n or counts.V != vocab_size:
            raise ValueError(
                f"The given counts have n={counts.n}, V={counts.V}; this model needs n>={n}, V={vocab_size}."
            )
        self.counts, self.n, self.V, self.smoothing, self.k = counts, n, vocab_size, smoothing, k
        self.discounts = self._discounts(discount) if smoothing == "kneser-ney" else None

    def _discounts(self, discount) -> list[float]:
        if discount is None:
            out = []
            for j in range(1, self.n + 1):
                o = self.counts.order(j)
                c = o.count if j == self.n else o.continuation
                n1, n2 = int((c == 1).sum()), int((c == 2).sum())
                out.append(n1 / (n1 + 2 * n2) if n1 > 0 else 0.5)
            return out
        out = [float(discount)] * self.n if isinstance(discount, (int, float)) else [float(d) for d in discount]
        if len(out) != self.n or not all(0 < d <= 1 for d in out):
            raise ValueError(f"discount must be one number or {self.n} numbers, each in (0, 1]; got {discount}.")
        return out

    def __repr__(self) -> str:
        how = f"k={self.k:g}" if self.smoothing == "add-k" else "D=" + ", ".join(f"{d:.3f}" for d in self.discounts)
        return f"NGramLM(n={self.n}, V={self.V:,}, {self.smoothing}, {how})"

    def _prob(self, ctx: list[torch.Tensor], word: torch.Tensor) -> torch.Tensor:
        """P(word | context) where ctx[j] holds the id of the j-word history (-1: unseen)."""
        V, n = self.V, self.n
        if self.smoothing == "add-k":
            o = self.counts.order(n)
            h = ctx[n - 1]
            g = self.counts._lookup(n, h, word) if n > 1 else word
            c = torch.where(g >= 0, o.count[g.clamp(min=0)], 0).double()
            ch = torch.where(h >= 0, o.context_count[h.clamp(min=0)], 0).double()
            return (c + self.k) / (ch + self.k * V)
        p = torch.full(word.shape, 1.0 / V, dtype=torch.float64)
        for j in range(1, n + 1):
            o, D = self.counts.order(j), self.discounts[j - 1]
            h = ctx[j - 1]
            g = self.counts._lookup(j, h, word) if j > 1 else word
            top = j == n
            c_all = o.count if top else o.continuation
            c = torch.where(g >= 0, c_all[g.clamp(min=0)], 0).double()
            hh = h.clamp(min=0)
            denom = (o.context_count if top else o.context_continuation)[hh].double()
            types = (o.context_types if top else o.context_continuation_types)[hh].double()
            denom = torch.where(h >= 0, denom, 0.0)
            seen = denom > 0
            safe = denom.clamp(min=1)
            mixed = (c - D).clamp(min=0) / safe + D * types / safe * p
            p = torch.where(seen, mixed, p)  # an unseen history passes the lower order through
        return p

    def target_probs(self, ids: torch.Tensor) -> torch.Tensor:
        """P(ids[t] | up to n-1 previous tokens) for t = 1..len-1 (the first token has no history)."""
        ids = _check_ids(ids, self.V, "ids")
        if len(ids) < 2:
            raise ValueError("Need at least two tokens to score a prediction.")
        history = ids[:-1]
        return self._prob(_contexts(self.counts, history, self.n), ids[1:])

    def perplexity(self, ids: torch.Tensor) -> float:
        """Perplexity on a token stream (see :func:`lmlib.metrics.perplexity`)."""
        return perplexity(self.target_probs(ids))

    def next_token_probs(self, history: Sequence[int] | torch.Tensor) -> torch.Tensor:
        """The whole distribution P(. | history) as a (V,) tensor (uses the last n-1 tokens)."""
        history = _check_ids(torch.as_tensor(history, dtype=torch.int64), self.V, "history")
        words = torch.arange(self.V)
        ctx = [torch.zeros(self.V, dtype=torch.int64)]
        for j in range(1, self.n):
            if len(history) >= j:
                gid = int(self.counts.ngram_ids(history[-j:], j)[-1])
            else:
                gid = -1
            ctx.append(torch.full((self.V,), gid, dtype=torch.int64))
        return self._prob(ctx, words)

    def sample(self, history: Sequence[int], length: int, generator: torch.Generator | None = None) -> list[int]:
        """Extend ``history`` by ``length`` tokens drawn from the model."""
        out = list(history)
        for _ in range(length):
            out.append(int(torch.multinomial(self.next_token_probs(out[-(self.n - 1):] if self.n > 1 else []), 1, generator=generator)))
        return out


# --- the count table as a model trained by gradient descent (chapter 1, notebook 03) -------------

def bigram_count_matrix(ids: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """``counts[a, b]``: how often token ``b`` follows token ``a`` in ``ids`` (a (V, V) float64 table)."""
    ids = _check_ids(torch.as_tensor(ids), vocab_size, "ids")
    counts = torch.zeros(vocab_size, vocab_size, dtype=torch.float64)
    counts.index_put_((ids[:-1], ids[1:]), torch.ones(len(ids) - 1, dtype=torch.float64), accumulate=True)
    return counts


def count_nll(logits: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
    """The mean negative log-likelihood (nats) of the counted bigrams under a table of ``logits``
    (row = previous token, softmax over the row): ``-sum(counts * log_softmax(logits)) / sum(counts)``,
    the training loss of a bigram model computed from the counts instead of token by token."""
    if logits.shape != counts.shape or logits.dim() != 2:
        raise ValueError(f"logits and counts must be one (V, V) shape, got {tuple(logits.shape)} and "
                         f"{tuple(counts.shape)}.")
    return -(counts * torch.log_softmax(logits, dim=1)).sum() / counts.sum()


def count_nll_gradient(logits: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
    """The gradient of :func:`count_nll` with respect to ``logits``, by hand:
    ``(row_total * softmax(logits) - counts) / N``. It is zero exactly where every seen row's
    softmax equals its counts divided by the row's total: the count model is the minimum."""
    rows = counts.sum(1, keepdim=True)
    return (rows * torch.softmax(logits, dim=1) - counts) / counts.sum()
