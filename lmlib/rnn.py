"""A small recurrent language model (vanilla RNN, LSTM or GRU) and the tools to train and probe it.

Derived in chapter 1, "Neural language models" (chapters/01_background/03_neural_language_models).
The chapter writes its training loop in the open; this module keeps the pieces that later
chapters reuse: the model, batching for truncated backpropagation through time, evaluation, and
the gradient-against-distance probe that shows vanishing gradients.
"""
from __future__ import annotations

import math
from collections.abc import Iterator

import torch
import torch.nn as nn
import torch.nn.functional as F

from lmlib.device import eval_mode, model_device

CELLS = {"rnn": nn.RNN, "lstm": nn.LSTM, "gru": nn.GRU}
State = torch.Tensor | tuple[torch.Tensor, torch.Tensor]


class RNNLM(nn.Module):
    """Embedding -> recurrent layers -> a softmax over the vocabulary (batch first).

    Two output layers compute the same kind of thing, exact log-probabilities of every word:

    - ``cutoffs=None``: a linear layer to V logits and a full softmax. With V = 33,278 words
      this layer costs far more than the recurrent layers.
    - ``cutoffs=[c1, c2, ...]``: the adaptive softmax of Grave et al. (2017),
      ``nn.AdaptiveLogSoftmaxWithLoss``. Frequent words (ids below ``c1``; the vocabulary must be
      sorted by frequency, as :class:`lmlib.tokenizers.Vocab` sorts them) sit in a small head softmax, rare
      words in clusters with narrower projections that are only evaluated for the tokens that
      need them. Probabilities still sum to one over all V words.

    The recurrent part is ``features``; ``target_log_probs`` scores given next tokens and
    ``log_probs`` gives the whole distribution.
    """

    def __init__(
        self,
        vocab_size: int,
        emb_dim: int = 200,
        hidden_dim: int = 200,
        num_layers: int = 1,
        cell: str = "lstm",
        dropout: float = 0.0,
        cutoffs: list[int] | None = None,
    ):
        super().__init__()
        if cell not in CELLS:
            raise ValueError(f"cell must be one of {sorted(CELLS)}, got {cell!r}.")
        if min(vocab_size, emb_dim, hidden_dim, num_layers) < 1:
            raise ValueError(
                f"vocab_size, emb_dim, hidden_dim and num_layers must be positive, got "
                f"{vocab_size}, {emb_dim}, {hidden_dim}, {num_layers}."
            )
        if not 0 <= dropout < 1:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}.")
        if cutoffs is not None and (list(cutoffs) != sorted(set(cutoffs)) or not 0 < min(cutoffs) or max(cutoffs) >= vocab_size):
            raise ValueError(f"cutoffs must increase strictly, between 0 and vocab_size={vocab_size} (exclusive); got {cutoffs}.")
        if cutoffs is not None and hidden_dim // 4 ** len(cutoffs) < 1:
            raise ValueError(
                f"hidden_dim={hidden_dim} is too narrow for {len(cutoffs)} adaptive-softmax clusters (each "
                f"divides the width by 4): use hidden_dim >= {4 ** len(cutoffs)} or fewer cutoffs."
            )
        self.cell, self.vocab_size, self.hidden_dim, self.num_layers = cell, vocab_size, hidden_dim, num_layers
        self.embed = nn.Embedding(vocab_size, emb_dim)
        self.drop = nn.Dropout(dropout)
        self.rnn = CELLS[cell](emb_dim, hidden_dim, num_layers, batch_first=True,
                               dropout=dropout if num_layers > 1 else 0.0)
        if cutoffs is None:
            self.head = nn.Linear(hidden_dim, vocab_size)
            nn.init.zeros_(self.head.bias)
        else:
            self.head = nn.AdaptiveLogSoftmaxWithLoss(hidden_dim, vocab_size, list(cutoffs), div_value=4.0)
        nn.init.uniform_(self.embed.weight, -0.1, 0.1)

    def features(self, x: torch.Tensor, state: State | None = None) -> tuple[torch.Tensor, State]:
        """``x``: (batch, time) token ids -> hidden outputs (batch, time, hidden) and the final state."""
        if x.dim() != 2:
            raise ValueError(f"x must be (batch, time) token ids, got shape {tuple(x.shape)}.")
        return self.features_embedded(self.embed(x), state)

    def features_embedded(self, e: torch.Tensor, state: State | None = None) -> tuple[torch.Tensor, State]:
        """The same from input embeddings (batch, time, emb_dim); used to probe gradients."""
        out, state = self.rnn(self.drop(e), state)
        return self.drop(out), state

    def target_log_probs(self, h: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """log P(target) for each position: ``h`` (..., hidden), ``targets`` (...) -> (...)."""
        if h.shape[:-1] != targets.shape:
            raise ValueError(f"features {tuple(h.shape)} and targets {tuple(targets.shape)} do not match.")
        if isinstance(self.head, nn.Linear):
            return F.log_softmax(self.head(h), dim=-1).gather(-1, targets.unsqueeze(-1)).squeeze(-1)
        return self.head(h.reshape(-1, h.shape[-1]), targets.reshape(-1)).output.view(targets.shape)

    def log_probs(self, h: torch.Tensor) -> torch.Tensor:
        """log P(every word) for each position: (..., hidden) -> (..., V)."""
        if isinstance(self.head, nn.Linear):
            return F.log_softmax(self.head(h), dim=-1)
        return self.head.log_prob(h.reshape(-1, h.shape[-1])).view(*h.shape[:-1], self.vocab_size)

    def forward(self, x: torch.Tensor, targets: torch.Tensor, state: State | None = None) -> tuple[torch.Tensor, State]:
        """Mean negative log-likelihood of ``targets`` given inputs ``x`` (both (batch, time)), and the state."""
        if targets.shape != x.shape:
            raise ValueError(f"targets {tuple(targets.shape)} must have the shape of x {tuple(x.shape)}.")
        h, state = self.features(x, state)
        return -self.target_log_probs(h, targets).mean(), state


def detach_state(state: State | None) -> State | None:
    """Cut the graph between BPTT windows: keep the state's values, forget how they were computed."""
    if state is None:
        return None
    if isinstance(state, tuple):
        return tuple(s.detach() for s in state)
    return state.detach()


def batchify(ids: torch.Tensor, batch_size: int) -> torch.Tensor:
    """Cut a token stream into ``batch_size`` contiguous rows: (batch_size, len // batch_size).

    Row b continues where its previous window ended, so the hidden state can be carried across
    windows (truncated backpropagation through time). Leftover tokens at the end are dropped.
    """
    ids = torch.as_tensor(ids)
    if ids.dim() != 1:
        raise ValueError(f"ids must be a 1-D token stream, got shape {tuple(ids.shape)}.")
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}.")
    per_row = len(ids) // batch_size
    if per_row < 2:
        raise ValueError(
            f"{len(ids)} tokens are too few for batch_size={batch_size}: each row needs at least 2 tokens."
        )
    return ids[: per_row * batch_size].view(batch_size, per_row)


