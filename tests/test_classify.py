"""Transfer learning (chapter 5): the GPT classifier, freezing, the baseline and the data plumbing."""
import pytest
import torch

from lmlib import classify, exercises
from lmlib.model import GPT, GPTConfig

PAD = 0


def tiny_gpt(seed=0, **kw):
    torch.manual_seed(seed)
    return GPT(GPTConfig(vocab_size=20, block_size=16, n_layer=2, n_head=2, n_embd=16, **kw))


def test_hidden_states_reproduce_the_logits():
    gpt = tiny_gpt().eval()
    idx = torch.randint(20, (3, 7))
    torch.testing.assert_close(gpt.lm_head(gpt.hidden_states(idx)), gpt(idx)[0])


@pytest.mark.parametrize("pooling", ["last", "mean"])
def test_padding_does_not_change_the_logits(pooling):
    clf = classify.GPTClassifier(tiny_gpt(), 3, pad_id=PAD, pooling=pooling).eval()
    a, b = torch.tensor([5, 6, 7]), torch.tensor([3, 4, 5, 6, 7, 8, 9])
    batch = classify.pad_batch([a, b], PAD, max_len=16)
    assert batch.tolist()[0] == [5, 6, 7, 0, 0, 0, 0]
    logits, loss = clf(batch)
    assert logits.shape == (2, 3) and loss is None
    torch.testing.assert_close(logits[0], clf(a[None])[0][0])
    torch.testing.assert_close(logits[1], clf(b[None])[0][0])


def test_last_pooling_reads_the_last_real_token_not_the_last_column():
    clf = classify.GPTClassifier(tiny_gpt(), 2, pad_id=PAD).eval()
    x = torch.tensor([[4, 5, 0, 0]])
    h = clf.gpt.hidden_states(x)
    torch.testing.assert_close(clf.pool(h, x != PAD), h[:, 1])
    assert not torch.allclose(h[:, 1], h[:, -1])
    torch.testing.assert_close(clf.pool(h, x != PAD), exercises.reference_last_token_pool(h, x != PAD))


def test_classifier_trains_with_the_trainer():
    # Class 1 iff token 7 occurs: a GPT classifier learns it in a few dozen steps.
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(1, 7, (200, 6), generator=gen)
    labels = torch.randint(2, (200,), generator=gen)
    ids[labels == 1, torch.randint(6, (int(labels.sum()),), generator=gen)] = 7
    clf = classify.GPTClassifier(tiny_gpt(), 2, pad_id=PAD)
    before = classify.evaluate_classifier(clf, ids, labels, pad_id=PAD)["accuracy"]
    history = classify.train_classifier(clf, ids, labels, pad_id=PAD, steps=60, batch_size=32, lr=3e-3, progress=False)
    after = classify.evaluate_classifier(clf, ids, labels, pad_id=PAD)
    assert history.train_loss[-1] < history.train_loss[0]
    assert after["accuracy"] > 0.9 > before + 0.2
    assert after["confusion"].sum() == 200


def test_bag_of_words_learns_a_keyword():
    gen = torch.Generator().manual_seed(1)
    ids = torch.randint(0, 9, (300, 5), generator=gen)
    ids[:, -1] = 10  # a padding column (pad id = vocab_size)
    labels = (ids == 3).any(1).long()
    bow = classify.BagOfWords(10, 2, pad_id=10)
    classify.train_classifier(bow, ids, labels, pad_id=10, steps=150, batch_size=64, lr=5e-2, progress=False)
    assert classify.evaluate_classifier(bow, ids, labels, pad_id=10)["accuracy"] > 0.97
    assert bow.features(ids)[0].sum() <= 4  # presence, not counts; padding ignored


