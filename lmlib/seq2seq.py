"""An encoder-decoder Transformer for translation, its decoders, and the English-French data.

Derived in chapter 5 ("Applications", notebook 02, "Machine translation"). The model is the
original Transformer's layout {Vaswani et al. 2017} built from chapter 3's pieces: the encoder is
a stack of :class:`lmlib.model.Block` whose self-attention is bidirectional and masked at source
padding; the decoder is a stack of ``Block(cross_attention=True)``: causal self-attention, then
attention to the encoder's output, then the feed-forward network.

Conventions. Ids are batch first. Sources ``src`` (B, S) are padded with ``src_pad_id``; targets
``targets`` (B, T) are the target sentence followed by ``eos_id`` and padded with ``tgt_pad_id``
(padding is ignored by the loss). The decoder reads ``bos_id`` followed by the targets shifted
right (teacher forcing), so ``model(src, targets=y) -> (logits, loss)`` follows
:class:`lmlib.train.Trainer`'s convention with no wrapper: a batch function returns
``(src, targets)``.

API summary
-----------
Seq2SeqConfig(src_vocab_size, tgt_vocab_size, max_src_len=32, max_tgt_len=32, n_encoder_layer=3,
              n_decoder_layer=3, shared_vocab=False, tie_weights=True, src_pad_id=0, tgt_pad_id=0,
              bos_id=1, eos_id=2, *, n_embd=128, n_head=4, n_kv_heads=None, dropout=0.1, bias=True,
              norm="layer", mlp="gelu", mlp_hidden_dim=None, prenorm=True, fast=True, qk_norm=False)
                                                                                      a BlockConfig
Seq2Seq(config)
    forward(src, targets=None, tgt_in=None) -> (logits (B, T, V_tgt), loss or None)
    encode(src) -> (memory (B, S, C), src_mask (B, 1, 1, S))
    decode(tgt_in, memory, src_mask) -> logits (B, T, V_tgt)
    cross_attention(src, tgt_in) -> weights (n_decoder_layer, B, n_head, T, S)
    shift_right(targets) -> tgt_in
greedy_decode(model, src, max_new_tokens=None) -> list[list[int]]        (EOS, BOS stripped)
beam_search(model, src, beam_size=4, length_penalty=1.0, max_new_tokens=None)
    -> (list[list[int]], list[float])
SPECIALS; PAD, BOS, EOS, UNK = 0, 1, 2, 3
translation_vocab(sentences, min_count=1, max_size=None) -> lmlib.tokenizers.Vocab
target_words(vocab, ids) -> list[str]          stop at <eos>, skip <pad> and <bos>
normalize(text), tokenize(text), detokenize(tokens, attach=".,")   (English: attach=".,!?:;")
read_pairs(lines) -> (pairs, PairReport)   load_pairs(max_lines=None) -> (pairs, PairReport)   ("fra-eng")
group_split(pairs, fractions, seed) -> (train, val, test)   no sentence shared across splits
pad_batch(seqs, pad_id, length=None) -> (B, L)
pair_batches(src, tgt, batch_size, src_pad_id=0, tgt_pad_id=0) -> batch_fn

Decoder-only translation (a GPT reads ``source <sep> target <eos>`` as one sequence):
decoder_example(src_ids, tgt_ids, sep_id, eos_id) -> (x, y)   y = IGNORE_INDEX on the source and <sep>
greedy_continue(model, prompts, eos_id, max_new_tokens, batch_size=256) -> list[list[int]]
    greedy continuations of prompts of any lengths (equal lengths batched, no padding), cut before eos_id
"""
from __future__ import annotations

import math
import re
import unicodedata
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import torch
import torch.nn as nn
import torch.nn.functional as F

from lmlib.attention import LearnedPositions
from lmlib.data import IGNORE_INDEX, RowReport, pad_right, random_batches, read_text
from lmlib.device import eval_mode, model_device
from lmlib.generate import generate, next_token
from lmlib.model import Block, BlockConfig
from lmlib.tokenizers import Vocab

Tensor = torch.Tensor

