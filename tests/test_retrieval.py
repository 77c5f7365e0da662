"""Retrieval (chapter 5): BM25 by hand and against the bm25s library, recall@k, reading retrieved paragraphs."""
import math
import random

import bm25s
import pytest
import torch

from lmlib import retrieval as rt
from lmlib import spans as sp
from lmlib.data import DataError
from lmlib.model import GPT, GPTConfig
from lmlib.tokenizers import ByteBPE

DOCS = [["the", "cat", "sat"], ["a", "dog", "sat", "on", "the", "mat"], ["cat", "cat", "dog"]]


def test_terms_lowercase_words():
    assert rt.terms("The Broncos' 24-10 win, in 2016!") == ["the", "broncos", "24", "10", "win", "in", "2016"]
    with pytest.raises(ValueError, match="str"):
        rt.terms(["a", "list"])


def test_bm25_by_hand():
    index = rt.BM25(DOCS, k1=1.5, b=0.75)
    assert index.avgdl == 4.0 and index.n_documents == 3
    idf_cat = math.log(1 + (3 - 2 + 0.5) / (2 + 0.5))   # "cat" is in 2 of 3 documents
    assert index.idf("cat") == pytest.approx(idf_cat)
    assert index.idf("unseen") == pytest.approx(math.log(1 + 3.5 / 0.5))
    # document 2: tf("cat") = 2, length 3, so the length factor is 1 - 0.75 + 0.75 * 3 / 4 = 0.8125
    expected = idf_cat * 2 / (2 + 1.5 * 0.8125)
    assert float(index.scores(["cat"])[2]) == pytest.approx(expected)
    assert float(index.scores(["cat"])[1]) == 0.0
    # a repeated query term counts twice; a term in no document adds nothing
    torch.testing.assert_close(index.scores(["cat", "cat", "zebra"]), 2 * index.scores(["cat"]))
    assert index.top_k(["cat"], 2) == [(2, pytest.approx(expected)), (0, pytest.approx(float(index.scores(["cat"])[0])))]


def test_bm25_saturation_and_length_normalisation():
    long_doc = ["cat"] + ["filler"] * 30
    index = rt.BM25([["cat"], long_doc, ["dog"] * 5], k1=1.2, b=0.75)
    s = index.scores(["cat"])
    assert s[0] > s[1] > 0          # the same one "cat" counts less in a long document
    flat = rt.BM25([["cat"], long_doc, ["dog"] * 5], k1=1.2, b=0.0).scores(["cat"])
    assert float(flat[0]) == pytest.approx(float(flat[1]))  # b = 0: length does not matter
    many = rt.BM25([["cat"] * 100, ["dog"]], k1=1.2, b=0.0)
    assert float(many.scores(["cat"])[0]) < many.idf("cat")  # the tf part stays below 1


def test_bm25_errors():
    with pytest.raises(ValueError, match="at least one document"):
        rt.BM25([])
    with pytest.raises(ValueError, match="document 1 is not a list of terms"):
        rt.BM25([["a"], [3]])
    with pytest.raises(ValueError, match="document 0 is not a list of terms"):
        rt.BM25(["a text, not split"])
    with pytest.raises(ValueError, match="k1"):
        rt.BM25(DOCS, b=2)
    with pytest.raises(ValueError, match="list of terms"):
        rt.BM25(DOCS).scores("the cat")
    with pytest.raises(ValueError, match="positive integer"):
        rt.BM25(DOCS).top_k(["cat"], 0)


def _reference_scores(documents, query, k1, b):
    reference = bm25s.BM25(method="lucene", k1=k1, b=b)
    reference.index(documents, show_progress=False)
    return torch.tensor(reference.get_scores(query), dtype=torch.float64)


