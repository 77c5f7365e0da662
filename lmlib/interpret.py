"""Looking inside a trained GPT: attention maps, the logit lens, linear probes and head ablation.

Derived in chapter 6 ("Challenges"), notebook 05 ("Interpretability"). Everything works on an
unmodified :class:`lmlib.model.GPT` through PyTorch forward hooks, which are removed again before
each function returns; the model is put in evaluation mode for the measurement and given back in
the mode it came in.

Layers are counted the way the residual stream is: index 0 is the embedding (tokens plus learned
positions), index ``l`` (1 ... n_layer) the stream after block ``l``. Attention and heads belong to
blocks, indexed 0 ... n_layer - 1 like ``model.blocks``.

API summary
-----------
attention_maps(model, idx) -> (n_layer, B, n_head, T, T)       softmax weights of every head
previous_token_scores(maps) -> (n_layer, n_head)                mean weight a query puts on the token before it
repeated_tokens(n, length, vocab_size, generator=None, exclude=()) -> (n, 2 * length)   random ids, then again
induction_scores(maps, period) -> (n_layer, n_head)             mean weight on "the token after my last occurrence"
residual_stream(model, idx) -> (n_layer + 1, B, T, n_embd)      the stream before ln_f
logit_lens(model, idx, layers=None) -> (len(layers), B, T, V)   ln_f + lm_head on each layer
lens_stats(model, idx, targets) -> LensStats(loss, agreement)   per layer, vs the final prediction
fit_probe(features, labels, ...) -> Probe                       logistic regression, held-out accuracy
control_labels(tokens, labels, generator) -> labels             Hewitt and Liang's control task
shuffled_labels(labels, generator) -> labels                    the same labels, order destroyed
head_outputs(model, idx) -> (n_layer, B, T, n_head, head_dim)   what each head writes, before out_proj
ablate_head(model, layer, head, mode="zero", means=None)        context manager
head_ablation(model, idx, targets, mode="zero", means=None, progress=True) -> (n_layer, n_head) loss increase
"""
from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from lmlib.device import eval_mode
from lmlib.model import GPT

Tensor = torch.Tensor

__all__ = [
    "attention_maps", "previous_token_scores", "repeated_tokens", "induction_scores", "residual_stream", "logit_lens", "lens_stats", "LensStats", "fit_probe", "Probe",
    "control_labels", "shuffled_labels", "head_outputs", "ablate_head", "head_ablation",
]


# --- checks and plumbing ------------------------------------------------------------------------

def _check_model(model: nn.Module) -> GPT:
    if not isinstance(model, GPT):
        raise TypeError(f"expected an lmlib.model.GPT, got {type(model).__name__}.")
    return model


def _layer_index(model: GPT, layer: int, *, stream: bool) -> int:
    """Validate a layer index; negative indices count from the end, as in Python."""
    n = model.config.n_layer + (1 if stream else 0)
    what = ("residual-stream layer: 0 is the embedding, l the output of block l" if stream
            else "block index, as in model.blocks")
    if not isinstance(layer, int) or isinstance(layer, bool):
        raise TypeError(f"a layer index must be an int, got {type(layer).__name__} ({what}).")
    if not -n <= layer < n:
        raise IndexError(f"layer {layer} is out of range: this model has {n} ({what}), so use 0 ... {n - 1} "
                         f"(or -{n} ... -1 from the end).")
    return layer % n


def _head_index(model: GPT, head: int) -> int:
    H = model.config.n_head
    if not isinstance(head, int) or isinstance(head, bool) or not 0 <= head < H:
        raise IndexError(f"head must be an int in 0 ... {H - 1} (the model has n_head={H}), got {head!r}.")
    return head


