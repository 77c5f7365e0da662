"""lmlib.privacy: canaries, planting, rank and exposure, extraction (chapter 6, privacy)."""
import math

import pytest
import torch
from torch import nn

from lmlib import privacy
from lmlib.model import GPT, GPTConfig
from lmlib.tokenizers import CharTokenizer

# A "model" that is a lookup table: P(next | current token), the same at every position.
# Tokens: ">" = 0 (the context), "a" = 1, "b" = 2.
TOK = CharTokenizer(">ab")


class Table(nn.Module):
    def __init__(self, probs: list[list[float]]):
        super().__init__()
        self.logp = torch.tensor(probs, dtype=torch.float64).log()

    def forward(self, idx):
        return self.logp[idx], None


# P(a|>) = 0.7, P(b|>) = 0.2; P(a|a) = 0.5, P(b|a) = 0.4; P(a|b) = 0.1, P(b|b) = 0.8
HAND = Table([[0.1, 0.7, 0.2], [0.1, 0.5, 0.4], [0.1, 0.1, 0.8]])
# P(aa) = 0.35, P(ab) = 0.28, P(ba) = 0.02, P(bb) = 0.16: ranks aa 1, ab 2, bb 3, ba 4
HAND_PROBS = {"aa": 0.35, "ab": 0.28, "ba": 0.02, "bb": 0.16}
HAND_RANKS = {"aa": 1, "ab": 2, "bb": 3, "ba": 4}


def test_lookup_table_gives_exact_log_perplexities_ranks_and_exposures():
    lps = privacy.space_log_perplexities(HAND, TOK.encode(">"), TOK.encode("ab"), 2)
    expected = torch.tensor([-math.log2(HAND_PROBS[s]) for s in ("aa", "ab", "ba", "bb")], dtype=torch.float64)
    torch.testing.assert_close(lps, expected)
    for secret, rank in HAND_RANKS.items():
        canary = privacy.Canary(">", secret, alphabet="ab")
        result = privacy.measure_exposure(HAND, TOK, canary)
        assert result.rank == rank and result.space_size == 4
        assert result.exposure == pytest.approx(2 - math.log2(rank))
        assert result.log_perplexity == pytest.approx(-math.log2(HAND_PROBS[secret]))