def test_freeze_and_unfreeze():
    clf = classify.GPTClassifier(tiny_gpt(), 2, pad_id=PAD)
    n = classify.freeze(clf, train_last_blocks=1)
    trainable = {name for name, p in clf.named_parameters() if p.requires_grad}
    assert all(name.startswith(("head.", "gpt.blocks.1.", "gpt.ln_f.")) for name in trainable)
    assert "head.weight" in trainable and "gpt.blocks.1.attn.q_proj.weight" in trainable
    assert n == sum(clf.get_parameter(name).numel() for name in trainable)
    embedding = clf.gpt.wte.weight.detach().clone()
    ids, labels = torch.randint(1, 20, (64, 5)), torch.randint(2, (64,))
    classify.train_classifier(clf, ids, labels, pad_id=PAD, steps=5, batch_size=8, progress=False)
    assert torch.equal(clf.gpt.wte.weight, embedding)
    assert classify.freeze(clf, 0) == sum(p.numel() for p in clf.head.parameters())
    assert classify.unfreeze(clf) == sum(p.numel() for p in clf.parameters())
    with pytest.raises(ValueError, match="train_last_blocks"):
        classify.freeze(clf, 3)


def test_classifier_rejects_bad_input():
    with pytest.raises(ValueError, match="pooling"):
        classify.GPTClassifier(tiny_gpt(), 2, pad_id=PAD, pooling="first")
    with pytest.raises(ValueError, match="n_classes"):
        classify.GPTClassifier(tiny_gpt(), 1, pad_id=PAD)
    with pytest.raises(TypeError):
        classify.GPTClassifier(torch.nn.Linear(2, 2), 2, pad_id=PAD)
    clf = classify.GPTClassifier(tiny_gpt(), 2, pad_id=PAD)
    with pytest.raises(ValueError, match="only padding"):
        clf(torch.tensor([[3, 4], [0, 0]]))
    with pytest.raises(ValueError, match="targets"):
        clf(torch.tensor([[3, 4]]), targets=torch.tensor([[1]]))
    with pytest.raises(ValueError, match="empty"):
        classify.pad_batch([[1, 2], []], PAD, 8)


def test_parse_labelled_counts_every_skipped_line():
    lines = ["ham\tok", "spam\t  ", "", "  ", "eggs\thello", "no tab", "spam\tWIN\tnow", "ham\tfine"]
    texts, labels, report = classify.parse_labelled(lines, "label_first", ("ham", "spam"))
    assert texts == ["ok", "WIN\tnow", "fine"] and labels == [0, 1, 0]
    assert report.lines == 8 and report.kept == 3 and report.n_rejected == 5
    assert report.rejected["blank line"] == 2 and report.rejected["empty text"] == 1
    assert report.rejected["no tab between label and text"] == 1
    assert "unknown label" in str(report) and "line 5" in str(report)
    texts, labels, _ = classify.parse_labelled(["good\tfilm\t1", "bad film\t0"], "label_last", ("0", "1"))
    assert texts == ["good\tfilm", "bad film"] and labels == [1, 0]
    with pytest.raises(ValueError, match="layout"):
        classify.parse_labelled([], "label_middle", ("0", "1"))


def test_load_labelled_real_files(mirror):
    texts, labels, report = classify.load_labelled("sms-spam-collection")
    assert report.lines == 5574 and report.kept + report.n_rejected == 5574
    assert sum(labels) == report.label_counts["spam"] == 747
    for file in ("imdb_labelled.txt", "amazon_cells_labelled.txt", "yelp_labelled.txt"):
        texts, labels, report = classify.load_labelled("sentiment-labelled-sentences", file)
        assert report.lines == 1000 and report.kept == 1000 and set(labels) == {0, 1}
        assert all(t == t.strip() and t for t in texts)
    with pytest.raises(ValueError, match="layout"):
        classify.load_labelled("tinyshakespeare")