@contextlib.contextmanager
def _hooked(model: GPT, hooks: list[tuple[nn.Module, str, object]]) -> Iterator[None]:
    """Register (module, kind, fn) hooks, run in eval mode without gradients, remove them after."""
    handles = []
    try:
        for module, kind, fn in hooks:
            if kind == "pre":
                handles.append(module.register_forward_pre_hook(fn, with_kwargs=True))
            else:
                handles.append(module.register_forward_hook(fn, with_kwargs=True))
        with eval_mode(model), torch.no_grad():
            yield
    finally:
        for handle in handles:
            handle.remove()


def _no_cache(kwargs: dict) -> None:
    if kwargs.get("cache") is not None:
        raise ValueError("interpretability helpers run the whole sequence at once: call the model without a KV cache.")


# --- attention ----------------------------------------------------------------------------------

def attention_maps(model: GPT, idx: Tensor) -> Tensor:
    """The attention weights of every head of every block, (n_layer, B, n_head, T, T).

    A pre-hook asks each block's attention for its weights (``return_weights=True``, the explicit
    softmax path of chapter 2), and a forward hook keeps the weights and hands the block the
    output alone, so the forward pass is otherwise unchanged. Row i of a map is the distribution
    over the positions query i reads; it sums to 1 and is zero above the diagonal (causal mask).
    """
    _check_model(model)
    maps: list[Tensor] = []

    def ask(module, args, kwargs):
        _no_cache(kwargs)
        return args, {**kwargs, "return_weights": True}

    def keep(module, args, kwargs, output):
        out, weights = output
        maps.append(weights.detach())
        return out

    hooks = [(b.attn, "pre", ask) for b in model.blocks] + [(b.attn, "post", keep) for b in model.blocks]
    with _hooked(model, hooks):
        model(idx)
    return torch.stack(maps)


def _check_maps(maps: Tensor) -> Tensor:
    if not isinstance(maps, Tensor) or maps.dim() != 5 or maps.shape[-1] != maps.shape[-2]:
        shape = tuple(maps.shape) if isinstance(maps, Tensor) else type(maps).__name__
        raise ValueError(f"maps must be attention weights (n_layer, B, n_head, T, T) as attention_maps returns, got {shape}.")
    return maps


def previous_token_scores(maps: Tensor) -> Tensor:
    """Per block and head, the mean weight that a query at position i >= 1 puts on position i - 1.

    ``maps`` is (n_layer, B, n_head, T, T) from :func:`attention_maps`; the mean runs over the
    batch and the queries. A head that always reads the token just before scores 1; a head that
    spreads its weight evenly over the i + 1 positions it may read scores about ln(T) / T.
    """
    maps = _check_maps(maps)
    if maps.shape[-1] < 2:
        raise ValueError("previous-token scores need at least 2 positions.")
    return maps.diagonal(offset=-1, dim1=-2, dim2=-1).mean(dim=(1, 3)).cpu()


def repeated_tokens(n: int, length: int, vocab_size: int, generator: torch.Generator | None = None,
                    exclude: Sequence[int] = ()) -> Tensor:
    """``n`` rows of ``length`` random token ids followed by the same ``length`` ids again: (n, 2 * length).

    The ids are drawn uniformly without replacement within a row (so a token's "previous
    occurrence" is unique), leaving out ``exclude`` (special tokens such as an end-of-text). The
    first half cannot be predicted; the second half can, by a model that finds where the current
    token occurred before and copies what followed it (Olsson et al. 2022).
    """
    allowed = torch.tensor([i for i in range(vocab_size) if i not in set(exclude)])
    if not 1 <= length <= len(allowed) or n < 1:
        raise ValueError(f"need n >= 1 rows and 1 <= length <= {len(allowed)} distinct allowed ids, got n={n}, length={length}.")
    rows = torch.stack([allowed[torch.randperm(len(allowed), generator=generator)[:length]] for _ in range(n)])
    return torch.cat([rows, rows], dim=1)


