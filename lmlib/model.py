"""The Transformer, assembled: norms, feed-forward networks, blocks and a decoder-only GPT.

Derived in chapter 3 ("Build the Transformer"): notebook 01 derives ``LayerNorm``, ``RMSNorm``,
``MLP`` / ``SwiGLU`` and ``Block`` (pre-norm and post-norm), notebook 02 ``GPTConfig`` and ``GPT``
with its parameter and FLOP counts. Attention itself is chapter 2's
:class:`lmlib.attention.MultiHeadAttention`; it is not re-implemented here. Chapter 5 adds an
encoder-decoder on top of the same ``Block`` (``cross_attention=True``).

Conventions (nanoGPT's, which :class:`lmlib.train.Trainer` relies on): token ids are batch first,
``idx`` of shape (B, T); ``GPT.forward(idx, targets=None, cache=None) -> (logits, loss)`` with
``logits`` (B, T, vocab_size) and ``loss`` the mean next-token cross-entropy (None without
targets).

API summary
-----------
LayerNorm(dim, bias=True, eps=1e-5), RMSNorm(dim, eps=1e-5)          (nn.Module)
MLP(d_model, hidden, bias=True, dropout=0.0, activation="gelu")   Linear -> GELU (tanh form) or ReLU² -> Linear
SwiGLU(d_model, hidden, bias=False, dropout=0.0)        (silu(x W_gate) * x W_up) W_down
BlockConfig(*, n_embd=128, n_head=4, n_kv_heads=None, dropout=0.0, bias=True, norm="layer",
            mlp="gelu", mlp_hidden_dim=None, prenorm=True, fast=True, qk_norm=False)   validated in __post_init__
    .head_dim, .kv_heads, .mlp_hidden, .norm_layer()
Block(config, cross_attention=False, pos_fn=None)       config: any BlockConfig
    forward(x, cache=None, context=None, context_mask=None)
GPTConfig(vocab_size=65, block_size=128, n_layer=4, pos="learned", tie_weights=True, zero_init=False,
          logit_softcap=None, *, n_embd=128, n_head=4, n_kv_heads=None, dropout=0.0, bias=True,
          norm="layer", mlp="gelu", mlp_hidden_dim=None, prenorm=True, fast=True, qk_norm=False)
                                                        a BlockConfig with the model's own fields
GPT(config)
    forward(idx, targets=None, cache=None) -> (logits, loss)     targets: ids, or -100 to skip
    check_input(idx, offset=0, targets=None)            clear errors for ids and targets it cannot take
    hidden_states(idx, cache=None) -> (B, T, n_embd)     final-normed, before the LM head
    new_cache() -> list[KVCache]                        one per layer, for lmlib.generate
    num_params(non_embedding=False) -> int
    grow_vocab(vocab_size)                              new token rows (special tokens), at the mean row
    flops_per_token(seq_len=None, backward=True) -> int  (training FLOPs per token by default)
count_params(config, non_embedding=False) -> int        the same count from the formula alone
num_params(module, trainable_only=False) -> int         the parameters of any module (shared ones once)
GPTWithHead(gpt, n_outputs, pad_id, dropout=0.0)        a linear head on a GPT's hidden states (chapter 5)
    features(x) -> (B, T, n_embd)
"""
from __future__ import annotations

import dataclasses
import math
import numbers
from dataclasses import dataclass, fields

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from lmlib.attention import KVCache, LearnedPositions, MultiHeadAttention, RotaryEmbedding
from lmlib.data import IGNORE_INDEX, check_targets

Tensor = torch.Tensor

_ID_DTYPES = (torch.long, torch.int, torch.int16, torch.uint8, torch.int8)

__all__ = ["LayerNorm", "RMSNorm", "MLP", "SwiGLU", "BlockConfig", "Block", "GPTConfig", "GPT", "count_params", "num_params", "GPTWithHead"]


# --- normalisation ------------------------------------------------------------------------------