__all__ = [
    "Seq2SeqConfig", "Seq2Seq", "greedy_decode", "beam_search", "SPECIALS", "PAD", "BOS", "EOS", "UNK", "translation_vocab", "target_words", "normalize", "tokenize",
    "detokenize", "PairReport", "read_pairs", "load_pairs", "group_split", "pad_batch", "pair_batches",
    "decoder_example", "greedy_continue",
]


# --- configuration ------------------------------------------------------------------------------

@dataclass
class Seq2SeqConfig(BlockConfig):
    """Sizes and special ids of an encoder-decoder, checked when the config is built.

    ``shared_vocab=True`` means source and target use one vocabulary (e.g. a joint BPE): one
    embedding table serves both sides, so the two vocabulary sizes and pad ids must agree.
    ``tie_weights`` makes the output layer reuse the target embedding. The block's fields (``n_embd``,
    ``n_head``, ``n_kv_heads``, ``dropout``, ``bias``, ``norm``, ``mlp``, ``mlp_hidden_dim``,
    ``prenorm``, ``fast``) come from :class:`lmlib.model.BlockConfig` and are given by keyword; every encoder and decoder
    block is built from this config.
    """

    src_vocab_size: int
    tgt_vocab_size: int
    max_src_len: int = 32
    max_tgt_len: int = 32
    n_encoder_layer: int = 3
    n_decoder_layer: int = 3
    dropout: float = field(default=0.1, kw_only=True)  # a translation model this small overfits without it
    shared_vocab: bool = False
    tie_weights: bool = True
    src_pad_id: int = 0
    tgt_pad_id: int = 0
    bos_id: int = 1
    eos_id: int = 2

    def __post_init__(self) -> None:
        super().__post_init__()  # every field's type (integers as plain ints), then the block's fields
        for name in ("src_vocab_size", "tgt_vocab_size", "max_src_len", "max_tgt_len",
                     "n_encoder_layer", "n_decoder_layer"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"Seq2SeqConfig.{name} must be a positive integer, got {value!r}.")
        if self.max_tgt_len < 2:
            raise ValueError(f"max_tgt_len must be >= 2 (room for <bos> and one token), got {self.max_tgt_len}.")
        for name, vocab in (("src_pad_id", self.src_vocab_size), ("tgt_pad_id", self.tgt_vocab_size),
                            ("bos_id", self.tgt_vocab_size), ("eos_id", self.tgt_vocab_size)):
            value = getattr(self, name)
            if not isinstance(value, int) or not 0 <= value < vocab:
                raise ValueError(f"Seq2SeqConfig.{name}={value!r} is not an id of its vocabulary [0, {vocab}).")
        if len({self.tgt_pad_id, self.bos_id, self.eos_id}) < 3:
            raise ValueError(
                f"tgt_pad_id={self.tgt_pad_id}, bos_id={self.bos_id} and eos_id={self.eos_id} must be three "
                "different ids: padding is ignored by the loss, while <bos> and <eos> are real tokens."
            )
        if self.shared_vocab and (self.src_vocab_size != self.tgt_vocab_size or self.src_pad_id != self.tgt_pad_id):
            raise ValueError(
                "shared_vocab=True uses one embedding table for both sides: src_vocab_size and tgt_vocab_size "
                f"({self.src_vocab_size}, {self.tgt_vocab_size}) and the pad ids ({self.src_pad_id}, "
                f"{self.tgt_pad_id}) must be equal. Use shared_vocab=False for separate vocabularies."
            )


# --- the model ----------------------------------------------------------------------------------

def _is_ids(x: Tensor) -> bool:
    return isinstance(x, torch.Tensor) and not x.is_floating_point() and not x.is_complex() and x.dtype != torch.bool


