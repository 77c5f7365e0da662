"""Token-level and span tasks (chapter 5): CoNLL reading, BIO spans, entity F1, SQuAD metrics, heads."""
import pytest
import torch

from lmlib import spans as sp
from lmlib.data import IGNORE_INDEX, DataError
from lmlib.model import GPT, GPTConfig
from lmlib.tokenizers import ByteBPE

# --- CoNLL reading ------------------------------------------------------------------------------

def test_parse_conll_counts_malformed_lines_and_keeps_sentences():
    lines = ["Paris\tB-location", "rocks\tO", "\t", "I\tO", "love\tO", "bad line", "New\tB-location",
             "York\tI-location", "x\ty\tz", "odd\tX-foo", "", "", "end\tO", ""]
    sents, report = sp.parse_conll(lines, "demo")
    assert [s.tokens for s in sents] == [["Paris", "rocks"], ["I", "love", "New", "York"], ["end"]]
    assert sents[1].tags == ["O", "O", "B-location", "I-location"]
    assert report.rejected == {"separator line holds whitespace, not nothing": 1, "0 tabs instead of 1": 1,
                                "2 tabs instead of 1": 1, "tag is not O, B-type or I-type": 1}
    assert (report.lines, report.sentences, report.tokens) == (13, 3, 7)
    assert "4 malformed lines" in str(report)


def test_wnut17_files_differ_in_separators():
    try:
        train, rep_train = sp.load_wnut17("train")
        test, rep_test = sp.load_wnut17("test")
    except DataError as err:  # no mirror and no network
        pytest.skip(f"WNUT-17 not available: {err}")
    assert (rep_train.sentences, rep_test.sentences) == (3394, 1287)
    assert (rep_train.tokens, rep_test.tokens) == (62730, 23394)
    assert rep_train.rejected["separator line holds whitespace, not nothing"] == 2394
    assert rep_test.n_rejected == 0
    with pytest.raises(ValueError, match="split must be one of"):
        sp.load_wnut17("validation")


# --- BIO and entity-level scores ----------------------------------------------------------------

def test_bio_to_spans_follows_conlleval():
    tags = ["B-per", "I-per", "O", "I-loc", "I-loc", "B-loc", "I-per", "B-org", "B-org"]
    # I-loc after O starts an entity; I-per after B-loc starts a new one; B- after B- splits.
    assert sp.bio_to_spans(tags) == [("per", 0, 2), ("loc", 3, 5), ("loc", 5, 6), ("per", 6, 7),
                                     ("org", 7, 8), ("org", 8, 9)]
    assert sp.bio_to_spans(["O", "O"]) == [] and sp.bio_to_spans([]) == []
    assert sp.bio_to_spans(["I-x"]) == [("x", 0, 1)]
    with pytest.raises(ValueError, match="BIO tags"):
        sp.bio_to_spans(["O", "PER"])


def test_spans_to_bio_round_trip_and_errors():
    spans = [("a", 0, 2), ("b", 3, 4)]
    tags = sp.spans_to_bio(spans, 5)
    assert tags == ["B-a", "I-a", "O", "B-b", "O"]
    assert sp.bio_to_spans(tags) == spans
    with pytest.raises(ValueError, match="overlaps"):
        sp.spans_to_bio([("a", 0, 2), ("b", 1, 3)], 4)
    with pytest.raises(ValueError, match="outside"):
        sp.spans_to_bio([("a", 2, 6)], 4)


def test_entity_scores_exact_span_and_type():
    gold = [["B-per", "I-per", "O", "B-loc"], ["O", "B-org", "O"]]
    pred = [["B-per", "O", "O", "B-loc"],   # per span too short: wrong; loc right
            ["O", "B-per", "O"]]             # right span, wrong type: wrong
    r = sp.entity_scores(gold, pred)
    assert (r["tp"], r["predicted"], r["gold"]) == (1, 3, 3)
    assert r["precision"] == pytest.approx(1 / 3) and r["recall"] == pytest.approx(1 / 3)
    assert r["f1"] == pytest.approx(1 / 3)
    assert r["per_type"]["loc"]["f1"] == 1.0
    assert r["per_type"]["org"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "tp": 0, "predicted": 0, "gold": 1}