class LayerNorm(nn.Module):
    """(x - mean) / sqrt(var + eps) * weight + bias over the last axis (Ba et al. 2016).

    ``bias=False`` drops the shift (as in nanoGPT's bias-free variant). Same numbers as
    ``torch.nn.functional.layer_norm``.
    """

    def __init__(self, dim: int, bias: bool = True, eps: float = 1e-5) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))
        self.bias = nn.Parameter(torch.zeros(dim)) if bias else None

    def forward(self, x: Tensor) -> Tensor:
        return F.layer_norm(x, self.weight.shape, self.weight, self.bias, self.eps)


class RMSNorm(nn.Module):
    """x / sqrt(mean(x^2) + eps) * weight: no centring, no shift (Zhang and Sennrich 2019)."""

    def __init__(self, dim: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        rms = torch.rsqrt(x.float().pow(2).mean(dim=-1, keepdim=True) + self.eps)
        return (x.float() * rms).to(x.dtype) * self.weight


# --- feed-forward networks ----------------------------------------------------------------------

class MLP(nn.Module):
    """The position-wise feed-forward network: widen to ``hidden``, activate, project back.

    ``activation="gelu"`` uses GELU's tanh approximation, as GPT-2 does, so that weights from GPT-2
    give its logits. ``"relu2"`` is ReLU squared, relu(x)^2 (So et al. 2021, "Primer"), which the
    speedruns of chapter 4 adopted: as cheap as ReLU, with a slope that is continuous at zero.
    """

    ACTIVATIONS = ("gelu", "relu2")

    def __init__(self, d_model: int, hidden: int, bias: bool = True, dropout: float = 0.0,
                 activation: str = "gelu") -> None:
        super().__init__()
        if activation not in self.ACTIVATIONS:
            raise ValueError(f"MLP activation must be one of {self.ACTIVATIONS}, got {activation!r}.")
        self.activation = activation
        self.fc = nn.Linear(d_model, hidden, bias=bias)
        self.proj = nn.Linear(hidden, d_model, bias=bias)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        h = self.fc(x)
        h = F.gelu(h, approximate="tanh") if self.activation == "gelu" else F.relu(h).square()
        return self.dropout(self.proj(h))


class SwiGLU(nn.Module):
    """Gated feed-forward network (Shazeer 2020): down(silu(gate(x)) * up(x)), as in Llama."""

    def __init__(self, d_model: int, hidden: int, bias: bool = False, dropout: float = 0.0) -> None:
        super().__init__()
        self.gate = nn.Linear(d_model, hidden, bias=bias)
        self.up = nn.Linear(d_model, hidden, bias=bias)
        self.proj = nn.Linear(hidden, d_model, bias=bias)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        return self.dropout(self.proj(F.silu(self.gate(x)) * self.up(x)))


# --- configuration ------------------------------------------------------------------------------

@dataclass(kw_only=True)
class BlockConfig:
    """What one Transformer block needs: width, heads, dropout and the block's design choices.

    ``norm`` is ``"layer"`` or ``"rms"``; ``mlp`` is ``"gelu"`` (hidden 4 * n_embd) or
    ``"swiglu"`` (hidden 8/3 * n_embd rounded up to a multiple of 8, so both have about the same
    parameter count) or ``"relu2"`` (ReLU squared, hidden 4 * n_embd); ``mlp_hidden_dim``
    overrides that width, for published weights trained with another rule (llama2.c's
    stories260K uses 172 where the formula gives 176, chapter 4).
    ``n_kv_heads`` < ``n_head`` gives grouped-query attention. ``prenorm=False``
    builds the original post-norm block (norm after each residual addition). ``fast`` uses
    PyTorch's fused attention; ``False`` runs chapter 2's explicit formula (same numbers, slower).
    ``qk_norm`` RMS-normalises each head's queries and keys (see
    :class:`lmlib.attention.MultiHeadAttention`). :class:`GPTConfig` and
    :class:`lmlib.seq2seq.Seq2SeqConfig` are block configs with more fields (keyword-only here,
    so their own fields keep their positions).

    Every field typed ``int``, ``bool`` or ``float``, here or in a subclass, is checked for its type
    when the config is built: any integer, a NumPy one too, is stored as a plain ``int``; a float,
    bool or string in an integer field (or anything but True or False in a bool field) is an error
    naming the field.
    """

    n_embd: int = 128
    n_head: int = 4
    n_kv_heads: int | None = None
    dropout: float = 0.0
    bias: bool = True
    norm: str = "layer"
    mlp: str = "gelu"
    mlp_hidden_dim: int | None = None
    prenorm: bool = True
    fast: bool = True
    qk_norm: bool = False

    def __post_init__(self) -> None:
        self._check_field_types()
        name = type(self).__name__
        for field_name in ("n_head", "n_embd"):
            value = getattr(self, field_name)
            if value < 1:
                raise ValueError(f"{name}.{field_name} must be a positive integer, got {value!r}.")
        if self.n_embd % self.n_head:
            raise ValueError(
                f"n_embd={self.n_embd} is not divisible by n_head={self.n_head}: each head gets "
                f"n_embd / n_head features. Pick n_head among the divisors of {self.n_embd}."
            )
        if self.n_kv_heads is not None and self.n_kv_heads < 1:
            raise ValueError(f"{name}.n_kv_heads must be a positive integer or None (one per query head), "
                             f"got {self.n_kv_heads!r}.")
        if self.n_head % self.kv_heads:
            raise ValueError(
                f"n_head={self.n_head} must be a multiple of n_kv_heads={self.n_kv_heads} "
                "(query heads share key/value heads in equal groups)."
            )
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}.")
        hidden = self.mlp_hidden_dim
        if hidden is not None and hidden < 1:
            raise ValueError(f"{name}.mlp_hidden_dim must be a positive integer or None (the default width), got {hidden!r}.")
        for field_name, allowed in {"norm": ("layer", "rms"), "mlp": ("gelu", "swiglu", "relu2")}.items():
            if getattr(self, field_name) not in allowed:
                raise ValueError(f"{name}.{field_name} must be one of {allowed}, got {getattr(self, field_name)!r}.")

    def _check_field_types(self) -> None:
        """Check each ``int``, ``bool`` and ``float`` field's type; store integers as plain ints."""
        name = type(self).__name__
        for f in fields(self):
            kind = f.type if isinstance(f.type, str) else getattr(f.type, "__name__", str(f.type))
            optional = kind.replace(" ", "").endswith("|None")
            kind = kind.replace(" ", "").removesuffix("|None")
            value = getattr(self, f.name)
            if (optional and value is None) or kind not in ("int", "bool", "float"):
                continue
            if kind == "int":
                ok = isinstance(value, numbers.Integral) and not isinstance(value, (bool, np.bool_))
                cast, what = int, "an integer"
            elif kind == "bool":
                ok = isinstance(value, (bool, np.bool_))
                cast, what = bool, "True or False"
            else:
                ok = isinstance(value, numbers.Real) and not isinstance(value, (bool, np.bool_))
                cast, what = float, "a number"
            if not ok:
                hint = f" Write {int(value)}." if kind == "int" and isinstance(value, float) and value.is_integer() else ""
                raise ValueError(
                    f"{name}.{f.name} must be {what}{' or None' if optional else ''}, got {value!r} "
                    f"({type(value).__name__}).{hint}"
                )
            object.__setattr__(self, f.name, cast(value))

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head

    @property
    def kv_heads(self) -> int:
        return self.n_head if self.n_kv_heads is None else self.n_kv_heads

    @property
    def mlp_hidden(self) -> int:
        """The feed-forward width: ``mlp_hidden_dim`` when given, else the rule of ``mlp``."""
        if self.mlp_hidden_dim is not None:
            return self.mlp_hidden_dim
        if self.mlp in ("gelu", "relu2"):
            return 4 * self.n_embd
        return 8 * math.ceil(8 * self.n_embd / 3 / 8)

    def norm_layer(self) -> nn.Module:
        """A fresh normalisation layer of this config's kind (``norm``, ``bias``) and width."""
        if self.norm == "rms":
            return RMSNorm(self.n_embd)
        return LayerNorm(self.n_embd, bias=self.bias)


