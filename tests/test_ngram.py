"""lmlib.ngram (chapter 1): counts, add-k and Kneser-Ney against hand-computed and brute-force values."""
import math
from collections import Counter

import pytest
import torch

from lmlib import ngram
from lmlib.tokenizers import Vocab

# The corpus "a b c b a b" with a=0, b=1, c=2. Hand computation with D = 0.5 (see test docstrings).
TOY = torch.tensor([0, 1, 2, 1, 0, 1])


def test_counts_match_python_counter():
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(7, (500,), generator=gen)
    counts = ngram.NGramCounts(ids, 4, 7)
    for k in range(1, 5):
        ref = Counter(tuple(ids[t : t + k].tolist()) for t in range(len(ids) - k + 1))
        assert counts.num_ngrams(k) == len(ref)
        got = counts.count(ids, k)  # count of the k-gram ending at each position
        for t in range(k - 1, len(ids)):
            assert got[t] == ref[tuple(ids[t - k + 1 : t + 1].tolist())]
        assert (got[: k - 1] == 0).all()


def test_continuation_counts_by_hand():
    """N1+(. a) = |{b}| = 1, N1+(. b) = |{a, c}| = 2, N1+(. c) = |{b}| = 1."""
    counts = ngram.NGramCounts(TOY, 2, 3)
    assert counts.order(1).continuation.tolist() == [1, 2, 1]
    # top order: the bigram "a b" is preceded only by b (positions 3-5), "b c" only by a
    bigram_cont = counts.continuation_count(torch.tensor([0, 1, 2]), 2)
    assert bigram_cont.tolist() == [0, 1, 1]


def test_kneser_ney_by_hand():
    """D = 0.5. Unigram level: N1+(..) = 4 distinct bigrams, 3 words with N1+ > 0, V = 3:
    P1(a) = 0.5/4 + 0.5*3/4/3 = 0.25, P1(b) = 1.5/4 + 0.125 = 0.5, P1(c) = 0.25.
    "a" is followed by b twice: P(b | a) = (2 - 0.5)/2 + 0.5*1/2 * 0.5 = 0.875.
    "b" is followed by c and by a: P(c | b) = (1 - 0.5)/2 + 0.5*2/2 * 0.25 = 0.375.
    """
    lm = ngram.NGramLM(TOY, 2, 3, discount=0.5)
    torch.testing.assert_close(lm.next_token_probs([]), torch.tensor([0.25, 0.5, 0.25], dtype=torch.float64))
    torch.testing.assert_close(lm.next_token_probs([0]), torch.tensor([0.0625, 0.875, 0.0625], dtype=torch.float64))
    probs = lm.target_probs(torch.tensor([0, 1, 2]))
    torch.testing.assert_close(probs, torch.tensor([0.875, 0.375], dtype=torch.float64))
    assert lm.perplexity(torch.tensor([0, 1, 2])) == pytest.approx(1 / math.sqrt(0.875 * 0.375))


def test_kneser_ney_unseen_word_and_context():
    """With V = 4 the word d (3) never occurs: P1(d) = 0.5*3/4/4 = 0.09375, and P(. | d) = P1."""
    lm = ngram.NGramLM(TOY, 2, 4, discount=0.5)
    p1 = lm.next_token_probs([])
    assert p1[3].item() == pytest.approx(0.09375)
    torch.testing.assert_close(lm.next_token_probs([3]), p1)


def test_add_k_by_hand():
    """k = 1, V = 3: P(b | a) = (2 + 1)/(2 + 3) = 0.6;  P(a | c) = (0 + 1)/(1 + 3) = 0.25."""
    lm = ngram.NGramLM(TOY, 2, 3, smoothing="add-k", k=1.0)
    assert lm.next_token_probs([0])[1].item() == pytest.approx(0.6)
    assert lm.next_token_probs([2])[0].item() == pytest.approx(0.25)


