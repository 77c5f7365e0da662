"""The chapter 5 instruction-tuning checkers accept the reference and reject known-wrong solutions."""
import torch

import lmlib.exercises as ex


def test_sft_targets_checker():
    def mine(ids, prompt_len):
        y = ids[1:].clone()
        y[: prompt_len - 1] = -100
        return y

    assert ex.check_sft_targets(mine, verbose=False)
    assert ex.check_sft_targets(ex.reference_sft_targets, verbose=False)

    def off_by_one(ids, prompt_len):  # masks the first response token too
        y = ids[1:].clone()
        y[:prompt_len] = -100
        return y

    def unshifted(ids, prompt_len):  # forgets that targets are the next tokens
        y = ids.clone()
        y[:prompt_len] = -100
        return y

    def zero_mask(ids, prompt_len):  # masks with 0, a real token id
        y = ids[1:].clone()
        y[: prompt_len - 1] = 0
        return y

    for wrong in (off_by_one, unshifted, zero_mask):
        assert not ex.check_sft_targets(wrong, verbose=False), wrong.__name__


def test_lora_forward_checker(capsys):
    assert ex.check_lora_forward(lambda x, W, A, B, s: x @ W.T + s * (x @ A.T) @ B.T)
    assert "PASS" in capsys.readouterr().out
    assert not ex.check_lora_forward(lambda x, W, A, B, s: s * (x @ W.T + x @ A.T @ B.T))  # scales the base too
    assert "FAIL" in capsys.readouterr().out
    assert not ex.check_lora_forward(lambda x, W, A, B, s: x @ W.T + x @ A.T @ B.T, verbose=False)  # no scale
    assert not ex.check_lora_forward(lambda x, W, A, B, s: x @ W + s * x @ A.T @ B.T, verbose=False)  # W not transposed

    def raises(x, W, A, B, s):
        raise NotImplementedError

    assert not ex.check_lora_forward(raises, verbose=False)
    assert not ex.check_lora_forward(lambda x, W, A, B, s: torch.zeros(3), verbose=False)
