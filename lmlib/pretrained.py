"""GPT-2 weights in the Hugging Face layout, converted into :class:`lmlib.model.GPT`.

Derived in chapter 3 (notebook 02 checks our GPT against Hugging Face's ``GPT2LMHeadModel``);
chapter 4 adds the download of the published checkpoints around it.

Two differences of layout matter. Hugging Face's GPT-2 stores its projections as ``Conv1D``
modules whose weight is (in_features, out_features), the transpose of ``nn.Linear``'s, and it
fuses the query, key and value projections into one ``c_attn`` of width 3 * n_embd, which we split
into ``q_proj``, ``k_proj`` and ``v_proj`` (in that order).

A Hugging Face ``GPT2Config`` has switches our GPT does not have. The converter honours those it
can reproduce exactly (an untied output head, a feed-forward width ``n_inner``, any tanh form of
GELU, ``reorder_and_upcast_attn``, which only moves half-precision attention to float32 and so
changes nothing in the float32 model the converter builds) and rejects the others by name, so that a loaded model never gives logits that silently differ
from Hugging Face's.

API::

    config_from_hf(hf_config) -> GPTConfig              # ValueError naming a field it cannot honour
    gpt_from_hf_state_dict(state_dict, config) -> GPT   # on the CPU, in evaluation mode
"""
from __future__ import annotations

import torch

from lmlib.model import GPT, GPTConfig

__all__ = ["config_from_hf", "gpt_from_hf_state_dict"]


# GPT-2's tanh approximation of GELU under the names transformers gives it (the same function).
TANH_GELUS = ("gelu_new", "gelu_pytorch_tanh", "gelu_fast")
# The fields of transformers' GPT2Config that change the model's output, with their defaults:
# a config.json may leave any of them out.
HF_GPT2_DEFAULTS = {"activation_function": "gelu_new", "layer_norm_epsilon": 1e-5, "n_inner": None,
                    "scale_attn_weights": True, "scale_attn_by_inverse_layer_idx": False,
                    "reorder_and_upcast_attn": False, "add_cross_attention": False, "tie_word_embeddings": True}
# Fields our GPT has one way only: the value it needs, and what that value means.
FIXED = {
    "layer_norm_epsilon": (1e-5, "LayerNorm with eps=1e-5"),
    "scale_attn_weights": (True, "attention scores scaled by 1/sqrt(head_dim)"),
    "scale_attn_by_inverse_layer_idx": (False, "the same attention scale 1/sqrt(head_dim) in every layer"),
    "add_cross_attention": (False, "decoder-only blocks without cross-attention"),
}


def _field(hf_config, name: str):
    return getattr(hf_config, name, HF_GPT2_DEFAULTS[name])


def _unsupported(name: str, value, supported: str) -> ValueError:
    return ValueError(f"{name}={value!r} is not supported: the course's GPT has {supported} only. "
                      "Loading this checkpoint into it would give other logits than Hugging Face's GPT2LMHeadModel; "
                      "use transformers for it.")