def test_enumeration_matches_scoring_each_secret_on_a_gpt():
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=12, block_size=16, n_layer=1, n_head=2, n_embd=16))
    context, alphabet = torch.tensor([3, 1, 4]), torch.tensor([5, 9, 2])
    fast = privacy.space_log_perplexities(model, context, alphabet, 3, batch_size=4)
    every = torch.tensor([[d // 9, d // 3 % 3, d % 3] for d in range(27)])
    slow = privacy.sequence_log_perplexity(model, context, alphabet[every], batch_size=5)
    torch.testing.assert_close(fast, slow, rtol=1e-5, atol=1e-5)
    assert model.training  # the mode is restored
    # the probabilities of all secrets (given the context) sum to at most 1
    assert float((2.0 ** -fast).sum()) <= 1 + 1e-6


def test_length_one_secret():
    lps = privacy.space_log_perplexities(HAND, TOK.encode(">"), TOK.encode("ab"), 1)
    torch.testing.assert_close(lps, torch.tensor([-math.log2(0.7), -math.log2(0.2)], dtype=torch.float64))


def test_rank_counts_ties_against_the_canary():
    assert privacy.rank_of([1.0, 2.0, 2.0, 3.0], 1) == 3
    assert privacy.rank_of([1.0, 2.0, 2.0, 3.0], 0) == 1
    assert privacy.rank_of([5.0, 5.0, 5.0], 0) == 3  # a model that cannot tell: exposure 0
    assert privacy.exposure(3, 3) == 0.0
    assert privacy.exposure(1, 1024) == 10.0


def test_estimated_exposure_is_exact_on_the_whole_rest_of_the_space():
    gen = torch.Generator().manual_seed(1)
    lps = torch.rand(200, generator=gen, dtype=torch.float64)
    for index in (0, 17, 199):
        exact = privacy.exposure(privacy.rank_of(lps, index), len(lps))
        others = torch.cat([lps[:index], lps[index + 1:]])
        assert privacy.estimated_exposure(float(lps[index]), others) == pytest.approx(exact)
    # the estimate saturates at log2(m + 1)
    assert privacy.estimated_exposure(-1.0, torch.ones(7)) == pytest.approx(3.0)


def test_sample_exposure_tracks_the_exact_value_and_skips_the_canary():
    canary = privacy.Canary(">", "bb", alphabet="ab")
    gen = torch.Generator().manual_seed(0)
    # samples come from {aa, ab, ba}; aa and ab are at least as likely as bb, so k / m -> 2 / 3 =
    # (rank - 1) / (|R| - 1) and the estimate -> log2(3 / 2) (the exact value is log2(4 / 3): in a
    # space of 4 the difference shows, in a large space it vanishes)
    estimate = privacy.sample_exposure(HAND, TOK, canary, 3000, gen)
    assert estimate == pytest.approx(math.log2(3 / 2), abs=0.05)
    top = privacy.Canary(">", "aa", alphabet="ab")
    assert privacy.sample_exposure(HAND, TOK, top, 50, gen) == pytest.approx(math.log2(51))


def test_greedy_and_beam_extraction():
    # greedy takes "a" (0.5) then "a" (0.55): P(aa) = 0.275; but P(bb) = 0.4 * 1.0 is larger
    model = Table([[0.1, 0.5, 0.4], [0.0001, 0.55, 0.4499], [0.0001, 0.0001, 0.9998]])
    assert privacy.extract(model, TOK, ">", 2) == "aa"
    assert privacy.extract(model, TOK, ">", 2, beam_size=2) == "bb"
    canary = privacy.Canary(">", "bb", alphabet="ab")
    assert not privacy.is_extracted(model, TOK, canary)
    assert privacy.is_extracted(model, TOK, canary, beam_size=2)
    assert privacy.measure_exposure(model, TOK, canary).rank == 1  # rank 1, yet greedy misses it


def test_secrets_and_canaries():
    gen = torch.Generator().manual_seed(3)
    s = privacy.random_secret(6, gen)
    assert len(s) == 6 and s.isdigit()
    assert privacy.random_secret(6, torch.Generator().manual_seed(3)) == s  # seeded
    canaries = privacy.make_canaries(["a ", "b ", "c "], 1, seed=0, alphabet="xyz")
    assert sorted(c.secret for c in canaries) == ["x", "y", "z"]  # distinct, space exhausted
    assert privacy.make_canaries(["p "], 4, seed=5) == privacy.make_canaries(["p "], 4, seed=5)
    c = privacy.Canary("my number is ", "0042")
    assert c.text == "my number is 0042" and c.space_size == 10_000 and c.index == 42
    assert privacy.secret_at(42, 4) == "0042"
    for i in (0, 7, 123, 9999):
        assert privacy.secret_index(privacy.secret_at(i, 4)) == i


def test_plant_inserts_the_right_number_of_copies_and_keeps_the_order():
    docs = [f"doc {i}" for i in range(50)]
    out = privacy.plant(docs, ["SECRET A", "SECRET B", "SECRET C"], [1, 4, 0], seed=2)
    assert out.count("SECRET A") == 1 and out.count("SECRET B") == 4 and "SECRET C" not in out
    assert [d for d in out if d.startswith("doc")] == docs
    assert out == privacy.plant(docs, ["SECRET A", "SECRET B", "SECRET C"], [1, 4, 0], seed=2)
    positions = {tuple(i for i, d in enumerate(privacy.plant(docs, ["S"], [3], seed=s)) if d == "S") for s in range(5)}
    assert len(positions) > 1  # the seed moves the copies


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda: privacy.plant("one long string", ["x"], [1]), "list of strings"),
        (lambda: privacy.plant(["d"], ["x", "y"], [1]), "one count per text"),
        (lambda: privacy.plant(["d"], ["x"], [-1]), ">= 0"),
        (lambda: privacy.plant(["d"], [""], [1]), "non-empty"),
        (lambda: privacy.plant(["d"], "x", [1]), "wrap a single"),
        (lambda: privacy.exposure(0, 10), "between 1 and"),
        (lambda: privacy.exposure(11, 10), "between 1 and"),
        (lambda: privacy.rank_of([1.0, 2.0], 2), r"\[0, 2\)"),
        (lambda: privacy.rank_of([[1.0]], 0), "1-D"),
        (lambda: privacy.rank_of([float("nan"), 1.0], 0), "NaN"),
        (lambda: privacy.estimated_exposure(1.0, []), "non-empty"),
        (lambda: privacy.Canary("p", "12a"), "outside the alphabet"),
        (lambda: privacy.Canary("p", "", "ab"), "non-empty secret"),
        (lambda: privacy.Canary("p", "aa", "aa"), "distinct"),
        (lambda: privacy.secret_at(100, 2), "outside the space"),
        (lambda: privacy.make_canaries(["a", "b", "c"], 1, alphabet="xy"), "do not fit"),
        (lambda: privacy.make_canaries("my number is ", 4), "list of strings"),
        (lambda: privacy.space_log_perplexities(HAND, TOK.encode(">"), TOK.encode("ab"), 30), "sample_exposure"),
        (lambda: privacy.space_log_perplexities(HAND, torch.tensor([], dtype=torch.long), TOK.encode("ab"), 2), "non-empty 1-D"),
        (lambda: privacy.space_log_perplexities(HAND, TOK.encode(">"), TOK.encode("aa"), 2), "distinct token ids"),
        (lambda: privacy.sequence_log_perplexity(HAND, TOK.encode(">"), TOK.encode("ab")), r"\(N, L\)"),
        (lambda: privacy.sample_exposure(HAND, TOK, privacy.Canary(">", "ab", "ab"), 0, torch.Generator()), "positive"),
        (lambda: privacy.extract(HAND, TOK, "", 2), "prompt is empty"),
        (lambda: privacy.measure_exposure(HAND, TOK, privacy.Canary(">", "12")), "not in this tokenizer"),
    ],
)
def test_bad_input_is_explained(call, message):
    with pytest.raises(ValueError, match=message):
        call()


def test_context_longer_than_the_model_is_explained():
    model = GPT(GPTConfig(vocab_size=3, block_size=4, n_layer=1, n_head=1, n_embd=8))
    with pytest.raises(ValueError, match="does not fit"):
        privacy.measure_exposure(model, TOK, privacy.Canary(">>>>", "ab", "ab"))


def test_a_model_with_the_wrong_output_shape_is_explained():
    with pytest.raises(ValueError, match=r"logits \(B, T, V\)"):
        privacy.space_log_perplexities(lambda ids: ids.float(), TOK.encode(">"), TOK.encode("ab"), 2)
