"""lmlib.audit (chapter 6, bias and robustness): template probes, counterfactual swaps, noise."""
import random

import pytest
import torch
import torch.nn.functional as F

from lmlib import audit as P
from lmlib.model import GPT, GPTConfig
from lmlib.tokenizers import ByteBPE, WordTokenizer


@pytest.fixture(scope="module")
def small_lm():
    text = "The nurse said that she was tired . The engineer said that he was busy . " * 20
    tok = ByteBPE.train(text, 300, progress=False)
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=tok.vocab_size, block_size=32, n_layer=1, n_head=2, n_embd=16))
    return model, tok


# --- (a) the template probe ----------------------------------------------------------------------

def test_probe_logprobs_equal_a_direct_computation(small_lm):
    model, tok = small_lm
    rows = P.template_probe(model, tok, ["The {} said that", "A {} is"], ["nurse", "engineer"], [" he", " she", " a doctor"])
    assert len(rows) == 2 * 2 * 3
    assert {r["prompt"] for r in rows} == {"The nurse said that", "The engineer said that", "A nurse is", "A engineer is"}
    model.eval()
    for r in rows:
        p, c = tok.encode(r["prompt"]), tok.encode(r["continuation"])
        ids = torch.cat([p, c])
        logp = F.log_softmax(model(ids[None])[0][0].double(), dim=-1)
        direct = sum(logp[len(p) - 1 + k, c[k]] for k in range(len(c)))  # token k of c follows position len(p)-1+k
        torch.testing.assert_close(torch.tensor(r["logprob"], dtype=torch.float64), direct)


def test_probe_batching_and_padding_do_not_change_scores(small_lm):
    model, tok = small_lm
    prompts = ["The nurse said that", "A", "The engineer said that she was"]
    conts = [" he", " nurse said", " busy"]
    together = P.continuation_logprobs(model, tok, prompts, conts, batch_size=64)
    alone = torch.cat([P.continuation_logprobs(model, tok, [p], [c]) for p, c in zip(prompts, conts)])
    torch.testing.assert_close(together, alone)


def test_log_odds_and_table(small_lm):
    model, tok = small_lm
    rows = P.template_probe(model, tok, ["The {} said that", "The {} is"], ["nurse"], [" he", " she"])
    lo = P.log_odds(rows, " he", " she")
    by = {(r["template"], r["continuation"]): r["logprob"] for r in rows}
    expected = ((by["The {} said that", " he"] - by["The {} said that", " she"])
                + (by["The {} is", " he"] - by["The {} is", " she"])) / 2
    assert lo["nurse"] == pytest.approx(expected)
    text = P.format_table(rows, ["prompt", "continuation", "logprob"])
    assert "' he'" in text and len(text.splitlines()) == 2 + len(rows)
    with pytest.raises(ValueError, match="not in the rows"):
        P.log_odds(rows, " he", " they")


def test_probe_bad_inputs(small_lm):
    model, tok = small_lm
    with pytest.raises(ValueError, match="exactly one"):
        P.template_probe(model, tok, ["The nurse said"], ["x"], [" he"])
    with pytest.raises(ValueError, match="context"):
        P.continuation_logprobs(model, tok, ["The nurse said that " * 20], [" he"])
    with pytest.raises(ValueError, match="non-empty"):
        P.continuation_logprobs(model, tok, [""], [" he"])
    words = WordTokenizer.from_text("the nurse said that he")
    with pytest.raises(ValueError, match="<unk>"):
        P.continuation_logprobs(model, words, ["the nurse said that"], [" zebra"])


def test_cooccurrence_counts_by_hand():
    words = "the nurse said she was tired . the engineer said he was busy he".split()
    co = P.cooccurrence(words, ["nurse", "engineer", "absent"], ["he", "she"], window=3)
    assert co == {"nurse": {"he": 0, "she": 1}, "engineer": {"he": 1, "she": 0}, "absent": {"he": 0, "she": 0}}
    # brute force on random text
    gen = random.Random(0)
    words = [gen.choice("abcde") for _ in range(300)]
    co = P.cooccurrence(words, ["a", "b"], ["c", "a"], window=4)
    for t in ("a", "b"):
        for c in ("c", "a"):
            brute = sum(1 for i, w in enumerate(words) if w == t
                        for j in range(max(0, i - 4), min(len(words), i + 5)) if j != i and words[j] == c)
            assert co[t][c] == brute
    with pytest.raises(ValueError):
        P.cooccurrence(words, ["a"], ["b"], window=0)


# --- (b) counterfactual swaps --------------------------------------------------------------------

def test_swap_is_whole_word_and_case_preserving():
    pairs = [("he", "she"), ("john", "mary")]
    assert P.swap_words("He said he met John; HE and JOHN.", pairs) == "She said she met Mary; SHE and MARY."
    # substrings are left alone: "the", "shell", "hello", "Johnson", "shed"
    text = "the shell hello Johnson shed ashe he's"
    assert P.swap_words(text, pairs) == "the shell hello Johnson shed ashe she's"
    # one pass: a swapped word is not swapped back
    assert P.swap_words("he she", pairs) == "she he"


