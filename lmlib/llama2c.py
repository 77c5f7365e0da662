"""A published Llama in the course's GPT: llama2.c's checkpoint and tokenizer files, read from scratch.

Derived in chapter 4 (notebook 04, "Pretrained weights"), which loads stories260K, the
260K-parameter Llama that Andrej Karpathy trained on TinyStories for llama2.c, and reproduces the
greedy story llama2.c documents for it with :func:`lmlib.generate.generate`.

The checkpoint (llama2.c's legacy ``.bin``, "version 0") is a header of seven int32 (dim,
hidden_dim, n_layers, n_heads, n_kv_heads, vocab_size, seq_len; a negative vocab_size marks an
output head of its own) followed by float32 arrays, each for all layers at once: token embedding,
attention norms, wq, wk, wv, wo, feed-forward norms, w1, w2, w3, the final norm, two legacy tables
of RoPE angles (skipped: our rotary embedding computes them) and the untied head if any. The
model is a pre-norm Transformer with RMSNorm (eps 1e-5), SwiGLU (``w2(silu(w1 x) * w3 x)``),
rotary positions, grouped-query attention and no biases: a :class:`lmlib.model.GPT` with
``norm="rms"``, ``mlp="swiglu"``, ``pos="rope"``, ``bias=False``.

One layout differs. llama2.c rotates adjacent features (2i, 2i+1) of each head together; the
course's :class:`lmlib.attention.RotaryEmbedding` pairs feature i with i + head_dim/2 ("rotate
half"). Reordering the output rows of wq and wk inside each head (even rows first, then odd rows,
:func:`rope_pairs_to_halves`) turns one into the other, and q . k is unchanged because queries
and keys are reordered alike. The attention itself is left as chapter 2 wrote it.

The tokenizer file holds, after an int32 max_token_length, one entry per token: a float32 score,
an int32 byte length and the UTF-8 bytes of the piece (" " stands for SentencePiece's word marker).
Encoding follows llama2.c's ``run.c``: BOS, a space in front of the text (SentencePiece's dummy
prefix), one token per UTF-8 character (bytes with no token of their own become the byte tokens
``<0xXX>``, id byte + 3), then merge, again and again, the adjacent pair whose merged piece scores
highest.

API summary
-----------
load_llama2c(model_bin=None, tokenizer_bin=None) -> (GPT, Llama2cTokenizer)
    Defaults: the course registry's stories260K files. The model is on the CPU, in eval mode.
read_header(path) -> dict                     the seven header fields, plus tie_weights
config_from_header(header) -> GPTConfig       the GPT that holds such a checkpoint
read_checkpoint(path) -> GPT                  the weights of a legacy .bin in a GPT
rope_pairs_to_halves(w, n_heads) -> Tensor    rows of wq / wk from adjacent pairs to rotate-half
rope_halves_to_pairs(w, n_heads) -> Tensor    the inverse (for writing llama2.c's layout)
Llama2cFormatError                            (ValueError) a file that is not what it claims, or cut short
Llama2cTokenizer(pieces, scores, max_token_length=None)
    .from_file(path, vocab_size=None)  .encode(text, bos=True, eos=False) -> Tensor (1-D, long)
    .encode_list(text, bos=True, eos=False) -> list[int]  .decode(ids) -> str  .decode_bytes(ids) -> bytes
    .vocab_size  .bos_id  .eos_id  .pieces  .scores
"""
from __future__ import annotations

import re
import struct
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import torch

from lmlib.data import path as data_path
from lmlib.model import GPT, GPTConfig
from lmlib.tokenizers import check_ids

Tensor = torch.Tensor

__all__ = ["load_llama2c", "read_header", "config_from_header", "read_checkpoint", "rope_pairs_to_halves",
           "rope_halves_to_pairs", "Llama2cFormatError", "Llama2cTokenizer"]

HEADER_FIELDS = ("dim", "hidden_dim", "n_layers", "n_heads", "n_kv_heads", "vocab_size", "seq_len")
HEADER_BYTES = 4 * len(HEADER_FIELDS)
MAX_DIM = 1 << 20  # no size in a llama2.c header comes near this; a larger one means a wrong file
UNK_ID, BOS_ID, EOS_ID = 0, 1, 2  # SentencePiece's fixed ids, which run.c assumes
BYTE_OFFSET = 3  # the byte tokens <0x00>..<0xFF> follow the three special tokens
_BYTE_PIECE = re.compile(rb"<0x([0-9A-Fa-f]{2})>")


class Llama2cFormatError(ValueError):
    """A file that is not a llama2.c checkpoint or tokenizer (or is cut short)."""


# --- the checkpoint --------------------------------------------------------------------------------