def test_entity_scores_i_without_b_counts_as_an_entity():
    # The prediction forgot the B-: conlleval still reads "I-per I-per" as one person entity.
    r = sp.entity_scores([["O", "B-per", "I-per"]], [["O", "I-per", "I-per"]])
    assert r["f1"] == 1.0
    r = sp.entity_scores([["O", "B-per", "I-per"]], [["O", "I-per", "B-per"]])
    assert (r["tp"], r["predicted"]) == (0, 2)


def test_entity_scores_edge_cases_and_errors():
    assert sp.entity_scores([["O"]], [["O"]])["f1"] == 0.0  # nothing to find, nothing found
    with pytest.raises(ValueError, match="sentences"):
        sp.entity_scores([["O"]], [])
    with pytest.raises(ValueError, match="sentence 0"):
        sp.entity_scores([["O", "O"]], [["O"]])


# --- alignment and the tagging head -------------------------------------------------------------

@pytest.fixture(scope="module")
def tok():
    text = "the quick brown fox jumps over the lazy dog. Denver Broncos won Super Bowl 50 in 2016. " * 20
    return ByteBPE.train(text + "Zürich ünïcode", 300, special_tokens=["<|pad|>", "<|sep|>"], progress=False)


def test_encode_words_and_align_labels(tok):
    words = ["Denver", "Broncos", "xyzzyq"]
    ids, word_of = sp.encode_words(tok, words)
    assert tok.decode(ids) == "Denver Broncos xyzzyq"
    assert word_of == sorted(word_of) and set(word_of) == {0, 1, 2}
    first = sp.align_labels(word_of, [1, 2, 0])
    last = sp.align_labels(word_of, [1, 2, 0], position="last")
    n3 = word_of.count(2)
    assert n3 > 1  # an unseen word is split into several sub-words
    assert first[len(ids) - n3:] == [0] + [IGNORE_INDEX] * (n3 - 1)
    assert last[len(ids) - n3:] == [IGNORE_INDEX] * (n3 - 1) + [0]
    assert sum(l != IGNORE_INDEX for l in first) == 3
    assert sp.word_predictions(first, word_of, 3) == [1, 2, 0]
    assert sp.word_predictions(last, word_of, 3, position="last") == [1, 2, 0]
    with pytest.raises(ValueError, match="outside"):
        sp.align_labels([0, 1, 5], [0, 0])
    with pytest.raises(ValueError, match="position"):
        sp.align_labels([0], [0], position="middle")


def tiny_gpt(vocab):
    torch.manual_seed(0)
    return GPT(GPTConfig(vocab_size=vocab, block_size=64, n_layer=2, n_head=2, n_embd=16))


def test_token_classifier_shapes_loss_and_padding(tok):
    pad = tok.special_tokens["<|pad|>"]
    clf = sp.GPTTokenClassifier(tiny_gpt(tok.vocab_size), 5, pad).eval()
    ids = [[3, 4, 5], [6, 7, 8, 9, 10]]
    labels = [[1, IGNORE_INDEX, 2], [0, 0, 4, IGNORE_INDEX, 3]]
    x, y = sp.tagging_batches(ids, labels, 4, pad)(torch.Generator().manual_seed(0))
    assert x.shape == y.shape and (y[x == pad] == IGNORE_INDEX).all()
    logits, loss = clf(x, y)
    assert logits.shape == (*x.shape, 5) and loss.ndim == 0
    # right padding does not change the logits of the real tokens (causal attention)
    torch.testing.assert_close(clf(torch.tensor([ids[0]]))[0][0], clf(sp.pad_rows([ids[0], ids[1]], pad))[0][0, :3])
    # the loss is the cross-entropy of the labelled positions only
    flat = y.flatten() != IGNORE_INDEX
    ref = torch.nn.functional.cross_entropy(logits.flatten(0, 1)[flat], y.flatten()[flat])
    torch.testing.assert_close(loss, ref)
    with pytest.raises(ValueError, match="shape of x"):
        clf(x, y[:, :1])
    with pytest.raises(ValueError, match="nothing to learn"):
        clf(x, torch.full_like(x, IGNORE_INDEX))
    with pytest.raises(ValueError, match="same length"):
        sp.tagging_batches([[1, 2]], [[1]], 2, pad)