def _kn_reference(train: list[int], n: int, V: int, D: list[float], history: tuple, w: int) -> float:
    """Interpolated Kneser-Ney written out with Python counters, straight from the definition."""
    grams = [Counter(tuple(train[t : t + k]) for t in range(len(train) - k + 1)) for k in range(n + 2)]

    def p(j: int, w: int) -> float:
        if j == 0:
            return 1.0 / V
        lower = p(j - 1, w)
        if len(history) < j - 1:  # too close to the start of the text: no history of this length
            return lower
        h = tuple(history[len(history) - (j - 1):]) if j > 1 else ()
        if j == n:
            c = {v: grams[j][h + (v,)] for v in range(V)}
        else:
            c = {v: sum(1 for g in grams[j + 1] if g[1:] == h + (v,)) for v in range(V)}
        den = sum(c.values())
        if den == 0:
            return lower
        types = sum(1 for x in c.values() if x > 0)
        return max(c[w] - D[j - 1], 0) / den + D[j - 1] * types / den * lower

    return p(n, w)


@pytest.mark.parametrize("n", [1, 2, 3, 4])
def test_kneser_ney_matches_brute_force(n):
    gen = torch.Generator().manual_seed(n)
    V = 5
    train = torch.randint(V - 1, (60,), generator=gen)  # word 4 never occurs in training
    test = torch.randint(V, (25,), generator=gen)
    lm = ngram.NGramLM(train, n, V)
    got = lm.target_probs(test)
    t = train.tolist()
    for i in range(1, len(test)):
        hist = tuple(test[max(0, i - (n - 1)) : i].tolist())
        ref = _kn_reference(t, n, V, lm.discounts, hist, int(test[i]))
        assert got[i - 1].item() == pytest.approx(ref, rel=1e-9), (i, hist)


@pytest.mark.parametrize("smoothing", ["kneser-ney", "add-k"])
def test_distributions_sum_to_one(smoothing):
    gen = torch.Generator().manual_seed(1)
    train = torch.randint(8, (300,), generator=gen)
    lm = ngram.NGramLM(train, 3, 10, smoothing=smoothing, k=0.1)
    for history in ([], [3], [3, 4], train[:2].tolist(), [9, 9]):
        p = lm.next_token_probs(history)
        assert (p > 0).all()
        assert p.sum().item() == pytest.approx(1.0, abs=1e-12)


def test_shared_counts_give_the_same_model():
    gen = torch.Generator().manual_seed(2)
    train, test = torch.randint(6, (200,), generator=gen), torch.randint(6, (50,), generator=gen)
    big = ngram.NGramCounts(train, 4, 6)
    for n in (1, 2, 3):
        a = ngram.NGramLM(train, n, 6).target_probs(test)
        b = ngram.NGramLM(train, n, 6, counts=big).target_probs(test)
        torch.testing.assert_close(a, b)


def test_kneser_ney_checker_reference_matches_the_library():
    from lmlib.exercises import reference_kneser_ney_bigram

    gen = torch.Generator().manual_seed(3)
    ids = torch.randint(6, (100,), generator=gen)
    table = reference_kneser_ney_bigram(ids, 7, 0.6)
    lm = ngram.NGramLM(ids, 2, 7, discount=0.6)
    for a in range(7):
        torch.testing.assert_close(table[a], lm.next_token_probs([a]))


@pytest.mark.parametrize("n", [0, -1, 1.5])
def test_bad_order(n):
    with pytest.raises(ValueError, match="order n"):
        ngram.NGramCounts(TOY, n, 3)


