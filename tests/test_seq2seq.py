"""lmlib.seq2seq (chapter 5, translation): shapes, masks, causality, decoding, data helpers, errors."""
import pytest
import torch

import lmlib.generate
from lmlib import seq2seq as s
from lmlib.train import TrainConfig, Trainer

PAD, BOS, EOS = 0, 1, 2


@pytest.fixture(autouse=True)
def one_thread():
    """These models are tiny: one thread is faster, and much faster on a shared, busy CPU."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def small(**kw) -> s.Seq2Seq:
    args = dict(src_vocab_size=20, tgt_vocab_size=24, max_src_len=12, max_tgt_len=10, n_encoder_layer=2,
                n_decoder_layer=2, n_head=2, n_embd=16, dropout=0.0)
    args.update(kw)
    torch.manual_seed(0)
    return s.Seq2Seq(s.Seq2SeqConfig(**args)).eval()


def ids(gen, lo, hi, shape):
    return torch.randint(lo, hi, shape, generator=gen)


def test_shapes_and_loss_ignores_padding():
    model, gen = small(), torch.Generator().manual_seed(1)
    src, y = ids(gen, 3, 20, (3, 7)), ids(gen, 3, 24, (3, 5))
    logits, loss = model(src, targets=y)
    assert logits.shape == (3, 5, 24) and loss.dim() == 0
    assert model(src, tgt_in=model.shift_right(y))[1] is None
    # padding targets changes nothing: the padded positions are ignored by the loss
    y_pad = torch.cat([y, torch.full((3, 3), PAD)], dim=1)
    torch.testing.assert_close(model(src, targets=y_pad)[1], loss)
    assert torch.equal(model.shift_right(y)[:, 0], torch.full((3,), BOS))
    memory, mask = model.encode(src)
    assert memory.shape == (3, 7, 16) and mask.shape == (3, 1, 1, 7) and mask.all()


@pytest.mark.parametrize("fast", [True, False])
def test_source_padding_does_not_change_real_outputs(fast):
    model, gen = small(fast=fast), torch.Generator().manual_seed(2)
    src, tgt_in = ids(gen, 3, 20, (2, 5)), ids(gen, 3, 24, (2, 6))
    src_padded = torch.cat([src, torch.full((2, 4), PAD)], dim=1)
    mem, _ = model.encode(src)
    mem_padded, mask = model.encode(src_padded)
    torch.testing.assert_close(mem_padded[:, :5], mem)
    assert not mask[..., 5:].any()
    torch.testing.assert_close(model(src_padded, tgt_in=tgt_in)[0], model(src, tgt_in=tgt_in)[0])
    # a short and a long sentence in one batch: the short one is decoded as if it were alone
    short, long = ids(gen, 3, 20, (1, 3)), ids(gen, 3, 20, (1, 9))
    batch = torch.cat([torch.cat([short, torch.full((1, 6), PAD)], 1), long])
    torch.testing.assert_close(model(batch, tgt_in=tgt_in)[0][:1], model(short, tgt_in=tgt_in[:1])[0])
    # real tokens in place of the padding do change the output: the check above is not vacuous
    assert not torch.allclose(model(src_padded.masked_fill(src_padded == PAD, 5), tgt_in=tgt_in)[0],
                              model(src, tgt_in=tgt_in)[0])


def test_decoder_is_causal_and_encoder_is_not():
    model, gen = small(), torch.Generator().manual_seed(3)
    src, tgt_in = ids(gen, 3, 20, (2, 6)), ids(gen, 3, 24, (2, 8))
    base = model(src, tgt_in=tgt_in)[0]
    changed = tgt_in.clone()
    changed[:, 5:] = ids(gen, 3, 24, (2, 3))
    after = model(src, tgt_in=changed)[0]
    torch.testing.assert_close(after[:, :5], base[:, :5])  # the past does not see the future
    assert not torch.allclose(after[:, 5:], base[:, 5:])
    # the encoder is bidirectional: changing the last source token moves the first position too
    src2 = src.clone()
    src2[:, -1] = (src2[:, -1] + 1 - 3) % 17 + 3
    assert not torch.allclose(model.encode(src2)[0][:, 0], model.encode(src)[0][:, 0])


def test_shared_vocabulary_and_tied_weights():
    model = small(src_vocab_size=24, shared_vocab=True)
    assert model.src_emb is model.tgt_emb and model.lm_head.weight is model.tgt_emb.weight
    separate = small(tie_weights=False)
    assert separate.src_emb is not separate.tgt_emb and separate.lm_head.weight is not separate.tgt_emb.weight
    with pytest.raises(ValueError, match="shared_vocab"):
        s.Seq2SeqConfig(20, 24, shared_vocab=True)


def test_cross_attention_weights_are_distributions_over_real_source_tokens():
    model, gen = small(), torch.Generator().manual_seed(4)
    src = ids(gen, 3, 20, (2, 6))
    src[0, 4:] = PAD
    tgt_in = ids(gen, 3, 24, (2, 5))
    w = model.cross_attention(src, tgt_in)
    assert w.shape == (2, 2, 2, 5, 6)  # layers, batch, heads, T, S
    torch.testing.assert_close(w.sum(-1), torch.ones(2, 2, 2, 5))
    assert w[:, 0, :, :, 4:].abs().max() == 0  # no weight on padding
    assert model.cross_attention(src, tgt_in).shape == w.shape  # the hooks were removed


class Scripted(s.Seq2Seq):
    """A model whose next-token logits follow a fixed table, whatever the source."""

    def __init__(self, table: torch.Tensor, **kw):
        super().__init__(small(tgt_vocab_size=table.shape[-1], **kw).config)
        self.table = table  # (steps, V) logits for the token after position t
        self.calls = 0

    def decode(self, tgt_in, memory, src_mask):
        self.calls += 1
        T = tgt_in.shape[1]
        return self.table[:T][None].expand(tgt_in.shape[0], T, -1).clone()


def test_greedy_stops_at_eos_and_never_emits_pad_or_bos():
    V = 8
    table = torch.zeros(9, V)
    table[:, PAD] = table[:, BOS] = 10.0  # must be ignored
    table[0, 5], table[1, 6], table[2, EOS] = 5.0, 5.0, 5.0
    model = Scripted(table)
    out = s.greedy_decode(model, torch.tensor([[4, 5, 6], [7, 7, PAD]]))
    assert out == [[5, 6], [5, 6]]
    assert model.calls == 3  # stopped after the step that produced <eos>


def test_beam_size_one_equals_greedy_on_a_trained_looking_model():
    torch.manual_seed(0)
    for seed in range(2):
        model, gen = small(), torch.Generator().manual_seed(seed)
        with torch.no_grad():  # larger weights give peaked, varied distributions
            for p in model.parameters():
                p.mul_(20 if p.dim() > 1 else 1)
            model.lm_head.weight[EOS] += 0.5  # make <eos> likely somewhere
        src = ids(gen, 3, 20, (5, 6))
        src[1, 3:] = PAD
        for lp in (0.0, 1.0):
            beams, _ = s.beam_search(model, src, beam_size=1, length_penalty=lp)
            assert beams == s.greedy_decode(model, src)


def test_beam_search_stops_once_beam_size_hypotheses_finished():
    # greedy: 3 (0.6), then <eos> (0.6). The runner-up 3, 4 (0.4) continues with certain 5s: kept
    # alive to the end, its per-token score would beat greedy's. Early stopping ends the search first.
    V, calls = 7, []
    model = Scripted(torch.zeros(9, V))

    def decode(tgt_in, memory, mask):
        calls.append(tgt_in.shape[1])
        out = torch.zeros(tgt_in.shape[0], tgt_in.shape[1], V)
        for b in range(tgt_in.shape[0]):
            last = tgt_in[b, -1].item()
            if last == BOS:
                out[b, -1, 3], out[b, -1, EOS] = 0.6, 0.4
            elif last == 3:
                out[b, -1, EOS], out[b, -1, 4] = 0.6, 0.4
            else:
                out[b, -1, 5] = 1.0
        return out.clamp(min=1e-12).log()

    model.decode = decode
    src = torch.tensor([[5]])
    assert s.greedy_decode(model, src) == [[3]]
    calls.clear()
    assert s.beam_search(model, src, beam_size=1, length_penalty=1.0)[0] == [[3]]
    assert len(calls) == 2  # two steps, then done


def test_beam_search_finds_a_better_sequence_than_greedy():
    # greedy takes token 3 (p=0.6) then a flat distribution; token 4 (p=0.4) leads to a sure <eos>
    V = 6
    model = Scripted(torch.zeros(9, V))

    def decode(tgt_in, memory, mask):
        out = torch.full((tgt_in.shape[0], tgt_in.shape[1], V), -30.0)
        for b in range(tgt_in.shape[0]):
            last = tgt_in[b, -1].item()
            if last == BOS:
                out[b, -1, 3], out[b, -1, 4] = 0.6, 0.4
                out[b, -1] = out[b, -1].clamp(min=1e-9).log()
            elif last == 3:
                out[b, -1, 2:] = 0.0  # uniform over 4 tokens, <eos> included
            else:
                out[b, -1, EOS] = 0.0
        return out

    model.decode = decode
    src = torch.tensor([[5, 6]])
    greedy = s.greedy_decode(model, src, max_new_tokens=2)
    beams, scores = s.beam_search(model, src, beam_size=2, length_penalty=0.0, max_new_tokens=2)
    assert greedy[0][0] == 3 and beams == [[4]]
    torch.testing.assert_close(scores[0], torch.tensor(0.4).log().item(), atol=1e-5, rtol=0)


def test_length_penalty_trades_short_for_long():
    # A: <eos> at once, p = 0.4 (log p = -0.92, 1 token). B: 3 (0.6), then 4 or 5 (0.5 each), then
    # <eos> (1.0): log p = -1.20 over 3 tokens. Raw log-probability prefers A, per token B.
    V = 6
    model = Scripted(torch.zeros(9, V))

    def decode(tgt_in, memory, mask):
        out = torch.zeros(tgt_in.shape[0], tgt_in.shape[1], V)
        for b in range(tgt_in.shape[0]):
            last = tgt_in[b, -1].item()
            if last == BOS:
                out[b, -1, EOS], out[b, -1, 3] = 0.4, 0.6
            elif last == 3:
                out[b, -1, 4], out[b, -1, 5] = 0.5, 0.5
            else:
                out[b, -1, EOS] = 1.0
        return out.clamp(min=1e-12).log()

    model.decode = decode
    src = torch.tensor([[5]])
    assert s.beam_search(model, src, beam_size=2, length_penalty=0.0)[0] == [[]]
    best, score = s.beam_search(model, src, beam_size=2, length_penalty=1.0)
    assert best[0] in ([3, 4], [3, 5])
    assert score[0] == pytest.approx((torch.tensor(0.6).log() + torch.tensor(0.5).log()).item() / 3, abs=1e-5)
    assert s.greedy_decode(model, src)[0] in ([3, 4], [3, 5])


def test_matches_lmlib_generate_beam_search_when_no_candidate_ends():
    model, gen = small(), torch.Generator().manual_seed(5)
    with torch.no_grad():
        model.lm_head.weight.mul_(10)
    # <eos> impossible: both searches run the full length, where they must agree
    model.lm_head.register_forward_hook(lambda m, i, out: out.index_fill(-1, torch.tensor([EOS]), float("-inf")))
    src = ids(gen, 3, 20, (1, 5))
    memory, mask = model.encode(src)

    def logits_fn(seq):
        out = model.decode(seq, memory.expand(seq.shape[0], -1, -1), mask.expand(seq.shape[0], -1, -1, -1))
        return out.index_fill(-1, torch.tensor([PAD, BOS]), float("-inf"))

    for lp in (0.0, 1.0):
        ours, our_score = s.beam_search(model, src, beam_size=3, length_penalty=lp, max_new_tokens=4)
        theirs, their_score = lmlib.generate.beam_search(logits_fn, torch.tensor([[BOS]]), 4, beam_size=3,
                                                         length_penalty=lp)
        assert ours[0] == theirs[0, 1:].tolist()
        assert our_score[0] == pytest.approx(their_score, abs=1e-4)


def test_trainer_trains_it_with_no_wrapper():
    gen = torch.Generator().manual_seed(0)
    # reversal: the target is the source backwards, then <eos>
    src = [ids(gen, 3, 8, (int(ids(gen, 2, 5, (1,))),)).tolist() for _ in range(100)]
    tgt = [list(reversed(x)) + [EOS] for x in src]
    model = small(src_vocab_size=8, tgt_vocab_size=8, n_encoder_layer=1, n_decoder_layer=1)
    trainer = Trainer(model.train(), TrainConfig(max_steps=40, lr=1e-2, warmup_steps=2, eval_every=None,
                                                 log_every=10, progress=False), s.pair_batches(src, tgt, 16))
    history = trainer.fit()
    assert history.train_loss[-1] < 0.75 * history.train_loss[0]


def test_bad_inputs_raise_clear_errors():
    model = small()
    with pytest.raises(ValueError, match="all padding"):
        model(torch.tensor([[5, 6], [PAD, PAD]]), targets=torch.tensor([[3, EOS], [3, EOS]]))
    with pytest.raises(ValueError, match=r"batch, seq"):
        model(torch.tensor([5, 6]), targets=torch.tensor([[3, EOS]]))
    with pytest.raises(ValueError, match="integer token ids"):
        model(torch.rand(1, 3), targets=torch.tensor([[3, EOS]]))
    with pytest.raises(ValueError, match=r"in \[0, 20\)"):
        model(torch.tensor([[5, 25]]), targets=torch.tensor([[3, EOS]]))
    with pytest.raises(ValueError, match="length limit"):
        model(torch.full((1, 13), 5), targets=torch.tensor([[3, EOS]]))
    with pytest.raises(ValueError, match="same batch size"):
        model(torch.tensor([[5, 6]]), targets=torch.tensor([[3, EOS], [3, EOS]]))
    with pytest.raises(ValueError, match="give targets"):
        model(torch.tensor([[5, 6]]))
    with pytest.raises(ValueError, match="different ids"):
        s.Seq2SeqConfig(20, 24, bos_id=0)
    with pytest.raises(ValueError, match="tgt_pad_id=30"):
        s.Seq2SeqConfig(20, 24, tgt_pad_id=30)
    with pytest.raises(ValueError, match="divisible"):
        s.Seq2SeqConfig(20, 24, n_embd=30, n_head=4)
    with pytest.raises(ValueError, match="beam_size"):
        s.beam_search(model, torch.tensor([[5]]), beam_size=0)
    with pytest.raises(ValueError, match="max_new_tokens"):
        s.greedy_decode(model, torch.tensor([[5]]), max_new_tokens=10)
    with pytest.raises(TypeError, match="Seq2SeqConfig"):
        s.Seq2Seq(dict(src_vocab_size=3))


# --- text and data helpers ----------------------------------------------------------------------

def test_normalize_tokenize_detokenize():
    assert s.normalize("Va\u202f! C\u2019est\u200b  l\u00e0.") == "va ! c'est là."
    assert s.tokenize("Laisse-le s'en aller\u00a0!") == ["laisse", "-", "le", "s", "'", "en", "aller", "!"]
    for text in ("c'est peut-être vrai.", "qui ?", "je l'ai vu, hier."):
        assert s.detokenize(s.tokenize(text)) == text
    english = ".,!?:;"
    for text in ("who?", "i'm cold.", "run!", "well, it's a deal: yes; no."):
        assert s.detokenize(s.tokenize(text), attach=english) == text
    assert s.detokenize(["qui", "?"], attach="") == "qui ?" and s.detokenize(["a", "."], attach="") == "a ."


def test_vocab_round_trip_and_specials():
    v = s.translation_vocab([["a", "b", "a"], ["c"]], min_count=2)
    assert v.itos == ["<pad>", "<bos>", "<eos>", "<unk>", "a"]
    assert [v.stoi[w] for w in s.SPECIALS] == [s.PAD, s.BOS, s.EOS, s.UNK] and v.unk == s.UNK
    assert v.encode_list(["a", "zzz"]) + [s.EOS] == [4, s.UNK, s.EOS]
    assert s.target_words(v, [s.BOS, 4, s.EOS, 4]) == ["a"]
    with pytest.raises(ValueError, match="reserved"):
        s.translation_vocab([["<pad>"]]).__class__(["<pad>"], s.SPECIALS, "<unk>")
    with pytest.raises(ValueError, match="outside"):
        v.decode([99])


def test_read_pairs_counts_every_rejected_line():
    lines = ["Go.\tVa\u202f!", "no tab here", "Hi.\t  ", "Go.\tVa !", "Run!\tCours !\tCC-BY attribution", ""]
    pairs, report = s.read_pairs(lines)
    assert pairs == [("go.", "va !"), ("run!", "cours !")]
    assert report.lines == 5 and report.kept == 2 and report.repaired == 1
    assert report.rejected == {"without a tab": 1, "with an empty side": 1, "repeated after normalisation": 1}
    assert "rejected" in str(report)


def test_group_split_shares_no_sentence_between_parts():
    pairs = [("go.", "va !"), ("go.", "marche."), ("walk.", "marche."), ("hi.", "salut !"), ("run!", "cours !"),
             ("run!", "courez !"), ("stop!", "arrête !"), ("wait!", "attends !"), ("hello!", "salut !"),
             ("help!", "à l'aide !")]
    parts = s.group_split(pairs, (0.6, 0.2, 0.2), seed=3)
    assert sorted(i for p in parts for i in p) == list(range(len(pairs)))
    for a in range(3):
        for b in range(a + 1, 3):
            for side in (0, 1):
                assert not {pairs[i][side] for i in parts[a]} & {pairs[i][side] for i in parts[b]}
    with pytest.raises(ValueError, match="sum to 1"):
        s.group_split(pairs, (0.5, 0.2))


def test_pad_batch_and_pair_batches():
    assert s.pad_batch([[1, 2, 3], [4]], 0).tolist() == [[1, 2, 3], [4, 0, 0]]
    with pytest.raises(ValueError, match="longer"):
        s.pad_batch([[1, 2, 3]], 0, length=2)
    fn = s.pair_batches([[5, 6], [7]], [[3, EOS], [4, 4, EOS]], batch_size=4)
    x, y = fn(torch.Generator().manual_seed(0))
    assert x.shape[0] == y.shape[0] == 4 and (y == EOS).sum() == 4


# --- decoder-only translation -------------------------------------------------------------------

def tiny_gpt(vocab: int = 12, block: int = 24):
    from lmlib.model import GPT, GPTConfig
    torch.manual_seed(0)
    return GPT(GPTConfig(vocab_size=vocab, block_size=block, n_layer=1, n_head=2, n_embd=16, dropout=0.0)).eval()


def test_decoder_example_masks_the_source_and_the_separator():
    from lmlib.data import IGNORE_INDEX
    x, y = s.decoder_example([5, 6, 7], torch.tensor([8, 9]), sep_id=1, eos_id=2)
    assert x.tolist() == [5, 6, 7, 1, 8, 9]
    assert y.tolist() == [IGNORE_INDEX, IGNORE_INDEX, IGNORE_INDEX, 8, 9, 2]
    # the first target token is predicted at the separator, <eos> at the last target token
    assert x[3] == 1 and y[3] == 8 and y[-1] == 2
    # same layout as the instruction-tuning masks, with the source and <sep> as the prompt
    import lmlib.instruct
    ref = lmlib.instruct.sft_targets(torch.tensor([5, 6, 7, 1, 8, 9, 2]), prompt_len=4)
    assert torch.equal(ref[0], x) and torch.equal(ref[1], y)
    for bad in ([], [1, -3]):
        with pytest.raises(ValueError, match="src_ids"):
            s.decoder_example(bad, [8], 1, 2)
    with pytest.raises(ValueError, match="tgt_ids"):
        s.decoder_example([5], [], 1, 2)


def test_greedy_continue_equals_one_prompt_at_a_time():
    model, gen = tiny_gpt(), torch.Generator().manual_seed(3)
    prompts = [ids(gen, 3, 12, (int(ids(gen, 1, 6, (1,))),)).tolist() for _ in range(9)]
    eos = 2
    out = s.greedy_continue(model, prompts, eos_id=eos, max_new_tokens=6, batch_size=2)
    assert len(out) == len(prompts)
    for prompt, got in zip(prompts, out):
        alone = lmlib.generate.generate(model, torch.tensor([prompt]), 6, greedy=True, use_cache=False)[0, len(prompt):]
        alone = alone.tolist()
        expected = alone[: alone.index(eos)] if eos in alone else alone
        assert got == expected and eos not in got and len(got) <= 6


def test_greedy_continue_stops_at_eos_and_at_the_context():
    model = tiny_gpt(block=8)
    with torch.no_grad():  # make the model always predict token 5, then check the stops
        model.lm_head.weight.zero_()
        model.lm_head.weight[5] += 1.0
        model.ln_f.weight.zero_()
        model.ln_f.bias.fill_(1.0)
    assert s.greedy_continue(model, [[3, 4]], eos_id=5, max_new_tokens=4) == [[]]
    assert s.greedy_continue(model, [[3, 4]], eos_id=2, max_new_tokens=3) == [[5, 5, 5]]
    assert s.greedy_continue(model, [[3] * 6], eos_id=2, max_new_tokens=5) == [[5, 5]]  # block_size 8
    with pytest.raises(ValueError, match="prompt 1 has 0 tokens"):
        s.greedy_continue(model, [[3], []], eos_id=2, max_new_tokens=2)
    with pytest.raises(ValueError, match="max_new_tokens"):
        s.greedy_continue(model, [[3]], eos_id=2, max_new_tokens=0)


def test_a_decoder_only_model_learns_to_reverse_with_the_target_only_loss():
    import lmlib.instruct
    gen = torch.Generator().manual_seed(4)
    SEP, EOT = 1, 2
    src = [ids(gen, 3, 8, (int(ids(gen, 2, 4, (1,))),)).tolist() for _ in range(200)]
    examples = [s.decoder_example(x, list(reversed(x)), SEP, EOT) for x in src]
    model = tiny_gpt(vocab=8, block=16)
    model.train()
    trainer = Trainer(model, TrainConfig(max_steps=150, lr=1e-2, warmup_steps=5, eval_every=None, log_every=50,
                                         progress=False), lmlib.instruct.sft_batches(examples, 32, pad_id=EOT))
    history = trainer.fit()
    assert history.train_loss[-1] < 0.5 * history.train_loss[0]
    out = s.greedy_continue(model, [x + [SEP] for x in src[:50]], eos_id=EOT, max_new_tokens=6)
    assert sum(o == list(reversed(x)) for o, x in zip(out, src[:50])) >= 40
