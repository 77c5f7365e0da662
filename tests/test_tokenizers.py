"""Chapter 4 tokenizers: BPE training against a brute-force trainer, round trips, files, HF."""
import json
import time
from collections import Counter

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lmlib.tokenizers import ByteBPE, CharTokenizer, WordTokenizer, merge_pair, pretokenize

SAMPLE = (
    "The quick brown fox jumps over the lazy dog. The dog sleeps; the fox doesn't! "
    "Numbers 12345 and 2026, symbols @@ ## and naïve café 東京 😀 emoji. " * 20
)
EOT = "<|endoftext|>"


@pytest.fixture(scope="module")
def bpe():
    return ByteBPE.train(SAMPLE, 256 + 60, special_tokens=[EOT], progress=False)


def brute_force_bpe(text: str, n_merges: int) -> list[tuple[int, int]]:
    """Textbook BPE: re-count every pair of every word before each merge (slow, obviously right)."""
    words = Counter(pretokenize(text))
    seqs = {w: list(w.encode()) for w in words}
    merges = []
    for k in range(n_merges):
        counts = Counter()
        for w, f in words.items():
            for p in zip(seqs[w], seqs[w][1:]):
                counts[p] += f
        if not counts:
            break
        best = min(counts, key=lambda p: (-counts[p], p))  # most frequent, ties to the smallest pair
        merges.append(best)
        seqs = {w: merge_pair(s, best, 256 + k) for w, s in seqs.items()}
    return merges


def test_merge_pair_is_left_to_right_without_overlap():
    assert merge_pair([1, 2, 3, 1, 2], (1, 2), 9) == [9, 3, 9]
    assert merge_pair([7, 7, 7], (7, 7), 9) == [9, 7]
    assert merge_pair([7, 7, 7, 7], (7, 7), 9) == [9, 9]
    assert merge_pair([], (1, 2), 9) == []


def test_incremental_training_equals_brute_force():
    fast = ByteBPE.train(SAMPLE, 256 + 80, progress=False)
    assert fast.merges == brute_force_bpe(SAMPLE, 80)


def test_training_stops_when_nothing_is_left_to_merge():
    tok = ByteBPE.train("ab ab ab", 1000, progress=False)
    assert len(tok.merges) < 10 and tok.encode_list("ab") == [tok.ranks[(97, 98)]]


@settings(max_examples=200, deadline=None)
@given(st.text())
def test_round_trip_on_arbitrary_unicode(bpe, text):
    ids = bpe.encode(text)
    assert ids.dtype == torch.long and ids.dim() == 1
    assert bpe.decode(ids) == text
    assert "".join(pretokenize(text)) == text


@settings(max_examples=100, deadline=None)
@given(st.lists(st.one_of(st.text(max_size=20), st.just(EOT)), max_size=6))
def test_special_tokens_are_single_ids_and_round_trip(bpe, parts):
    text = "".join(parts)
    ids = bpe.encode_list(text)
    assert bpe.decode(ids) == text
    assert ids.count(bpe.special_tokens[EOT]) >= text.count(EOT)


def test_special_token_id_and_vocab(bpe):
    assert bpe.vocab_size == 256 + 60
    assert bpe.special_tokens == {EOT: 256 + 59}
    assert bpe.encode_list(EOT) == [256 + 59]
    assert "".join(bpe.pieces("the fox")) == "the fox" and " fox" in bpe.pieces("the fox")  # a learned word
    with pytest.raises(ValueError, match="outside the vocabulary"):
        bpe.decode([bpe.vocab_size])


def test_encoding_compresses_training_text(bpe):
    assert len(bpe.encode_list(SAMPLE)) < 0.5 * len(SAMPLE.encode())


def test_vocab_size_too_small_and_bad_input():
    with pytest.raises(ValueError, match="vocab_size >= 257"):
        ByteBPE.train("abc", 256, special_tokens=[EOT], progress=False)
    with pytest.raises(TypeError, match="expects a str"):
        ByteBPE().encode(b"bytes")


def test_save_load_round_trip(tmp_path, bpe):
    path = tmp_path / "tok.json"
    bpe.save(path)
    loaded = ByteBPE.load(path)
    assert loaded.merges == bpe.merges and loaded.special_tokens == bpe.special_tokens
    assert loaded.encode_list(SAMPLE[:500] + EOT) == bpe.encode_list(SAMPLE[:500] + EOT)
    assert json.loads(path.read_text())["version"] == ByteBPE.VERSION


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda d: "not json {", "not JSON"),
        (lambda d: {**d, "format": "something-else"}, "not a ByteBPE file"),
        (lambda d: {**d, "version": 99}, "version 99"),
        (lambda d: {**d, "merges": [[1000, 1]] + d["merges"]}, "corrupt"),
        (lambda d: {**d, "merges": [[1, 2, 3]]}, "corrupt"),
        (lambda d: {**d, "special_tokens": {EOT: 5}}, "corrupt"),
        (lambda d: {**d, "byte_order": [0] * 256}, "corrupt"),
        (lambda d: {k: v for k, v in d.items() if k != "merges"}, "corrupt"),
    ],
)
def test_load_rejects_bad_files(tmp_path, bpe, mutate, message):
    path = tmp_path / "tok.json"
    bpe.save(path)
    bad = mutate(json.loads(path.read_text()))
    path.write_text(bad if isinstance(bad, str) else json.dumps(bad))
    with pytest.raises(ValueError, match=message):
        ByteBPE.load(path)


def test_load_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="ByteBPE.save"):
        ByteBPE.load(tmp_path / "nope.json")


def test_word_tokenizer_unknowns():
    tok = WordTokenizer.from_text("the cat sat on the mat", max_vocab=4)
    assert tok.vocab_size == 4 and tok.words[0] == "<unk>"
    # all pieces occur once; ties keep first-seen order, so "the", " cat", " sat" are kept
    assert tok.decode(tok.encode("the cat sat on")) == "the cat sat<unk>"
    full = WordTokenizer.from_text(SAMPLE)
    assert full.decode(full.encode(SAMPLE)) == SAMPLE
    assert (full.encode("zebra") == 0).all()


def test_char_tokenizer_api_is_unchanged():
    tok = CharTokenizer.from_text("hello")
    assert tok.vocab_size == 4 and tok.chars == ["e", "h", "l", "o"] and tok.stoi["h"] == 1
    assert tok.decode(tok.encode("hello")) == "hello"


def test_matches_hugging_face_bpe_compression(mirror):
    """Same text, same vocabulary size: our bytes/token is within 2% of the tokenizers library's."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    text = (mirror / "tinyshakespeare" / "input.txt").read_text()[:300_000]
    start = time.perf_counter()
    ours = ByteBPE.train(text, 1024, progress=False)
    seconds = time.perf_counter() - start
    hf = Tokenizer(models.BPE())
    hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    hf.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=1024, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False
    )
    hf.train_from_iterator([text], trainer)
    n_bytes = len(text.encode())
    ours_bpt = n_bytes / len(ours.encode_list(text))
    hf_bpt = n_bytes / len(hf.encode(text).ids)
    assert abs(ours_bpt - hf_bpt) / hf_bpt < 0.02, (ours_bpt, hf_bpt)
    assert seconds < 30, f"training took {seconds:.1f} s; the incremental pair counts should make it seconds"
