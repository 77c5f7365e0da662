"""Speculative decoding: a small draft model proposes tokens, the big target model checks them.

Chapter 6 ("Faster and smaller") derives it. Generating with a big model costs one forward pass per
token, and at batch 1 each pass is mostly reading the weights, whatever the number of positions
fed. So let a cheap draft model guess the next ``k`` tokens, then run the target once over all of
them: that one pass gives the target's distribution at every guessed position. Guesses are
accepted left to right by a rule that makes the result follow the target's distribution exactly
(Leviathan et al. 2023; Chen et al. 2023): draft token x, drafted with probability q(x), is kept
with probability min(1, p(x) / q(x)), where p is the target's distribution; at the first
rejection a replacement is drawn from the leftover mass, max(0, p - q) normalised. If every
guess is kept, the target's last distribution gives one more token for free. With ``greedy``
the rule reduces to "keep the guess while it equals the target's argmax".

API summary
-----------
residual_distribution(p, q) -> (V,)
    max(0, p - q) normalised: where a rejected guess's replacement is drawn from (p itself when
    p == q, where no guess is ever rejected but rounding could still say so).
accept_or_resample(p, q, token, generator=None, greedy=False) -> (accepted, token)
    One verification: p and q (V,) are the target's and the draft's distributions at a position,
    ``token`` the draft's guess. Returns whether it is kept and the token to emit (the guess, or
    the replacement).
speculative_generate(target, draft, idx, max_new_tokens, k=4, temperature=1.0, greedy=False,
                     generator=None) -> (ids (1, T + n), SpeculativeStats)
    Both models are :class:`lmlib.model.GPT`-like (``model(idx, cache=...)``, ``new_cache()``,
    ``config.block_size``) over the same vocabulary; one prompt (batch 1). The prompt plus
    ``max_new_tokens`` must fit both models' context.
SpeculativeStats(rounds, drafted, accepted, rejected, target_calls, draft_calls, new_tokens)
    .acceptance_rate (accepted / (accepted + rejected): the share of checked guesses kept; the
    guesses after a rejection are drafted but never checked)  .tokens_per_target_call
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from lmlib.device import eval_mode

Tensor = torch.Tensor

__all__ = ["residual_distribution", "accept_or_resample", "speculative_generate", "SpeculativeStats"]


@dataclass
class SpeculativeStats:
    """What a speculative run did: rounds, guesses drafted, kept and rejected, forward passes."""

    rounds: int = 0
    drafted: int = 0
    accepted: int = 0
    rejected: int = 0
    target_calls: int = 0
    draft_calls: int = 0
    new_tokens: int = 0

    @property
    def acceptance_rate(self) -> float:
        checked = self.accepted + self.rejected
        return self.accepted / checked if checked else 0.0

    @property
    def tokens_per_target_call(self) -> float:
        return self.new_tokens / self.target_calls if self.target_calls else 0.0


def _draw(probs: Tensor, generator: torch.Generator | None) -> int:
    return int(torch.multinomial(probs.cpu().float(), 1, generator=generator))


def residual_distribution(p: Tensor, q: Tensor) -> Tensor:
    """The replacement distribution after a rejection: max(0, p - q), normalised (``p`` if that is all zero)."""
    leftover = (p - q).clamp(min=0)
    total = leftover.sum(-1, keepdim=True)
    return torch.where(total > 0, leftover / total.clamp(min=torch.finfo(leftover.dtype).tiny), p)


def accept_or_resample(p: Tensor, q: Tensor, token: int, generator: torch.Generator | None = None,
                       greedy: bool = False) -> tuple[bool, int]:
    """Keep the draft's ``token`` with probability min(1, p[token] / q[token]), else draw from
    max(0, p - q) normalised; with ``greedy``, keep it when it is p's argmax, else emit the argmax.

    Summed over both ways of emitting x, P(x) = min(q(x), p(x)) + (1 - sum_y min(q(y), p(y)))
    (p(x) - q(x))^+ / sum_y (p(y) - q(y))^+ = p(x): the two normalisers are equal, since
    sum_y min(p, q) + sum_y (p - q)^+ = sum_y p = 1. So the emitted token follows p exactly.
    """
    if greedy:
        best = int(p.argmax())
        return best == token, best
    p_x, q_x = float(p[token]), float(q[token])
    if q_x <= 0:
        raise ValueError(f"the draft proposed token {token}, to which its own distribution gives probability 0.")
    u = float(torch.rand((), generator=generator))
    if u < min(1.0, p_x / q_x):
        return True, token
    return False, _draw(residual_distribution(p, q), generator)


def _logits(model, ids: Tensor, cache: list, n_last: int) -> Tensor:
    """Feed the tokens of ``ids`` that ``cache`` does not hold yet; logits (n_last, V) of the last positions."""
    fresh = ids.shape[1] - cache[0].length
    out = model(ids[:, -fresh:], cache=cache)
    logits = out[0] if isinstance(out, tuple) else out
    return logits[0, -n_last:, :].float()


@torch.no_grad()
def speculative_generate(target, draft, idx: Tensor, max_new_tokens: int, k: int = 4, temperature: float = 1.0,
                         greedy: bool = False, generator: torch.Generator | None = None
                         ) -> tuple[Tensor, SpeculativeStats]:
    """Continue one prompt ``idx`` (1, T) by ``max_new_tokens`` tokens of ``target``, drafted ``k`` at a time.

    Each round: the draft proposes up to ``k`` tokens one by one (k cheap passes, KV-cached), the
    target scores them all in one pass, :func:`accept_or_resample` keeps a prefix and emits one
    token of the target's own (a replacement, or the bonus token after a fully accepted round),
    and both KV caches are cut back to the tokens kept. The output follows ``target``'s
    distribution at ``temperature`` (with ``greedy``: exactly the target's greedy continuation).
    """
    if idx.dim() != 2 or idx.shape[0] != 1 or idx.shape[1] == 0:
        raise ValueError(f"speculative_generate takes one prompt of shape (1, T), got {tuple(idx.shape)}.")
    if not isinstance(k, int) or k < 1:
        raise ValueError(f"k (tokens drafted per round) must be a positive integer, got {k!r}.")
    if not greedy and not temperature > 0:
        raise ValueError(f"temperature must be > 0 (use greedy=True for argmax), got {temperature!r}.")
    limit = min(target.config.block_size, draft.config.block_size)
    if idx.shape[1] + max_new_tokens > limit:
        raise ValueError(f"the prompt ({idx.shape[1]} tokens) plus max_new_tokens={max_new_tokens} must fit the "
                         f"smaller context of the two models ({limit} tokens); shorten one or the other.")

    def probs(logits: Tensor) -> Tensor:
        return F.softmax(logits / (1.0 if greedy else temperature), dim=-1)

    stats = SpeculativeStats()
    ids = idx
    target_cache, draft_cache = target.new_cache(), draft.new_cache()
    with eval_mode(target), eval_mode(draft):
        while ids.shape[1] - idx.shape[1] < max_new_tokens:
            n = min(k, max_new_tokens - (ids.shape[1] - idx.shape[1]) - 1)  # the round adds n + 1 at most
            guesses, q = ids, []
            for _ in range(n):
                q.append(probs(_logits(draft, guesses, draft_cache, 1)[0]))
                stats.draft_calls += 1
                token = int(q[-1].argmax()) if greedy else _draw(q[-1], generator)
                guesses = torch.cat([guesses, guesses.new_tensor([[token]])], dim=1)
            p = probs(_logits(target, guesses, target_cache, n + 1))  # (n + 1, V): one pass checks every guess
            stats.target_calls += 1
            kept, emitted = 0, None
            for i in range(n):
                accepted, token = accept_or_resample(p[i], q[i], int(guesses[0, ids.shape[1] + i]), generator, greedy)
                if not accepted:
                    emitted = token
                    break
                kept += 1
            if emitted is None:  # every guess kept: the target's next distribution is already computed
                emitted = int(p[n].argmax()) if greedy else _draw(p[n], generator)
            stats.rounds += 1
            stats.drafted += n
            stats.accepted += kept
            stats.rejected += kept < n
            ids = torch.cat([guesses[:, : ids.shape[1] + kept], ids.new_tensor([[emitted]])], dim=1)
            for layer in (*target_cache, *draft_cache):  # the caches keep only tokens that stay
                layer.truncate(ids.shape[1] - 1)
    stats.new_tokens = ids.shape[1] - idx.shape[1]
    return ids, stats
