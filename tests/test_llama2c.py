"""lmlib.llama2c (chapter 4): llama2.c's checkpoint and tokenizer in the course's GPT.

The strongest check is the published one: greedy decoding of stories260K with the course's own
``generate`` writes, character for character, the story llama2.c documents for ``run.c -t 0.0``.
The loader is also checked on a tiny random Llama written in llama2.c's layout here, against a
forward pass written the way run.c computes it (adjacent-pair rotary embedding), so the RoPE
reordering is tested independently of the real weights.
"""
from __future__ import annotations

import math
import re
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import lmlib.data
from lmlib.generate import generate
from lmlib.llama2c import (Llama2cFormatError, Llama2cTokenizer, config_from_header, load_llama2c, read_checkpoint,
                           read_header, rope_halves_to_pairs, rope_pairs_to_halves)
from lmlib.model import GPT, GPTConfig, count_params

ROOT = Path(__file__).resolve().parents[1]
REFERENCE_DOC = ROOT.parent / "shared" / "reference" / "llama2.c" / "doc" / "stories260K.md"

# llama2.c's documented greedy sample of stories260K (doc/stories260K.md, `./run ... -t 0.0`, 256 steps):
# a fact of the published model, kept here for machines without the reference folder.
DOCUMENTED_GREEDY = """\
Once upon a time, there was a little girl named Lily. She loved to play outside in the park. One day, she saw a big, red ball. She wanted to play with it, but it was too high.
Lily's mom said, "Lily, let's go to the park." Lily was sad and didn't know what to do. She said, "I want to play with your ball, but I can't find it."
Lily was sad and didn't know what to do. She said, "I'm sorry, Lily. I didn't know what to do."
Lily didn't want to help her mom, so she said, "I'm sorry, mom. I didn't know what to do." Her mom said, "Don't worry, Lily. We can help you."""


def documented_greedy() -> str:
    """The sample from the reference folder when it is there (checked against the constant), else the constant."""
    if not REFERENCE_DOC.is_file():
        return DOCUMENTED_GREEDY
    doc = REFERENCE_DOC.read_text()
    match = re.search(r"^\$ \./run \S+ -z \S+ -t 0\.0\n(.*?)\n```", doc, re.S | re.M)
    assert match, f"no greedy sample found in {REFERENCE_DOC}"
    assert match.group(1) == DOCUMENTED_GREEDY
    return match.group(1)


@pytest.fixture(scope="module")
def stories260k():
    try:
        files = [lmlib.data.path("stories260k", f, download=False) for f in ("stories260K.bin", "tok512.bin")]
    except lmlib.data.DataError as err:
        pytest.skip(f"stories260K is not in the data mirror: {err}")
    return (*load_llama2c(*files), files)


# --- the published model ---------------------------------------------------------------------------

def test_greedy_generation_reproduces_llama2c_documented_sample(stories260k):
    model, tok, _ = stories260k
    bos = torch.tensor([[tok.bos_id]])
    out = generate(model, bos, max_new_tokens=256, greedy=True, eos_id=tok.bos_id)  # run.c: 256 steps, stops at BOS
    assert tok.decode(out[0]) == documented_greedy()