class Seq2Seq(nn.Module):
    """Encoder-decoder Transformer (chapter 5, notebook 02), pre-norm by default, learned positions.

    Initialisation follows :class:`lmlib.model.GPT`: normal(0, 0.02), and the projections that
    write into the residual stream scaled by 1 / sqrt(2 * layers).
    """

    def __init__(self, config: Seq2SeqConfig) -> None:
        super().__init__()
        if not isinstance(config, Seq2SeqConfig):
            raise TypeError(f"Seq2Seq needs a Seq2SeqConfig, got {type(config).__name__}.")
        self.config = c = config
        self.src_emb = nn.Embedding(c.src_vocab_size, c.n_embd)
        self.tgt_emb = self.src_emb if c.shared_vocab else nn.Embedding(c.tgt_vocab_size, c.n_embd)
        self.src_pos = LearnedPositions(c.max_src_len, c.n_embd)
        self.tgt_pos = LearnedPositions(c.max_tgt_len, c.n_embd)
        self.drop = nn.Dropout(c.dropout)
        self.encoder = nn.ModuleList(Block(c) for _ in range(c.n_encoder_layer))
        for block in self.encoder:
            block.attn.causal = False  # an encoder position sees the whole source
        self.decoder = nn.ModuleList(Block(c, cross_attention=True) for _ in range(c.n_decoder_layer))
        self.ln_enc, self.ln_dec = c.norm_layer(), c.norm_layer()
        self.lm_head = nn.Linear(c.n_embd, c.tgt_vocab_size, bias=False)
        self.apply(self._init_weights)
        depth = c.n_encoder_layer + c.n_decoder_layer
        for name, p in self.named_parameters():
            if name.endswith("out_proj.weight") or name.endswith("mlp.proj.weight"):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * depth))
        if c.tie_weights:
            self.lm_head.weight = self.tgt_emb.weight

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    # --- checks -------------------------------------------------------------------------------
    def _check_ids(self, x: Tensor, name: str, vocab: int, max_len: int, pad_id: int | None = None) -> None:
        if not _is_ids(x) or x.dim() != 2 or x.shape[1] == 0:
            shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            dtype = f", dtype {x.dtype}" if isinstance(x, torch.Tensor) else ""
            raise ValueError(f"{name} must be a non-empty (batch, seq) tensor of integer token ids, got {shape}{dtype}; "
                             "add a batch axis with x[None] for one sentence.")
        if x.shape[1] > max_len:
            raise ValueError(f"{name} has {x.shape[1]} positions but the model has {max_len} ({name} length limit "
                             "in Seq2SeqConfig); filter or crop long sentences first.")
        lo, hi = int(x.min()), int(x.max())
        if lo < 0 or hi >= vocab:
            raise ValueError(f"{name} ids must be in [0, {vocab}), got values in [{lo}, {hi}]; was it encoded with "
                             "the other side's vocabulary?")
        if pad_id is not None:
            empty = (x == pad_id).all(dim=1).nonzero().flatten().tolist()
            if empty:
                raise ValueError(f"{name} rows {empty[:5]} are all padding (pad id {pad_id}): every source needs at "
                                 "least one real token, and src must be padded with config.src_pad_id.")

    # --- the two stacks -----------------------------------------------------------------------
    def encode(self, src: Tensor) -> tuple[Tensor, Tensor]:
        """Run the encoder: ``memory`` (B, S, C) and the key mask (B, 1, 1, S), True at real tokens."""
        c = self.config
        self._check_ids(src, "src", c.src_vocab_size, c.max_src_len, c.src_pad_id)
        mask = (src != c.src_pad_id)[:, None, None, :]
        x = self.drop(self.src_pos(self.src_emb(src.long())))
        for block in self.encoder:  # Block's own branches, with the padding mask passed to attention
            x = block._branch(x, block.ln_1, lambda h, b=block: b.resid_dropout(b.attn(h, mask=mask)))
            x = block._branch(x, block.ln_2, block.mlp)
        return self.ln_enc(x), mask

    def decode(self, tgt_in: Tensor, memory: Tensor, src_mask: Tensor) -> Tensor:
        """Logits (B, T, V_tgt) for every decoder position, given the encoder's output."""
        c = self.config
        self._check_ids(tgt_in, "tgt_in", c.tgt_vocab_size, c.max_tgt_len)
        if memory.dim() != 3 or memory.shape[0] != tgt_in.shape[0] or memory.shape[-1] != c.n_embd:
            raise ValueError(f"memory must be (batch={tgt_in.shape[0]}, S, {c.n_embd}) from encode(), "
                             f"got {tuple(memory.shape)}.")
        if src_mask.shape != (memory.shape[0], 1, 1, memory.shape[1]) or src_mask.dtype != torch.bool:
            raise ValueError(f"src_mask must be the boolean (B, 1, 1, S) mask from encode(), got "
                             f"{tuple(src_mask.shape)} {src_mask.dtype}.")
        x = self.drop(self.tgt_pos(self.tgt_emb(tgt_in.long())))
        for block in self.decoder:
            x = block(x, context=memory, context_mask=src_mask)
        return self.lm_head(self.ln_dec(x))

    def shift_right(self, targets: Tensor) -> Tensor:
        """Teacher forcing: the decoder reads <bos> followed by all targets but the last."""
        bos = torch.full_like(targets[:, :1], self.config.bos_id)
        return torch.cat([bos, targets[:, :-1]], dim=1)

    def forward(self, src: Tensor, targets: Tensor | None = None,
                tgt_in: Tensor | None = None) -> tuple[Tensor, Tensor | None]:
        """Logits (B, T, V_tgt) and the mean cross-entropy over non-padding targets (None without targets).

        With only ``targets`` the decoder input is ``shift_right(targets)``; give ``tgt_in`` to
        decode a prefix (no loss unless ``targets`` of the same shape is given too).
        """
        c = self.config
        if targets is None and tgt_in is None:
            raise ValueError("give targets (training: the decoder input is built from them) or tgt_in (decoding).")
        if targets is not None:
            self._check_ids(src, "src", c.src_vocab_size, c.max_src_len, c.src_pad_id)
            self._check_ids(targets, "targets", c.tgt_vocab_size, c.max_tgt_len)
            if targets.shape[0] != src.shape[0]:
                raise ValueError(f"src and targets need the same batch size, got {src.shape[0]} and {targets.shape[0]}.")
            if tgt_in is None:
                tgt_in = self.shift_right(targets)
            elif tgt_in.shape != targets.shape:
                raise ValueError(f"tgt_in {tuple(tgt_in.shape)} and targets {tuple(targets.shape)} must have the same shape.")
        memory, mask = self.encode(src)
        logits = self.decode(tgt_in, memory, mask)
        loss = None
        if targets is not None:
            loss = F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten().long(), ignore_index=c.tgt_pad_id)
        return logits, loss

    @torch.no_grad()
    def cross_attention(self, src: Tensor, tgt_in: Tensor) -> Tensor:
        """Cross-attention weights (n_decoder_layer, B, n_head, T, S) for plotting alignments.

        Each decoder block's cross-attention is run a second time with ``return_weights=True`` on
        the inputs it received (a forward hook), so the model's own forward pass is unchanged.
        """
        found: list[Tensor] = []

        def hook(module, args, kwargs, output):
            _, weights = module.forward(*args, **{**kwargs, "return_weights": True})
            found.append(weights)

        handles = [b.cross_attn.register_forward_hook(hook, with_kwargs=True) for b in self.decoder]
        try:
            with eval_mode(self):
                self(src, tgt_in=tgt_in)
        finally:
            for h in handles:
                h.remove()
        return torch.stack(found)


