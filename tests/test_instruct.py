"""Instruction tuning helpers (chapter 5, notebook 03): templates, loss masks, answers, DPO."""
import math

import pytest
import torch

from lmlib import instruct as I
from lmlib.model import GPT, GPTConfig
from lmlib.tokenizers import CharTokenizer
from lmlib.train import TrainConfig, Trainer, lm_loss

TPL = I.PromptTemplate()
TOK = CharTokenizer.from_text("abcdefghijklmnopqrstuvwxyz ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789#:\n<|>.,?-+=")


def test_template_sections():
    assert TPL.prompt("Add 2 and 3.") == "### Instruction:\nAdd 2 and 3.\n### Response:\n"
    with_input = TPL.prompt("Reverse it.", " abc ")
    assert with_input == "### Instruction:\nReverse it.\n### Input:\nabc\n### Response:\n"
    assert TPL.full("Reverse it.", "abc", "cba") == with_input + "cba<|end|>"
    with pytest.raises(ValueError, match="instruction"):
        TPL.prompt("  ")


def test_sft_targets_mask_exactly_the_prompt():
    ids = torch.arange(10, 20)
    x, y = I.sft_targets(ids, prompt_len=4)
    assert x.tolist() == list(range(10, 19))
    # positions 0..2 predict prompt tokens 11..13: masked; position 3 predicts the first response token 14
    assert y.tolist() == [I.IGNORE_INDEX] * 3 + list(range(14, 20))
    with pytest.raises(ValueError, match="prompt_len"):
        I.sft_targets(ids, prompt_len=10)
    with pytest.raises(ValueError, match="1-D"):
        I.sft_targets(ids[None], prompt_len=2)


def test_encode_example_boundary_and_max_len():
    prompt = TPL.prompt("say hi")
    x, y = I.encode_example(TOK.encode, prompt, "hi", TPL.end)
    full = TOK.encode(prompt + "hi" + TPL.end)
    assert torch.equal(x, full[:-1])
    kept = y[y != I.IGNORE_INDEX]
    assert TOK.decode(kept) == "hi" + TPL.end  # the loss sees exactly the response and the end marker
    assert I.encode_example(TOK.encode, prompt, "hi", TPL.end, max_len=len(x) - 1) is None
    assert I.encode_example(TOK.encode, prompt, "hi", TPL.end, max_len=len(x)) is not None


def test_padding_and_batches():
    a = I.encode_example(TOK.encode, "ab", "c")
    b = I.encode_example(TOK.encode, "abcd", "efg")
    X, Y = I.pad_examples([a, b], pad_id=0)
    assert X.shape == Y.shape == (2, len(b[0]))
    assert (Y[0, len(a[1]):] == I.IGNORE_INDEX).all() and (X[0, len(a[0]):] == 0).all()
    fn = I.sft_batches([a, b], batch_size=5, pad_id=0)
    x1, y1 = fn(torch.Generator().manual_seed(3))
    x2, _ = fn(torch.Generator().manual_seed(3))
    assert x1.shape[0] == 5 and torch.equal(x1, x2)
    with pytest.raises(ValueError, match="no response tokens"):
        I.sft_batches([(torch.tensor([1, 2]), torch.tensor([I.IGNORE_INDEX] * 2))], 2, 0)


def test_no_loss_on_prompt_tokens():
    """Changing the logits at prompt (and padding) positions leaves the loss unchanged; response logits do not."""
    ex = [I.encode_example(TOK.encode, TPL.prompt(q), r, TPL.end) for q, r in (("add 1 and 2", "3"), ("name a colour", "blue"))]
    X, Y = I.pad_examples(ex, pad_id=0)
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(*X.shape, TOK.vocab_size, generator=gen)
    loss = lm_loss(logits, Y)
    masked = (Y == I.IGNORE_INDEX)
    assert masked.sum() > Y.shape[0] * 10  # the prompts are long
    noisy = logits + 50 * torch.randn(logits.shape, generator=gen) * masked.unsqueeze(-1)
    torch.testing.assert_close(lm_loss(noisy, Y), loss)
    changed = logits + 5 * torch.randn(logits.shape, generator=gen) * (~masked).unsqueeze(-1)
    assert not torch.allclose(lm_loss(changed, Y), loss)
    # and the mean runs over response tokens only
    manual = -torch.log_softmax(logits, -1)[~masked].gather(-1, Y[~masked][:, None]).mean()
    torch.testing.assert_close(loss, manual)


def test_trainer_fits_masked_batches():
    ex = [I.encode_example(TOK.encode, TPL.prompt("add 1 and 2"), "3", TPL.end)]
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=TOK.vocab_size, block_size=64, n_layer=1, n_head=2, n_embd=16))
    h = Trainer(model, TrainConfig(max_steps=40, lr=1e-2, warmup_steps=0, eval_every=None, log_every=10,
                                   progress=False), I.sft_batches(ex, 4, 0)).fit()
    assert h.train_loss[-1] < h.train_loss[0] / 3
    assert I.respond(model, TOK.encode, TOK.decode, TPL.prompt("add 1 and 2"), 20, TPL.end) == "3"


