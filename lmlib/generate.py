"""Text generation and scoring: decoding rules, a KV-cached sampling loop, beam search, and the
log-probability a model gives a continuation.

Derived in chapter 3 ("Build the Transformer", notebook 03); chapter 5 uses :func:`beam_search`
for translation with an encoder-decoder, and scores responses with :func:`continuation_logprob`
(DPO), as chapter 6 scores secrets (privacy) and template continuations (bias).

API summary
-----------
top_k_filter(logits, k) -> logits         everything below the k-th largest set to -inf
top_p_filter(logits, p) -> logits         keep the smallest set of tokens whose probability >= p
next_token(logits (B, V), temperature=1.0, top_k=None, top_p=None, greedy=False, generator=None)
    -> (B, 1) ids
generate(model, idx, max_new_tokens, temperature=1.0, top_k=None, top_p=None, greedy=False,
         eos_id=None, use_cache=True, generator=None) -> (B, T + n) ids
    ``model(idx, cache=...) -> (logits, loss)`` as :class:`lmlib.model.GPT`. Stops after
    ``max_new_tokens``, or when every sequence has produced ``eos_id`` (finished sequences are
    padded with ``eos_id``). Inputs longer than ``model.config.block_size`` are cropped to the
    last ``block_size`` tokens, with or without the cache, so both paths give the same tokens.
next_logits(model, idx, cache=None, n_new=1) -> (logits (B, V), cache)
    one step of :func:`generate`'s cached loop: the logits after ``idx`` (B, T), feeding only its
    last ``n_new`` tokens through ``cache``, or a fresh cache from the cropped context. Chapter 5's
    chat loop (:func:`lmlib.chat.reply`) steps with it and inserts a calculator's tokens.
beam_search(logits_fn, idx, max_new_tokens, beam_size=4, eos_id=None, length_penalty=1.0,
            block_size=None) -> (ids (1, T + n), score)
    ``logits_fn(ids (beams, T)) -> logits (beams, T, V)`` or a GPT-like model returning
    ``(logits, loss)``.
lm_logits(model, ids) -> (B, T, V)           for a model returning logits or (logits, loss)
target_logprobs(logits, targets, dtype=torch.float32) -> (B, T)   0 where a target is IGNORE_INDEX
continuation_logprob(model, ids, start, end=None, dtype=torch.float32) -> (B,)
    log P(ids[b, start:end] | ids[b, :start]), summed: one forward pass scores every row. Chapter
    5's DPO, chapter 6's exposure test and its bias probes all score continuations with it.
"""
from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from lmlib.data import IGNORE_INDEX
from lmlib.device import eval_mode

Tensor = torch.Tensor

__all__ = ["top_k_filter", "top_p_filter", "next_token", "next_logits", "generate", "beam_search", "lm_logits",
           "target_logprobs", "continuation_logprob"]


def top_k_filter(logits: Tensor, k: int) -> Tensor:
    """Keep the ``k`` largest logits of each row (last axis), set the rest to -inf.

    Ties with the k-th largest value are kept, so a row may keep more than k entries.
    """
    if not isinstance(k, int) or isinstance(k, bool) or k < 1:
        raise ValueError(f"top_k must be a positive integer, got {k!r}.")
    k = min(k, logits.shape[-1])
    kth = torch.topk(logits, k, dim=-1).values[..., -1:]
    return logits.masked_fill(logits < kth, float("-inf"))


def top_p_filter(logits: Tensor, p: float) -> Tensor:
    """Nucleus filter (Holtzman et al. 2020): keep the most likely tokens until their total
    probability reaches ``p``, set the rest to -inf. The most likely token is always kept.
    """
    if not 0.0 < p <= 1.0:
        raise ValueError(f"top_p must be in (0, 1], got {p!r}.")
    sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
    probs = F.softmax(sorted_logits.float(), dim=-1)
    before = probs.cumsum(dim=-1) - probs  # probability of the tokens ranked above this one
    drop_sorted = before >= p  # enough mass already without this token
    drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
    return logits.masked_fill(drop, float("-inf"))