def test_parameter_count_follows_from_the_header(stories260k):
    model, _, (model_bin, _) = stories260k
    h = read_header(model_bin)
    d, hid, L, V = h["dim"], h["hidden_dim"], h["n_layers"], h["vocab_size"]
    kv = h["n_kv_heads"] * d // h["n_heads"]
    per_layer = 2 * d + 2 * d * d + 2 * d * kv + 3 * d * hid  # two norms, wq wo, wk wv, w1 w2 w3
    expected = V * d + L * per_layer + d + (0 if h["tie_weights"] else V * d)
    assert model.num_params() == count_params(model.config) == expected
    # the file holds these parameters plus the two legacy angle tables
    legacy = 2 * h["seq_len"] * (d // h["n_heads"]) // 2
    assert (model_bin.stat().st_size - 28) // 4 == expected + legacy
    assert 250_000 < expected < 270_000  # "260K"
    assert model.config.mlp_hidden == hid != GPTConfig(n_embd=d, mlp="swiglu").mlp_hidden


def test_tokenizer_file_matches_model(stories260k):
    model, tok, _ = stories260k
    assert tok.vocab_size == model.config.vocab_size
    assert (tok.bos_id, tok.eos_id) == (1, 2)
    assert tok.pieces[3] == b"<0x00>" and tok.pieces[258] == b"<0xFF>"


@pytest.mark.parametrize("text", ["Once upon a time, there was a little girl named Lily.", "", "a", "  two spaces",
                                  "Tom said, \"Hi!\"\nThe end.", "café, naïve, 日本語, 🙂", "x\ty\r\n\x00z"])
def test_encode_decode_round_trip(stories260k, text):
    _, tok, _ = stories260k
    ids = tok.encode(text)
    assert ids.dtype == torch.long and ids.dim() == 1 and ids[0] == tok.bos_id
    assert tok.decode(ids) == text
    assert tok.encode_list(text, bos=False, eos=True) == ids[1:].tolist() + [tok.eos_id]


def test_encode_merges_like_sentencepiece(stories260k):
    _, tok, _ = stories260k
    ids = tok.encode_list("Once upon a time")
    assert [tok.pieces[i] for i in ids[1:]] == [b" Once", b" upon", b" a", b" time"]
    assert tok.encode_list("") == [1] and tok.encode_list("", bos=False) == []
    # characters without a token of their own fall back to their UTF-8 bytes, id = byte + 3
    snowman = tok.encode_list("\u2603", bos=False)
    assert snowman[-3:] == [b + 3 for b in "\u2603".encode()]


def test_decode_strips_the_space_after_bos_only(stories260k):
    _, tok, _ = stories260k
    space_once = tok.encode_list("Once", bos=False)
    assert tok.decode(space_once) == " Once"
    assert tok.decode([tok.bos_id] + space_once) == "Once"


# --- a tiny Llama written in llama2.c's layout -----------------------------------------------------

def write_llama2c(model: GPT, path: Path) -> None:
    """Write ``model`` as a legacy (version 0) llama2.c checkpoint, as llama2.c's export does."""
    c = model.config
    head = c.head_dim
    vocab = c.vocab_size if c.tie_weights else -c.vocab_size
    header = struct.pack("<7i", c.n_embd, c.mlp_hidden, c.n_layer, c.n_head, c.kv_heads, vocab, c.block_size)
    b = model.blocks
    arrays = [model.wte.weight]
    arrays += [blk.ln_1.weight for blk in b]
    arrays += [rope_halves_to_pairs(blk.attn.q_proj.weight, c.n_head) for blk in b]
    arrays += [rope_halves_to_pairs(blk.attn.k_proj.weight, c.kv_heads) for blk in b]
    arrays += [blk.attn.v_proj.weight for blk in b] + [blk.attn.out_proj.weight for blk in b]
    arrays += [blk.ln_2.weight for blk in b]
    arrays += [blk.mlp.gate.weight for blk in b] + [blk.mlp.proj.weight for blk in b] + [blk.mlp.up.weight for blk in b]
    arrays += [model.ln_f.weight, torch.zeros(c.block_size, head // 2), torch.zeros(c.block_size, head // 2)]
    if not c.tie_weights:
        arrays.append(model.lm_head.weight)
    with path.open("wb") as f:
        f.write(header)
        for a in arrays:
            f.write(a.detach().float().numpy().astype("<f4").tobytes())


def tiny_llama(tie_weights: bool = True, seed: int = 0) -> GPT:
    torch.manual_seed(seed)
    config = GPTConfig(vocab_size=37, block_size=16, n_layer=2, n_head=4, n_kv_heads=2, n_embd=32, pos="rope",
                       tie_weights=tie_weights, bias=False, norm="rms", mlp="swiglu", mlp_hidden_dim=44, dropout=0.0)
    model = GPT(config).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("ln_1.weight") or name.endswith("ln_2.weight") or name == "ln_f.weight":
                p.uniform_(0.5, 1.5)  # norms away from 1, so a swapped norm shows
    return model


def run_c_style_logits(path: Path, idx: torch.Tensor) -> torch.Tensor:
    """Logits (T, V) of a llama2.c checkpoint, computed from the raw file as run.c does (adjacent-pair RoPE)."""
    d, hid, L, H, KV, V, S = struct.unpack("<7i", path.read_bytes()[:28])
    tied, V = V > 0, abs(V)
    hd = d // H
    flat = torch.from_numpy(np.fromfile(path, dtype="<f4", offset=28).copy())
    shapes = [(V, d), (L, d), (L, d, d), (L, KV * hd, d), (L, KV * hd, d), (L, d, d), (L, d), (L, hid, d),
              (L, d, hid), (L, hid, d), (d,), (S, hd // 2), (S, hd // 2)] + ([] if tied else [(V, d)])
    w, at = [], 0
    for shape in shapes:
        w.append(flat[at: at + math.prod(shape)].view(shape))
        at += math.prod(shape)
    emb, rms_att, wq, wk, wv, wo, rms_ffn, w1, w2, w3, rms_f = w[:11]
    wcls = emb if tied else w[13]

    def rms(x, g):
        return g * x / torch.sqrt((x * x).mean(-1, keepdim=True) + 1e-5)

    def rope(x):  # (T, heads, hd): rotate (2i, 2i+1) by pos * 10000^(-2i/hd)
        T = x.shape[0]
        freq = 1.0 / 10000.0 ** (torch.arange(0, hd, 2, dtype=torch.float64) / hd)
        ang = torch.arange(T, dtype=torch.float64)[:, None] * freq
        cos, sin = ang.cos().float()[:, None, :], ang.sin().float()[:, None, :]
        x0, x1 = x[..., 0::2], x[..., 1::2]
        return torch.stack([x0 * cos - x1 * sin, x0 * sin + x1 * cos], dim=-1).flatten(-2)

    x = emb[idx]
    T = x.shape[0]
    mask = torch.ones(T, T, dtype=torch.bool).tril()
    for l in range(L):
        h = rms(x, rms_att[l])
        q = rope((h @ wq[l].T).view(T, H, hd))
        k = rope((h @ wk[l].T).view(T, KV, hd)).repeat_interleave(H // KV, dim=1)
        v = (h @ wv[l].T).view(T, KV, hd).repeat_interleave(H // KV, dim=1)
        att = torch.einsum("thd,shd->hts", q, k) / math.sqrt(hd)
        att = att.masked_fill(~mask, float("-inf")).softmax(-1)
        x = x + torch.einsum("hts,shd->thd", att, v).reshape(T, d) @ wo[l].T
        h = rms(x, rms_ffn[l])
        x = x + (F.silu(h @ w1[l].T) * (h @ w3[l].T)) @ w2[l].T
    return rms(x, rms_f) @ wcls.T


@pytest.mark.parametrize("tie_weights", [True, False])
def test_loader_round_trip_matches_run_c_arithmetic(tmp_path, tie_weights):
    model = tiny_llama(tie_weights)
    path = tmp_path / "tiny.bin"
    write_llama2c(model, path)
    loaded = read_checkpoint(path)
    assert loaded.config == model.config and not loaded.training
    idx = torch.randint(0, 37, (1, 16), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ours = loaded(idx)[0][0]
        torch.testing.assert_close(ours, model(idx)[0][0])
        torch.testing.assert_close(ours, run_c_style_logits(path, idx[0]), rtol=1e-4, atol=1e-4)
    # the KV-cached path agrees too (positions continue from the cache length)
    cached = generate(loaded, idx[:, :4], 12, greedy=True)
    assert torch.equal(cached, generate(loaded, idx[:, :4], 12, greedy=True, use_cache=False))


def test_rope_reordering_is_a_per_head_permutation():
    w = torch.arange(4 * 6 * 3, dtype=torch.float32).view(24, 3)  # 4 heads of 6 rows
    halves = rope_pairs_to_halves(w, 4)
    assert halves[:6, 0].tolist() == [0, 6, 12, 3, 9, 15]  # head 0: rows 0 2 4, then 1 3 5
    assert torch.equal(rope_halves_to_pairs(halves, 4), w)


def test_config_from_header():
    header = dict(dim=64, hidden_dim=172, n_layers=5, n_heads=8, n_kv_heads=4, vocab_size=512, seq_len=512,
                  tie_weights=True)
    c = config_from_header(header)
    assert (c.norm, c.mlp, c.pos, c.bias, c.kv_heads, c.mlp_hidden) == ("rms", "swiglu", "rope", False, 4, 172)


# --- bad files -------------------------------------------------------------------------------------

def test_missing_files_say_which(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothere.bin"):
        read_checkpoint(tmp_path / "nothere.bin")
    with pytest.raises(FileNotFoundError, match="tok.bin"):
        Llama2cTokenizer.from_file(tmp_path / "tok.bin")


def test_size_that_does_not_match_the_header(tmp_path):
    path = tmp_path / "tiny.bin"
    write_llama2c(tiny_llama(), path)
    data = path.read_bytes()
    (tmp_path / "short.bin").write_bytes(data[:-4])
    with pytest.raises(Llama2cFormatError, match=r"short\.bin.*describes a file of"):
        read_checkpoint(tmp_path / "short.bin")
    untied = bytearray(data)  # a header that claims an untied head the file does not have
    untied[20:24] = struct.pack("<i", -37)
    (tmp_path / "untied.bin").write_bytes(bytes(untied))
    with pytest.raises(Llama2cFormatError, match="untied"):
        read_checkpoint(tmp_path / "untied.bin")
    (tmp_path / "tiny_header.bin").write_bytes(data[:10])
    with pytest.raises(Llama2cFormatError, match="truncated"):
        read_checkpoint(tmp_path / "tiny_header.bin")


@pytest.mark.parametrize("field, value, message", [(0, -64, "every size"), (2, 0, "every size"),
                                                    (6, 1 << 30, "every size"), (3, 5, "do not fit")])
def test_absurd_header(tmp_path, field, value, message):
    path = tmp_path / "tiny.bin"
    write_llama2c(tiny_llama(), path)
    data = bytearray(path.read_bytes())
    data[4 * field: 4 * field + 4] = struct.pack("<i", value)
    path.write_bytes(bytes(data))
    with pytest.raises(Llama2cFormatError, match=f"tiny.bin.*{message}"):
        read_checkpoint(path)


def write_tokenizer(path: Path, pieces: list[bytes], scores: list[float]) -> None:
    with path.open("wb") as f:
        f.write(struct.pack("<i", max(len(p) for p in pieces)))
        for p, s in zip(pieces, scores):
            f.write(struct.pack("<fi", s, len(p)) + p)


def test_truncated_or_mismatched_tokenizer(tmp_path):
    pieces = [b"<unk>", b"\n<s>\n", b"\n</s>\n", b" ", b"a", b"b", b" a", b"ab"]
    path = tmp_path / "tok.bin"
    write_tokenizer(path, pieces, [0.0, 0.0, 0.0, -1.0, -2.0, -3.0, -0.5, -0.1])
    tok = Llama2cTokenizer.from_file(path)
    assert tok.vocab_size == 8 and tok.encode_list("ab") == [1, 3, 7]  # "ab" (-0.1) beats " a" (-0.5)
    assert tok.decode([1, 3, 7]) == "ab"
    (tmp_path / "cut.bin").write_bytes(path.read_bytes()[:-1])
    with pytest.raises(Llama2cFormatError, match=r"cut\.bin.*truncated"):
        Llama2cTokenizer.from_file(tmp_path / "cut.bin")
    with pytest.raises(Llama2cFormatError, match=r"tok\.bin holds 8 tokens but the model has vocab_size=9"):
        Llama2cTokenizer.from_file(path, vocab_size=9)
    with pytest.raises(Llama2cFormatError, match=r"tok\.bin has .* bytes after its 7 tokens"):
        Llama2cTokenizer.from_file(path, vocab_size=7)
    (tmp_path / "empty.bin").write_bytes(b"")
    with pytest.raises(Llama2cFormatError, match=r"empty\.bin.*too short"):
        Llama2cTokenizer.from_file(tmp_path / "empty.bin")


def test_load_llama2c_checks_the_pair(tmp_path):
    path = tmp_path / "tiny.bin"
    write_llama2c(tiny_llama(), path)  # vocab 37
    tok = tmp_path / "tok.bin"
    write_tokenizer(tok, [b"<unk>", b"\n<s>\n", b"\n</s>\n", b" "], [0.0] * 4)
    with pytest.raises(Llama2cFormatError, match="vocab_size=37"):
        load_llama2c(path, tok)