# --- SQuAD metrics: the official v1.1 definitions ------------------------------------------------

@pytest.mark.parametrize("raw, expected", [
    ("The Denver Broncos!", "denver broncos"),
    ("  an apple,  a pear ", "apple pear"),
    ("Theater", "theater"),           # "the" only as a whole word
    ("the-end", "theend"),            # punctuation goes first, so this "the" is not a word
    ("A", ""),
    ("Zürich’s", "zürich’s"),         # non-ASCII punctuation is kept, as in the official script
])
def test_normalize_answer(raw, expected):
    assert sp.normalize_answer(raw) == expected


def test_exact_match_and_token_f1_by_hand():
    assert sp.exact_match("the Denver Broncos", ["Denver Broncos", "Broncos"]) == 1.0
    assert sp.exact_match("Denver", ["Denver Broncos"]) == 0.0
    # prediction "denver broncos team" vs gold "broncos": common 1, P = 1/3, R = 1 -> F1 = 0.5
    assert sp.token_f1("Denver Broncos team", "Broncos") == pytest.approx(0.5)
    # best over golds
    assert sp.token_f1("Denver Broncos team", ["Broncos", "Denver Broncos"]) == pytest.approx(0.8)
    # repeated words count with multiplicity: pred "a b b" (articles dropped: "b b"), gold "b c"
    assert sp.token_f1("b b", "b c") == pytest.approx(0.5)
    assert sp.token_f1("the", "a") == 0.0  # both normalise to nothing: 0 in v1.1
    assert sp.token_f1("", "Denver") == 0.0
    with pytest.raises(ValueError, match="gold"):
        sp.token_f1("x", [])


def test_squad_scores_counts_missing_as_zero():
    def ex(i, answers):
        return sp.SquadExample(str(i), "t", "c", "q?", answers, [0] * len(answers))

    examples = [ex(1, ["Denver Broncos"]), ex(2, ["1990"]), ex(3, ["blue"])]
    r = sp.squad_scores({"1": "denver broncos", "2": "in 1990"}, examples)
    assert r["exact_match"] == pytest.approx(100 / 3)
    assert r["f1"] == pytest.approx(100 * (1 + 2 / 3) / 3)
    assert r["missing"] == 1


# --- offsets and the span head ------------------------------------------------------------------

def test_token_offsets_spell_the_text(tok):
    text = "Zürich won Super Bowl 50 in 2016."
    ids, offsets = sp.token_offsets(tok, text)
    assert ids == tok.encode_list(text)
    assert offsets[0][0] == 0 and offsets[-1][1] == len(text)
    assert all(a < b for a, b in offsets) and all(offsets[k][1] >= offsets[k + 1][0] for k in range(len(ids) - 1))
    start = text.index("Super Bowl")
    first, last = sp.char_span_to_tokens(offsets, start, start + len("Super Bowl"))
    assert text[offsets[first][0]:offsets[last][1]].strip() == "Super Bowl"
    assert sp.char_span_to_tokens(offsets, 500, 501) is None
    with pytest.raises(ValueError, match="start < end"):
        sp.char_span_to_tokens(offsets, 3, 3)


def _example(context, answer, question="Who won Super Bowl 50?"):
    return sp.SquadExample("q1", "t", context, question, [answer], [context.index(answer)])


def test_qa_features_windows_cover_the_context(tok):
    sep = tok.special_tokens["<|sep|>"]
    context = "the quick brown fox jumps over the lazy dog. " * 6 + "Denver Broncos won Super Bowl 50 in 2016."
    feats = sp.qa_features(tok, _example(context, "Denver Broncos"), sep, max_len=40, max_question=10, stride=8)
    assert len(feats) > 1
    covered = {o for f in feats for o in f.offsets}
    assert covered == set(sp.token_offsets(tok, context)[1])
    with_answer = [f for f in feats if f.target is not None]
    assert with_answer
    for f in with_answer:
        s, e = f.target
        assert f.ids[f.context_start - 1] == sep and s <= e
        text = context[f.offsets[s - f.context_start][0]:f.offsets[e - f.context_start][1]]
        assert text.strip() == "Denver Broncos"
    with pytest.raises(ValueError, match="Raise max_len"):
        sp.qa_features(tok, _example(context, "Denver Broncos"), sep, max_len=12, max_question=10)