@dataclass
class GPTConfig(BlockConfig):
    """Every size and choice of a GPT, checked when the config is built (chapter 3, notebook 02).

    ``block_size`` is the context length (the longest sequence the model accepts). ``pos`` is
    ``"learned"`` (GPT-2's position table) or ``"rope"`` (rotary, chapter 2). The block's fields
    (``n_embd``, ``n_head``, ``n_kv_heads``, ``dropout``, ``bias``, ``norm``, ``mlp``,
    ``mlp_hidden_dim``, ``prenorm``, ``fast``, ``qk_norm``) come from :class:`BlockConfig` and are
    given by keyword.

    Two more training-speed options, measured in chapter 4's speedrun section: ``zero_init``
    starts every projection that writes into the residual stream (attention's ``out_proj``, the
    MLP's ``proj``) and an untied output head at zero, so each block begins as the identity and
    the first steps train the embeddings and the reading projections only. ``logit_softcap`` = c
    squashes the logits to c * tanh(logits / c), smoothly bounding them to (-c, c) (Gemma 2;
    None turns it off).
    """

    vocab_size: int = 65
    block_size: int = 128
    n_layer: int = 4
    pos: str = "learned"
    tie_weights: bool = True
    zero_init: bool = False
    logit_softcap: float | None = None

    def __post_init__(self) -> None:
        super().__post_init__()  # every field's type, then the block's fields
        for name in ("vocab_size", "block_size", "n_layer"):
            value = getattr(self, name)
            if value < 1:
                raise ValueError(f"GPTConfig.{name} must be a positive integer, got {value!r}.")
        if self.pos not in ("learned", "rope"):
            raise ValueError(f"GPTConfig.pos must be one of ('learned', 'rope'), got {self.pos!r}.")
        if self.pos == "rope" and self.head_dim % 2:
            raise ValueError(f"rotary positions need an even head_dim, got n_embd / n_head = {self.head_dim}.")
        if self.logit_softcap is not None and not self.logit_softcap > 0:
            raise ValueError(f"GPTConfig.logit_softcap must be a positive number or None (no cap), got {self.logit_softcap!r}.")