@pytest.mark.parametrize("text", [
    "He told his sister that she and her husband were kind.",
    "JOHN and Mary met Michael; mary left.",
    "Nothing to swap here, or in the shell.",
])
def test_swap_is_reversible_for_one_to_one_pairs(text):
    pairs = [("he", "she"), ("his", "hers"), ("sister", "brother"), ("husband", "wife"), ("john", "mary"),
             ("michael", "susan")]
    once = P.swap_words(text, pairs)
    assert P.swap_words(once, pairs) == text


def test_swap_map_ambiguity_and_errors():
    m = P.swap_map(P.GENDER_PAIRS)
    assert m["her"] == "his" and m["him"] == "her" and m["she"] == "he"
    assert P.swap_words("I saw him.", P.GENDER_PAIRS) == "I saw her."
    for bad in ([("he", "he")], [("he", "she", "it")], [("he", "s he")]):
        with pytest.raises(ValueError):
            P.swap_map(bad)


def test_counterfactual_shift_measures_a_biased_classifier():
    def biased(texts):  # says "positive" whenever the text has "he"
        p = torch.tensor([0.9 if " he " in f" {t.lower()} " else 0.2 for t in texts])
        return torch.stack([1 - p, p], dim=1)

    texts = ["he is great", "she is great", "the food was fine", "He left"]
    r = P.counterfactual_shift(biased, texts, [("he", "she")])
    assert (r.n_texts, r.n_changed, r.n_flipped) == (4, 3, 3)
    assert r.flip_rate == 1.0 and r.mean_abs_shift == pytest.approx(0.7)
    blind = P.counterfactual_shift(lambda ts: torch.full((len(ts), 2), 0.5), texts, [("he", "she")])
    assert blind.n_flipped == 0 and blind.mean_abs_shift == 0.0
    with pytest.raises(ValueError, match="n_classes"):
        P.counterfactual_shift(lambda ts: torch.zeros(len(ts)), texts, [("he", "she")])


# --- (c) noise -----------------------------------------------------------------------------------

TEXT = "The quick brown fox jumps over the lazy dog, twice: 2 times! " * 40


def test_noise_at_rate_zero_is_identity():
    for seed in range(3):
        assert P.typos(TEXT, 0.0, seed) == TEXT
        assert P.word_dropout(TEXT, 0.0, seed) == " ".join(TEXT.split())


def test_noise_is_seeded():
    assert P.typos(TEXT, 0.3, 7) == P.typos(TEXT, 0.3, random.Random(7))
    assert P.typos(TEXT, 0.3, 7) != P.typos(TEXT, 0.3, 8)


@pytest.mark.parametrize("rate", [0.05, 0.2, 0.5])
def test_typo_rate_is_respected_on_average(rate):
    letters = sum(c.isalpha() for c in TEXT)
    # keyboard: same length, each changed letter is a neighbour; drop: letters removed; insert: letters added
    rng = random.Random(0)
    changed = []
    for _ in range(10):
        noisy = P.typos(TEXT, rate, rng, kinds=("keyboard",))
        assert len(noisy) == len(TEXT)
        for a, b in zip(TEXT, noisy):
            assert a == b or (a.isalpha() and b.lower() in P.KEYBOARD_NEIGHBOURS[a.lower()] and a.isupper() == b.isupper())
        changed.append(sum(a != b for a, b in zip(TEXT, noisy)) / letters)
    assert abs(sum(changed) / len(changed) - rate) < 0.02
    dropped = sum(len(TEXT) - len(P.typos(TEXT, rate, rng, kinds=("drop",))) for _ in range(10)) / 10 / letters
    added = sum(len(P.typos(TEXT, rate, rng, kinds=("insert",))) - len(TEXT) for _ in range(10)) / 10 / letters
    assert abs(dropped - rate) < 0.02 and abs(added - rate) < 0.02
    words = len(TEXT.split())
    kept = sum(len(P.word_dropout(TEXT, rate, rng).split()) for _ in range(10)) / 10
    assert abs(1 - kept / words - rate) < 0.03


def test_typos_touch_only_letters_and_swap_keeps_the_letters():
    text = "12 + 34 = 46; ok?"
    noisy = P.typos(text, 1.0, 0, kinds=("swap",))
    assert sorted(noisy) == sorted(text) and noisy != text
    assert [c for c in noisy if not c.isalpha()] == [c for c in text if not c.isalpha()]
    assert P.typos("123 !?", 1.0, 0) == "123 !?"


def test_noise_bad_inputs():
    for bad in (-0.1, 1.5, True):
        with pytest.raises(ValueError, match="rate"):
            P.typos("abc", bad)
    with pytest.raises(ValueError, match="kinds"):
        P.typos("abc", 0.1, kinds=("smudge",))
    with pytest.raises(TypeError):
        P.typos("abc", 0.1, rng="seed")
    with pytest.raises(ValueError, match="letter"):
        P.keyboard_typo("1", random.Random(0))
    assert P.word_dropout("one two", 1.0, 0) in ("one", "two")  # never empty


