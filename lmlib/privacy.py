"""Memorization as a privacy risk: canaries, the exposure metric and extraction tests.

Derived in chapter 6 ("Privacy and memorization"). The method is the *Secret Sharer* test of
Carlini et al. (2019): plant a random secret, a **canary** such as ``"my number is 4821"``, in
the training data, train, then ask how much more likely the model finds the true secret than
every other secret of the same format. Two numbers answer it:

- the **rank** of the canary: how many candidate secrets have a log-perplexity at most the
  canary's (1 means the model prefers the true secret to all others);
- the **exposure**: ``log2 |R| - log2 rank``, where ``R`` is the set of all candidate secrets.
  It runs from 0 (the canary is the least likely secret) to ``log2 |R|`` bits (the most likely).
  A random secret the model never saw has expected exposure about ``1 / ln 2 = 1.44`` bits.

When ``R`` is too large to enumerate, the rank is estimated from a random sample of candidates
(:func:`estimated_exposure`). The **extraction** test is the attacker's view: give the model the
prefix and decode greedily (or with a beam); does it write the secret?

Log-perplexities are in bits: ``-log2 P(secret | context)``, the sum over the secret's tokens.
A model here is anything that maps ids ``(B, T)`` to logits ``(B, T, V)``, or to
``(logits, loss)`` like :class:`lmlib.model.GPT`.

API summary
-----------
DIGITS = "0123456789"
Canary(prefix, secret, alphabet=DIGITS)           .text, .space_size, .index
random_secret(length, generator, alphabet=DIGITS) -> str
make_canaries(prefixes, length, seed=0, alphabet=DIGITS) -> list[Canary]   (distinct secrets)
secret_index(secret, alphabet=DIGITS) -> int;  secret_at(index, length, alphabet=DIGITS) -> str
plant(docs, texts, copies, seed=0) -> list[str]   each text inserted copies[i] times at random places
rank_of(log_perplexities, index) -> int
exposure(rank, space_size) -> float
estimated_exposure(canary_log_perplexity, sample_log_perplexities) -> float
sequence_log_perplexity(model, context_ids, continuations, batch_size=512) -> (N,) bits
space_log_perplexities(model, context_ids, alphabet_ids, length, batch_size=512) -> (|A|**L,) bits
measure_exposure(model, tokenizer, canary, context="", batch_size=512)
    -> ExposureResult(rank, space_size, exposure, log_perplexity)
sample_exposure(model, tokenizer, canary, n_samples, generator, context="", batch_size=512) -> float
extract(model, tokenizer, prompt, length, beam_size=1) -> str
is_extracted(model, tokenizer, canary, context="", beam_size=1) -> bool
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from lmlib.device import eval_mode, model_device
from lmlib.generate import beam_search, continuation_logprob, lm_logits

Tensor = torch.Tensor

__all__ = [
    "DIGITS", "Canary", "ExposureResult", "random_secret", "make_canaries", "secret_index", "secret_at",
    "plant", "rank_of", "exposure", "estimated_exposure", "sequence_log_perplexity",
    "space_log_perplexities", "measure_exposure", "sample_exposure", "extract", "is_extracted",
]

DIGITS = "0123456789"
MAX_SPACE = 10**7  # enumerating more candidates than this is slow: estimate the exposure by sampling


# --- canaries ------------------------------------------------------------------------------------


def _check_alphabet(alphabet: str) -> None:
    if not isinstance(alphabet, str) or len(alphabet) < 2 or len(set(alphabet)) != len(alphabet):
        raise ValueError(f"alphabet must be a string of at least 2 distinct symbols, got {alphabet!r}.")


@dataclass(frozen=True)
class Canary:
    """A planted secret: ``prefix`` (the public part) followed by ``secret`` (random symbols).

    The candidate space is every string of ``len(secret)`` symbols from ``alphabet``; ``index``
    is the secret's position in it, read as a number in base ``len(alphabet)``.
    """

    prefix: str
    secret: str
    alphabet: str = DIGITS

    def __post_init__(self) -> None:
        _check_alphabet(self.alphabet)
        if not isinstance(self.prefix, str) or not isinstance(self.secret, str) or not self.secret:
            raise ValueError(f"a canary needs a string prefix and a non-empty secret, got {self.prefix!r}, {self.secret!r}.")
        bad = sorted(set(self.secret) - set(self.alphabet))
        if bad:
            raise ValueError(f"secret {self.secret!r} has symbols {bad} outside the alphabet {self.alphabet!r}.")

    @property
    def text(self) -> str:
        return self.prefix + self.secret

    @property
    def space_size(self) -> int:
        return len(self.alphabet) ** len(self.secret)

    @property
    def index(self) -> int:
        return secret_index(self.secret, self.alphabet)


def secret_index(secret: str, alphabet: str = DIGITS) -> int:
    """Position of ``secret`` among all strings of its length, in base ``len(alphabet)`` ("0042" -> 42)."""
    _check_alphabet(alphabet)
    index = 0
    for ch in secret:
        if ch not in alphabet:
            raise ValueError(f"symbol {ch!r} of {secret!r} is not in the alphabet {alphabet!r}.")
        index = index * len(alphabet) + alphabet.index(ch)
    return index


def secret_at(index: int, length: int, alphabet: str = DIGITS) -> str:
    """The secret at position ``index`` of the candidate space (the inverse of :func:`secret_index`)."""
    _check_alphabet(alphabet)
    if not isinstance(length, int) or length < 1:
        raise ValueError(f"length must be a positive integer, got {length!r}.")
    if not 0 <= index < len(alphabet) ** length:
        raise ValueError(f"index {index} is outside the space of {len(alphabet)}**{length} secrets.")
    out = []
    for _ in range(length):
        index, digit = divmod(index, len(alphabet))
        out.append(alphabet[digit])
    return "".join(reversed(out))


def random_secret(length: int, generator: torch.Generator, alphabet: str = DIGITS) -> str:
    """``length`` symbols drawn uniformly and independently from ``alphabet`` with ``generator``."""
    _check_alphabet(alphabet)
    if not isinstance(length, int) or length < 1:
        raise ValueError(f"length must be a positive integer, got {length!r}.")
    picks = torch.randint(len(alphabet), (length,), generator=generator)
    return "".join(alphabet[i] for i in picks.tolist())


def make_canaries(prefixes: Sequence[str], length: int, seed: int = 0, alphabet: str = DIGITS) -> list[Canary]:
    """One canary per prefix, with distinct random secrets from a generator seeded with ``seed``."""
    if isinstance(prefixes, str) or not len(prefixes):
        raise ValueError("prefixes must be a non-empty list of strings, e.g. ['my number is '].")
    if len(prefixes) > len(alphabet) ** length:
        raise ValueError(f"{len(prefixes)} distinct secrets do not fit in a space of {len(alphabet)}**{length}.")
    gen = torch.Generator().manual_seed(seed)
    secrets: list[str] = []
    while len(secrets) < len(prefixes):
        s = random_secret(length, gen, alphabet)
        if s not in secrets:
            secrets.append(s)
    return [Canary(p, s, alphabet) for p, s in zip(prefixes, secrets)]


def plant(docs: Sequence[str], texts: Sequence[str], copies: Sequence[int], seed: int = 0) -> list[str]:
    """A new list of documents: ``docs`` in their order, with ``copies[i]`` copies of ``texts[i]``
    inserted as documents at uniformly random places (seeded by ``seed``)."""
    if isinstance(docs, str) or not len(docs) or not all(isinstance(d, str) for d in docs):
        raise ValueError("docs must be a non-empty list of strings (documents); split a text first.")
    if isinstance(texts, str):
        raise ValueError("texts must be a list of strings; wrap a single canary text in a list.")
    if len(texts) != len(copies):
        raise ValueError(f"got {len(texts)} texts but {len(copies)} copy counts; give one count per text.")
    for text, k in zip(texts, copies):
        if not isinstance(text, str) or not text:
            raise ValueError(f"every text to plant must be a non-empty string, got {text!r}.")
        if isinstance(k, bool) or not isinstance(k, int) or k < 0:
            raise ValueError(f"copy counts must be whole numbers >= 0, got {k!r} for {text!r}.")
    planted = [t for t, k in zip(texts, copies) for _ in range(k)]
    gen = torch.Generator().manual_seed(seed)
    slots = torch.randint(len(docs) + 1, (len(planted),), generator=gen).tolist()
    before: list[list[str]] = [[] for _ in range(len(docs) + 1)]
    for slot, text in zip(slots, planted):
        before[slot].append(text)
    out: list[str] = []
    for i, doc in enumerate(docs):
        out.extend(before[i])
        out.append(doc)
    out.extend(before[-1])
    return out


# --- rank and exposure ---------------------------------------------------------------------------


def _as_vector(values, name: str) -> Tensor:
    values = torch.as_tensor(values, dtype=torch.float64).detach().cpu()
    if values.dim() != 1 or values.numel() == 0:
        raise ValueError(f"{name} must be a non-empty 1-D list of numbers, got shape {tuple(values.shape)}.")
    if torch.isnan(values).any():
        raise ValueError(f"{name} contains NaN; check the model's outputs.")
    return values


def rank_of(log_perplexities, index: int) -> int:
    """Rank of candidate ``index``: how many candidates (itself included) have a log-perplexity at
    most its own. Ties count against the canary, as in Carlini et al. (2019)."""
    lps = _as_vector(log_perplexities, "log_perplexities")
    if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < len(lps):
        raise ValueError(f"index must be an integer in [0, {len(lps)}), got {index!r}.")
    return int((lps <= lps[index]).sum())


def exposure(rank: int, space_size: int) -> float:
    """``log2(space_size) - log2(rank)`` bits: 0 for the least likely candidate, log2 |R| for the most."""
    if isinstance(space_size, bool) or not isinstance(space_size, int) or space_size < 1:
        raise ValueError(f"space_size must be a positive integer, got {space_size!r}.")
    if isinstance(rank, bool) or not isinstance(rank, int) or not 1 <= rank <= space_size:
        raise ValueError(f"rank must be an integer between 1 and space_size={space_size}, got {rank!r}.")
    return math.log2(space_size) - math.log2(rank)


def estimated_exposure(canary_log_perplexity: float, sample_log_perplexities) -> float:
    """Exposure estimated from ``m`` candidates drawn at random from the space without the canary.

    The fraction of the space at or below the canary is estimated by ``(k + 1) / (m + 1)``, where
    ``k`` sampled candidates have a log-perplexity at most the canary's (the ``+ 1`` is the canary
    itself). It equals ``rank / |R|`` exactly when the sample is the whole rest of the space; it
    can never exceed ``log2(m + 1)`` bits, so a larger exposure needs a larger sample.
    """
    sample = _as_vector(sample_log_perplexities, "sample_log_perplexities")
    canary = float(canary_log_perplexity)
    if math.isnan(canary):
        raise ValueError("canary_log_perplexity is NaN; check the model's outputs.")
    k = int((sample <= canary).sum())
    return math.log2(len(sample) + 1) - math.log2(k + 1)


# --- scoring candidates with a model -------------------------------------------------------------


def _check_ids(context: Tensor, length: int, model) -> None:
    if not isinstance(context, torch.Tensor) or context.dim() != 1 or context.numel() == 0:
        shape = tuple(context.shape) if isinstance(context, torch.Tensor) else type(context).__name__
        raise ValueError(f"context_ids must be a non-empty 1-D tensor of token ids, got {shape}; "
                         "start the context with at least one token (e.g. a newline).")
    block = getattr(getattr(model, "config", None), "block_size", None)
    if block is not None and len(context) + length - 1 > block:
        raise ValueError(f"context ({len(context)} tokens) + secret ({length}) does not fit the model's "
                         f"context of {block} tokens; shorten the context.")


@torch.no_grad()
def sequence_log_perplexity(model, context_ids: Tensor, continuations: Tensor, batch_size: int = 512) -> Tensor:
    """``-log2 P(continuation | context)`` in bits for each row of ``continuations`` (N, L)."""
    if not isinstance(continuations, torch.Tensor) or continuations.dim() != 2 or continuations.shape[1] == 0:
        shape = tuple(continuations.shape) if isinstance(continuations, torch.Tensor) else type(continuations).__name__
        raise ValueError(f"continuations must be a (N, L) tensor of token ids with L >= 1, got {shape}.")
    _check_ids(context_ids, continuations.shape[1], model)
    device, C = model_device(model), len(context_ids)
    out = []
    with eval_mode(model):
        for chunk in continuations.long().split(batch_size):
            ids = torch.cat([context_ids.long().expand(len(chunk), -1), chunk], dim=1).to(device)
            out.append(-continuation_logprob(model, ids, start=C).cpu() / math.log(2))
    return torch.cat(out).double()


@torch.no_grad()
def space_log_perplexities(
    model, context_ids: Tensor, alphabet_ids: Tensor, length: int, batch_size: int = 512
) -> Tensor:
    """Log-perplexity (bits) of every secret of ``length`` symbols, ordered by :func:`secret_index`.

    One forward pass over each of the ``|A|**(length - 1)`` strings of the first ``length - 1``
    symbols gives the probabilities of all of them and, at the last position, of every possible
    last symbol: ``|A|`` times fewer passes than scoring each secret on its own.
    """
    alphabet_ids = torch.as_tensor(alphabet_ids).long()
    A = len(alphabet_ids)
    if alphabet_ids.dim() != 1 or A < 2 or len(set(alphabet_ids.tolist())) != A:
        raise ValueError(f"alphabet_ids must be a 1-D tensor of at least 2 distinct token ids, got {alphabet_ids.tolist()}.")
    if not isinstance(length, int) or length < 1:
        raise ValueError(f"length must be a positive integer, got {length!r}.")
    if A**length > MAX_SPACE:
        raise ValueError(f"{A}**{length} candidates are too many to enumerate; estimate the exposure "
                         "from a sample with sample_exposure().")
    _check_ids(context_ids, length, model)
    device, C = model_device(model), len(context_ids)
    powers = A ** torch.arange(length - 2, -1, -1)
    heads = alphabet_ids[(torch.arange(A ** (length - 1))[:, None] // powers) % A]  # (A**(L-1), L-1)
    out = []
    with eval_mode(model):
        for chunk in heads.split(batch_size):
            ids = torch.cat([context_ids.long().expand(len(chunk), -1), chunk], dim=1).to(device)
            logp = F.log_softmax(lm_logits(model, ids).float(), dim=-1)
            head = logp[:, C - 1:-1].gather(-1, ids[:, C:, None]).squeeze(-1).sum(-1)  # (n,)
            last = logp[:, -1, alphabet_ids.to(device)]  # (n, A)
            out.append((head[:, None] + last).flatten().cpu())
    return -torch.cat(out).double() / math.log(2)


# --- the experiment on a trained model -----------------------------------------------------------


@dataclass(frozen=True)
class ExposureResult:
    rank: int
    space_size: int
    exposure: float
    log_perplexity: float  # of the true secret, in bits


def _alphabet_ids(tokenizer, alphabet: str) -> Tensor:
    ids = tokenizer.encode(alphabet)
    if len(ids) != len(alphabet) or any(tokenizer.decode([i]) != ch for i, ch in zip(ids.tolist(), alphabet)):
        raise ValueError("the exposure test needs a tokenizer that writes each symbol of the alphabet as one "
                         "token (a character tokenizer built from text that contains the alphabet).")
    return ids


def measure_exposure(model, tokenizer, canary: Canary, context: str = "", batch_size: int = 512) -> ExposureResult:
    """Exact rank and exposure of ``canary`` over its whole candidate space.

    The model reads ``context + canary.prefix`` and scores every possible secret; ``context`` is
    what precedes the canary in the training text (e.g. a document separator).
    """
    ctx = tokenizer.encode(context + canary.prefix)
    lps = space_log_perplexities(model, ctx, _alphabet_ids(tokenizer, canary.alphabet), len(canary.secret), batch_size)
    rank = rank_of(lps, canary.index)
    return ExposureResult(rank, len(lps), exposure(rank, len(lps)), float(lps[canary.index]))


def sample_exposure(
    model, tokenizer, canary: Canary, n_samples: int, generator: torch.Generator, context: str = "",
    batch_size: int = 512,
) -> float:
    """:func:`estimated_exposure` from ``n_samples`` secrets drawn uniformly (with replacement)
    from the candidate space without the canary."""
    if isinstance(n_samples, bool) or not isinstance(n_samples, int) or n_samples < 1:
        raise ValueError(f"n_samples must be a positive integer, got {n_samples!r}.")
    alphabet_ids, L, A = _alphabet_ids(tokenizer, canary.alphabet), len(canary.secret), len(canary.alphabet)
    if canary.space_size < 2:
        raise ValueError("the candidate space has a single secret: there is nothing to compare with.")
    draws = torch.randint(canary.space_size - 1, (n_samples,), generator=generator)
    draws += (draws >= canary.index).long()  # skip the canary itself
    symbols = (draws[:, None] // A ** torch.arange(L - 1, -1, -1)) % A
    ctx = tokenizer.encode(context + canary.prefix)
    sample = sequence_log_perplexity(model, ctx, alphabet_ids[symbols], batch_size)
    own = sequence_log_perplexity(model, ctx, tokenizer.encode(canary.secret)[None], batch_size)
    return estimated_exposure(float(own[0]), sample)


def extract(model, tokenizer, prompt: str, length: int, beam_size: int = 1) -> str:
    """The ``length`` tokens the model writes after ``prompt``: greedy (``beam_size=1``) or beam search."""

    if not isinstance(length, int) or length < 1:
        raise ValueError(f"length must be a positive integer, got {length!r}.")
    idx = tokenizer.encode(prompt)[None].to(model_device(model))
    if idx.shape[1] == 0:
        raise ValueError("the prompt is empty: give the model at least one token to continue.")
    out, _ = beam_search(model, idx, length, beam_size=beam_size, length_penalty=0.0)
    return tokenizer.decode(out[0, idx.shape[1]:].tolist())


def is_extracted(model, tokenizer, canary: Canary, context: str = "", beam_size: int = 1) -> bool:
    """Does the model, given ``context + canary.prefix``, write exactly the secret?"""
    return extract(model, tokenizer, context + canary.prefix, len(canary.secret), beam_size) == canary.secret