def test_stratified_split_is_deterministic_disjoint_and_balanced():
    labels = torch.tensor([0] * 900 + [1] * 100)
    train, val, test = classify.stratified_split(labels, (0.8, 0.1, 0.1), seed=3)
    assert (len(train), len(val), len(test)) == (800, 100, 100)
    assert len(torch.cat([train, val, test]).unique()) == 1000
    assert int(labels[test].sum()) == 10 and int(labels[val].sum()) == 10
    again = classify.stratified_split(labels, (0.8, 0.1, 0.1), seed=3)
    assert all(torch.equal(a, b) for a, b in zip((train, val, test), again))
    other = classify.stratified_split(labels, (0.8, 0.1, 0.1), seed=4)
    assert not torch.equal(test.sort().values, other[2].sort().values)
    with pytest.raises(ValueError, match="sum to 1"):
        classify.stratified_split(labels, (0.5, 0.4))


def test_batches_are_trimmed_and_reproducible():
    ids = classify.pad_batch([[1, 2], [3], [4, 5, 6]], PAD, 8)
    fn = classify.classification_batches(torch.cat([ids[:2]] * 4), torch.arange(8) % 2, 4, PAD)
    x, y = fn(torch.Generator().manual_seed(0))
    assert x.shape == (4, 2) and y.shape == (4,)
    x2, _ = fn(torch.Generator().manual_seed(0))
    assert torch.equal(x, x2)


def test_predict_batches_short_rows_together_and_keeps_the_order():
    clf = classify.GPTClassifier(tiny_gpt(), 3, pad_id=PAD).eval()
    gen = torch.Generator().manual_seed(0)
    seqs = [torch.randint(1, 20, (int(n),), generator=gen) for n in torch.randint(1, 16, (23,), generator=gen)]
    ids = classify.pad_batch(seqs, PAD, max_len=16)
    one_by_one = torch.cat([clf(s[None])[0] for s in seqs])
    torch.testing.assert_close(classify.predict(clf, ids, batch_size=4, pad_id=PAD), one_by_one)
    torch.testing.assert_close(classify.predict(clf, ids, batch_size=50), one_by_one)  # no pad_id: untrimmed
    widths = []
    clf.register_forward_pre_hook(lambda module, args: widths.append(args[0].shape[1]))
    classify.predict(clf, ids, batch_size=4, pad_id=PAD)
    assert widths == sorted(widths) and widths[0] < widths[-1] == ids.shape[1]  # shortest first, each trimmed
    with pytest.raises(ValueError, match="batch_size"):
        classify.predict(clf, ids, batch_size=0)


def test_gpt2_layout_fits_the_classifier():
    transformers = pytest.importorskip("transformers")
    from lmlib.pretrained import config_from_hf, gpt_from_hf_state_dict

    hf_config = transformers.GPT2Config(n_layer=1, n_head=2, n_embd=16, n_positions=32, vocab_size=50)
    torch.manual_seed(0)
    hf = transformers.GPT2LMHeadModel(hf_config).eval()
    gpt = gpt_from_hf_state_dict(hf.state_dict(), config_from_hf(hf_config))
    clf = classify.GPTClassifier(gpt, 2, pad_id=49).eval()
    x = torch.tensor([[3, 4, 5, 49, 49]])
    h = hf(x[:, :3], output_hidden_states=True).hidden_states[-1]  # after GPT-2's final norm
    torch.testing.assert_close(gpt.hidden_states(x[:, :3]), h, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(clf(x)[0], clf.head(h[:, -1]), atol=1e-5, rtol=1e-4)


def test_pool_checker_accepts_reference_and_rejects_wrong():
    assert exercises.check_last_token_pool(exercises.reference_last_token_pool, verbose=False)
    assert exercises.check_last_token_pool(lambda h, m: h[torch.arange(h.shape[0]), m.sum(1) - 1], verbose=False)
    assert not exercises.check_last_token_pool(lambda h, m: h[:, -1], verbose=False)
    assert not exercises.check_last_token_pool(lambda h, m: h.mean(1), verbose=False)
    assert not exercises.check_last_token_pool(lambda h, m: h[torch.arange(h.shape[0]), m.sum(1)], verbose=False)