def test_noise_curve():
    texts = ["good " * 5, "bad " * 5] * 20
    labels = torch.tensor([1, 0] * 20)

    def keyword(ts):  # a classifier that needs the exact word "good"
        return torch.tensor([int("good" in t) for t in ts])

    curve = P.noise_curve(keyword, texts, labels, P.typos, [0.0, 0.5, 1.0], seeds=(0, 1), progress=False)
    assert curve.accuracy[0] == 1.0 and curve.std[0] == 0.0
    assert curve.accuracy[0] >= curve.accuracy[1] >= curve.accuracy[2]
    assert curve.accuracy[2] == pytest.approx(0.5, abs=0.05)
    with pytest.raises(ValueError, match="one label per text"):
        P.noise_curve(keyword, texts, labels[:3], P.typos, [0.0], progress=False)


# --- corpus counts and whole-text likelihoods ----------------------------------------------------

def test_corpus_counts_agree_with_cooccurrence_and_never_cross_documents():
    docs = ["The nurse said she was tired. He left.", "She met the nurse; he didn't.", "Nurse, nurse!"]
    counts = P.corpus_counts(docs, ["nurse"], ["he", "she"], window=3)
    for doc_words, doc in zip([P.words_of(d) for d in docs], docs):
        assert doc_words == [w for w in doc.lower().replace(";", " ").replace(",", " ").replace(".", " ")
                             .replace("!", " ").replace("'", " ").split()]
    by_doc = [P.cooccurrence(P.words_of(d), ["nurse"], ["he", "she"], window=3) for d in docs]
    for c in ("he", "she"):
        assert counts.near["nurse"][c] == sum(d["nurse"][c] for d in by_doc)
    # joined into one word list, the last "he" of doc 2 would be 3 words from doc 3's first "nurse"
    joined = P.cooccurrence([w for d in docs for w in P.words_of(d)], ["nurse"], ["he"], window=3)
    assert joined["nurse"]["he"] > counts.near["nurse"]["he"]
    assert counts.totals == {"nurse": 4, "he": 2, "she": 2}
    assert counts.n_docs == 3 and counts.n_words == sum(len(P.words_of(d)) for d in docs)


def test_corpus_counts_a_word_is_not_its_own_context():
    counts = P.corpus_counts(["he he x he"], ["he"], ["he"], window=1)
    assert counts.near["he"]["he"] == 2  # the pair (0, 1) seen from both sides; position 3 has no "he" next to it


def test_corpus_counts_refuse_bad_input():
    with pytest.raises(ValueError, match="lowercase words"):
        P.corpus_counts(["a b"], ["Nurse"], ["he"])
    with pytest.raises(ValueError, match="window"):
        P.corpus_counts(["a b"], ["a"], ["b"], window=0)
    with pytest.raises(TypeError, match="list of documents"):
        P.corpus_counts("the nurse", ["nurse"], ["he"])


def test_text_nll_scores_every_token_once_whatever_the_window(small_lm):
    model, tok = small_lm  # block_size 32
    texts = ["The nurse said that she was tired . " * 6, "The engineer", ""]
    nll, n = P.text_nll(model, tok, texts)
    model.eval()
    with torch.no_grad():
        for text, got, count in zip(texts, nll, n):
            ids = tok.encode(text)
            assert count == max(0, len(ids) - 1)
            if len(ids) < 2:
                assert got == 0
                continue
            # reference: score token t from the (up to) block_size tokens of its window, one at a time
            want, lo = 0.0, 0
            while lo < len(ids) - 1:
                chunk = ids[lo: lo + 33]
                logp = F.log_softmax(model(chunk[None, :-1])[0][0].double(), -1)
                want -= logp.gather(-1, chunk[1:, None]).sum().item()
                lo += 32
            assert len(ids) > 33 or text != texts[0]
            torch.testing.assert_close(got.item(), want)


def test_text_nll_with_a_prefix_scores_the_first_token_too(small_lm):
    model, tok = small_lm
    nll, n = P.text_nll(model, tok, ["The nurse"], prefix="The")
    ids = tok.encode("The").tolist() + tok.encode("The nurse").tolist()
    assert n.tolist() == [len(tok.encode("The nurse"))]
    model.eval()
    with torch.no_grad():
        logp = F.log_softmax(model(torch.tensor(ids)[None, :-1])[0][0].double(), -1)
    k = len(tok.encode("The"))
    want = -sum(logp[t - 1, ids[t]].item() for t in range(k, len(ids)))
    torch.testing.assert_close(nll[0].item(), want)
    batched, _ = P.text_nll(model, tok, ["The nurse", "The engineer said"] * 5, prefix="The", batch_size=3)
    torch.testing.assert_close(batched[0].item(), want)


def test_text_nll_refuses_a_string_and_a_long_prefix(small_lm):
    model, tok = small_lm
    with pytest.raises(TypeError, match="list of strings"):
        P.text_nll(model, tok, "The nurse")
    with pytest.raises(ValueError, match="prefix"):
        P.text_nll(model, tok, ["x"], prefix="The nurse said that she was tired . " * 8)
