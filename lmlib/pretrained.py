"""GPT-2 weights in the Hugging Face layout, converted into :class:`lmlib.model.GPT`.

Derived in chapter 3 (notebook 02 checks our GPT against Hugging Face's ``GPT2LMHeadModel``);
chapter 4 adds the download of the published checkpoints around it.

Two differences of layout matter. Hugging Face's GPT-2 stores its projections as ``Conv1D``
modules whose weight is (in_features, out_features), the transpose of ``nn.Linear``'s, and it
fuses the query, key and value projections into one ``c_attn`` of width 3 * n_embd, which we split
into ``q_proj``, ``k_proj`` and ``v_proj`` (in that order).

API: ``config_from_hf(hf_config) -> GPTConfig``;
``gpt_from_hf_state_dict(state_dict, config) -> GPT`` (on the CPU, in evaluation mode).
"""
from __future__ import annotations

import torch

from lmlib.model import GPT, GPTConfig

__all__ = ["config_from_hf", "gpt_from_hf_state_dict"]


def config_from_hf(hf_config) -> GPTConfig:
    """The :class:`GPTConfig` of a Hugging Face ``GPT2Config`` (GELU tanh, learned positions, tied head)."""
    act = getattr(hf_config, "activation_function", "gelu_new")
    if act not in ("gelu_new", "gelu_pytorch_tanh"):
        raise ValueError(f"only GPT-2's tanh GELU is supported, this config uses {act!r}.")
    return GPTConfig(
        vocab_size=hf_config.vocab_size, block_size=hf_config.n_positions, n_layer=hf_config.n_layer,
        n_head=hf_config.n_head, n_embd=hf_config.n_embd, dropout=0.0, bias=True, norm="layer",
        mlp="gelu", pos="learned", tie_weights=True,
    )


def _hf_to_ours(config: GPTConfig) -> dict[str, tuple[str, str]]:
    """Our parameter name -> (Hugging Face name, how to convert): 'copy', 't' (transpose), 'q'/'k'/'v'."""
    names = {
        "wte.weight": ("wte.weight", "copy"),
        "wpe.table.weight": ("wpe.weight", "copy"),
        "ln_f.weight": ("ln_f.weight", "copy"),
        "ln_f.bias": ("ln_f.bias", "copy"),
    }
    for i in range(config.n_layer):
        ours, theirs = f"blocks.{i}.", f"h.{i}."
        for ln in ("ln_1", "ln_2"):
            for p in ("weight", "bias"):
                names[f"{ours}{ln}.{p}"] = (f"{theirs}{ln}.{p}", "copy")
        for part in "qkv":
            for p in ("weight", "bias"):
                names[f"{ours}attn.{part}_proj.{p}"] = (f"{theirs}attn.c_attn.{p}", part)
        pairs = (("attn.out_proj", "attn.c_proj"), ("mlp.fc", "mlp.c_fc"), ("mlp.proj", "mlp.c_proj"))
        for mine, hf in pairs:
            names[f"{ours}{mine}.weight"] = (f"{theirs}{hf}.weight", "t")
            names[f"{ours}{mine}.bias"] = (f"{theirs}{hf}.bias", "copy")
    return names


def gpt_from_hf_state_dict(state_dict: dict[str, torch.Tensor], config: GPTConfig) -> GPT:
    """Build a :class:`GPT` holding the weights of a Hugging Face GPT-2 ``state_dict``.

    Accepts the keys of ``GPT2LMHeadModel`` (``transformer.h.0...``) or ``GPT2Model`` (``h.0...``).
    The output head is tied to the token embedding, as in GPT-2. Raises ``KeyError`` naming the
    missing tensors and ``ValueError`` on a shape mismatch (a config that does not fit the weights).
    """
    if not (config.norm == "layer" and config.mlp == "gelu" and config.pos == "learned" and config.bias
            and config.tie_weights and config.kv_heads == config.n_head and config.prenorm):
        raise ValueError("GPT-2 weights need a GPT-2 shaped config: use config_from_hf(hf_config).")
    sd = {k.removeprefix("transformer."): v for k, v in state_dict.items()}
    model = GPT(config)
    ours = model.state_dict()
    mapping = _hf_to_ours(config)
    missing = sorted({hf for hf, _ in mapping.values() if hf not in sd})
    if missing:
        raise KeyError(f"the state_dict lacks {len(missing)} GPT-2 tensors, e.g. {missing[:3]}; is it a GPT-2 checkpoint?")
    d = config.n_embd
    new = {}
    for name, (hf, how) in mapping.items():
        t = sd[hf]
        if how == "t":
            t = t.t()
        elif how in "qkv":
            i = "qkv".index(how)
            t = t[..., i * d:(i + 1) * d]
            if t.dim() == 2:
                t = t.t()
        if t.shape != ours[name].shape:
            raise ValueError(
                f"{hf} gives shape {tuple(t.shape)} for {name}, which needs {tuple(ours[name].shape)}: "
                "the config does not match the checkpoint."
            )
        new[name] = t.detach().clone().to(ours[name].dtype)
    new["lm_head.weight"] = new["wte.weight"]
    model.load_state_dict(new, strict=True)
    return model.eval()