# --- the block ----------------------------------------------------------------------------------

class Block(nn.Module):
    """One Transformer layer: causal self-attention and a feed-forward network, each a residual branch.

    Pre-norm (GPT-2 and later): ``x = x + attn(norm(x)); x = x + mlp(norm(x))``. Post-norm (the
    original Transformer): ``x = norm(x + attn(x)); x = norm(x + mlp(x))``. With
    ``cross_attention=True`` a third branch between the two attends to ``context`` (the encoder's
    output in an encoder-decoder, chapter 5).
    """

    def __init__(self, config: BlockConfig, cross_attention: bool = False, pos_fn=None) -> None:
        super().__init__()
        self.prenorm = config.prenorm
        mha = dict(bias=config.bias, dropout=config.dropout, fast=config.fast, qk_norm=config.qk_norm)
        self.ln_1 = config.norm_layer()
        self.attn = MultiHeadAttention(config.n_embd, config.n_head, config.n_kv_heads, causal=True, pos_fn=pos_fn, **mha)
        if cross_attention:
            self.ln_cross = config.norm_layer()
            self.cross_attn = MultiHeadAttention(config.n_embd, config.n_head, config.n_kv_heads, **mha)
        else:
            self.cross_attn = None
        self.ln_2 = config.norm_layer()
        if config.mlp in MLP.ACTIVATIONS:
            self.mlp = MLP(config.n_embd, config.mlp_hidden, config.bias, config.dropout, activation=config.mlp)
        else:
            self.mlp = SwiGLU(config.n_embd, config.mlp_hidden, config.bias, config.dropout)
        self.resid_dropout = nn.Dropout(config.dropout)

    def _branch(self, x: Tensor, norm: nn.Module, fn) -> Tensor:
        if self.prenorm:
            return x + fn(norm(x))
        return norm(x + fn(x))

    def forward(self, x: Tensor, cache: KVCache | None = None, context: Tensor | None = None,
                context_mask: Tensor | None = None) -> Tensor:
        x = self._branch(x, self.ln_1, lambda h: self.resid_dropout(self.attn(h, cache=cache)))
        if self.cross_attn is not None:
            if context is None:
                raise ValueError("this block has cross-attention: pass context (B, S, n_embd), the encoder output.")
            x = self._branch(x, self.ln_cross,
                             lambda h: self.resid_dropout(self.cross_attn(h, context=context, mask=context_mask)))
        return self._branch(x, self.ln_2, self.mlp)