# --- decoding -----------------------------------------------------------------------------------

def _max_new(model: Seq2Seq, max_new_tokens: int | None) -> int:
    limit = model.config.max_tgt_len - 1
    if max_new_tokens is None:
        return limit
    if not isinstance(max_new_tokens, int) or not 1 <= max_new_tokens <= limit:
        raise ValueError(f"max_new_tokens must be an integer in [1, {limit}] (max_tgt_len - 1 for <bos>), "
                         f"got {max_new_tokens!r}.")
    return max_new_tokens


def _next_logits(model: Seq2Seq, seqs: Tensor, memory: Tensor, mask: Tensor) -> Tensor:
    """Last-position logits with <pad> and <bos> ruled out: a translation never emits them."""
    logits = model.decode(seqs, memory, mask)[:, -1, :].float()
    logits[:, [model.config.tgt_pad_id, model.config.bos_id]] = float("-inf")
    return logits


def _strip(ids: Sequence[int], eos_id: int) -> list[int]:
    ids = list(ids)
    return ids[: ids.index(eos_id)] if eos_id in ids else ids


@torch.no_grad()
def greedy_decode(model: Seq2Seq, src: Tensor, max_new_tokens: int | None = None) -> list[list[int]]:
    """Translate a batch (B, S) by always taking the most likely next token (chapter 5).

    Stops for a sentence at its first <eos> and for the batch when every sentence has one. Returns
    the generated ids without <bos> and <eos>. No KV cache: the decoder reruns the prefix each step.
    """
    n, c = _max_new(model, max_new_tokens), model.config
    with eval_mode(model):
        memory, mask = model.encode(src)
        out = torch.full((src.shape[0], 1), c.bos_id, dtype=torch.long, device=src.device)
        done = torch.zeros(src.shape[0], 1, dtype=torch.bool, device=src.device)
        for _ in range(n):
            nxt = next_token(_next_logits(model, out, memory, mask), greedy=True)
            nxt = torch.where(done, torch.full_like(nxt, c.eos_id), nxt)
            out = torch.cat([out, nxt], dim=1)
            done |= nxt == c.eos_id
            if bool(done.all()):
                break
    return [_strip(row[1:], c.eos_id) for row in out.tolist()]


