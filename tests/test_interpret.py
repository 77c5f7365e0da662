"""lmlib.interpret: attention capture, logit lens, probes and head ablation (chapter 6, notebook 05)."""
import copy
import math

import pytest
import torch
import torch.nn.functional as F

from lmlib import interpret as I
from lmlib.attention import repeat_kv, split_heads
from lmlib.model import GPT, GPTConfig


def make_model(**overrides) -> GPT:
    torch.manual_seed(0)
    config = dict(vocab_size=23, block_size=16, n_layer=3, n_head=4, n_embd=32)
    config.update(overrides)
    return GPT(GPTConfig(**config))


def ids(B=2, T=11, V=23, seed=1):
    return torch.randint(V, (B, T), generator=torch.Generator().manual_seed(seed))


def no_hooks_left(model):
    return all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())


@pytest.mark.parametrize("overrides", [{}, {"pos": "rope"}, {"n_kv_heads": 2}, {"fast": False}])
def test_attention_maps_equal_a_recomputation(overrides):
    model = make_model(**overrides)
    model.train()  # the helpers must switch to eval and back
    x = ids()
    maps = I.attention_maps(model, x)
    assert model.training and no_hooks_left(model)
    L, H, T = model.config.n_layer, model.config.n_head, x.shape[1]
    assert maps.shape == (L, 2, H, T, T)
    stream = I.residual_stream(model, x)
    with torch.no_grad():
        for layer, block in enumerate(model.blocks):
            attn, h = block.attn, block.ln_1(stream[layer])
            q = split_heads(attn.q_proj(h), attn.n_heads)
            k = split_heads(attn.k_proj(h), attn.n_kv_heads)
            if attn.pos_fn is not None:
                q, k = attn.pos_fn(q, k, 0)
            k = repeat_kv(k, attn.n_heads // attn.n_kv_heads)
            scores = q @ k.transpose(-2, -1) / math.sqrt(attn.head_dim)
            scores = scores.masked_fill(~torch.ones(T, T, dtype=torch.bool).tril(), float("-inf"))
            torch.testing.assert_close(maps[layer], scores.softmax(-1))
    torch.testing.assert_close(maps.sum(-1), torch.ones(L, 2, H, T))
    above = torch.ones(T, T, dtype=torch.bool).triu(1)
    assert (maps[..., above] == 0).all()


def test_capturing_attention_leaves_the_output_unchanged():
    model = make_model().eval()
    x = ids()
    before = model(x)[0]
    I.attention_maps(model, x)
    torch.testing.assert_close(model(x)[0], before, rtol=0, atol=0)


def test_residual_stream_and_logit_lens():
    model = make_model()
    x = ids()
    stream = I.residual_stream(model, x)
    assert stream.shape == (4, 2, 11, 32)
    with torch.no_grad():
        torch.testing.assert_close(stream[0], model.wte(x) + model.wpe.table.weight[:11])
        torch.testing.assert_close(stream[2], model.blocks[1](model.blocks[0](stream[0])))
        lens = I.logit_lens(model, x)
        torch.testing.assert_close(lens[-1], model(x)[0])  # the last layer is the model itself
        torch.testing.assert_close(lens[0], model.lm_head(model.ln_f(stream[0])))
        torch.testing.assert_close(I.logit_lens(model, x, layers=[-1, 1]), lens[[3, 1]])
    assert no_hooks_left(model)


def test_lens_stats():
    model = make_model()
    x, y = ids(seed=1), ids(seed=2)
    stats = I.lens_stats(model, x, y)
    lens = I.logit_lens(model, x)
    assert stats.loss.shape == stats.agreement.shape == (4,)
    for layer in range(4):
        expected = F.cross_entropy(lens[layer].flatten(0, 1), y.flatten())
        torch.testing.assert_close(stats.loss[layer], expected)
    assert stats.agreement[-1] == 1.0
    torch.testing.assert_close(stats.loss[-1], model(x, y)[1].detach())
    with pytest.raises(ValueError, match="targets"):
        I.lens_stats(model, x, y[:, :3])


def test_bad_layer_and_head_indices_are_clear_errors():
    model = make_model()
    x = ids()
    with pytest.raises(IndexError, match=r"0 \.\.\. 3"):
        I.logit_lens(model, x, layers=[4])
    with pytest.raises(IndexError, match="out of range"):
        I.logit_lens(model, x, layers=[-5])
    with pytest.raises(TypeError, match="int"):
        I.logit_lens(model, x, layers=[1.0])
    with pytest.raises(IndexError, match=r"0 \.\.\. 2"):
        with I.ablate_head(model, 3, 0):
            pass
    with pytest.raises(IndexError, match="n_head=4"):
        with I.ablate_head(model, 0, 4):
            pass
    with pytest.raises(ValueError, match="'zero' or 'mean'"):
        with I.ablate_head(model, 0, 0, mode="random"):
            pass
    with pytest.raises(ValueError, match="means of shape"):
        with I.ablate_head(model, 0, 0, mode="mean"):
            pass
    with pytest.raises(TypeError, match="GPT"):
        I.attention_maps(torch.nn.Linear(3, 3), x)
    with pytest.raises(ValueError, match="batch"):
        I.attention_maps(model, x[0])  # the model's own check, no batch axis
    assert no_hooks_left(model)


def planted(n=3000, d=48, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g)
    direction = torch.randn(d, generator=g)
    score = x @ direction / direction.norm()
    keep = score.abs() > 0.5  # a margin: the feature is linearly separable
    return x[keep], (score[keep] > 0).long(), g


def test_probe_finds_a_planted_feature_and_not_shuffled_labels():
    x, y, g = planted()
    probe = I.fit_probe(x, y, generator=g)
    assert probe.test_accuracy > 0.98 and probe.train_accuracy > 0.98
    assert abs(probe.majority - 0.5) < 0.1
    torch.testing.assert_close(probe.predict(x).eq(y).double().mean().item(),
                               0.75 * probe.train_accuracy + 0.25 * probe.test_accuracy, atol=2e-3, rtol=0)
    shuffled = I.fit_probe(x, I.shuffled_labels(y, g), generator=g)
    assert abs(shuffled.test_accuracy - shuffled.majority) < 0.08  # chance on held-out points


def test_probe_multiclass_and_errors():
    g = torch.Generator().manual_seed(3)
    centers = torch.randn(4, 16, generator=g) * 4
    y = torch.randint(4, (800,), generator=g)
    x = centers[y] + torch.randn(800, 16, generator=g)
    assert I.fit_probe(x, y, generator=g).test_accuracy > 0.95
    with pytest.raises(ValueError, match=r"\(N, D\)"):
        I.fit_probe(x[None], y)
    with pytest.raises(ValueError, match="one per row"):
        I.fit_probe(x, y[:-1])
    with pytest.raises(ValueError, match="integer"):
        I.fit_probe(x, y.float())
    with pytest.raises(ValueError, match="test_fraction"):
        I.fit_probe(x, y, test_fraction=1.5)


def test_control_labels_depend_only_on_the_token():
    g = torch.Generator().manual_seed(0)
    tokens = torch.randint(10, (500,), generator=g)
    labels = torch.randint(3, (500,), generator=g)
    control = I.control_labels(tokens, labels, g)
    for t in tokens.unique():
        assert control[tokens == t].unique().numel() == 1
    assert set(control.tolist()) <= set(labels.tolist())
    assert sorted(I.shuffled_labels(labels, g).tolist()) == sorted(labels.tolist())
    with pytest.raises(ValueError, match="same length"):
        I.control_labels(tokens, labels[:-1])


@pytest.mark.parametrize("mode", ["zero", "mean"])
def test_ablation_equals_editing_the_weights(mode):
    model = make_model().eval()
    x, y = ids(seed=1), ids(seed=2)
    outs = I.head_outputs(model, x)
    assert outs.shape == (3, 2, 11, 4, 8)
    means = outs.mean(dim=(1, 2))
    layer, head, D = 1, 2, 8
    edited = copy.deepcopy(model)
    proj = edited.blocks[layer].attn.out_proj
    with torch.no_grad():
        cols = proj.weight[:, head * D:(head + 1) * D]
        if mode == "mean":
            proj.bias += cols @ means[layer, head]
        cols.zero_()
        with I.ablate_head(model, layer, head, mode, means):
            torch.testing.assert_close(model(x)[0], edited(x)[0])
        clean = model(x, y)[1]
    assert no_hooks_left(model)
    torch.testing.assert_close(model(x)[0], make_model().eval()(x)[0])  # restored
    delta = I.head_ablation(model, x, y, mode, means, progress=False)
    assert delta.shape == (3, 4)
    torch.testing.assert_close(delta[layer, head], (edited(x, y)[1] - clean).detach())


def test_head_outputs_rebuild_the_attention_output():
    model = make_model().eval()
    x = ids()
    outs = I.head_outputs(model, x)
    stream = I.residual_stream(model, x)
    with torch.no_grad():
        attn = model.blocks[0].attn
        torch.testing.assert_close(attn.out_proj(outs[0].flatten(-2)), attn(model.blocks[0].ln_1(stream[0])))


def test_ablation_hook_is_removed_after_an_error():
    model = make_model()
    with pytest.raises(RuntimeError):
        with I.ablate_head(model, 0, 0):
            raise RuntimeError("boom")
    assert no_hooks_left(model)


# --- previous-token and induction scores ---------------------------------------------------------

def _maps_from(weights: torch.Tensor) -> torch.Tensor:
    return weights[None, None, None]  # (1 layer, 1 batch, 1 head, T, T)


def test_previous_token_scores_of_known_patterns():
    T = 6
    prev = torch.zeros(T, T)
    prev[0, 0] = 1
    prev[torch.arange(1, T), torch.arange(T - 1)] = 1
    uniform = torch.tril(torch.ones(T, T)) / torch.arange(1, T + 1)[:, None]
    assert I.previous_token_scores(_maps_from(prev)).item() == 1.0
    want = sum(1 / (i + 1) for i in range(1, T)) / (T - 1)
    assert math.isclose(I.previous_token_scores(_maps_from(uniform)).item(), want, rel_tol=1e-6)
    model = make_model()
    maps = I.attention_maps(model, ids())
    scores = I.previous_token_scores(maps)
    assert scores.shape == (model.config.n_layer, model.config.n_head)
    torch.testing.assert_close(scores, maps.diagonal(offset=-1, dim1=-2, dim2=-1).mean(dim=(1, 3)))


def test_repeated_tokens_repeat_and_avoid_excluded_ids():
    rep = I.repeated_tokens(5, 7, 23, generator=torch.Generator().manual_seed(0), exclude=[0, 22])
    assert rep.shape == (5, 14)
    assert torch.equal(rep[:, :7], rep[:, 7:])
    assert not ((rep == 0) | (rep == 22)).any()
    assert all(len(set(r[:7].tolist())) == 7 for r in rep)  # distinct within a half
    with pytest.raises(ValueError):
        I.repeated_tokens(1, 22, 23, exclude=[0, 1])


def test_induction_scores_find_a_perfect_induction_pattern():
    P, T = 4, 8
    w = torch.zeros(T, T)
    w[torch.arange(T), 0] = 1  # first half: everything on position 0
    for i in range(P, T):
        w[i] = 0
        w[i, i - P + 1] = 1  # the token after my last occurrence
    assert I.induction_scores(_maps_from(w), P).item() == 1.0
    assert I.induction_scores(_maps_from(torch.eye(T)), P).item() == 0.0
    with pytest.raises(ValueError, match="period"):
        I.induction_scores(_maps_from(w), T)
    with pytest.raises(ValueError, match="attention weights"):
        I.induction_scores(w, P)