# --- the model ----------------------------------------------------------------------------------

class GPT(nn.Module):
    """A decoder-only Transformer language model (chapter 3, notebook 02).

    Token embedding (+ learned positions, or rotary positions inside attention), dropout,
    ``n_layer`` blocks, a final norm and an output head whose weight is the token embedding
    (``tie_weights``). Initialisation follows GPT-2: normal(0, 0.02) weights, zero biases, and the
    projections that write into the residual stream scaled by 1 / sqrt(2 * n_layer), so the
    stream's variance does not grow with depth.
    """

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        if not isinstance(config, GPTConfig):
            raise TypeError(f"GPT needs a GPTConfig, got {type(config).__name__}.")
        self.config = config
        self.wte = nn.Embedding(config.vocab_size, config.n_embd)
        self.wpe = LearnedPositions(config.block_size, config.n_embd) if config.pos == "learned" else None
        rope = RotaryEmbedding(config.head_dim) if config.pos == "rope" else None
        self.drop = nn.Dropout(config.dropout)
        self.blocks = nn.ModuleList(Block(config, pos_fn=rope) for _ in range(config.n_layer))
        self.ln_f = config.norm_layer()
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        self.apply(self._init_weights)
        for name, p in self.named_parameters():
            if name.endswith("out_proj.weight") or name.endswith("mlp.proj.weight"):
                if config.zero_init:
                    nn.init.zeros_(p)
                else:
                    nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * config.n_layer))
        if config.tie_weights:
            self.lm_head.weight = self.wte.weight
        elif config.zero_init:
            nn.init.zeros_(self.lm_head.weight)

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def new_cache(self) -> list[KVCache]:
        """One empty :class:`lmlib.attention.KVCache` per layer, for incremental decoding."""
        return [KVCache() for _ in self.blocks]

    def check_input(self, idx: Tensor, offset: int = 0, targets: Tensor | None = None) -> None:
        """Raise a clear error for token ids (and targets) the model cannot take.

        Checks ``idx``'s shape, dtype, length and range; ``targets`` must be integer ids of the
        same shape, each in [0, vocab_size) or the ignore value -100, and not all ignored (the mean
        loss over no token is NaN). Inside a ``torch.compile`` trace the range checks are skipped:
        reading ``idx.min()`` would split the compiled graph in two at every call.
        :class:`lmlib.train.Trainer` therefore calls this method on each batch before a compiled
        forward pass. The range checks read one small tensor back from the device.
        """
        if not isinstance(idx, torch.Tensor) or idx.dim() != 2:
            shape = tuple(idx.shape) if isinstance(idx, torch.Tensor) else type(idx).__name__
            raise ValueError(f"idx must be a (batch, seq) tensor of token ids, got {shape}; add a batch axis with idx[None].")
        if idx.dtype not in _ID_DTYPES:
            raise TypeError(f"idx must hold integer token ids, got dtype {idx.dtype}.")
        B, T = idx.shape
        if T == 0:
            raise ValueError("idx is empty along the sequence axis: give at least one token.")
        if B == 0:
            raise ValueError("idx is an empty batch (batch size 0): give at least one sequence.")
        if offset + T > self.config.block_size:
            raise ValueError(
                f"sequence of {offset + T} tokens (cache {offset} + new {T}) is longer than the context "
                f"block_size={self.config.block_size}; crop it to the last {self.config.block_size} tokens."
            )
        if targets is not None:
            if not isinstance(targets, torch.Tensor):
                raise TypeError(f"targets must be a tensor of token ids shaped like idx, got {type(targets).__name__}.")
            if targets.shape != idx.shape:
                raise ValueError(f"targets must have the shape of idx {tuple(idx.shape)}, got {tuple(targets.shape)}.")
        # Compiled graphs and torch.func transforms (DP-SGD's per-example gradients, chapter 6) cannot
        # read values; their callers check the batch on the host first.
        if torch.compiler.is_compiling() or torch._C._functorch.is_functorch_wrapped_tensor(idx):
            if targets is not None and targets.is_floating_point():  # a dtype check costs no device read
                check_targets(targets, self.config.vocab_size)
            return
        lo, hi = torch.stack([idx.min(), idx.max()]).long().tolist()
        if lo < 0 or hi >= self.config.vocab_size:
            raise ValueError(
                f"token ids must be in [0, {self.config.vocab_size}) (vocab_size), got values in "
                f"[{lo}, {hi}]; was the text encoded with a different tokenizer?"
            )
        if targets is not None:
            check_targets(targets, self.config.vocab_size)

    def _cache_offset(self, cache: list[KVCache] | None) -> int:
        if cache is not None and len(cache) != len(self.blocks):
            raise ValueError(f"cache must hold one KVCache per layer ({len(self.blocks)}), got {len(cache)}.")
        return cache[0].length if cache is not None else 0

    def _body(self, idx: Tensor, cache: list[KVCache] | None, offset: int) -> Tensor:
        x = self.wte(idx.long())
        if self.wpe is not None:
            x = self.wpe(x, offset)
        x = self.drop(x)
        for i, block in enumerate(self.blocks):
            x = block(x, cache=None if cache is None else cache[i])
        return self.ln_f(x)

    def hidden_states(self, idx: Tensor, cache: list[KVCache] | None = None) -> Tensor:
        """The final-normed hidden states (B, T, n_embd): the forward pass without the LM head.

        Chapter 5's classifiers pool these instead of predicting the next token.
        """
        offset = self._cache_offset(cache)
        self.check_input(idx, offset)
        return self._body(idx, cache, offset)

    def forward(self, idx: Tensor, targets: Tensor | None = None,
                cache: list[KVCache] | None = None) -> tuple[Tensor, Tensor | None]:
        """Logits (B, T, vocab) for every position, and the mean cross-entropy against ``targets``.

        ``targets`` are the next token at each position, or -100 (:data:`lmlib.data.IGNORE_INDEX`) where the loss should skip it
        (checked by :meth:`check_input`). With ``cache`` (from :meth:`new_cache`), ``idx`` holds
        only the new tokens; their keys and values are appended to the cache and they attend to
        everything before them.
        """
        offset = self._cache_offset(cache)
        self.check_input(idx, offset, targets)
        logits = self.lm_head(self._body(idx, cache, offset))
        if self.config.logit_softcap is not None:
            cap = self.config.logit_softcap
            logits = cap * torch.tanh(logits / cap)
        loss = None
        if targets is not None:
            loss = F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten().long(), ignore_index=IGNORE_INDEX)
        return logits, loss

    def grow_vocab(self, vocab_size: int) -> None:
        """Make room for new tokens (chapter 5: special tokens added to a pretrained model's tokenizer).

        The token table (and an untied output head) get ``vocab_size - config.vocab_size`` new
        rows after the old ones, which keep their ids and values. A new row starts at the mean of
        the old rows: a random row could be far from everything the model has seen, while the mean
        makes the new token look like an "average" token until fine-tuning gives it a meaning.
        ``config.vocab_size`` follows.
        """
        old = self.config.vocab_size
        if not isinstance(vocab_size, int) or vocab_size < old:
            raise ValueError(f"grow_vocab needs a vocabulary of at least the current {old} tokens, got {vocab_size!r}.")
        if vocab_size == old:
            return

        def grown(weight: Tensor) -> nn.Parameter:
            extra = weight.detach().mean(dim=0, keepdim=True).expand(vocab_size - old, -1)
            return nn.Parameter(torch.cat([weight.detach(), extra]).to(weight.dtype))

        self.wte.weight = grown(self.wte.weight)
        self.wte.num_embeddings = vocab_size
        if self.config.tie_weights:
            self.lm_head.weight = self.wte.weight
        else:
            self.lm_head.weight = grown(self.lm_head.weight)
        self.lm_head.out_features = vocab_size
        self.config = dataclasses.replace(self.config, vocab_size=vocab_size)

    def num_params(self, non_embedding: bool = False) -> int:
        """Parameters of the module (a tied weight counted once).

        ``non_embedding=True`` leaves out the token and position tables (the count scaling laws
        use); an untied output head is a matrix multiply and stays in.
        """
        n = num_params(self)
        if non_embedding:
            n -= self.wte.weight.numel()
            if self.wpe is not None:
                n -= self.wpe.table.weight.numel()
        return n

    def flops_per_token(self, seq_len: int | None = None, backward: bool = True) -> int:
        """Floating-point operations per token (chapter 3, notebook 02 derives it).

        Forward: 2 per weight of every matrix multiply (attention and MLP projections and the
        output head), plus attention's own products, q k^T and weights @ v, 2 * 2 * seq_len *
        n_embd per layer at context ``seq_len`` (default ``block_size``). This counts the full
        T x T product, as a dense kernel and the explicit path compute it; a fused causal kernel
        skips the masked half, about half of these attention FLOPs. With ``backward`` (the
        default, what :class:`lmlib.train.Trainer` wants for MFU) the backward pass costs twice the forward: x 3.
        Norms, softmax and activations are a few operations per feature and are left out.
        """
        c = self.config
        T = c.block_size if seq_len is None else seq_len
        matmul = sum(m.weight.numel() for m in self.modules() if isinstance(m, nn.Linear))
        forward = 2 * matmul + c.n_layer * 4 * T * c.n_embd
        return 3 * forward if backward else forward