def test_bad_inputs_have_clear_errors():
    with pytest.raises(ValueError, match="at least n"):
        ngram.NGramCounts(torch.tensor([], dtype=torch.int64), 2, 3)
    with pytest.raises(ValueError, match="empty corpus"):
        Vocab.from_words([])
    with pytest.raises(ValueError, match="outside"):
        ngram.NGramLM(TOY, 2, 2)  # id 2 does not fit a vocabulary of 2
    lm = ngram.NGramLM(TOY, 2, 3)
    with pytest.raises(ValueError, match="outside"):
        lm.target_probs(torch.tensor([0, 7]))
    with pytest.raises(ValueError, match="at least two"):
        lm.target_probs(torch.tensor([0]))
    with pytest.raises(ValueError, match="1-D"):
        lm.target_probs(torch.tensor([[0, 1]]))
    with pytest.raises(ValueError, match="k > 0"):
        ngram.NGramLM(TOY, 2, 3, smoothing="add-k", k=0)
    with pytest.raises(ValueError, match="smoothing"):
        ngram.NGramLM(TOY, 2, 3, smoothing="witten-bell")
    with pytest.raises(ValueError, match="discount"):
        ngram.NGramLM(TOY, 2, 3, discount=[0.5])


def test_vocab_unknown_word_policy():
    vocab = Vocab.from_words("the cat sat on the mat".split())
    assert vocab.itos[:2] == ["<unk>", "the"]  # the special first, then frequency order
    ids = vocab.encode(["the", "dog"])
    assert ids.tolist() == [1, vocab.unk] and vocab.unk == 0
    with pytest.raises(KeyError, match="dog"):
        vocab.encode(["the", "dog"], unknown="error")
    with pytest.raises(ValueError, match="unknown"):
        vocab.encode(["the"], unknown="skip")
    assert vocab.decode(vocab.encode(["cat", "on"])) == ["cat", "on"]


def test_wikitext_words(mirror):
    words = ngram.wikitext_words("valid")
    assert len(words) == 217_646  # the published count, one <eos> per line
    assert ngram.wikitext_words("valid", max_lines=3) == words[: len(ngram.wikitext_words("valid", max_lines=3))]
    with pytest.raises(ValueError, match="split"):
        ngram.wikitext_words("dev")


def test_wikitext2_validation_and_test_words_are_all_in_the_training_vocabulary(mirror):
    """The closed-vocabulary claim of chapter 1: no <unk> mapping is needed on the full data."""
    vocab = Vocab.from_words(ngram.wikitext_words("train"))
    assert len(vocab) == 33_278
    for split in ("valid", "test"):
        vocab.encode(ngram.wikitext_words(split), unknown="error")  # raises on any new word


def test_bigram_count_matrix_and_the_count_nll_gradient():
    ids = torch.tensor([0, 1, 0, 1, 2, 0, 1, 1])
    counts = ngram.bigram_count_matrix(ids, 4)
    assert counts[0, 1] == 3 and counts[1, 0] == 1 and counts[1, 1] == 1 and counts[3].sum() == 0
    assert counts.sum() == len(ids) - 1
    logits = torch.randn(4, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(0), requires_grad=True)
    ngram.count_nll(logits, counts).backward()
    torch.testing.assert_close(ngram.count_nll_gradient(logits.detach(), counts), logits.grad)
    # the loss equals the token-by-token cross-entropy
    torch.testing.assert_close(ngram.count_nll(logits.detach(), counts),
                               torch.nn.functional.cross_entropy(logits.detach()[ids[:-1]], ids[1:]))
    # the count model is a minimum: the gradient vanishes at log(counts / row total) on the seen rows
    seen = counts.sum(1) > 0
    at_counts = torch.where(seen[:, None], torch.log(counts / counts.sum(1, keepdim=True).clamp(min=1)), 0.0)
    assert ngram.count_nll_gradient(at_counts, counts)[seen].abs().max() < 1e-12
    with pytest.raises(ValueError, match="outside"):
        ngram.bigram_count_matrix(torch.tensor([0, 5]), 4)
    with pytest.raises(ValueError, match="one \\(V, V\\) shape"):
        ngram.count_nll(torch.zeros(3, 3), counts)