@torch.no_grad()
def beam_search(model: Seq2Seq, src: Tensor, beam_size: int = 4, length_penalty: float = 1.0,
                max_new_tokens: int | None = None) -> tuple[list[list[int]], list[float]]:
    """Translate a batch (B, S) keeping ``beam_size`` candidates per sentence (chapter 5).

    At each step every live candidate is extended by every token and the 2 * beam_size best
    extensions (by total log-probability) are ranked. An extension by <eos> among the best
    ``beam_size`` is a finished hypothesis; the best ``beam_size`` others stay live. A sentence is
    done once ``beam_size`` hypotheses have finished (early stopping, so ``beam_size=1`` is greedy
    decoding). The answer is the finished hypothesis (or, if none finished, the live one) with the
    best score = log-probability / length ** length_penalty, where the length counts the
    generated tokens including <eos>. :func:`lmlib.generate.beam_search` is the same search for a
    decoder-only model, one prompt at a time, without early stopping.

    Returns the ids (without <bos> and <eos>) and the scores.
    """
    if not isinstance(beam_size, int) or isinstance(beam_size, bool) or beam_size < 1:
        raise ValueError(f"beam_size must be a positive integer, got {beam_size!r}.")
    if not math.isfinite(length_penalty):
        raise ValueError(f"length_penalty must be a finite number (0: raw log-probability), got {length_penalty!r}.")
    n, c, K = _max_new(model, max_new_tokens), model.config, beam_size
    with eval_mode(model):
        memory, mask = model.encode(src)
        B = src.shape[0]
        memory, mask = memory.repeat_interleave(K, dim=0), mask.repeat_interleave(K, dim=0)
        seqs = torch.full((B * K, 1), c.bos_id, dtype=torch.long, device=src.device)
        logp = torch.full((B, K), float("-inf"), device=src.device)
        logp[:, 0] = 0.0  # at the start only one candidate exists
        finished: list[list[tuple[float, list[int]]]] = [[] for _ in range(B)]
        done = [False] * B
        for t in range(1, n + 1):
            step = F.log_softmax(_next_logits(model, seqs, memory, mask), dim=-1)  # (B*K, V)
            V = step.shape[-1]
            cand = (logp[:, :, None] + step.view(B, K, V)).view(B, K * V)
            top_lp, top_ix = cand.topk(min(2 * K, K * V), dim=1)  # (B, 2K), best first
            beam, tok = top_ix // V, top_ix % V
            ended = tok == c.eos_id
            rank = torch.arange(top_ix.shape[1], device=src.device)
            for b, j in ((ended & (rank < K) & top_lp.isfinite()).nonzero().tolist()):
                if not done[b]:
                    ids = seqs[b * K + beam[b, j]].tolist()[1:]
                    finished[b].append((top_lp[b, j].item() / t ** length_penalty, ids))
            done = [d or len(f) >= K for d, f in zip(done, finished)]
            if all(done):
                break
            # the best K extensions that do not end: sort by (ended, rank)
            keep = (ended.long() * top_ix.shape[1] + rank).argsort(dim=1)[:, :K]
            beam, tok, logp = beam.gather(1, keep), tok.gather(1, keep), top_lp.gather(1, keep)
            rows = (torch.arange(B, device=src.device)[:, None] * K + beam).flatten()
            seqs = torch.cat([seqs[rows], tok.flatten()[:, None]], dim=1)
    results, scores = [], []
    for b in range(B):
        options = list(finished[b])
        if not done[b]:  # ran out of steps: the live candidates compete too
            for k in range(K):
                if math.isfinite(logp[b, k].item()):
                    options.append((logp[b, k].item() / (seqs.shape[1] - 1) ** length_penalty,
                                    seqs[b * K + k].tolist()[1:]))
        score, ids = max(options, key=lambda item: item[0])
        results.append(_strip(ids, c.eos_id))
        scores.append(score)
    return results, scores