@pytest.mark.parametrize("k1,b", [(1.5, 0.75), (1.2, 0.3), (0.9, 1.0)])
def test_bm25_matches_bm25s_on_random_corpora(k1, b):
    rng = random.Random(int(10 * k1 + b * 100))
    vocab = [f"w{i}" for i in range(40)]
    for _ in range(5):
        documents = [rng.choices(vocab, weights=[1 / (i + 1) for i in range(40)], k=rng.randint(1, 30))
                     for _ in range(rng.randint(2, 25))]
        index = rt.BM25(documents, k1=k1, b=b)
        for _ in range(5):
            query = list(dict.fromkeys(rng.choices(vocab, k=rng.randint(1, 6))))  # bm25s counts a term once
            torch.testing.assert_close(index.scores(query), _reference_scores(documents, query, k1, b),
                                       rtol=1e-5, atol=1e-5)


def test_bm25_matches_bm25s_on_squad():
    try:
        squad, _ = sp.load_squad("squad-v1.1-dev")
    except DataError as err:  # no mirror and no network
        pytest.skip(f"SQuAD not available: {err}")
    paragraphs = sorted({ex.context for ex in squad})
    documents = [rt.terms(p) for p in paragraphs]
    index = rt.BM25(documents)
    for ex in squad[::400]:
        query = list(dict.fromkeys(rt.terms(ex.question)))
        torch.testing.assert_close(index.scores(query), _reference_scores(documents, query, 1.5, 0.75),
                                   rtol=1e-5, atol=1e-4)


def test_overlap_and_recall_at_k():
    torch.testing.assert_close(rt.overlap_scores(["cat", "cat", "dog"], rt.BM25(DOCS)),
                               torch.tensor([1.0, 1.0, 2.0], dtype=torch.float64))
    rankings = {"q1": [2, 0, 1], "q2": [1, 2, 0], "q3": [0, 1, 2]}
    assert rt.recall_at_k(rankings, {"q1": 2, "q2": 0, "q3": 1}, [1, 2, 3]) == {1: 1 / 3, 2: 2 / 3, 3: 1.0}
    with pytest.raises(ValueError, match="missing"):
        rt.recall_at_k({"q1": [0]}, {"q1": 0, "q9": 1}, [1])


@pytest.fixture(scope="module")
def tok():
    text = "the quick brown fox jumps over the lazy dog. Denver Broncos won Super Bowl 50 in 2016. " * 20
    return ByteBPE.train(text, 300, special_tokens=["<|pad|>", "<|sep|>"], progress=False)


def test_read_retrieved_takes_the_best_span_of_any_paragraph(tok):
    pad, sep = tok.special_tokens["<|pad|>"], tok.special_tokens["<|sep|>"]
    torch.manual_seed(0)
    reader = sp.GPTSpanExtractor(GPT(GPTConfig(vocab_size=tok.vocab_size, block_size=64, n_layer=2, n_head=2,
                                               n_embd=16)), pad, sep)
    ex = sp.SquadExample("q1", "t", "Denver Broncos won Super Bowl 50.", "Who won?", ["Denver Broncos"], [0])
    texts = ["The lazy dog slept.", "Denver Broncos won Super Bowl 50.", "A quick brown fox."]
    answers = rt.read_retrieved(reader, tok, sep, [ex], {"q1": texts}, max_len=48)
    # the same answer as reading each paragraph alone and keeping the highest score
    alone = []
    for j, text in enumerate(texts):
        feats = sp.qa_features(tok, sp.SquadExample(f"p{j}", "t", text, ex.question, [], []), sep, 48)
        assert all(f.target is None for f in feats)
        alone.append(sp.predict_answers(reader, feats, {f"p{j}": text}, with_scores=True)[f"p{j}"])
    assert answers == {"q1": max(alone, key=lambda a: a[1])[0]}
    assert answers["q1"] in " ".join(texts)
    with pytest.raises(ValueError, match="no paragraph"):
        rt.read_retrieved(reader, tok, sep, [ex], {"q1": []}, max_len=48)