class GPTWithHead(nn.Module):
    """A GPT body with a linear head on its final hidden states: the base of chapter 5's task models.

    Chapter 5 puts a classifier (:class:`lmlib.classify.GPTClassifier`), a tagger
    (:class:`lmlib.spans.GPTTokenClassifier`) and a span extractor
    (:class:`lmlib.spans.GPTSpanExtractor`) on a pretrained GPT; each differs only in how it
    reads the hidden states and which loss it takes. ``pad_id`` marks right padding. The head
    starts small (normal, std 0.02, zero bias), like the GPT's own initialisation.
    """

    def __init__(self, gpt: GPT, n_outputs: int, pad_id: int, dropout: float = 0.0) -> None:
        super().__init__()
        if not isinstance(gpt, GPT):
            raise TypeError(f"{type(self).__name__} wraps an lmlib.model.GPT, got {type(gpt).__name__}.")
        self.gpt, self.pad_id = gpt, int(pad_id)
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(gpt.config.n_embd, n_outputs)
        nn.init.normal_(self.head.weight, std=0.02)
        nn.init.zeros_(self.head.bias)

    def features(self, x: Tensor) -> Tensor:
        """(B, T, n_embd): the GPT's final hidden states, with the head's dropout."""
        return self.dropout(self.gpt.hidden_states(x))