@pytest.mark.parametrize("text, expected", [
    ("48/2 = <<48/2=24>>24 clips\n#### 72", "72"),
    ("#### 1,234", "1234"),
    ("#### $18.00", "18"),
    ("#### -3.50 dollars", "-3.5"),
    ("first #### 5 then #### 7", "7"),
    ("The answer is 12", None),
    ("#### none", None),
    (None, None),
])
def test_extract_answer(text, expected):
    assert I.extract_answer(text) == expected


def test_answer_accuracy():
    assert I.answer_accuracy(["3", None, "5"], ["3", "4", "6"]) == pytest.approx(1 / 3)
    with pytest.raises(ValueError, match="2 predictions for 1"):
        I.answer_accuracy(["1", "2"], ["1"])
    with pytest.raises(ValueError, match="reference answer is None"):
        I.answer_accuracy(["1"], [None])


def test_dpo_loss():
    z = torch.zeros(3)
    loss, margin = I.dpo_loss(z, z, z, z, beta=0.1)
    assert loss.item() == pytest.approx(math.log(2))  # policy == reference: no preference yet
    pc, pr = torch.tensor([-1.0, -2.0]), torch.tensor([-3.0, -1.0])
    rc, rr = torch.tensor([-2.0, -2.0]), torch.tensor([-2.0, -2.0])
    loss, margin = I.dpo_loss(pc, pr, rc, rr, beta=0.5)
    expected = 0.5 * torch.tensor([(-1 + 2) - (-3 + 2), (-2 + 2) - (-1 + 2)])
    torch.testing.assert_close(margin, expected)
    torch.testing.assert_close(loss, -torch.nn.functional.logsigmoid(expected).mean())
    # the gradient raises the chosen log-probability and lowers the rejected one
    pc = pc.clone().requires_grad_()
    pr = pr.clone().requires_grad_()
    I.dpo_loss(pc, pr, rc, rr)[0].backward()
    assert (pc.grad < 0).all() and (pr.grad > 0).all()
    with pytest.raises(ValueError, match="same shape"):
        I.dpo_loss(z, z[:2], z, z)


def test_sequence_logprob_counts_only_response():
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=TOK.vocab_size, block_size=64, n_layer=1, n_head=2, n_embd=16)).eval()
    x, y = I.encode_example(TOK.encode, "abc", "de")
    logits = model(x[None])[0][0].log_softmax(-1)
    expected = sum(logits[t, y[t]] for t in range(len(y)) if y[t] != I.IGNORE_INDEX)
    torch.testing.assert_close(I.sequence_logprob(model, x[None], y[None])[0], expected)


def test_split_dialogue():
    c = "\n\nHuman: hi\n\nAssistant: hello\n\nHuman: how?\n\nAssistant: like this"
    r = "\n\nHuman: hi\n\nAssistant: hello\n\nHuman: how?\n\nAssistant: no"
    prompt, chosen, rejected = I.split_dialogue(c, r)
    assert prompt.endswith("how?\n\nAssistant:") and chosen == " like this" and rejected == " no"
    assert I.split_dialogue(c, "\n\nHuman: other\n\nAssistant: x") is None


def test_loaders_count_rows():
    rows, report = I.load_gsm8k("test")
    assert report.lines == 1319 and report.kept + report.n_rejected == report.lines
    assert all(I.extract_answer(r["answer"]) is not None for r in rows)
    tasks, report = I.load_self_instruct()
    assert report.lines == 175 and len(tasks) == report.kept
    with pytest.raises(ValueError, match="splits"):
        I.load_gsm8k("dev")


def test_response_nll_is_a_per_token_mean_independent_of_batching():
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=TOK.vocab_size, block_size=96, n_layer=1, n_head=2, n_embd=16)).train()
    ex = [I.encode_example(TOK.encode, TPL.prompt(q), r, TPL.end)
          for q, r in (("add 1 and 2", "3"), ("name a colour", "blue"), ("say a long word", "extraordinary"))]
    X, Y = I.pad_examples(ex, pad_id=0)
    with torch.no_grad():
        expected = lm_loss(model.eval()(X)[0], Y).item()  # the mean over every response token of the batch
    model.train()
    for batch_size in (1, 2, 64):
        assert I.response_nll(model, ex, pad_id=0, batch_size=batch_size) == pytest.approx(expected, rel=1e-5)
    # the padding id does not matter, and the model comes back in the mode it was in
    assert I.response_nll(model, ex, pad_id=5) == pytest.approx(expected, rel=1e-5)
    assert model.training
    # a token-weighted mean: each example weighs by its number of response tokens
    counts = [int((y != I.IGNORE_INDEX).sum()) for _, y in ex]
    weighted = sum(n * I.response_nll(model, [e], 0) for n, e in zip(counts, ex)) / sum(counts)
    assert weighted == pytest.approx(expected, rel=1e-5)
    with pytest.raises(ValueError, match="at least one example"):
        I.response_nll(model, [], 0)