def bptt_windows(rows: torch.Tensor, bptt: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Consecutive (input, target) windows of at most ``bptt`` steps; targets are inputs shifted by one."""
    if bptt < 1:
        raise ValueError(f"bptt must be positive, got {bptt}.")
    for start in range(0, rows.shape[1] - 1, bptt):
        end = min(start + bptt, rows.shape[1] - 1)
        yield rows[:, start:end], rows[:, start + 1 : end + 1]


@torch.no_grad()
def evaluate(model: RNNLM, rows: torch.Tensor, bptt: int = 35) -> float:
    """Mean negative log-likelihood (nats per token) over batchified rows, carrying the state."""
    with eval_mode(model):
        device = model_device(model)
        total, count, state = 0.0, 0, None
        for x, y in bptt_windows(rows, bptt):
            x, y = x.to(device), y.to(device)
            h, state = model.features(x, state)
            total += -model.target_log_probs(h, y).sum().item()
            count += y.numel()
    return total / count


def gradient_by_distance(model: RNNLM, x: torch.Tensor) -> torch.Tensor:
    """How much the loss at the last position depends on the input ``d`` steps earlier.

    For a (batch, T) window, takes the loss of predicting the token after the last input and
    returns, for d = 0..T-2, the mean over the batch of ||dLoss / d embedding at T-1-d||. A
    curve that falls exponentially with d is the vanishing-gradient problem (Bengio, Simard and
    Frasconi 1994): distant inputs barely change what the model learns.
    """
    if x.dim() != 2 or x.shape[1] < 2:
        raise ValueError(f"x must be (batch, T) token ids with T >= 2, got shape {tuple(x.shape)}.")
    with eval_mode(model):
        e = model.embed(x[:, :-1]).detach().requires_grad_(True)
        h, _ = model.features_embedded(e)
        loss = -model.target_log_probs(h[:, -1], x[:, -1]).mean()
        (grad,) = torch.autograd.grad(loss, e)
    return grad.norm(dim=-1).mean(dim=0).flip(0)  # index d = distance back from the last input


def uniform_nll(vocab_size: int) -> float:
    """The loss of a model that knows nothing: log V nats per token (perplexity V)."""
    return math.log(vocab_size)