def count_params(config: GPTConfig, non_embedding: bool = False) -> int:
    """The parameter count of ``GPT(config)`` from the formula alone (chapter 3, notebook 02)."""
    d, L, V, h = config.n_embd, config.n_layer, config.vocab_size, config.mlp_hidden
    kv = config.kv_heads * config.head_dim
    b = 1 if config.bias else 0
    norm = d * (2 if config.norm == "layer" and config.bias else 1)
    attn = (2 * d * d + 2 * d * kv) + b * (2 * d + 2 * kv)
    mlp = (2 * d * h + b * (h + d)) if config.mlp in MLP.ACTIVATIONS else (3 * d * h + b * (2 * h + d))
    qk_norm = 2 * config.head_dim if config.qk_norm else 0
    embed = V * d + (config.block_size * d if config.pos == "learned" else 0)
    head = 0 if config.tie_weights else V * d
    total = embed + L * (attn + qk_norm + mlp + 2 * norm) + norm + head
    return total - embed if non_embedding else total


def num_params(module: nn.Module, trainable_only: bool = False) -> int:
    """The parameters of any module, a shared (tied) tensor counted once; the course's one counter.

    ``trainable_only`` counts only those with ``requires_grad`` (what fine-tuning with frozen
    layers or LoRA actually trains).
    """
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)
