"""LoRA from scratch (chapter 5, notebook 03): equality at init, merging, freezing, errors, saving."""
import copy

import pytest
import torch
import torch.nn as nn

from lmlib import lora
from lmlib.model import GPT, GPTConfig, num_params

ALL = ("q_proj", "k_proj", "v_proj", "out_proj", "fc", "proj")


def small_gpt(**kw) -> GPT:
    torch.manual_seed(0)
    return GPT(GPTConfig(vocab_size=50, block_size=16, n_layer=2, n_head=2, n_embd=16, **kw)).eval()


def train_a_little(model: nn.Module, steps: int = 5) -> None:
    """Move the LoRA weights away from their initial values (B = 0 would hide bugs)."""
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.5)
    x = torch.randint(50, (4, 12), generator=torch.Generator().manual_seed(1))
    for _ in range(steps):
        model(x, targets=x)[1].backward()
        opt.step()
        opt.zero_grad()


def test_lora_linear_matches_formula_and_starts_at_base():
    torch.manual_seed(0)
    base = nn.Linear(8, 6)
    layer = lora.LoRALinear(copy.deepcopy(base), r=2, alpha=4)
    x = torch.randn(3, 5, 8)
    torch.testing.assert_close(layer(x), base(x))  # B = 0 at init
    with torch.no_grad():
        layer.lora_B.normal_()
    expected = x @ base.weight.T + base.bias + 2.0 * x @ layer.lora_A.T @ layer.lora_B.T
    torch.testing.assert_close(layer(x), expected)
    torch.testing.assert_close(lora.lora_forward(x, base.weight, layer.lora_A, layer.lora_B, 2.0, base.bias), expected)


def test_gpt_with_lora_equals_base_at_init():
    model = small_gpt()
    x = torch.randint(50, (2, 10))
    before = model(x)[0]
    lora.apply_lora(model, ALL, r=4, alpha=8)
    assert len(lora.lora_layers(model)) == 2 * len(ALL)
    torch.testing.assert_close(model(x)[0], before)


def test_only_lora_parameters_train():
    model = lora.apply_lora(small_gpt(), ("q_proj", "v_proj"), r=2)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(n.endswith(("lora_A", "lora_B")) for n in trainable)
    assert len(trainable) == 2 * 2 * 2  # 2 layers x 2 targets x (A, B)
    n_train, n_total = num_params(model, trainable_only=True), num_params(model)
    assert n_train == 2 * 2 * (2 * 16 + 16 * 2)
    assert n_total == small_gpt().num_params() + n_train
    # a step changes only the adapters
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    train_a_little(model)
    for n, p in model.named_parameters():
        if n in frozen:
            assert torch.equal(p, frozen[n]), n


def test_merged_equals_unmerged_and_unmerge_restores():
    model = lora.apply_lora(small_gpt(), ALL, r=4, alpha=8)
    train_a_little(model)
    model.eval()
    x = torch.randint(50, (3, 12))
    weights = {n: p.detach().clone() for n, p in model.named_parameters()}
    unmerged = model(x)[0]
    assert lora.merge_lora(model) == 2 * len(ALL)
    merged = model(x)[0]
    assert not torch.allclose(merged, small_gpt()(x)[0])  # the adapters did something
    torch.testing.assert_close(merged, unmerged, rtol=1e-4, atol=1e-5)
    with pytest.raises(RuntimeError, match="already merged"):
        lora.lora_layers(model)["blocks.0.attn.q_proj"].merge()
    assert lora.unmerge_lora(model) == 2 * len(ALL)
    for n, p in model.named_parameters():
        torch.testing.assert_close(p, weights[n], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(model(x)[0], unmerged, rtol=1e-5, atol=1e-6)


def test_dotted_targets_pick_single_layers():
    model = lora.apply_lora(small_gpt(), ("blocks.1.mlp.fc",), r=2)
    assert list(lora.lora_layers(model)) == ["blocks.1.mlp.fc"]


@pytest.mark.parametrize("r", [0, -1, 2.5, 17])
def test_bad_rank_is_explained(r):
    model = small_gpt()
    with pytest.raises(ValueError, match="rank r"):
        lora.apply_lora(model, ("q_proj",), r=r)
    assert not lora.lora_layers(model) and all(p.requires_grad for p in model.parameters())  # left untouched


def test_unknown_target_lists_known_names():
    with pytest.raises(ValueError, match=r"'query' matches no linear layer.*q_proj"):
        lora.apply_lora(small_gpt(), ("query",), r=2)
    with pytest.raises(ValueError, match="targets is empty"):
        lora.apply_lora(small_gpt(), (), r=2)


def test_tied_head_and_double_application_are_refused():
    with pytest.raises(ValueError, match="tie_weights"):
        lora.apply_lora(small_gpt(), ("lm_head",), r=2)
    untied = lora.apply_lora(small_gpt(tie_weights=False), ("lm_head",), r=2)
    assert "lm_head" in lora.lora_layers(untied)
    with pytest.raises(ValueError, match="already has LoRA"):
        lora.apply_lora(untied, ("q_proj",), r=2)
    with pytest.raises(ValueError, match="alpha"):
        lora.apply_lora(small_gpt(), ("q_proj",), r=2, alpha=0)


def test_state_dict_round_trip(tmp_path):
    model = lora.apply_lora(small_gpt(), ("q_proj", "fc"), r=3, alpha=6)
    train_a_little(model)
    model.eval()
    x = torch.randint(50, (2, 9))
    expected = model(x)[0]
    # the adapter alone: small, and enough to rebuild the tuned model from the base
    adapter = lora.lora_state_dict(model)
    assert set(adapter) == {f"blocks.{i}.{m}.lora_{w}" for i in (0, 1) for m in ("attn.q_proj", "mlp.fc") for w in "AB"}
    torch.save(adapter, tmp_path / "adapter.pt")
    fresh = lora.apply_lora(small_gpt(), ("q_proj", "fc"), r=3, alpha=6)
    lora.load_lora_state_dict(fresh, torch.load(tmp_path / "adapter.pt"))
    torch.testing.assert_close(fresh(x)[0], expected)
    # the whole state dict works with torch's own loader too
    again = lora.apply_lora(small_gpt(), ("q_proj", "fc"), r=3, alpha=6)
    again.load_state_dict(model.state_dict())
    torch.testing.assert_close(again(x)[0], expected)
    # mismatches are explained
    other = lora.apply_lora(small_gpt(), ("v_proj",), r=3)
    with pytest.raises(ValueError, match="does not fit"):
        lora.load_lora_state_dict(other, adapter)
    wrong_r = lora.apply_lora(small_gpt(), ("q_proj", "fc"), r=2)
    with pytest.raises(ValueError, match="another r"):
        lora.load_lora_state_dict(wrong_r, adapter)
    with pytest.raises(ValueError, match="no LoRA layers"):
        lora.lora_state_dict(small_gpt())


def test_dropout_only_in_training():
    torch.manual_seed(0)
    layer = lora.LoRALinear(nn.Linear(8, 8), r=2, dropout=0.5)
    with torch.no_grad():
        layer.lora_B.normal_()
    x = torch.randn(4, 8)
    layer.eval()
    torch.testing.assert_close(layer(x), lora.lora_forward(x, layer.weight, layer.lora_A, layer.lora_B, 1.0, layer.bias))
    layer.train()
    assert not torch.allclose(layer(x), layer(x))  # random masks differ between calls