@pytest.mark.parametrize("n, room, stride", [(1, 5, None), (5, 5, None), (6, 5, None), (23, 8, 3), (23, 8, 8),
                                             (100, 10, 1), (7, 4, 2)])
def test_context_windows_cover_every_token_in_order(n, room, stride):
    windows = sp.context_windows(n, room, stride)
    step = room // 2 if stride is None else stride
    assert windows[0][0] == 0 and windows[-1][1] == n
    assert all(0 < b - a <= room for a, b in windows)
    assert [a for a, _ in windows] == [step * k for k in range(len(windows))]
    assert all(b0 >= a1 for (_, b0), (a1, _) in zip(windows, windows[1:]))  # no gap
    assert all(b < n for _, b in windows[:-1])  # stops at the first window that reaches the end
    assert sorted({t for a, b in windows for t in range(a, b)}) == list(range(n))


def test_context_windows_by_hand_and_errors():
    assert sp.context_windows(10, 4) == [(0, 4), (2, 6), (4, 8), (6, 10)]
    assert sp.context_windows(9, 4, stride=3) == [(0, 4), (3, 7), (6, 9)]
    assert sp.context_windows(3, 4) == [(0, 3)]
    for bad in (dict(n_tokens=0, room=4), dict(n_tokens=5, room=0), dict(n_tokens=5, room=4, stride=5),
                dict(n_tokens=5, room=1)):  # room 1: the default stride 0 would never move
        with pytest.raises(ValueError):
            sp.context_windows(**bad)


def test_span_extractor_masks_and_question_first(tok):
    pad, sep = tok.special_tokens["<|pad|>"], tok.special_tokens["<|sep|>"]
    model = sp.GPTSpanExtractor(tiny_gpt(tok.vocab_size), pad, sep).eval()
    x = torch.tensor([[5, 6, sep, 7, 8, 9, pad], [5, sep, 7, 8, 9, 10, 11]])
    logits, loss = model(x, torch.tensor([[3, 4], [2, 6]]))
    assert logits.shape == (2, 7, 2) and loss.ndim == 0
    assert (logits[0, :3] == -1e4).all() and (logits[0, 6] == -1e4).all() and (logits[0, 3:6] > -1e4).all()
    # Causality: with the question first, changing the question changes the context's logits.
    other = x.clone()
    other[0, 0] = 9
    assert not torch.allclose(model(other)[0][0, 3:6], logits[0, 3:6])
    with pytest.raises(ValueError, match="context tokens"):
        model(x, torch.tensor([[0, 4], [2, 6]]))
    with pytest.raises(ValueError, match="separator"):
        model(torch.tensor([[5, 6, 7]]))
    with pytest.raises(ValueError, match="must differ"):
        sp.GPTSpanExtractor(tiny_gpt(tok.vocab_size), pad, pad)


def test_best_span_respects_order_and_length():
    s = torch.tensor([0.0, 6.0, 0.0, 0.0])
    e = torch.tensor([9.0, 0.0, 1.0, 4.0])
    # the best start (1) and the best end (0) alone make no span; the best valid pair is (1, 3)
    assert sp.best_span(s, e) == (1, 3, 10.0)
    assert sp.best_span(s, e, max_answer_tokens=2) == (0, 0, 9.0)  # (1, 3) is too long now
    with pytest.raises(ValueError, match="1-D"):
        sp.best_span(s, e[:2])


def test_predict_answers_returns_context_text(tok):
    pad, sep = tok.special_tokens["<|pad|>"], tok.special_tokens["<|sep|>"]
    context = "Denver Broncos won Super Bowl 50 in 2016."
    ex = _example(context, "Denver Broncos")
    feats = sp.qa_features(tok, ex, sep, max_len=48)
    model = sp.GPTSpanExtractor(tiny_gpt(tok.vocab_size), pad, sep)
    answers = sp.predict_answers(model, feats, {"q1": context})
    assert set(answers) == {"q1"} and answers["q1"] and answers["q1"] in context