def config_from_hf(hf_config) -> GPTConfig:
    """The :class:`GPTConfig` of a Hugging Face ``GPT2Config`` (GELU tanh, learned positions, tied head).

    Honours ``tie_word_embeddings`` (``tie_weights``), ``n_inner`` (``mlp_hidden_dim``) and any tanh
    GELU; raises ``ValueError`` naming any other field whose value our GPT cannot reproduce exactly.
    """
    act = _field(hf_config, "activation_function")
    if act not in TANH_GELUS:
        raise _unsupported("activation_function", act, f"GPT-2's tanh GELU {TANH_GELUS}")
    for name, default in HF_GPT2_DEFAULTS.items():
        if isinstance(default, bool) and not isinstance(_field(hf_config, name), bool):
            raise ValueError(f"{name} must be true or false, got {_field(hf_config, name)!r}.")
    for name, (needed, meaning) in FIXED.items():
        if _field(hf_config, name) != needed:
            raise _unsupported(name, _field(hf_config, name), f"{meaning} ({name}={needed!r})")
    n_inner = _field(hf_config, "n_inner")
    if n_inner is not None and (not isinstance(n_inner, int) or isinstance(n_inner, bool) or n_inner < 1):
        raise ValueError(f"n_inner must be a positive integer, or null for 4 * n_embd, got {n_inner!r}.")
    return GPTConfig(
        vocab_size=hf_config.vocab_size, block_size=hf_config.n_positions, n_layer=hf_config.n_layer,
        n_head=hf_config.n_head, n_embd=hf_config.n_embd, dropout=0.0, bias=True, norm="layer",
        mlp="gelu", pos="learned", tie_weights=_field(hf_config, "tie_word_embeddings"),
        mlp_hidden_dim=None if n_inner == 4 * hf_config.n_embd else n_inner,
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


def _hf_shape(ours: tuple[int, ...], how: str, d: int) -> tuple[int, ...]:
    """The shape a Hugging Face tensor must have to give one of ours of shape ``ours``."""
    if how == "t":
        return ours[::-1]
    if how in "qkv":
        return (d, 3 * d) if len(ours) == 2 else (3 * d,)
    return ours


def gpt_from_hf_state_dict(state_dict: dict[str, torch.Tensor], config: GPTConfig) -> GPT:
    """Build a :class:`GPT` holding the weights of a Hugging Face GPT-2 ``state_dict``.

    Accepts the keys of ``GPT2LMHeadModel`` (``transformer.h.0...``) or ``GPT2Model`` (``h.0...``).
    The output head is tied to the token embedding, as in GPT-2, unless ``config.tie_weights`` is
    False; then it is ``lm_head.weight``. Raises ``KeyError`` naming the missing tensors and
    ``ValueError`` naming a tensor whose shape does not fit the config, that is not floating point,
    that holds NaN or infinity (a damaged file), or that the config leaves unused.
    """
    if not (config.norm == "layer" and config.mlp == "gelu" and config.pos == "learned" and config.bias
            and config.kv_heads == config.n_head and config.prenorm and not config.qk_norm
            and config.logit_softcap is None):
        raise ValueError("GPT-2 weights need a GPT-2 shaped config: use config_from_hf(hf_config).")
    sd = {k.removeprefix("transformer."): v for k, v in state_dict.items()}
    model = GPT(config)
    ours = model.state_dict()
    mapping = _hf_to_ours(config)
    if not config.tie_weights:
        mapping["lm_head.weight"] = ("lm_head.weight", "copy")
    missing = sorted({hf for hf, _ in mapping.values() if hf not in sd})
    if missing:
        raise KeyError(f"the state_dict lacks {len(missing)} GPT-2 tensors, e.g. {missing[:3]}; is it a GPT-2 checkpoint"
                       + ("" if config.tie_weights else " with an untied head (lm_head.weight)") + "?")
    # Tensors the config does not use mean that it describes another model (more layers, cross-attention).
    used = {hf for hf, _ in mapping.values()} | {"lm_head.weight"}
    unused = sorted(k for k in sd if k not in used and not k.endswith((".attn.bias", ".attn.masked_bias")))
    if unused:
        raise ValueError(f"the state_dict holds {len(unused)} tensors the config does not use, e.g. {unused[:3]}: "
                         "the config does not match the checkpoint.")
    d = config.n_embd
    new = {}
    for name, (hf, how) in mapping.items():
        t = sd[hf]
        expected = _hf_shape(tuple(ours[name].shape), how, d)
        if tuple(t.shape) != expected:
            raise ValueError(f"{hf} has shape {tuple(t.shape)} where the config needs {expected} (for our {name}): "
                             "the config does not match the checkpoint.")
        if not t.is_floating_point():
            raise ValueError(f"{hf} holds {t.dtype} values where GPT-2 has floating-point weights: "
                             "is it a GPT-2 checkpoint?")
        if not torch.isfinite(t).all():
            raise ValueError(f"{hf} holds NaN or infinite values, which a trained GPT-2 never has: "
                             "the weights are damaged.")
        if how == "t":
            t = t.t()
        elif how in "qkv":
            i = "qkv".index(how)
            t = t[..., i * d:(i + 1) * d]
            if t.dim() == 2:
                t = t.t()
        new[name] = t.detach().clone().to(ours[name].dtype)
    if config.tie_weights and "lm_head.weight" in sd and not torch.equal(sd["lm_head.weight"], sd["wte.weight"]):
        raise ValueError("the config ties the output head to wte.weight (tie_word_embeddings=true), but the "
                         "state_dict's lm_head.weight differs from it: the head is untied, set tie_word_embeddings "
                         "to false.")
    if config.tie_weights:
        new["lm_head.weight"] = new["wte.weight"]
    model.load_state_dict(new, strict=True)
    return model.eval()