# --- text: normalisation, tokens, vocabulary ----------------------------------------------------

_SPACES = "\u00a0\u202f\u2009\u2007\u2002\u2003"  # no-break, narrow, thin and other spaces
_INVISIBLE = "\u200b\u00ad\ufeff"  # zero-width space, soft hyphen, byte-order mark
_TABLE = {**dict.fromkeys(map(ord, _SPACES), " "), **dict.fromkeys(map(ord, _INVISIBLE)),
          ord("\u2019"): "'", ord("\u2018"): "'"}
_ODD = re.compile(f"[{_SPACES}{_INVISIBLE}\u2018\u2019]")
_TOKEN = re.compile(r"\w+|[^\w\s]")


def normalize(text: str) -> str:
    """NFC, lower case, every Unicode space as a plain space, invisible characters removed,
    curly apostrophes made straight, runs of spaces collapsed (chapter 5, notebook 02).

    The French side of Tatoeba writes a narrow no-break space (U+202F) or a no-break space
    (U+00A0) before ``! ? : ;``, and a few sentences hold zero-width spaces or soft hyphens.
    """
    text = unicodedata.normalize("NFC", text).translate(_TABLE)
    return " ".join(text.lower().split())


def tokenize(text: str) -> list[str]:
    """Words and single punctuation marks of the normalised text: ``"c'est"`` -> ``c ' est``."""
    return _TOKEN.findall(normalize(text))


def detokenize(tokens: Iterable[str], attach: str = ".,") -> str:
    """Join tokens with spaces, then re-attach apostrophes, hyphens and the marks in ``attach`` to their words.

    The default suits French, which writes a space before ``! ? : ;``; English attaches those too
    (``attach=".,!?:;"``).
    """
    text = " ".join(tokens)
    text = re.sub(r" ?' ?", "'", text)
    text = re.sub(r" ?- ?", "-", text)
    if not attach:
        return text
    return re.sub(f" ([{re.escape(attach)}])", r"\1", text)


#: The translation vocabularies' special tokens and their ids.
SPECIALS = ("<pad>", "<bos>", "<eos>", "<unk>")
PAD, BOS, EOS, UNK = 0, 1, 2, 3


def translation_vocab(sentences: Iterable[Sequence[str]], min_count: int = 1,
                      max_size: int | None = None) -> Vocab:
    """A :class:`lmlib.tokenizers.Vocab` of tokenized sentences with <pad>=0, <bos>=1, <eos>=2, <unk>=3."""
    return Vocab.from_words((w for s in sentences for w in s), min_count, max_size, SPECIALS, "<unk>")


def target_words(vocab: Vocab, ids: Iterable[int]) -> list[str]:
    """The words of a decoded target: stop at <eos>, skip <pad> and <bos>."""
    out = []
    for word in vocab.decode(ids):
        if word == "<eos>":
            break
        if word not in ("<pad>", "<bos>"):
            out.append(word)
    return out


# --- the English-French pairs -------------------------------------------------------------------