def _existing(path: str | Path, what: str) -> Path:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"{what} {path} does not exist. Pass the path of llama2.c's file, or call "
            "load_llama2c() with no arguments to use the course's copy of stories260K."
        )
    return path


def read_header(path: str | Path) -> dict:
    """The seven int32 of a legacy llama2.c checkpoint, checked, with ``tie_weights`` decoded.

    A negative vocab_size in the file means the output head has weights of its own; the returned
    ``vocab_size`` is positive and ``tie_weights`` says which case it is.
    """
    path = _existing(path, "llama2.c checkpoint")
    with path.open("rb") as f:
        raw = f.read(HEADER_BYTES)
    if len(raw) < HEADER_BYTES:
        raise Llama2cFormatError(
            f"{path} has {len(raw)} bytes, fewer than the {HEADER_BYTES}-byte header of a llama2.c checkpoint; "
            "the file is truncated or not a checkpoint."
        )
    header = dict(zip(HEADER_FIELDS, struct.unpack("<7i", raw)))
    header["tie_weights"] = header["vocab_size"] > 0
    header["vocab_size"] = abs(header["vocab_size"])
    bad = {k: v for k, v in header.items() if k != "tie_weights" and not 0 < v <= MAX_DIM}
    if bad:
        raise Llama2cFormatError(
            f"{path} is not a llama2.c checkpoint (legacy version 0): its header gives {bad}, but every "
            f"size must be in [1, {MAX_DIM}]. Is it a newer-format export (with a magic number) or another file?"
        )
    d, h, kv = header["dim"], header["n_heads"], header["n_kv_heads"]
    if d % h or h % kv or (d // h) % 2:
        raise Llama2cFormatError(
            f"{path}: the header's dim={d}, n_heads={h}, n_kv_heads={kv} do not fit together (dim must be a "
            "multiple of n_heads with an even head size, and n_heads a multiple of n_kv_heads)."
        )
    return header


def _layout(header: dict) -> list[tuple[str, tuple[int, ...]]]:
    """(name, shape) of every array of the file, in order (layer-major: one array per name)."""
    d, hid, L, V, S = (header[k] for k in ("dim", "hidden_dim", "n_layers", "vocab_size", "seq_len"))
    head = d // header["n_heads"]
    kv = header["n_kv_heads"] * head
    arrays = [("tok_embeddings", (V, d)), ("attention_norm", (L, d)), ("wq", (L, d, d)), ("wk", (L, kv, d)),
              ("wv", (L, kv, d)), ("wo", (L, d, d)), ("ffn_norm", (L, d)), ("w1", (L, hid, d)),
              ("w2", (L, d, hid)), ("w3", (L, hid, d)), ("norm", (d,)),
              ("freq_cis_real", (S, head // 2)), ("freq_cis_imag", (S, head // 2))]
    if not header["tie_weights"]:
        arrays.append(("output", (V, d)))
    return arrays


def config_from_header(header: dict) -> GPTConfig:
    """The :class:`GPTConfig` of a llama2.c model: RMSNorm, SwiGLU of the header's width, RoPE, no biases."""
    return GPTConfig(
        vocab_size=header["vocab_size"], block_size=header["seq_len"], n_layer=header["n_layers"],
        pos="rope", tie_weights=header["tie_weights"], n_embd=header["dim"], n_head=header["n_heads"],
        n_kv_heads=header["n_kv_heads"], dropout=0.0, bias=False, norm="rms", mlp="swiglu",
        mlp_hidden_dim=header["hidden_dim"],
    )


def rope_pairs_to_halves(w: Tensor, n_heads: int) -> Tensor:
    """Reorder the output rows of a query or key projection (n_heads * head_dim, in) within each head.

    Rows 0, 2, 4, ... of a head come first, then rows 1, 3, 5, ...: the pair (2i, 2i+1) that
    llama2.c rotates together lands on (i, i + head_dim/2), the pair the course's
    :class:`lmlib.attention.RotaryEmbedding` rotates, with the same angle.
    """
    rows, cols = w.shape
    return w.reshape(n_heads, rows // n_heads // 2, 2, cols).transpose(1, 2).reshape(rows, cols)


def rope_halves_to_pairs(w: Tensor, n_heads: int) -> Tensor:
    """The inverse of :func:`rope_pairs_to_halves`: the course's row order back to llama2.c's."""
    rows, cols = w.shape
    return w.reshape(n_heads, 2, rows // n_heads // 2, cols).transpose(1, 2).reshape(rows, cols)


def read_checkpoint(path: str | Path) -> GPT:
    """A :class:`GPT` holding the weights of a legacy llama2.c ``.bin`` (CPU, float32, eval mode)."""
    header = read_header(path)
    path = Path(path)
    layout = _layout(header)
    expected = HEADER_BYTES + 4 * sum(int(np.prod(shape)) for _, shape in layout)
    actual = path.stat().st_size
    if actual != expected:
        tied = "tied" if header["tie_weights"] else "untied"
        raise Llama2cFormatError(
            f"{path} has {actual:,} bytes, but its header ({ {k: header[k] for k in HEADER_FIELDS} }, {tied} "
            f"output head) describes a file of {expected:,} bytes: the file is truncated, padded, or not a "
            "legacy llama2.c checkpoint. Download it again."
        )
    flat = torch.from_numpy(np.fromfile(path, dtype="<f4", offset=HEADER_BYTES).astype(np.float32))
    arrays, start = {}, 0
    for name, shape in layout:
        n = int(np.prod(shape))
        arrays[name] = flat[start: start + n].view(shape)
        start += n
    config = config_from_header(header)
    model = GPT(config)
    h, kv = config.n_head, config.kv_heads
    state = {"wte.weight": arrays["tok_embeddings"], "ln_f.weight": arrays["norm"]}
    for layer in range(config.n_layer):
        p = f"blocks.{layer}."
        state |= {
            p + "ln_1.weight": arrays["attention_norm"][layer],
            p + "attn.q_proj.weight": rope_pairs_to_halves(arrays["wq"][layer], h),
            p + "attn.k_proj.weight": rope_pairs_to_halves(arrays["wk"][layer], kv),
            p + "attn.v_proj.weight": arrays["wv"][layer],
            p + "attn.out_proj.weight": arrays["wo"][layer],
            p + "ln_2.weight": arrays["ffn_norm"][layer],
            p + "mlp.gate.weight": arrays["w1"][layer],
            p + "mlp.proj.weight": arrays["w2"][layer],
            p + "mlp.up.weight": arrays["w3"][layer],
        }
    state["lm_head.weight"] = arrays["tok_embeddings"] if config.tie_weights else arrays["output"]
    model.load_state_dict({k: v.clone() for k, v in state.items()})
    return model.eval()


# --- the tokenizer ---------------------------------------------------------------------------------

class Llama2cTokenizer:
    """llama2.c's SentencePiece BPE, from its exported pieces and scores (``tok512.bin``).

    ``pieces`` are the tokens' bytes (``b" the"``, ``b"<0x0A>"``); ``scores`` their merge
    priorities (higher merges first). Ids 0, 1, 2 are ``<unk>``, BOS and EOS, and ids 3 to 258 the
    byte tokens when the vocabulary has them. Same interface as the course's other tokenizers
    (:mod:`lmlib.tokenizers`): ``encode`` returns a 1-D int64 tensor.
    """

    bos_id = BOS_ID
    eos_id = EOS_ID

    def __init__(self, pieces: Iterable[bytes], scores: Iterable[float], max_token_length: int | None = None) -> None:
        self.pieces = [bytes(p) for p in pieces]
        self.scores = [float(s) for s in scores]
        if len(self.pieces) != len(self.scores):
            raise ValueError(f"got {len(self.pieces)} pieces but {len(self.scores)} scores; give one score per piece.")
        if len(self.pieces) <= EOS_ID:
            raise ValueError(f"a llama2.c vocabulary starts with <unk>, BOS and EOS; got only {len(self.pieces)} pieces.")
        self.max_token_length = max_token_length or max(len(p) for p in self.pieces)
        self._ids: dict[bytes, int] = {}
        for i, piece in enumerate(self.pieces):
            self._ids.setdefault(piece, i)  # run.c's lookup finds one id per piece; keep the first
        self._bytes = [self._piece_bytes(i) for i in range(len(self.pieces))]

    @classmethod
    def from_file(cls, path: str | Path, vocab_size: int | None = None) -> "Llama2cTokenizer":
        """Read llama2.c's tokenizer ``.bin``. ``vocab_size`` (the model's) checks the number of tokens.

        The file does not store its size; without ``vocab_size`` every entry up to the end is read.
        """
        path = _existing(path, "llama2.c tokenizer")
        data = path.read_bytes()
        if len(data) < 4:
            raise Llama2cFormatError(f"{path} has {len(data)} bytes: too short for a llama2.c tokenizer (is it truncated?).")
        (max_len,) = struct.unpack_from("<i", data, 0)
        if not 0 < max_len <= MAX_DIM:
            raise Llama2cFormatError(f"{path}: max_token_length {max_len} is not a positive size; not a llama2.c tokenizer file.")
        pieces, scores, pos = [], [], 4
        while pos < len(data) and (vocab_size is None or len(pieces) < vocab_size):
            if pos + 8 > len(data):
                raise Llama2cFormatError(f"{path} ends inside the entry of token {len(pieces)}: the file is truncated. Download it again.")
            score, n = struct.unpack_from("<fi", data, pos)
            if not 0 <= n <= max_len or pos + 8 + n > len(data):
                raise Llama2cFormatError(
                    f"{path}: token {len(pieces)} claims {n} bytes (max_token_length {max_len}, {len(data) - pos - 8} "
                    "bytes left): the file is truncated or not a llama2.c tokenizer. Download it again."
                )
            pieces.append(data[pos + 8: pos + 8 + n])
            scores.append(score)
            pos += 8 + n
        if vocab_size is not None and len(pieces) != vocab_size:
            raise Llama2cFormatError(
                f"{path} holds {len(pieces)} tokens but the model has vocab_size={vocab_size}: the file is "
                "truncated, or it is the tokenizer of another model."
            )
        if vocab_size is not None and pos != len(data):
            raise Llama2cFormatError(
                f"{path} has {len(data) - pos} bytes after its {vocab_size} tokens: it is the tokenizer of "
                "another model (with a larger vocabulary), or not a llama2.c tokenizer."
            )
        return cls(pieces, scores, max_len)

    @property
    def vocab_size(self) -> int:
        return len(self.pieces)

    def __repr__(self) -> str:
        return f"Llama2cTokenizer(vocab_size={self.vocab_size})"

    def encode_list(self, text: str, bos: bool = True, eos: bool = False) -> list[int]:
        """Token ids of ``text`` as run.c encodes a prompt (see the module docstring)."""
        if not isinstance(text, str):
            raise TypeError(f"encode takes a str, got {type(text).__name__}.")
        ids = [BOS_ID] if bos else []
        if text:
            if b" " not in self._ids:
                raise ValueError("this vocabulary has no ' ' piece for SentencePiece's dummy prefix.")
            ids.append(self._ids[b" "])
        for char in text:
            raw = char.encode("utf-8", errors="surrogatepass")
            if raw in self._ids:
                ids.append(self._ids[raw])
            else:  # byte fallback
                ids.extend(b + BYTE_OFFSET for b in raw)
        start = 1 if bos else 0  # BOS never merges: its piece is not text
        while True:
            best, best_score, best_id = -1, -1e10, -1
            for i in range(start, len(ids) - 1):
                merged = self._ids.get(self.pieces[ids[i]] + self.pieces[ids[i + 1]])
                if merged is not None and self.scores[merged] > best_score:
                    best, best_score, best_id = i, self.scores[merged], merged
            if best < 0:
                break
            ids[best: best + 2] = [best_id]
        if eos:
            ids.append(EOS_ID)
        return ids

    def encode(self, text: str, bos: bool = True, eos: bool = False) -> Tensor:
        """Token ids of ``text`` as a 1-D int64 tensor (BOS first by default, as run.c prompts)."""
        return torch.tensor(self.encode_list(text, bos, eos), dtype=torch.long)

    def _piece_bytes(self, i: int) -> bytes:
        if i in (BOS_ID, EOS_ID):
            return b""  # control tokens: separators, not text
        match = _BYTE_PIECE.fullmatch(self.pieces[i])
        return bytes([int(match.group(1), 16)]) if match else self.pieces[i]

    def decode_bytes(self, ids: Iterable[int] | Tensor) -> bytes:
        """The raw bytes of ``ids``: byte tokens become their byte, BOS and EOS nothing.

        As in run.c, a piece right after BOS loses its leading space (the dummy prefix).
        """
        out, prev = [], None
        for i in check_ids(ids, self.vocab_size):
            piece = self._bytes[i]
            if prev == BOS_ID and piece.startswith(b" "):
                piece = piece[1:]
            out.append(piece)
            prev = i
        return b"".join(out)

    def decode(self, ids: Iterable[int] | Tensor) -> str:
        """Text of ``ids`` (invalid UTF-8, possible mid-character, shows as U+FFFD)."""
        return self.decode_bytes(ids).decode("utf-8", errors="replace")


# --- both files ------------------------------------------------------------------------------------

def load_llama2c(model_bin: str | Path | None = None,
                 tokenizer_bin: str | Path | None = None) -> tuple[GPT, Llama2cTokenizer]:
    """A llama2.c checkpoint in a :class:`GPT` and its tokenizer; by default stories260K from the registry."""
    model_bin = data_path("stories260k", "stories260K.bin") if model_bin is None else model_bin
    tokenizer_bin = data_path("stories260k", "tok512.bin") if tokenizer_bin is None else tokenizer_bin
    model = read_checkpoint(model_bin)
    tokenizer = Llama2cTokenizer.from_file(tokenizer_bin, vocab_size=model.config.vocab_size)
    return model, tokenizer