def next_token(
    logits: Tensor,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    greedy: bool = False,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Pick one token per row of ``logits`` (B, V): argmax, or a sample from the filtered softmax.

    Order: divide by ``temperature``, then top-k, then top-p, then sample.
    """
    if logits.dim() != 2:
        raise ValueError(f"logits must have shape (batch, vocab), got {tuple(logits.shape)}.")
    if greedy:
        return logits.argmax(dim=-1, keepdim=True)
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0 (use greedy=True for argmax), got {temperature!r}.")
    logits = logits.float() / temperature
    if top_k is not None:
        logits = top_k_filter(logits, top_k)
    if top_p is not None:
        logits = top_p_filter(logits, top_p)
    probs = F.softmax(logits, dim=-1)
    if generator is not None and generator.device != probs.device:
        return torch.multinomial(probs.to(generator.device), 1, generator=generator).to(logits.device)
    return torch.multinomial(probs, 1, generator=generator)


def _check_idx(idx: Tensor) -> None:
    if not isinstance(idx, torch.Tensor) or idx.dim() != 2 or idx.shape[1] == 0:
        shape = tuple(idx.shape) if isinstance(idx, torch.Tensor) else type(idx).__name__
        raise ValueError(f"idx must be a non-empty (batch, seq) tensor of token ids, got {shape}; use idx[None] for one prompt.")


@torch.no_grad()
def next_logits(model: torch.nn.Module, idx: Tensor, cache: list | None = None,
                n_new: int = 1) -> tuple[Tensor, list]:
    """The logits (B, V) of the token after ``idx`` (B, T), and the KV cache that now holds ``idx``.

    ``cache`` holds the keys and values of every token of ``idx`` but the last ``n_new``; only
    those are run through the model. Without a cache, or when the new tokens would not fit in
    ``model.config.block_size``, a fresh cache is filled from the last ``block_size`` tokens (a
    model with learned positions must shift every position then). A loop that appends sampled
    tokens (``n_new=1``) or tokens of its own choosing (a tool's output) calls this at every step,
    inside :func:`lmlib.device.eval_mode` as :func:`generate` does (no gradients are kept).
    """
    _check_idx(idx)
    block_size = model.config.block_size
    if cache is None or cache[0].length + n_new > block_size:
        cache = model.new_cache()  # (re)fill from the cropped context
        logits, _ = model(idx[:, -block_size:], cache=cache)
    else:
        if not 1 <= n_new <= idx.shape[1] or cache[0].length != idx.shape[1] - n_new:
            raise ValueError(f"the cache holds {cache[0].length} tokens, but idx has {idx.shape[1]} of which "
                             f"n_new={n_new} are new: pass the cache that holds all of idx but its last "
                             "n_new tokens.")
        logits, _ = model(idx[:, -n_new:], cache=cache)
    return logits[:, -1, :], cache


@torch.no_grad()
def generate(
    model: torch.nn.Module,
    idx: Tensor,
    max_new_tokens: int,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    greedy: bool = False,
    eos_id: int | None = None,
    use_cache: bool = True,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Continue each prompt in ``idx`` (B, T) by up to ``max_new_tokens`` tokens (chapter 3, notebook 03).

    With ``use_cache`` the prompt is run once and then each step feeds only the newest token,
    reading the earlier keys and values from a KV cache: the same tokens as ``use_cache=False``,
    which recomputes the whole context at every step. When the context is full, a model with
    learned positions must shift every token's position, so the cache is rebuilt from the cropped
    window (each such step costs a full forward pass).
    """
    _check_idx(idx)
    if not isinstance(max_new_tokens, int) or max_new_tokens < 0:
        raise ValueError(f"max_new_tokens must be a non-negative integer, got {max_new_tokens!r}.")
    if not greedy and not temperature > 0:
        raise ValueError(f"temperature must be > 0 (use greedy=True for argmax), got {temperature!r}.")
    block_size = model.config.block_size
    done = torch.zeros(idx.shape[0], 1, dtype=torch.bool, device=idx.device)
    cache = None
    with eval_mode(model):
        for _ in range(max_new_tokens):
            if use_cache:
                logits, cache = next_logits(model, idx, cache)
            else:
                logits = model(idx[:, -block_size:])[0][:, -1, :]
            nxt = next_token(logits, temperature, top_k, top_p, greedy, generator)
            if eos_id is not None:
                nxt = torch.where(done, torch.full_like(nxt, eos_id), nxt)
                done = done | (nxt == eos_id)
            idx = torch.cat([idx, nxt], dim=1)
            if eos_id is not None and bool(done.all()):
                break
    return idx


@torch.no_grad()
def beam_search(
    logits_fn: Callable[[Tensor], Tensor] | torch.nn.Module,
    idx: Tensor,
    max_new_tokens: int,
    beam_size: int = 4,
    eos_id: int | None = None,
    length_penalty: float = 1.0,
    block_size: int | None = None,
) -> tuple[Tensor, float]:
    """The most likely continuation of one prompt (1, T) found by keeping ``beam_size`` candidates.

    Each step extends every live candidate by every token and keeps the ``beam_size`` best by total
    log-probability. A candidate that emits ``eos_id`` is finished; the result is the finished (or,
    at the end, live) candidate with the best score = log-probability / length ** length_penalty
    (0 ranks by raw log-probability, which favours short outputs). No cache: clarity first.
    """
    _check_idx(idx)
    if idx.shape[0] != 1:
        raise ValueError(f"beam_search decodes one prompt at a time, got a batch of {idx.shape[0]}.")
    if not isinstance(beam_size, int) or beam_size < 1:
        raise ValueError(f"beam_size must be a positive integer, got {beam_size!r}.")
    if block_size is None and hasattr(logits_fn, "config"):
        block_size = logits_fn.config.block_size

    def step(seqs: Tensor) -> Tensor:
        out = logits_fn(seqs if block_size is None else seqs[:, -block_size:])
        out = out[0] if isinstance(out, tuple) else out
        return F.log_softmax(out[:, -1, :].float(), dim=-1)

    def score(logp: float, n: int) -> float:
        return logp / max(n, 1) ** length_penalty

    beams, logps = idx, torch.zeros(1, device=idx.device)
    finished: list[tuple[float, Tensor]] = []
    with eval_mode(logits_fn):  # a plain function passes through
        for t in range(max_new_tokens):
            cand = (logps[:, None] + step(beams)).flatten()  # (beams * V)
            V = cand.numel() // beams.shape[0]
            # 2 * beam_size candidates: even if up to beam_size of them end, beam_size stay live
            top = torch.topk(cand, min(2 * beam_size, cand.numel()))
            rows, toks = top.indices // V, top.indices % V
            seqs = torch.cat([beams[rows], toks[:, None]], dim=1)
            ended = toks == eos_id if eos_id is not None else torch.zeros_like(toks, dtype=torch.bool)
            for i in ended.nonzero().flatten().tolist():
                if i < beam_size:  # an ending that ranks among the best beam_size counts
                    finished.append((score(top.values[i].item(), t + 1), seqs[i: i + 1]))
            beams, logps = seqs[~ended][:beam_size], top.values[~ended][:beam_size]
            if beams.shape[0] == 0:
                break
    n = max_new_tokens
    finished += [(score(logps[i].item(), n), beams[i: i + 1]) for i in range(beams.shape[0])]
    best_score, best = max(finished, key=lambda item: item[0])
    return best, best_score


# --- scoring: how likely a model finds a given continuation --------------------------------------

def lm_logits(model, ids: Tensor) -> Tensor:
    """Logits (B, T, V) of ``model`` on ``ids`` (B, T), whether it returns ``logits`` or ``(logits, loss)``."""
    out = model(ids)
    logits = out[0] if isinstance(out, (tuple, list)) else out
    if not isinstance(logits, torch.Tensor) or logits.dim() != 3 or logits.shape[:2] != ids.shape:
        got = tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__
        raise ValueError(f"the model must map ids {tuple(ids.shape)} to logits (B, T, V), got {got}.")
    return logits


def target_logprobs(logits: Tensor, targets: Tensor, dtype: torch.dtype = torch.float32) -> Tensor:
    """(B, T) log-probabilities of ``targets`` under ``logits`` (B, T, V); 0 where a target is IGNORE_INDEX."""
    if logits.dim() != 3 or targets.shape != logits.shape[:2]:
        raise ValueError(f"need logits (B, T, V) and targets (B, T), got {tuple(logits.shape)} and {tuple(targets.shape)}.")
    keep = targets != IGNORE_INDEX
    logp = F.log_softmax(logits.to(dtype), dim=-1)
    return logp.gather(-1, torch.where(keep, targets, 0).long().unsqueeze(-1)).squeeze(-1) * keep


def continuation_logprob(model, ids: Tensor, start, end=None, dtype: torch.dtype = torch.float32) -> Tensor:
    """(B,) ``log P(ids[b, start:end] | ids[b, :start])``: a continuation's log-probability, summed.

    ``start`` (an int, or one per row) is the position of the continuation's first token, at
    least 1 (the first token is predicted from the ones before it); ``end`` (default: the whole
    row, or one per row) is one past its last, so right padding after ``end`` is never scored. One
    forward pass scores every row. It runs in the model's current mode and keeps gradients (DPO
    trains through it); wrap it in ``torch.no_grad()`` and :func:`lmlib.device.eval_mode` to measure.
    """
    if not isinstance(ids, torch.Tensor) or ids.dim() != 2 or ids.shape[1] < 2:
        shape = tuple(ids.shape) if isinstance(ids, torch.Tensor) else type(ids).__name__
        raise ValueError(f"ids must be a (B, T) tensor of token ids with T >= 2, got {shape}.")
    B, T = ids.shape
    start = torch.as_tensor(start, device=ids.device).expand(B)
    end = torch.full((B,), T, device=ids.device) if end is None else torch.as_tensor(end, device=ids.device).expand(B)
    if (start < 1).any() or (end > T).any() or (start >= end).any():
        raise ValueError(f"need 1 <= start < end <= T={T} in every row (a non-empty continuation after a "
                         f"non-empty context), got start {start.tolist()} and end {end.tolist()}.")
    position = torch.arange(1, T, device=ids.device)  # the position of each predicted token
    inside = (position >= start[:, None]) & (position < end[:, None])
    targets = ids[:, 1:].masked_fill(~inside, IGNORE_INDEX)
    return target_logprobs(lm_logits(model, ids[:, :-1]), targets, dtype).sum(dim=1)