@dataclass
class PairReport(RowReport):
    """A :class:`lmlib.data.RowReport` of :func:`read_pairs`, with the count of kept lines it repaired."""

    source: str = "sentence pairs"
    repaired: int = 0

    def headline(self) -> str:
        return (f"{super().headline()}; {self.repaired:,} kept lines had unusual spaces, invisible characters "
                "or curly apostrophes (repaired)")


def read_pairs(lines: Iterable[str]) -> tuple[list[tuple[str, str]], PairReport]:
    """Parse ``English<TAB>French`` lines (extra columns, e.g. attribution, are ignored).

    Rejected, and counted by reason: lines without a tab, pairs with an empty side after
    normalisation, and repeats of an earlier pair after normalisation. Blank lines (the file's
    last newline) are not rows and are skipped without counting. Lines that :func:`normalize`
    repairs (odd spaces, invisible characters, curly apostrophes) are kept and counted.
    """
    report, pairs, seen = PairReport(), [], set()
    for no, line in enumerate(lines, 1):
        line = line.rstrip("\r\n")
        if not line.strip():
            continue
        report.lines += 1
        cols = line.split("\t")
        if len(cols) < 2:
            report.reject("without a tab", no, line)
            continue
        en, fr = normalize(cols[0]), normalize(cols[1])
        if not en or not fr:
            report.reject("with an empty side", no, line)
        elif (en, fr) in seen:
            report.reject("repeated after normalisation", no, line)
        else:
            seen.add((en, fr))
            pairs.append((en, fr))
            report.repaired += bool(_ODD.search(line))
    report.kept = len(pairs)
    return pairs, report


def load_pairs(max_lines: int | None = None) -> tuple[list[tuple[str, str]], PairReport]:
    """The normalised English-French pairs of the ``fra-eng`` data set (via :mod:`lmlib.data`).

    The file is sorted by the length of the English sentence, so the first ``max_lines`` lines
    are the shortest pairs.
    """
    if max_lines is not None and max_lines < 1:
        raise ValueError(f"max_lines must be >= 1 or None (the whole file), got {max_lines}.")
    return read_pairs(read_text("fra-eng").split("\n", max_lines)[:max_lines])


def group_split(pairs: Sequence[tuple[str, str]], fractions: Sequence[float] = (0.8, 0.1, 0.1),
                seed: int = 0) -> list[list[int]]:
    """Split pair indices so that no English and no French sentence occurs in two parts.

    Tatoeba gives one English sentence several translations and one French sentence several
    sources. Pairs that share a sentence (on either side, transitively) form a group, found with a
    union-find; whole groups are shuffled and dealt to the parts until each holds its fraction.
    """
    if not fractions or any(f <= 0 for f in fractions) or abs(sum(fractions) - 1) > 1e-9:
        raise ValueError(f"fractions must be positive and sum to 1, got {list(fractions)}.")
    parent: dict[tuple[int, str], tuple[int, str]] = {}

    def find(x):
        parent.setdefault(x, x)
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for en, fr in pairs:
        a, b = find((0, en)), find((1, fr))
        if a != b:
            parent[a] = b
    groups: dict = {}
    for i, (en, _) in enumerate(pairs):
        groups.setdefault(find((0, en)), []).append(i)
    order = list(groups.values())
    perm = torch.randperm(len(order), generator=torch.Generator().manual_seed(seed)).tolist()
    parts: list[list[int]] = [[] for _ in fractions]
    bounds = [sum(fractions[: k + 1]) * len(pairs) for k in range(len(fractions))]
    k, dealt = 0, 0
    for g in perm:
        while k < len(parts) - 1 and dealt >= bounds[k]:
            k += 1
        parts[k].extend(order[g])
        dealt += len(order[g])
    return [sorted(p) for p in parts]


# --- batches ------------------------------------------------------------------------------------

def pad_batch(seqs: Sequence[Sequence[int]], pad_id: int, length: int | None = None) -> Tensor:
    """Right-pad id lists into a (B, L) tensor; L is the longest sequence unless ``length`` is given."""
    return pad_right(seqs, pad_id, length)


