"""lmlib.generate (chapter 3): filters, sampling, the KV-cached loop, stopping, beam search."""
import itertools

import pytest
import torch
import torch.nn.functional as F

from lmlib.generate import beam_search, generate, next_logits, next_token, top_k_filter, top_p_filter
from lmlib.model import GPT, GPTConfig


def tiny_model(**kw) -> GPT:
    torch.manual_seed(0)
    base = dict(vocab_size=11, block_size=12, n_layer=2, n_head=2, n_embd=16)
    base.update(kw)
    return GPT(GPTConfig(**base)).eval()


def test_top_k_filter():
    logits = torch.tensor([[1.0, 5.0, 3.0, 2.0], [0.0, -1.0, 4.0, 4.0]])
    out = top_k_filter(logits, 2)
    assert torch.isinf(out).tolist() == [[True, False, False, True], [True, True, False, False]]
    assert torch.equal(top_k_filter(logits, 10), logits)
    with pytest.raises(ValueError, match="top_k"):
        top_k_filter(logits, 0)


def test_top_p_filter():
    probs = torch.tensor([[0.5, 0.3, 0.15, 0.05]])
    logits = probs.log()
    assert torch.isfinite(top_p_filter(logits, 0.5)).tolist() == [[True, False, False, False]]
    assert torch.isfinite(top_p_filter(logits, 0.8)).tolist() == [[True, True, False, False]]
    assert torch.isfinite(top_p_filter(logits, 0.81)).tolist() == [[True, True, True, False]]
    assert torch.isfinite(top_p_filter(logits, 1.0)).all()
    assert torch.isfinite(top_p_filter(logits, 1e-9)).sum() == 1  # the top token always survives
    shuffled = logits[:, [2, 0, 3, 1]]  # order of the vocabulary does not matter
    assert torch.isfinite(top_p_filter(shuffled, 0.8)).tolist() == [[False, True, False, True]]
    with pytest.raises(ValueError, match="top_p"):
        top_p_filter(logits, 0.0)


def test_next_token_greedy_and_sampling_frequencies():
    logits = torch.tensor([[0.0, 1.0, 2.0]]).log_softmax(-1)
    assert next_token(logits, greedy=True).item() == 2
    gen = torch.Generator().manual_seed(0)
    draws = torch.cat([next_token(logits.expand(2000, 3), generator=gen) for _ in range(5)]).flatten()
    freq = torch.bincount(draws, minlength=3).float() / draws.numel()
    torch.testing.assert_close(freq, F.softmax(logits[0], -1), atol=0.02, rtol=0)
    cold = next_token(logits.expand(500, 3), temperature=0.05, generator=gen)
    assert (cold == 2).all()
    only_two = next_token(logits.expand(500, 3), top_k=2, generator=gen)
    assert set(only_two.flatten().tolist()) == {1, 2}
    with pytest.raises(ValueError, match="temperature"):
        next_token(logits, temperature=0.0)


@pytest.mark.parametrize("kw", [dict(), dict(pos="rope", norm="rms", mlp="swiglu")])
@pytest.mark.parametrize("sampling", [dict(greedy=True), dict(temperature=0.8, top_k=5, top_p=0.9)])
def test_cache_gives_the_same_tokens(kw, sampling):
    model = tiny_model(**kw)
    prompt = torch.randint(0, 11, (2, 3), generator=torch.Generator().manual_seed(1))
    # 20 new tokens > block_size 12: exercises the cropping path as well
    a = generate(model, prompt, 20, use_cache=True, generator=torch.Generator().manual_seed(5), **sampling)
    b = generate(model, prompt, 20, use_cache=False, generator=torch.Generator().manual_seed(5), **sampling)
    assert a.shape == (2, 23)
    assert torch.equal(a, b)
    assert torch.equal(a[:, :3], prompt)


