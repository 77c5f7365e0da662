"""GPT-2's tokenizer built from the course's ByteBPE (``ByteBPE.from_gpt2``) against Hugging Face's.

The reference is ``transformers.GPT2TokenizerFast`` built from the same two files (``encoder.json``,
``vocab.bpe``) of the data mirror. Every comparison asks for zero differing ids and an exact round
trip, on three kinds of text:

- every file of the data mirror whose bytes decode as UTF-8, whole (everything the course reads:
  about 28 million tokens, two minutes on two CPU cores);
- hand-written hard cases: whitespace runs, mixed scripts, emoji sequences, contractions, digits,
  code, the ``<|endoftext|>`` special inside text, control characters;
- random Unicode strings (hypothesis).
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import lmlib.data
from lmlib.tokenizers import GPT2_PRETOKENIZE, ByteBPE, gpt2_byte_to_unicode, pretokenize

EOT = "<|endoftext|>"

HARD_CASES = [
    "",
    " ", "  ", "\n", "\n\n\n", "\t", "\r\n", " \t \n \r\n\t\t  x", "a  b   c    d",
    "   leading spaces", "trailing spaces   ", "  both  ", "line one\n\n  indented\n\t\ttabbed\r\n",
    "\n \n  \n", "x \n", "end with space ", "\u00a0non-breaking\u00a0space", "ideographic\u3000space",
    "東京は日本の首都です。", "مرحبا بالعالم", "Привет, мир!", "नमस्ते दुनिया", "한국어 텍스트",
    "mixed: English, Русский, 中文, العربية, हिन्दी in one line",
    "😀", "👍🏽 thumbs", "👨‍👩‍👧‍👦 family", "🏳️‍🌈 flag", "🇫🇷🇩🇪 flags", "a😀b 😀😀 😀",
    "DON'T", "don't", "I'M HERE", "we'll they've you're she'd it's", "'s 's 'S", "rock'n'roll", "''quoted''",
    "0", "1234567890", "3.14159 2,718 1e-10 -42", "year 2026 and 12:30", "٠١٢٣ ४२",
    "def f(x):\n    if x:\n        return x  # comment\n    return None\n",
    "for (int i = 0; i < n; ++i) {\n\tsum += a[i];\n}",
    "<html><body class=\"x\">&amp;</body></html>", "https://example.com/a?b=c&d=e#f",
    EOT, f"before{EOT}after", f" {EOT} ", f"{EOT}{EOT}", f"text\n{EOT}\nmore", "<|endoftext", "endoftext|>",
    "\x00\x01\x02 control \x1b[31m red \x7f", "\x0b\x0c\x1c\x1d\x1e\x1f", "\u200b\u200d\ufeff zero widths",
    "e\u0301 combining", "\U0001d54f math letter", "\ud7ff\ue000\uffff edges",
    "!!!???...", "---===___", "a" * 200, " " * 100 + "x",
]


@pytest.fixture(scope="module")
def gpt2_files() -> tuple[Path, Path]:
    try:
        return (lmlib.data.path("gpt2-tokenizer", "encoder.json", download=False),
                lmlib.data.path("gpt2-tokenizer", "vocab.bpe", download=False))
    except lmlib.data.DataError:
        pytest.skip("the GPT-2 tokenizer files are not in the data mirror (set LMLIB_DATA)")


@pytest.fixture(scope="module")
def gpt2(gpt2_files) -> ByteBPE:
    return ByteBPE.from_gpt2(*gpt2_files)


@pytest.fixture(scope="module")
def reference(gpt2_files):
    transformers = pytest.importorskip("transformers")
    encoder, merges = map(str, gpt2_files)
    # transformers 5 takes the two files as vocab= and merges=; version 4 called them vocab_file= and merges_file=
    if int(transformers.__version__.split(".")[0]) >= 5:
        tok = transformers.GPT2TokenizerFast(vocab=encoder, merges=merges)
    else:
        tok = transformers.GPT2TokenizerFast(vocab_file=encoder, merges_file=merges)
    assert len(tok) == 50257, "the reference tokenizer did not read the files"
    return tok


def assert_same(gpt2: ByteBPE, reference, texts: list[str]) -> int:
    """Zero differing ids and exact round trips on every text; returns the number of tokens compared."""
    expected = reference(texts)["input_ids"] if texts else []
    for text, ids in zip(texts, expected):
        ours = gpt2.encode_list(text)
        assert ours == ids, f"ids differ on {text[:200]!r}"
        assert gpt2.decode(ours) == text
    return sum(map(len, expected))


def mirror_files(root: Path):
    """(name, text) of every file under ``root`` whose bytes decode as UTF-8, in name order."""
    for path in sorted(root.rglob("*")):
        if not path.is_file():
            continue
        try:
            yield str(path.relative_to(root)), path.read_bytes().decode("utf-8")
        except UnicodeDecodeError:
            continue  # binary or another encoding: not text GPT-2 reads as such


def test_ids_equal_hugging_face_on_the_data_mirror(gpt2, reference):
    (root, *_) = lmlib.data.mirrors()
    names, tokens = [], 0
    for name, text in mirror_files(root):  # one whole file at a time
        tokens += assert_same(gpt2, reference, [text])
        names.append(name)
    assert len(names) >= 10 and "tinyshakespeare/input.txt" in names
    assert tokens > 1_000_000


def test_ids_equal_hugging_face_on_hard_cases(gpt2, reference):
    assert_same(gpt2, reference, HARD_CASES)
    assert_same(gpt2, reference, ["".join(HARD_CASES)])  # and all of them in one text


# Code points that Python's Unicode tables leave unassigned are left out: the `regex` module and the
# tokenizers library behind transformers ship different Unicode versions, so a letter added by a
# recent version (U+3D000, say) is a letter to one and "other" to the other, and they split it apart
# differently. Every other character is drawn.
ASSIGNED = st.characters(exclude_categories=("Cn", "Cs"))  # Cs: lone surrogates, not text


@settings(max_examples=300, deadline=None)
@given(st.lists(st.one_of(st.text(ASSIGNED), st.sampled_from([EOT, " ", "\n", "'s", "'T", "1"])), max_size=8))
def test_ids_equal_hugging_face_on_random_unicode(gpt2, reference, parts):
    assert_same(gpt2, reference, ["".join(parts)])


def test_known_ids_and_the_special_token(gpt2):
    # the two examples of the transformers GPT2Tokenizer documentation
    assert gpt2.encode_list("Hello world") == [15496, 995] and gpt2.encode_list(" Hello world") == [18435, 995]
    assert gpt2.special_tokens == {EOT: 50256} and gpt2.vocab_size == 50257
    assert gpt2.encode_list(f"a{EOT}b") == [64, 50256, 65]
    assert gpt2.vocab[0] == b"!" and gpt2.vocab[gpt2.byte_order.index(ord(" "))] == b" "


def test_byte_alphabet_is_gpt2s(gpt2_files):
    alphabet = gpt2_byte_to_unicode()
    assert sorted(alphabet) == list(range(256)) and len(set(alphabet.values())) == 256
    assert alphabet[ord(" ")] == "Ġ" and alphabet[ord("\n")] == "Ċ" and alphabet[ord("A")] == "A"
    encoder = json.loads(gpt2_files[0].read_text(encoding="utf-8"))
    assert {encoder[ch] for ch in alphabet.values()} == set(range(256))


def test_pretokenize_with_gpt2s_pattern_needs_unicode_classes():
    assert pretokenize("DON'T don't 東京 42x", GPT2_PRETOKENIZE) == ["DON", "'", "T", " don", "'t", " 東京", " 42", "x"]
    tok = ByteBPE.train("the cat and the hat " * 20, 260, pattern=GPT2_PRETOKENIZE, progress=False)
    assert tok.decode(tok.encode("the cat, Привет")) == "the cat, Привет"


def test_save_and_load_keep_gpt2s_byte_order(tmp_path, gpt2):
    path = tmp_path / "gpt2.json"
    gpt2.save(path)
    loaded = ByteBPE.load(path)
    assert loaded.byte_order == gpt2.byte_order and loaded.pattern == GPT2_PRETOKENIZE
    text = "Round trip: 東京 😀, DON'T\n\n" + EOT
    assert loaded.encode_list(text) == gpt2.encode_list(text)


def test_version_1_files_still_load(tmp_path):
    path = tmp_path / "old.json"
    path.write_text(json.dumps({"format": "lmlib-bytebpe", "version": 1, "pattern": r"[\s\S]+",
                                "merges": [[97, 98]], "special_tokens": {EOT: 257}}))
    tok = ByteBPE.load(path)
    assert tok.byte_order == list(range(256)) and tok.encode_list("ab") == [256]


def test_bad_byte_order_and_mismatched_files_are_explained(tmp_path, gpt2_files):
    with pytest.raises(ValueError, match="each of the 256 byte values once"):
        ByteBPE(byte_order=[0] * 256)
    encoder, merges = gpt2_files
    lines = merges.read_text(encoding="utf-8").splitlines()
    shuffled = tmp_path / "vocab.bpe"
    shuffled.write_text("\n".join([lines[0], lines[2], lines[1], *lines[3:]]) + "\n", encoding="utf-8")
    with pytest.raises(ValueError, match="do not belong together"):
        ByteBPE.from_gpt2(encoder, shuffled)
    with pytest.raises(FileNotFoundError, match="GPT-2 tokenizer file"):
        ByteBPE.from_gpt2(tmp_path / "missing.json", merges)
