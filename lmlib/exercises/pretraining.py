"""Exercise checkers for chapter 4, Pretraining (a BPE merge step, a MinHash signature)."""
from __future__ import annotations

from collections.abc import Callable

import torch

from lmlib.exercises.core import Case, check
from lmlib.tokenizers import merge_pair

__all__ = ["check_bpe_merge", "check_minhash_signature", "reference_bpe_merge", "reference_minhash_signature"]

MINHASH_PRIME = (1 << 31) - 1  # lmlib.dedup.PRIME: a * x + b stays inside int64 for inputs below it


def reference_bpe_merge(ids: list[int], pair: tuple[int, int], new_id: int) -> list[int]:
    return merge_pair(ids, pair, new_id)


def check_bpe_merge(fn: Callable[[list[int], tuple[int, int], int], list[int]], **kwargs) -> bool:
    """``fn(ids, pair, new_id) -> list[int]``: one BPE merge, left to right, without overlaps."""

    def make_case(gen: torch.Generator) -> Case:
        vocab = int(torch.randint(2, 5, (1,), generator=gen))  # few symbols: pairs repeat and overlap
        n = int(torch.randint(0, 30, (1,), generator=gen))
        ids = torch.randint(vocab, (n,), generator=gen).tolist()
        pair = tuple(torch.randint(vocab, (2,), generator=gen).tolist())
        return ids, pair, 256

    return check(
        fn,
        reference_bpe_merge,
        make_case,
        name="bpe_merge",
        hint="scan left to right; where ids[i], ids[i+1] equal the pair, emit new_id and skip both, "
        "else emit ids[i] and move one step. So [7, 7, 7] with pair (7, 7) gives [new, 7].",
        fixed_cases=(([1, 2, 3, 1, 2], (1, 2), 256), ([7, 7, 7], (7, 7), 300), ([], (0, 1), 256), ([5], (5, 5), 256)),
        **kwargs,
    )


def reference_minhash_signature(hashes: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return ((a[:, None] * hashes[None, :] + b[:, None]) % MINHASH_PRIME).min(dim=1).values


def check_minhash_signature(fn: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor], **kwargs) -> bool:
    """``fn(hashes, a, b) -> (k,)``: entry i is min over the set of ``(a[i] * x + b[i]) % (2**31 - 1)``."""

    def make_case(gen: torch.Generator) -> Case:
        n = int(torch.randint(1, 40, (1,), generator=gen))
        k = int(torch.randint(1, 64, (1,), generator=gen))
        hashes = torch.randint(0, MINHASH_PRIME, (n,), generator=gen)
        a = torch.randint(1, MINHASH_PRIME, (k,), generator=gen)
        b = torch.randint(0, MINHASH_PRIME, (k,), generator=gen)
        return hashes, a, b

    fixed = (torch.tensor([3, 10, 4]), torch.tensor([1, 2]), torch.tensor([0, 5]))
    return check(
        fn,
        reference_minhash_signature,
        make_case,
        name="minhash_signature",
        hint="broadcast: a[:, None] * hashes[None, :] + b[:, None] gives a (k, n) table; take it modulo "
        "the prime, then the minimum over the n set elements (dim=1), one value per hash function.",
        fixed_cases=(fixed,),
        **kwargs,
    )