def test_next_logits_steps_with_the_cache_and_takes_several_tokens_at_once():
    model = tiny_model()  # block_size 12
    seq = torch.tensor([[1, 2, 3]])
    logits, cache = next_logits(model, seq)
    for new in ([4], [5, 6, 7], [8], [9, 10, 1, 2]):  # the last step overflows: a fresh, cropped cache
        seq = torch.cat([seq, torch.tensor([new])], dim=1)
        logits, cache = next_logits(model, seq, cache, n_new=len(new))
        full = model(seq[:, -12:])[0][:, -1]
        torch.testing.assert_close(logits, full, atol=1e-5, rtol=1e-5)
    assert cache[0].length == 12
    _, cache = next_logits(model, seq[:, :5])
    with pytest.raises(ValueError, match="cache holds 5 tokens"):
        next_logits(model, seq[:, :8], cache)  # three new tokens, but n_new says one


def test_greedy_matches_argmax_of_full_forward():
    model = tiny_model()
    prompt = torch.tensor([[1, 2, 3]])
    out = generate(model, prompt, 4, greedy=True)
    seq = prompt
    for _ in range(4):
        seq = torch.cat([seq, model(seq)[0][:, -1].argmax(-1, keepdim=True)], dim=1)
    assert torch.equal(out, seq)


def test_eos_stops_and_pads():
    model = tiny_model()
    prompt = torch.tensor([[1, 2, 3], [4, 5, 6]])
    free = generate(model, prompt, 6, greedy=True)
    eos = int(free[0, 4])  # the second token row 0 would produce
    out = generate(model, prompt, 6, greedy=True, eos_id=eos)
    assert out[0, 4] == eos and (out[0, 4:] == eos).all()
    row1 = free[1, 3:].tolist()
    if eos in row1:  # row 1 ends too, then generation stops early
        assert out.shape[1] <= free.shape[1]
    else:
        assert torch.equal(out[1], free[1])


def test_generate_restores_training_mode_and_validates():
    model = tiny_model()
    model.train()
    generate(model, torch.tensor([[1]]), 2)
    assert model.training
    with pytest.raises(ValueError, match="idx"):
        generate(model, torch.tensor([1, 2]), 2)
    with pytest.raises(ValueError, match="max_new_tokens"):
        generate(model, torch.tensor([[1]]), -1)
    with pytest.raises(ValueError, match="temperature"):
        generate(model, torch.tensor([[1]]), 2, temperature=0)
    assert generate(model, torch.tensor([[1]]), 0).shape == (1, 1)


def test_beam_search_size_one_is_greedy():
    model = tiny_model()
    prompt = torch.tensor([[3, 4]])
    best, _ = beam_search(model, prompt, 5, beam_size=1, length_penalty=0.0)
    assert torch.equal(best, generate(model, prompt, 5, greedy=True))


def test_wide_beam_search_finds_the_most_likely_sequence():
    model = tiny_model(vocab_size=5)
    prompt = torch.tensor([[1]])

    def logp(seq):
        lp = model(torch.tensor([seq]))[0].log_softmax(-1)[0]
        return sum(lp[i, seq[i + 1]].item() for i in range(len(seq) - 1))

    with torch.no_grad():
        brute = max(itertools.product(range(5), repeat=3), key=lambda s: logp([1, *s]))
        best, score = beam_search(model, prompt, 3, beam_size=25, length_penalty=0.0)
        assert best[0, 1:].tolist() == list(brute)
        assert abs(score - logp([1, *brute])) < 1e-4


def test_beam_search_with_eos_and_plain_function():
    model = tiny_model()
    fn = lambda ids: model(ids)[0]  # noqa: E731  a plain logits function works too
    best, score = beam_search(fn, torch.tensor([[1, 2]]), 6, beam_size=3, eos_id=0, block_size=12)
    assert best.shape[1] <= 8 and score <= 0
    with pytest.raises(ValueError, match="one prompt"):
        beam_search(fn, torch.tensor([[1], [2]]), 3)