def induction_scores(maps: Tensor, period: int) -> Tensor:
    """Per block and head, the mean weight that a query in a repeat puts on the token after its last occurrence.

    For a sequence whose second half repeats the first (``period`` tokens each, as from
    :func:`repeated_tokens`), the query at i >= period last saw its own token at i - period, and
    the token that followed it sits at i - period + 1. An induction head puts most of its weight
    there; ``maps`` is (n_layer, B, n_head, T, T) with T >= period + 1.
    """
    maps = _check_maps(maps)
    T = maps.shape[-1]
    if not 1 <= period < T:
        raise ValueError(f"period must be between 1 and T - 1 = {T - 1}, got {period}.")
    i = torch.arange(period, T, device=maps.device)
    return maps[..., i, i - period + 1].mean(dim=(1, 3)).cpu()


# --- the residual stream and the logit lens -----------------------------------------------------

def residual_stream(model: GPT, idx: Tensor) -> Tensor:
    """The residual stream (n_layer + 1, B, T, n_embd): the embedding, then each block's output.

    The last entry is what ``model.ln_f`` normalises before the LM head.
    """
    _check_model(model)
    states: list[Tensor] = []

    def keep(module, args, kwargs, output):
        _no_cache(kwargs)
        states.append(output.detach())

    hooks = [(model.drop, "post", keep)] + [(b, "post", keep) for b in model.blocks]
    with _hooked(model, hooks):
        model(idx)
    return torch.stack(states)


def _unembed(model: GPT, stream: Tensor) -> Tensor:
    return model.lm_head(model.ln_f(stream))


def logit_lens(model: GPT, idx: Tensor, layers: Sequence[int] | None = None) -> Tensor:
    """Next-token logits read from intermediate layers, (len(layers), B, T, vocab_size).

    The logit lens (nostalgebraist 2020) applies the model's own final norm and LM head to the
    residual stream after layer l, as if the remaining blocks were skipped. At the last layer it
    gives exactly the model's logits. ``layers`` defaults to all of 0 ... n_layer.
    """
    _check_model(model)
    n = model.config.n_layer
    layers = list(range(n + 1)) if layers is None else [_layer_index(model, l, stream=True) for l in layers]
    stream = residual_stream(model, idx)
    with torch.no_grad():
        return torch.stack([_unembed(model, stream[l]) for l in layers])


@dataclass
class LensStats:
    """Per residual-stream layer (0 = embedding ... n_layer): the logit lens's mean cross-entropy
    against the true next tokens, and how often its top-1 token equals the model's final top-1."""

    loss: Tensor
    agreement: Tensor


def lens_stats(model: GPT, idx: Tensor, targets: Tensor) -> LensStats:
    """Loss and top-1 agreement with the final prediction of the logit lens at every layer."""
    _check_model(model)
    if not isinstance(targets, Tensor) or targets.shape != idx.shape:
        shape = tuple(targets.shape) if isinstance(targets, Tensor) else type(targets).__name__
        raise ValueError(f"targets must be a tensor with the shape of idx {tuple(idx.shape)}, got {shape}.")
    stream = residual_stream(model, idx)
    with torch.no_grad():
        final = _unembed(model, stream[-1]).argmax(-1)
        losses, agree = [], []
        for layer_stream in stream:  # one layer at a time: (B, T, V) is the biggest tensor alive
            logits = _unembed(model, layer_stream)
            losses.append(F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten().long().to(logits.device)))
            agree.append((logits.argmax(-1) == final).float().mean())
    return LensStats(torch.stack(losses).cpu(), torch.stack(agree).cpu())


# --- linear probes ------------------------------------------------------------------------------

@dataclass
class Probe:
    """A fitted linear probe: standardise, then multinomial logistic regression.

    ``train_accuracy`` and ``test_accuracy`` are measured on the two parts of the random split;
    ``majority`` is the test accuracy of always answering the most common training label (the
    floor a probe must beat).
    """

    weight: Tensor
    bias: Tensor
    mean: Tensor
    std: Tensor
    train_accuracy: float
    test_accuracy: float
    majority: float

    def logits(self, features: Tensor) -> Tensor:
        return ((features.double() - self.mean) / self.std) @ self.weight + self.bias

    def predict(self, features: Tensor) -> Tensor:
        return self.logits(features).argmax(-1)