def pair_batches(src: Sequence[Sequence[int]], tgt: Sequence[Sequence[int]], batch_size: int,
                 src_pad_id: int = 0, tgt_pad_id: int = 0):
    """A batch function ``generator -> (src (B, S), targets (B, T))`` for :class:`lmlib.train.Trainer`.

    Draws ``batch_size`` random pairs and pads each side to the batch's longest sentence. The
    target lists should already end with <eos>.
    """
    if len(src) != len(tgt) or not src:
        raise ValueError(f"src and tgt must be non-empty and the same length, got {len(src)} and {len(tgt)}.")
    return random_batches(len(src), batch_size, lambda rows: (pad_batch([src[i] for i in rows], src_pad_id),
                                                                pad_batch([tgt[i] for i in rows], tgt_pad_id)))


# --- decoder-only translation -------------------------------------------------------------------

def _id_list(ids: Iterable[int] | Tensor, name: str) -> list[int]:
    out = ids.tolist() if isinstance(ids, torch.Tensor) else list(ids)
    if not out:
        raise ValueError(f"{name} is empty: a translation example needs at least one source and one target token.")
    if not all(isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in out):
        raise ValueError(f"{name} must hold non-negative integer token ids, got {out[:8]}.")
    return out


def decoder_example(src_ids: Iterable[int] | Tensor, tgt_ids: Iterable[int] | Tensor, sep_id: int,
                    eos_id: int) -> tuple[Tensor, Tensor]:
    """One training example of a decoder-only translator (chapter 5, notebook 02).

    The sequence is ``source <sep> target <eos>``; the example is its next-token pairs ``x = seq[:-1]``,
    ``y = seq[1:]``, with ``y`` set to :data:`lmlib.data.IGNORE_INDEX` wherever the next token is
    part of the source or the separator. The loss is then the target's alone, ``<eos>`` included:
    the first target token is predicted at the separator's position, and the model is never
    trained to write the source (which it is always given).
    """
    src, tgt = _id_list(src_ids, "src_ids"), _id_list(tgt_ids, "tgt_ids")
    seq = torch.tensor(src + [int(sep_id)] + tgt + [int(eos_id)], dtype=torch.long)
    x, y = seq[:-1].clone(), seq[1:].clone()
    y[: len(src)] = IGNORE_INDEX
    return x, y


@torch.no_grad()
def greedy_continue(model: nn.Module, prompts: Sequence[Sequence[int]], eos_id: int, max_new_tokens: int,
                    batch_size: int = 256) -> list[list[int]]:
    """Greedy continuations of token-id prompts by a decoder-only model, each cut before its first ``eos_id``.

    Prompts of equal length are decoded together by :func:`lmlib.generate.generate` (with its KV
    cache), in batches of up to ``batch_size``; prompts are never padded, so each one sits at
    exactly the positions it had in training, and the answer is the one each prompt would get
    alone. A continuation stops at ``eos_id`` (not returned), after ``max_new_tokens`` tokens, or
    when the context (``model.config.block_size``) is full.
    """
    if not isinstance(max_new_tokens, int) or max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be a positive integer, got {max_new_tokens!r}.")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}.")
    block = model.config.block_size
    by_length: dict[int, list[int]] = {}
    for i, prompt in enumerate(prompts):
        if not 1 <= len(prompt) < block:
            raise ValueError(f"prompt {i} has {len(prompt)} tokens; a prompt needs 1 to {block - 1} "
                             f"(block_size {block} minus room for one new token).")
        by_length.setdefault(len(prompt), []).append(i)
    out: list[list[int]] = [[] for _ in prompts]
    device = model_device(model)
    for length, rows in sorted(by_length.items()):
        steps = min(max_new_tokens, block - length)
        for k in range(0, len(rows), batch_size):
            chunk = rows[k: k + batch_size]
            idx = torch.tensor([list(prompts[i]) for i in chunk], dtype=torch.long, device=device)
            continued = generate(model, idx, steps, greedy=True, eos_id=eos_id)[:, length:]
            for i, row in zip(chunk, continued.tolist()):
                out[i] = _strip(row, eos_id)
    return out
