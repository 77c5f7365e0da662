"""Tokenizers: text to integer ids and back.

The character tokenizer is derived in chapter 1 ("What a language model is"); chapter 4 adds
byte-level BPE to this module.
"""
from __future__ import annotations

from collections.abc import Iterable

import torch


class CharTokenizer:
    """One id per distinct character of a training text, in sorted order (ids are stable)."""

    def __init__(self, chars: Iterable[str]):
        self.chars = sorted(set(chars))
        if not self.chars:
            raise ValueError("CharTokenizer needs at least one character; got an empty text.")
        self.stoi = {c: i for i, c in enumerate(self.chars)}

    @classmethod
    def from_text(cls, text: str) -> "CharTokenizer":
        return cls(text)

    @property
    def vocab_size(self) -> int:
        return len(self.chars)

    def encode(self, text: str) -> torch.Tensor:
        """Ids of ``text`` as a 1-D int64 tensor; a character outside the vocabulary is an error."""
        try:
            return torch.tensor([self.stoi[c] for c in text], dtype=torch.long)
        except KeyError as err:
            raise ValueError(
                f"Character {err.args[0]!r} is not in this tokenizer's vocabulary of "
                f"{self.vocab_size} characters (it was built from a text without it)."
            ) from None

    def decode(self, ids: Iterable[int] | torch.Tensor) -> str:
        if isinstance(ids, torch.Tensor):
            ids = ids.tolist()
        try:
            return "".join(self.chars[i] for i in ids)
        except IndexError:
            bad = [i for i in ids if not 0 <= i < self.vocab_size]
            raise ValueError(f"Ids {bad[:5]} are outside the vocabulary (size {self.vocab_size}).") from None

    def __repr__(self) -> str:
        return f"CharTokenizer(vocab_size={self.vocab_size})"