def fit_probe(
    features: Tensor,
    labels: Tensor,
    *,
    test_fraction: float = 0.25,
    weight_decay: float = 1e-3,
    max_iter: int = 200,
    generator: torch.Generator | None = None,
) -> Probe:
    """Fit a logistic-regression probe on frozen features (N, D) for integer labels (N,).

    The points are split at random into training and test parts; the probe (one weight vector
    per class, L2 penalty ``weight_decay`` on the standardised features) is fitted on the first
    by L-BFGS in float64 and its accuracy is reported on both. Only the test accuracy says
    whether the property is linearly *decodable*; compare it with ``majority`` and with the same
    probe on :func:`control_labels` or :func:`shuffled_labels` before reading anything into it.
    """
    if not isinstance(features, Tensor) or features.dim() != 2:
        raise ValueError(f"features must be a (N, D) tensor, got {getattr(features, 'shape', type(features).__name__)}; "
                         "flatten batch and positions first, e.g. h.reshape(-1, h.shape[-1]).")
    if not isinstance(labels, Tensor) or labels.shape != features.shape[:1] or labels.is_floating_point():
        raise ValueError(f"labels must be an integer tensor of shape ({features.shape[0]},), one per row of features, "
                         f"got {getattr(labels, 'shape', type(labels).__name__)}.")
    if not 0 < test_fraction < 1:
        raise ValueError(f"test_fraction must be between 0 and 1, got {test_fraction}.")
    x, y = features.detach().double().cpu(), labels.detach().long().cpu()
    n = len(y)
    n_test = int(round(n * test_fraction))
    if n_test < 1 or n - n_test < 2 or y.min() < 0:
        raise ValueError(f"need at least 3 points with labels >= 0 to split and fit, got {n} "
                         f"(labels from {int(y.min()) if n else None}).")
    order = torch.randperm(n, generator=generator)
    test, train = order[:n_test], order[n_test:]
    mean, std = x[train].mean(0), x[train].std(0).clamp_min(1e-8)
    z = (x - mean) / std
    K = int(y.max()) + 1
    weight = torch.zeros(x.shape[1], K, dtype=torch.float64, requires_grad=True)
    bias = torch.zeros(K, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([weight, bias], max_iter=max_iter, line_search_fn="strong_wolfe")

    def closure() -> Tensor:
        opt.zero_grad()
        loss = F.cross_entropy(z[train] @ weight + bias, y[train]) + weight_decay * weight.pow(2).sum()
        loss.backward()
        return loss

    threads = torch.get_num_threads()
    if x.numel() <= 2_000_000:  # small matrices: extra threads only add synchronisation (100x on a busy CPU)
        torch.set_num_threads(1)
    try:
        with torch.enable_grad():
            opt.step(closure)
    finally:
        torch.set_num_threads(threads)
    weight, bias = weight.detach(), bias.detach()
    pred = (z @ weight + bias).argmax(-1)
    majority = float((y[test] == torch.bincount(y[train], minlength=K).argmax()).double().mean())
    return Probe(weight, bias, mean, std, float((pred[train] == y[train]).double().mean()),
                 float((pred[test] == y[test]).double().mean()), majority)


def control_labels(tokens: Tensor, labels: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """A control task (Hewitt and Liang 2019): every token *type* gets one random label.

    The labels are drawn from the empirical distribution of ``labels``, so the class balance is
    the same, but they depend only on which token sits at the position, not on its context. A
    probe that scores well on them has memorised token identity; the gap between the real task and
    the control (the *selectivity*) is what the representation adds.
    """
    tokens, labels = torch.as_tensor(tokens), torch.as_tensor(labels)
    if tokens.shape != labels.shape or tokens.dim() != 1:
        raise ValueError(f"tokens and labels must be 1-D and of the same length, got {tuple(tokens.shape)} "
                         f"and {tuple(labels.shape)}.")
    types, inverse = torch.unique(tokens, return_inverse=True)
    pick = torch.randint(len(labels), (len(types),), generator=generator)
    return labels[pick][inverse]


def shuffled_labels(labels: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """The same labels in a random order: any relation to the features is destroyed."""
    labels = torch.as_tensor(labels)
    return labels[torch.randperm(len(labels), generator=generator)]


# --- heads and ablation -------------------------------------------------------------------------

def head_outputs(model: GPT, idx: Tensor) -> Tensor:
    """What each head writes, (n_layer, B, T, n_head, head_dim): the input of each ``out_proj``.

    The attention output of block l is ``out_proj`` of the concatenation of these slices, so a
    head's contribution to the residual stream is its slice times its columns of ``out_proj``.
    """
    _check_model(model)
    outs: list[Tensor] = []

    def keep(module, args, kwargs):
        outs.append(args[0].detach())

    hooks = [(b.attn.out_proj, "pre", keep) for b in model.blocks]
    with _hooked(model, hooks):
        model(idx)
    H = model.config.n_head
    return torch.stack([o.unflatten(-1, (H, -1)) for o in outs])


@contextlib.contextmanager
def ablate_head(model: GPT, layer: int, head: int, mode: str = "zero", means: Tensor | None = None) -> Iterator[None]:
    """Inside the ``with`` block, head ``head`` of block ``layer`` writes a constant.

    ``mode="zero"`` replaces its output (before ``out_proj``) by zeros; ``mode="mean"`` by its
    average output ``means[layer, head]`` over some reference text, where ``means`` is
    ``head_outputs(model, idx).mean(dim=(1, 2))``, shape (n_layer, n_head, head_dim). Mean
    ablation removes what the head says about *this* input while keeping it on the scale the
    next layers expect; zeroing can push them off the distribution they were trained on.
    """
    _check_model(model)
    layer, head = _layer_index(model, layer, stream=False), _head_index(model, head)
    D = model.config.head_dim
    if mode not in ("zero", "mean"):
        raise ValueError(f"mode must be 'zero' or 'mean', got {mode!r}.")
    if mode == "mean":
        want = (model.config.n_layer, model.config.n_head, D)
        if not isinstance(means, Tensor) or tuple(means.shape) != want:
            raise ValueError(f"mode='mean' needs means of shape {want}: "
                             "head_outputs(model, idx).mean(dim=(1, 2)) on some reference text.")

    def replace(module, args, kwargs):
        x = args[0].clone()
        if mode == "zero":
            x[..., head * D:(head + 1) * D] = 0
        else:
            x[..., head * D:(head + 1) * D] = means[layer, head].to(x)
        return (x, *args[1:]), kwargs

    handle = model.blocks[layer].attn.out_proj.register_forward_pre_hook(replace, with_kwargs=True)
    try:
        yield
    finally:
        handle.remove()


def head_ablation(
    model: GPT,
    idx: Tensor,
    targets: Tensor,
    mode: str = "zero",
    means: Tensor | None = None,
    progress: bool = True,
) -> Tensor:
    """Loss increase (n_layer, n_head) when each head alone is ablated, against the intact model."""
    from tqdm.auto import tqdm

    _check_model(model)
    with eval_mode(model):
        with torch.no_grad():
            clean = model(idx, targets)[1]
            L, H = model.config.n_layer, model.config.n_head
            delta = torch.zeros(L, H)
            for k in tqdm(range(L * H), desc=f"{mode}-ablating heads", disable=not progress):
                layer, head = divmod(k, H)
                with ablate_head(model, layer, head, mode, means):
                    delta[layer, head] = (model(idx, targets)[1] - clean).item()
    return delta
