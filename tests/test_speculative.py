"""Speculative decoding (lmlib.speculative): the output follows the target model, exactly when greedy,
in distribution when sampling."""
import itertools

import pytest
import torch
import torch.nn.functional as F

from lmlib.generate import generate
from lmlib.model import GPT, GPTConfig
from lmlib.speculative import accept_or_resample, speculative_generate


def tiny_gpt(seed: int, vocab: int = 11, n_embd: int = 16, block_size: int = 32) -> GPT:
    torch.manual_seed(seed)
    return GPT(GPTConfig(vocab_size=vocab, block_size=block_size, n_layer=1, n_head=2, n_embd=n_embd)).eval()


def near_copy(model: GPT, noise: float, seed: int = 1) -> GPT:
    """The model with every weight nudged: a draft that agrees with it often, not always."""
    torch.manual_seed(seed)
    other = GPT(model.config).eval()
    other.load_state_dict(model.state_dict())
    with torch.no_grad():
        for p in other.parameters():
            p += noise * torch.randn_like(p)
    return other


def total_variation(a: dict, b: dict) -> float:
    return 0.5 * sum(abs(a.get(x, 0.0) - b.get(x, 0.0)) for x in set(a) | set(b))


def test_the_accept_reject_rule_emits_tokens_with_the_target_probabilities():
    gen = torch.Generator().manual_seed(0)
    p = torch.tensor([0.5, 0.3, 0.15, 0.05])
    q = torch.tensor([0.1, 0.2, 0.3, 0.4])  # a poor draft: most of its mass where p has little
    n = 20_000
    counts = torch.zeros(4)
    for _ in range(n):
        guess = int(torch.multinomial(q, 1, generator=gen))
        counts[accept_or_resample(p, q, guess, gen)[1]] += 1
    freq = counts / n
    assert torch.all((freq - p).abs() < 5 * (p * (1 - p) / n).sqrt() + 1e-3), (freq, p)
    assert (q - p).abs().sum() / 2 > 0.3  # the draft alone would have failed this test


def test_greedy_acceptance_keeps_the_guess_only_when_it_is_the_target_argmax():
    p = torch.tensor([0.1, 0.6, 0.3])
    assert accept_or_resample(p, torch.tensor([0.0, 1.0, 0.0]), 1, greedy=True) == (True, 1)
    assert accept_or_resample(p, torch.tensor([0.0, 0.0, 1.0]), 2, greedy=True) == (False, 1)


@pytest.mark.parametrize("k", [1, 2, 3, 5])
def test_greedy_speculative_decoding_gives_the_target_greedy_tokens(k):
    target = tiny_gpt(0)
    draft = near_copy(target, 0.05)
    for prompt in ([3], [1, 4, 1, 5], [9, 2, 6]):
        idx = torch.tensor([prompt])
        ours, stats = speculative_generate(target, draft, idx, 20, k=k, greedy=True)
        assert torch.equal(ours, generate(target, idx, 20, greedy=True))
        assert stats.new_tokens == 20 and stats.accepted <= stats.drafted
        assert stats.target_calls == stats.rounds < 20  # fewer target passes than tokens: the point of it


def test_a_draft_equal_to_the_target_is_always_accepted():
    model = tiny_gpt(0)
    ids, stats = speculative_generate(model, model, torch.tensor([[2, 7]]), 14, k=4,
                                      generator=torch.Generator().manual_seed(0))
    assert stats.acceptance_rate == 1.0 and stats.drafted == 4 + 4 + 3 and stats.target_calls == 3
    assert stats.tokens_per_target_call == pytest.approx(14 / 3)


def test_sampled_sequences_follow_the_target_distribution():
    vocab, temperature, n = 4, 0.1, 4000
    target, draft = tiny_gpt(0, vocab, n_embd=8, block_size=8), tiny_gpt(5, vocab, n_embd=8, block_size=8)
    prompt = torch.tensor([[1, 2]])

    def exact(model) -> dict:
        """P(a, b) for the next two tokens, from the model's softmax at the temperature."""
        with torch.no_grad():
            first = F.softmax(model(prompt)[0][0, -1] / temperature, -1)
            out = {}
            for a in range(vocab):
                second = F.softmax(model(torch.tensor([[1, 2, a]]))[0][0, -1] / temperature, -1)
                for b in range(vocab):
                    out[a, b] = float(first[a] * second[b])
        return out

    gen = torch.Generator().manual_seed(0)
    counts = dict.fromkeys(itertools.product(range(vocab), repeat=2), 0)
    for _ in range(n):
        ids, _ = speculative_generate(target, draft, prompt, 2, k=2, temperature=temperature, generator=gen)
        counts[tuple(ids[0, 2:].tolist())] += 1
    empirical = {x: c / n for x, c in counts.items()}
    assert total_variation(exact(draft), exact(target)) > 0.2  # the draft alone is far from the target
    assert total_variation(empirical, exact(target)) < 0.05


def test_bad_calls_are_refused_with_the_reason():
    target, draft = tiny_gpt(0, block_size=8), tiny_gpt(1, block_size=8)
    with pytest.raises(ValueError, match="fit"):
        speculative_generate(target, draft, torch.tensor([[1, 2, 3]]), 6)
    with pytest.raises(ValueError, match="one prompt"):
        speculative_generate(target, draft, torch.tensor([[1], [2]]), 2)
    with pytest.raises(ValueError, match="k"):
        speculative_generate(target, draft, torch.tensor([[1]]), 2, k=0)
