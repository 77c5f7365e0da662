"""Exercise checkers for chapter 4, Pretraining.

Notebook 01 (tokenization): ``check_bpe_merge``, ``check_train_bpe`` (the training loop, against
:meth:`lmlib.tokenizers.ByteBPE.train`); notebook 02 (data pipeline): ``check_minhash_signature``,
``check_repeated_lines``; notebook 03 (training a GPT): ``check_lr_schedule`` (reference
:func:`lmlib.train.lr_at`), ``check_clip_by_global_norm`` (``torch.nn.utils.clip_grad_norm_``'s
rule, which the trainer uses), ``check_adamw_step`` (against ``torch.optim.AdamW``),
``check_train_step`` (one step of the loop, compared by the weights it leaves),
``check_newton_schulz`` (Muon's orthogonalisation, against :func:`lmlib.optim.orthogonalize`) and
``check_your_gpt``, the chapter's last exercise: a GPT written from one's own pieces, first checked
for its interface, then trained with :class:`lmlib.train.Trainer` next to
:class:`lmlib.model.GPT` (:func:`your_gpt_setup` gives the sizes at the preset in force,
:func:`your_gpt_val_loss` one run); notebook 04 (pretrained weights): ``check_split_qkv``;
notebook 05 (scaling): ``check_chinchilla_split`` (C = 6 N D, D = r N); notebook 06 (the course
model): ``check_chinchilla_size`` (a budget in minutes on a measured machine) and
``check_variant`` (a recipe with one training knob changed).
"""
from __future__ import annotations

import copy
import functools
import math
import statistics
from collections import Counter
from collections.abc import Callable

import torch
import torch.nn.functional as F

from lmlib import data, recipes
from lmlib.dedup import PRIME
from lmlib.exercises.core import NOT_CALLABLE, RETURNED_NONE, Case, Mistake, Result, check, f64, randint
from lmlib.model import GPT, GPTConfig, count_params, num_params
from lmlib.optim import CUBIC, QUINTIC, orthogonalize
from lmlib.presets import scaled
from lmlib.tokenizers import ByteBPE, CharTokenizer, merge_pair
from lmlib.train import TrainConfig, Trainer, lr_at, token_batches

__all__ = [
    "check_bpe_merge", "reference_bpe_merge",
    "check_train_bpe", "reference_train_bpe",
    "check_minhash_signature", "reference_minhash_signature",
    "check_repeated_lines", "reference_repeated_lines",
    "check_lr_schedule", "reference_lr_schedule",
    "check_clip_by_global_norm", "reference_clip_by_global_norm",
    "check_adamw_step", "reference_adamw_step",
    "check_train_step", "reference_train_step",
    "check_newton_schulz", "reference_newton_schulz",
    "check_your_gpt", "reference_your_gpt", "your_gpt_setup", "your_gpt_val_loss",
    "check_split_qkv", "reference_split_qkv",
    "check_chinchilla_split", "reference_chinchilla_split",
    "check_chinchilla_size", "reference_chinchilla_size",
    "check_variant", "reference_variant",
]


# --- notebook 01 --------------------------------------------------------------------------------

def reference_bpe_merge(ids: list[int], pair: tuple[int, int], new_id: int) -> list[int]:
    return merge_pair(ids, pair, new_id)


def _merge_overlapping(ids, pair, new_id):
    out, i = [], 0
    while i < len(ids):
        if i + 1 < len(ids) and (ids[i], ids[i + 1]) == tuple(pair):
            out.append(new_id)
        else:
            out.append(ids[i])
        i += 1
    return out


def check_bpe_merge(fn: Callable[[list[int], tuple[int, int], int], list[int]], **options) -> Result:
    """``fn(ids, pair, new_id) -> list[int]``: one BPE merge, left to right, without overlaps."""

    def make_case(gen: torch.Generator) -> Case:
        vocab = randint(gen, 2, 5)  # few symbols: pairs repeat and overlap
        ids = torch.randint(vocab, (randint(gen, 0, 30),), generator=gen).tolist()
        return ids, tuple(torch.randint(vocab, (2,), generator=gen).tolist()), 256

    return check(
        fn, reference_bpe_merge, make_case,
        hint="scan left to right; where ids[i], ids[i+1] equal the pair, emit new_id and skip both, "
        "else emit ids[i] and move one step. So [7, 7, 7] with pair (7, 7) gives [new, 7].",
        edge_cases=(([1, 2, 3, 1, 2], (1, 2), 256), ([7, 7, 7], (7, 7), 300), ([], (0, 1), 256),
                    ([5], (5, 5), 256), ([4, 4, 4, 4, 4], (4, 4), 301)),
        mistakes=(
            Mistake("you returned the ids unchanged: replace each occurrence of the pair by new_id",
                    lambda ids, pair, new_id: list(ids)),
            Mistake("after a merge, skip both tokens of the pair (i += 2); you also merged overlapping "
                    "pairs, so [7, 7, 7] became two new tokens", _merge_overlapping),
            Mistake("you scanned from the right; BPE merges from the left, so [7, 7, 7] with pair (7, 7) "
                    "gives [new, 7], not [7, new]",
                    lambda ids, pair, new_id: merge_pair(ids[::-1], tuple(pair)[::-1], new_id)[::-1]),
        ),
        **options,
    )


#: The pre-tokenization pattern that makes a whole text one piece: BPE on the raw byte sequence.
_ONE_PIECE = r"[\s\S]+"


def reference_train_bpe(text: str, num_merges: int) -> list[tuple[int, int]]:
    return ByteBPE.train(text, 256 + num_merges, pattern=_ONE_PIECE, progress=False).merges


def _train_bpe_with(text, num_merges, pick, merge=merge_pair, first_id=256, fixed_id=False):
    """A BPE training loop with a pluggable choice of pair and merge: the known wrong variants."""
    ids, merges = list(text.encode("utf-8")), []
    for k in range(num_merges):
        counts = Counter(zip(ids, ids[1:]))
        if not counts:
            break
        best = pick(counts)
        merges.append(best)
        ids = merge(ids, best, first_id if fixed_id else first_id + k)
    return merges


def check_train_bpe(fn: Callable[[str, int], list[tuple[int, int]]], **options) -> Result:
    """``fn(text, num_merges) -> merges``: BPE training on the UTF-8 bytes of ``text`` (no pre-tokenization).

    Merge ``k`` joins the most frequent adjacent pair (ties: the smallest pair) into id ``256 + k``;
    training stops early when the sequence is one token.
    """

    def make_case(gen: torch.Generator) -> Case:
        alphabet = "ab ce\u00e9"[: randint(gen, 2, 7)]  # few symbols, so pairs repeat and tie; \u00e9 is two bytes
        n = randint(gen, 0, 60)
        text = "".join(alphabet[i] for i in torch.randint(len(alphabet), (n,), generator=gen).tolist())
        return text, randint(gen, 1, 12)

    def smallest(counts):
        return min(counts, key=lambda p: (-counts[p], p))

    return check(
        fn, reference_train_bpe, make_case,
        hint="start from list(text.encode('utf-8')); then num_merges times: count the adjacent pairs "
        "(Counter(zip(ids, ids[1:]))), take the most frequent, ties to the smallest pair "
        "(min(counts, key=lambda p: (-counts[p], p))), merge it into id 256 + k with your merge "
        "function, and record it. Stop when no pair is left.",
        edge_cases=(("ab ba", 1), ("aaabdaaabac", 3), ("abab", 1), ("aaaa", 3), ("", 2), ("x", 1),
                    ("\u00e9\u00e9", 2)),
        mistakes=(
            Mistake("a tie went to the pair seen first (Counter.most_common does that); lmlib breaks ties "
                    "by the smallest pair, min(counts, key=lambda p: (-counts[p], p)), so that training "
                    "does not depend on the order of the text",
                    lambda t, n: _train_bpe_with(t, n, lambda c: c.most_common(1)[0][0])),
            Mistake("a tie went to the largest pair; lmlib breaks ties by the smallest pair",
                    lambda t, n: _train_bpe_with(t, n, lambda c: max(c, key=lambda p: (c[p], p)))),
            Mistake("every merge got the same new id; merge k creates id 256 + k, a new token each time",
                    lambda t, n: _train_bpe_with(t, n, smallest, fixed_id=True)),
            Mistake("the new ids start at 257: the bytes are ids 0 to 255, so merge k creates id 256 + k",
                    lambda t, n: _train_bpe_with(t, n, smallest, first_id=257)),
            Mistake("your merge also merged overlapping pairs, so [97, 97, 97] became two new tokens; "
                    "after a merge skip both tokens of the pair",
                    lambda t, n: _train_bpe_with(t, n, smallest, merge=_merge_overlapping)),
        ),
        trials=10,
        **options,
    )


# --- notebook 02 --------------------------------------------------------------------------------

def reference_minhash_signature(hashes: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return ((a[:, None] * hashes[None, :] + b[:, None]) % PRIME).min(dim=1).values


def check_minhash_signature(fn: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor], **options) -> Result:
    """``fn(hashes, a, b) -> (k,)``: entry i is min over the set of ``(a[i] * x + b[i]) % (2**31 - 1)``."""

    def make_case(gen: torch.Generator) -> Case:
        n, k = randint(gen, 1, 40), randint(gen, 1, 64)
        return (torch.randint(0, PRIME, (n,), generator=gen), torch.randint(1, PRIME, (k,), generator=gen),
                torch.randint(0, PRIME, (k,), generator=gen))

    def table(h, a, b):
        return a[:, None] * h[None, :] + b[:, None]

    return check(
        fn, reference_minhash_signature, make_case,
        hint="broadcast: a[:, None] * hashes[None, :] + b[:, None] gives a (k, n) table; take it modulo "
        "the prime, then the minimum over the n set elements (dim=1), one value per hash function.",
        edge_cases=((torch.tensor([3, 10, 4]), torch.tensor([1, 2]), torch.tensor([0, 5])),
                    (torch.tensor([PRIME - 1]), torch.tensor([PRIME - 2]), torch.tensor([7]))),
        mistakes=(
            Mistake("you took the maximum; MinHash keeps the minimum of each hash function over the set",
                    lambda h, a, b: (table(h, a, b) % PRIME).max(dim=1).values),
            Mistake("you left out the modulo: (a x + b) % (2**31 - 1) keeps the hashes in [0, prime)",
                    lambda h, a, b: table(h, a, b).min(dim=1).values),
        ),
        **options,
    )


def reference_repeated_lines(docs: list[str], min_docs: int) -> set[str]:
    in_docs = Counter(line for doc in docs for line in set(doc.split("\n")))
    return {line for line, n in in_docs.items() if n >= min_docs}


def _a_set(lines):
    if not isinstance(lines, (set, frozenset)):
        raise TypeError(f"return a set of lines (strings), got {type(lines).__name__}; wrap it in set(...)")
    return set(lines)


def check_repeated_lines(fn: Callable[[list[str], int], set[str]], **options) -> Result:
    """``fn(docs, min_docs) -> set``: the lines that occur in at least ``min_docs`` different documents."""
    pool = ["See also.", "References", "External links", "He was born in Paris.", "It is a village.",
            "The album was released in 1998.", "Population: 1,200"]

    def make_case(gen: torch.Generator) -> Case:
        docs = []
        for _ in range(randint(gen, 1, 9)):
            lines = torch.randint(len(pool), (randint(gen, 1, 7),), generator=gen).tolist()
            docs.append("\n".join(pool[i] for i in lines))  # a line may repeat inside a document
        return docs, randint(gen, 1, 5)

    def occurrences(docs, k):
        n = Counter(line for doc in docs for line in doc.split("\n"))
        return {line for line, c in n.items() if c >= k}

    def more_than(docs, k):
        n = Counter(line for doc in docs for line in set(doc.split("\n")))
        return {line for line, c in n.items() if c > k}

    toy = ["Intro line.\nSee the list below.\nA unique line.",
           "See the list below.\nAnother unique line.\nSee the list below.",
           "Nothing shared here.\nIntro line."]
    return check(
        fn, reference_repeated_lines, make_case,
        hint="for each document take the set of its lines (doc.split('\\n')), so a line counts once per "
        "document; count those sets with a Counter, and keep the lines counted at least min_docs times.",
        edge_cases=((toy, 2), (toy, 3), ([], 1), (["one line"], 1)),
        mistakes=(
            Mistake("a line repeated inside one document was counted more than once: count the documents "
                    "that contain a line (a set of lines per document), not its occurrences",
                    occurrences),
            Mistake("you kept the lines in more than min_docs documents; keep those in at least min_docs (>=)",
                    more_than),
        ),
        prepare=_a_set,
        trials=10,
        **options,
    )


# --- notebook 03 --------------------------------------------------------------------------------

def reference_lr_schedule(step: int, lr: float, min_lr: float, warmup_steps: int, max_steps: int) -> float:
    return lr_at(step, lr, min_lr, warmup_steps, max_steps)


def check_lr_schedule(fn: Callable[[int, float, float, int, int], float], **options) -> Result:
    """``fn(step, lr, min_lr, warmup_steps, max_steps) -> float``: linear warmup, then cosine to ``min_lr``."""

    def make_case(gen: torch.Generator) -> Case:
        max_steps = randint(gen, 20, 2000)
        warmup = randint(gen, 0, max_steps // 4 + 1)
        lr = float(10 ** (-4 + 2 * torch.rand(1, generator=gen)))
        min_lr = lr * float(torch.rand(1, generator=gen)) * 0.2
        return randint(gen, 0, max_steps + 10), lr, min_lr, warmup, max_steps

    def cosine(step, lr, min_lr, warmup, max_steps, cap=True):
        p = (step - warmup) / max(1, max_steps - 1 - warmup)
        return min_lr + 0.5 * (lr - min_lr) * (1 + math.cos(math.pi * (min(p, 1.0) if cap else p)))

    return check(
        fn, reference_lr_schedule, make_case,
        hint="Warmup: lr * (step + 1) / warmup_steps while step < warmup_steps. Then the progress "
        "p = (step - warmup_steps) / (max_steps - 1 - warmup_steps), capped at 1, gives "
        "min_lr + 0.5 * (lr - min_lr) * (1 + cos(pi * p)).",
        edge_cases=((0, 1e-3, 1e-4, 100, 2000), (99, 1e-3, 1e-4, 100, 2000), (100, 1e-3, 1e-4, 100, 2000),
                    (1999, 1e-3, 1e-4, 100, 2000), (2500, 1e-3, 1e-4, 100, 2000), (5, 1e-3, 0.0, 0, 10),
                    (1000, 1e-3, 1e-4, 100, 2000)),
        mistakes=(
            Mistake("the warmup starts at 0: step 0 should already train, at lr * (step + 1) / warmup_steps",
                    lambda s, lr, lo, w, m: lr * s / w if s < w else lr_at(s, lr, lo, w, m)),
            Mistake("the cosine goes down to 0; it should end at min_lr",
                    lambda s, lr, lo, w, m: lr_at(s, lr, 0.0, w, m)),
            Mistake("after max_steps the rate rises again: cap the progress at 1 so it stays at min_lr",
                    lambda s, lr, lo, w, m: lr * (s + 1) / w if s < w else cosine(s, lr, lo, w, m, cap=False)),
        ),
        trials=20,
        rtol=1e-9,
        atol=1e-12,
        **options,
    )


def reference_clip_by_global_norm(grads: list[torch.Tensor], max_norm: float) -> list[torch.Tensor]:
    params = [torch.nn.Parameter(torch.zeros_like(g)) for g in grads]
    for p, g in zip(params, grads):
        p.grad = g.clone()
    torch.nn.utils.clip_grad_norm_(params, max_norm)
    return [p.grad for p in params]


def check_clip_by_global_norm(fn: Callable[[list[torch.Tensor], float], list[torch.Tensor]], **options) -> Result:
    """``fn(grads, max_norm) -> list of tensors``: scale all gradients together to a joint norm of at most ``max_norm``."""

    def make_case(gen: torch.Generator) -> Case:
        grads = [torch.randn(randint(gen, 1, 6), 3, generator=gen, dtype=torch.float64)
                 * float(torch.rand(1, generator=gen) * 4) for _ in range(randint(gen, 1, 5))]
        return grads, float(torch.rand(1, generator=gen) * 3 + 0.1)

    return check(
        fn, reference_clip_by_global_norm, make_case,
        hint="Take the norm of ALL gradients together (sqrt of the sum of every squared entry), then "
        "multiply every gradient by min(1, max_norm / (norm + 1e-6)); gradients already small stay unchanged.",
        edge_cases=(([f64([3.0, 4.0]), f64([12.0])], 1.0), ([f64([0.3, 0.4])], 1.0),
                    ([f64([[1.0, 2.0], [2.0, 4.0]]), f64([0.5])], 2.0)),
        mistakes=(
            Mistake("you clipped each tensor by its own norm; clipping by the global norm scales all of "
                    "them by one factor, so their directions relative to each other stay",
                    lambda grads, c: [g * min(1.0, c / (float(g.norm()) + 1e-6)) for g in grads]),
            Mistake("you also scaled small gradients up to max_norm; the factor is min(1, max_norm / norm)",
                    lambda grads, c: [g * c / (math.sqrt(sum(float((x ** 2).sum()) for x in grads)) + 1e-6)
                                      for g in grads]),
        ),
        trials=10,
        **options,
    )


def reference_adamw_step(param: torch.Tensor, grad: torch.Tensor, m: torch.Tensor, v: torch.Tensor, step: int,
                         lr: float, betas: tuple[float, float], eps: float,
                         weight_decay: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    p = torch.nn.Parameter(param.detach().clone())
    opt = torch.optim.AdamW([p], lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, foreach=False)
    opt.state[p] = {"step": torch.tensor(float(step - 1)), "exp_avg": m.clone(), "exp_avg_sq": v.clone()}
    p.grad = grad.clone()
    opt.step()
    state = opt.state[p]
    return p.detach(), state["exp_avg"], state["exp_avg_sq"]


def _adamw_variant(param, grad, m, v, step, lr, betas, eps, weight_decay, *, l2=False, correct=True,
                   eps_inside=False, decay_lr=True):
    """AdamW written out, with switches for its typical mistakes."""
    b1, b2 = betas
    if l2:
        grad = grad + weight_decay * param
    else:
        param = param * (1 - (lr if decay_lr else 1.0) * weight_decay)
    m = b1 * m + (1 - b1) * grad
    v = b2 * v + (1 - b2) * grad ** 2
    m_hat = m / (1 - b1 ** step) if correct else m
    v_hat = v / (1 - b2 ** step) if correct else v
    denominator = (v_hat + eps).sqrt() if eps_inside else v_hat.sqrt() + eps
    return param - lr * m_hat / denominator, m, v


def check_adamw_step(fn: Callable[..., tuple[torch.Tensor, torch.Tensor, torch.Tensor]], **options) -> Result:
    """``fn(param, grad, m, v, step, lr, betas, eps, weight_decay) -> (param, m, v)``: one AdamW update.

    ``step`` counts updates from 1 (the first update has ``step=1``); ``m`` and ``v`` are the moment
    estimates before it. The reference is ``torch.optim.AdamW`` on the same numbers.
    """

    def make_case(gen: torch.Generator) -> Case:
        shape = (randint(gen, 1, 5), randint(gen, 1, 5))

        def rand(scale=1.0):
            return torch.randn(shape, generator=gen, dtype=torch.float64) * scale

        step = randint(gen, 1, 60)
        v = rand(0.1) ** 2 * float(torch.rand(1, generator=gen))  # small, so eps matters
        return (rand(), rand(0.1), rand(0.05), v, step, float(10 ** (-3 + 2 * torch.rand(1, generator=gen))),
                (0.9, [0.95, 0.99, 0.999][randint(gen, 0, 3)]), [1e-3, 1e-4][randint(gen, 0, 2)],
                float(0.05 + 0.3 * torch.rand(1, generator=gen)))

    zero = torch.zeros(2, 2, dtype=torch.float64)
    first = (f64([[1.0, -2.0], [0.5, 3.0]]), f64([[0.1, -0.3], [0.02, 0.0]]), zero, zero, 1, 0.1, (0.9, 0.999),
             1e-3, 0.1)
    later = (f64([[1.0, -2.0]]), f64([[0.2, 0.1]]), f64([[0.05, -0.01]]), f64([[0.004, 0.0001]]), 5, 0.01,
             (0.9, 0.95), 1e-4, 0.1)
    return check(
        fn, reference_adamw_step, make_case,
        hint="m = b1 m + (1 - b1) g; v = b2 v + (1 - b2) g^2; m_hat = m / (1 - b1**step), v_hat = v / (1 - "
        "b2**step); param = param * (1 - lr * weight_decay) - lr * m_hat / (sqrt(v_hat) + eps). The decay "
        "acts on the weight itself, never through the gradient, m or v.",
        edge_cases=(first, later),
        mistakes=(
            Mistake("you added weight_decay * param to the gradient (L2 regularisation, as in Adam); AdamW "
                    "decouples the decay: param * (1 - lr * weight_decay), outside m and v, so it is not "
                    "rescaled by the adaptive denominator",
                    lambda *a: _adamw_variant(*a, l2=True)),
            Mistake("the bias correction is missing: divide m by (1 - b1**step) and v by (1 - b2**step); "
                    "without it the first updates are far too small, since m and v start at zero",
                    lambda *a: _adamw_variant(*a, correct=False)),
            Mistake("eps is inside the square root; AdamW adds it after: sqrt(v_hat) + eps",
                    lambda *a: _adamw_variant(*a, eps_inside=True)),
            Mistake("the decay is missing its learning rate: AdamW multiplies the weight by (1 - lr * "
                    "weight_decay), not (1 - weight_decay)",
                    lambda *a: _adamw_variant(*a, decay_lr=False)),
            Mistake("there is no weight decay at all: multiply the weight by (1 - lr * weight_decay)",
                    lambda p, g, m, v, s, lr, b, e, wd: _adamw_variant(p, g, m, v, s, lr, b, e, 0.0)),
        ),
        parts=("param", "m", "v"),
        trials=10,
        rtol=1e-7,
        atol=1e-10,
        **options,
    )


def reference_newton_schulz(matrix: torch.Tensor, steps: int) -> torch.Tensor:
    # eps=0: the library's guard against an all-zero matrix would otherwise differ from the plain
    # division by the norm that the exercise asks for, and the quintic amplifies the difference
    return orthogonalize(matrix, steps, QUINTIC, eps=0.0)


def _newton_schulz_variant(matrix, steps, coefficients=QUINTIC, normalise=True):
    a, b, c = coefficients
    x = matrix / matrix.norm() if normalise else matrix
    for _ in range(steps):
        gram = x @ x.T
        x = a * x + (b * gram + c * gram @ gram) @ x
    return x


def check_newton_schulz(fn: Callable[[torch.Tensor, int], torch.Tensor], **options) -> Result:
    """``fn(matrix, steps) -> matrix``: Muon's orthogonalisation of an m x n matrix by ``steps``
    quintic Newton-Schulz iterations, X <- a X + b (X X^T) X + c (X X^T)^2 X with
    (a, b, c) = :data:`lmlib.optim.QUINTIC`, after dividing the matrix by its Frobenius norm."""

    def make_case(gen: torch.Generator) -> Case:
        m, n = randint(gen, 2, 9), randint(gen, 2, 9)
        return torch.randn(m, n, generator=gen, dtype=torch.float64), randint(gen, 1, 7)

    rank_one = f64([[1.0], [2.0], [-1.0]]) @ f64([[0.5, -1.0, 2.0, 0.0]])
    return check(
        fn, reference_newton_schulz, make_case,
        hint="X = G / ||G||_F (the Frobenius norm: every singular value is then at most 1); then `steps` times "
        "gram = X @ X.T and X = a X + (b gram + c gram @ gram) @ X with (a, b, c) = (3.4445, -4.7750, 2.0315). "
        "Return a matrix of G's shape.",
        edge_cases=((torch.eye(3, dtype=torch.float64) * 5.0, 1), (rank_one, 3), (rank_one.T.contiguous(), 5)),
        mistakes=(
            Mistake("the matrix was not divided by its Frobenius norm first: the iteration only pulls singular "
                    "values in (0, 1] towards 1, larger ones blow up",
                    lambda g, k: _newton_schulz_variant(g, k, normalise=False)),
            Mistake("these are the cubic coefficients (1.5, -0.5, 0); Muon uses the quintic (3.4445, -4.7750, "
                    "2.0315), which lifts small singular values much faster",
                    lambda g, k: _newton_schulz_variant(g, k, CUBIC)),
            Mistake("b and c are swapped: a multiplies X, b the cubic term (X X^T) X, c the quintic term "
                    "(X X^T)^2 X",
                    lambda g, k: _newton_schulz_variant(g, k, (QUINTIC[0], QUINTIC[2], QUINTIC[1]))),
        ),
        rtol=1e-6,
        atol=1e-8,
        **options,
    )


def reference_train_step(model: torch.nn.Module, optimizer: torch.optim.Optimizer, x: torch.Tensor,
                         y: torch.Tensor, max_norm: float) -> float:
    optimizer.zero_grad(set_to_none=True)
    _, loss = model(x, y)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm)
    optimizer.step()
    return loss.item()


def _step_variant(model, optimizer, x, y, max_norm, *, zero=True, clip="before"):
    if zero:
        optimizer.zero_grad(set_to_none=True)
    _, loss = model(x, y)
    loss.backward()
    if clip == "before":
        torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm)
    optimizer.step()
    if clip == "after":
        torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm)
    return loss.item()


def _with_weights(step_fn: Callable) -> Callable:
    """``step_fn``'s loss together with the model's weights after it ran: what the checker compares."""

    @functools.wraps(step_fn)
    def run(model, optimizer, x, y, max_norm):
        # deepcopy (which the checker applies to every case) drops a parameter's .grad, so the case
        # carries its stale gradients beside the model and they are put back here
        for p, stale in zip(model.parameters(), model.__dict__.pop("stale_grads", ())):
            p.grad = stale
        loss = step_fn(model, optimizer, x, y, max_norm)
        if loss is None:
            return None
        return loss, [p.detach().clone() for p in model.parameters()]

    return run


def _loss_and_weights(out):
    loss, weights = out
    if isinstance(loss, torch.Tensor) and loss.numel() == 1:
        loss = loss.item()
    if not isinstance(loss, (int, float)) or isinstance(loss, bool):
        raise TypeError(f"return the loss (a number, or a tensor holding one), got {type(loss).__name__}")
    return float(loss), weights


def check_train_step(fn: Callable[..., float], **options) -> Result:
    """``fn(model, optimizer, x, y, max_norm) -> loss``: one training step with gradient clipping.

    The model comes with gradients left over from an earlier backward pass and an optimizer that
    has already taken steps; after ``fn`` its weights must equal those of the reference step on a
    deep copy (zero the gradients, forward, backward, clip by the global norm, step).
    """
    if not callable(fn):
        return check(fn, reference_train_step, lambda gen: (), hint="")

    def make_case(gen: torch.Generator) -> Case:
        seed = randint(gen, 0, 2**31 - 1)
        vocab, T = randint(gen, 5, 20), randint(gen, 2, 9)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = GPT(GPTConfig(vocab_size=vocab, block_size=8 if T <= 8 else T, n_layer=1, n_embd=16, n_head=2))
            if randint(gen, 0, 2):
                optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.1)
            else:
                optimizer = torch.optim.SGD(model.parameters(), lr=0.3, momentum=0.9)
            for _ in range(2):  # an optimizer with a history, so that the gradient's size matters
                optimizer.zero_grad()
                model(*_random_batch(vocab, T))[1].backward()
                optimizer.step()
            optimizer.zero_grad()
            model(*_random_batch(vocab, T))[1].backward()  # stale gradients, left for fn to clear
            model.stale_grads = [p.grad.clone() for p in model.parameters()]
            x, y = _random_batch(vocab, T)
        return model, optimizer, x, y, float(0.02 + 0.2 * torch.rand(1, generator=gen))

    return check(
        _with_weights(fn), _with_weights(reference_train_step), make_case,
        hint="optimizer.zero_grad(); _, loss = model(x, y); loss.backward(); "
        "torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm); optimizer.step(); return the loss. "
        "The order matters: clipping changes the gradients that the step then uses.",
        mistakes=(
            Mistake("the gradients were not zeroed first: backward() adds to the .grad left by the previous "
                    "batch, so the step used the sum of two gradients; call optimizer.zero_grad() before "
                    "the backward pass",
                    _with_weights(lambda *a: _step_variant(*a, zero=False))),
            Mistake("the step used the unclipped gradients: clip them with "
                    "torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm) after backward() and "
                    "before optimizer.step() (clipping after the step, or not at all, leaves the update "
                    "unbounded)",
                    _with_weights(lambda *a: _step_variant(*a, clip="after"))),
            Mistake("the gradients were neither zeroed nor clipped before the step: zero_grad, forward, "
                    "backward, clip, step",
                    _with_weights(lambda *a: _step_variant(*a, zero=False, clip=None))),
            Mistake("the weights did not change: call optimizer.step() after clipping",
                    _with_weights(lambda m, o, x, y, c: m(x, y)[1].item())),
        ),
        parts=("loss", "weights"),
        prepare=_loss_and_weights,
        trials=4,
        **options,
    )


def _random_batch(vocab: int, T: int) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.randint(vocab, (3, T)), torch.randint(vocab, (3, T))


# --- notebook 03: your GPT ------------------------------------------------------------------------

def your_gpt_setup() -> dict:
    """The sizes of the your-GPT comparison at the preset in force: model, batch, steps and schedule."""
    return scaled(
        smoke=dict(n_layer=2, n_head=2, n_embd=32, block_size=32, batch=8, steps=30, lr=3e-3, warmup=5,
                   eval_steps=4),
        cpu=dict(n_layer=2, n_head=4, n_embd=64, block_size=64, batch=16, steps=150, lr=5e-3, warmup=15,
                 eval_steps=16),
        gpu=dict(n_layer=4, n_head=4, n_embd=128, block_size=128, batch=32, steps=800, lr=3e-3, warmup=50,
                 eval_steps=40),
    )


@functools.lru_cache(maxsize=1)
def _shakespeare_chars():
    text = data.read_text("tinyshakespeare")
    tok = CharTokenizer.from_text(text)
    train_ids, val_ids = data.split(tok.encode(text), 0.1)
    return tok.vocab_size, train_ids, val_ids


def _your_gpt_config(setup: dict | None = None) -> GPTConfig:
    setup = your_gpt_setup() if setup is None else setup
    vocab_size = _shakespeare_chars()[0]
    return GPTConfig(vocab_size=vocab_size, block_size=setup["block_size"], n_layer=setup["n_layer"],
                     n_head=setup["n_head"], n_embd=setup["n_embd"], dropout=0.0)


def your_gpt_val_loss(model_class: Callable, seed: int = 0, setup: dict | None = None) -> float:
    """Train ``model_class(config)`` on Tiny Shakespeare (characters) with :class:`lmlib.train.Trainer`.

    The config, batches and schedule come from ``setup`` (default :func:`your_gpt_setup`); the
    weights are initialised under ``torch.manual_seed(seed)`` and the trainer uses ``seed`` too, so
    two classes trained with one seed see the same batches. Returns the final validation loss.
    The caller's random state is left as it was.
    """
    setup = your_gpt_setup() if setup is None else setup
    _, train_ids, val_ids = _shakespeare_chars()
    config = _your_gpt_config(setup)
    train = TrainConfig(max_steps=setup["steps"], lr=setup["lr"], min_lr=setup["lr"] / 10,
                        warmup_steps=setup["warmup"], betas=(0.9, 0.99), weight_decay=0.1, grad_clip=1.0,
                        eval_every=None, eval_steps=setup["eval_steps"], progress=False, seed=seed)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = model_class(config)
        trainer = Trainer(model, train, token_batches(train_ids, setup["block_size"], setup["batch"]),
                          token_batches(val_ids, setup["block_size"], setup["batch"]))
        return trainer.fit().val_loss[-1]


def reference_your_gpt(config: GPTConfig) -> GPT:
    return GPT(config)


def _interface_problem(model, config: GPTConfig) -> tuple[str | None, int]:
    """The first problem of the model's interface on ``config``, and the number of checks passed."""
    V, T = config.vocab_size, config.block_size
    gen = torch.Generator().manual_seed(0)
    idx = torch.randint(V, (2, T), generator=gen)
    targets = torch.randint(V, (2, T), generator=gen)
    expected_params = count_params(config)
    n = num_params(model)
    if n != expected_params:
        return (f"your model has {n:,} parameters, lmlib.model.GPT {expected_params:,} for the same config: the "
                "architecture differs (learned positions, n_layer blocks each with LayerNorm, causal "
                "attention with biases and a 4x GELU MLP, a final LayerNorm, and an output layer that "
                "shares the token embedding's weight)"), 0
    try:
        out = model(idx)
    except Exception as err:
        return f"model(idx) raised {type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}", 1
    if not (isinstance(out, tuple) and len(out) == 2):
        return (f"model(idx) returned {type(out).__name__}; return a pair (logits, loss), with loss None "
                "when no targets are given, as lmlib.model.GPT does"), 1
    logits, loss = out
    if not isinstance(logits, torch.Tensor) or logits.shape != (2, T, V):
        shape = tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__
        return f"the logits for idx of shape (2, {T}) should have shape (2, {T}, {V}) (B, T, vocab_size), got {shape}", 2
    if loss is not None:
        return "without targets the loss should be None", 3
    try:
        short_logits, _ = model(idx[:, : T // 2 + 1])
    except Exception as err:
        return (f"a sequence shorter than block_size failed: model(idx[:, :{T // 2 + 1}]) raised "
                f"{type(err).__name__}: {err}"), 4
    if short_logits.shape != (2, T // 2 + 1, V):
        return f"for a shorter sequence the logits should have shape (2, {T // 2 + 1}, {V}), got {tuple(short_logits.shape)}", 4
    try:
        logits, loss = model(idx, targets)
    except Exception as err:
        return f"model(idx, targets) raised {type(err).__name__}: {err}", 5
    if not isinstance(loss, torch.Tensor) or loss.dim() != 0:
        return "model(idx, targets) should return the loss as a 0-dim tensor (the mean cross-entropy)", 5
    expected_loss = F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten())
    if not torch.isclose(loss.float(), expected_loss, rtol=1e-4, atol=1e-5):
        return (f"the loss {loss.item():.4f} is not the mean cross-entropy of your logits against the targets "
                f"({expected_loss.item():.4f}); use F.cross_entropy(logits.flatten(0, 1), targets.flatten())"), 6
    if abs(loss.item() - math.log(V)) > 0.5:
        return (f"at initialisation the loss is {loss.item():.2f}, far from ln(vocab_size) = {math.log(V):.2f} "
                "(a near-uniform guess): initialise the weights small, normal with std 0.02, as GPT does"), 7
    loss.backward()
    silent = [name for name, p in model.named_parameters() if p.grad is None]
    if silent:
        return f"{len(silent)} parameter(s) get no gradient, such as {silent[0]}: is every layer used in forward?", 8
    with torch.no_grad():
        changed = idx.clone()
        changed[:, -1] = (changed[:, -1] + 1) % V
        before, after = model(idx)[0], model(changed)[0]
    if not torch.allclose(before[:, :-1], after[:, :-1], rtol=1e-4, atol=1e-5):
        return ("changing the last token changed the logits at earlier positions: each position may attend "
                "only to itself and the past (a causal mask before the softmax)"), 9
    return None, 10


def check_your_gpt(fn: Callable[[GPTConfig], torch.nn.Module], reference_losses: list[float] | None = None, *,
                   tolerance: float | None = None, seed: int = 0, setup: dict | None = None,
                   verbose: bool = False) -> Result:
    """``fn(config)`` builds a GPT with ``lmlib.model.GPT``'s interface; trained, it must match GPT's loss.

    First the interface, on a tiny config: the parameter count, ``forward(idx, targets=None) ->
    (logits, loss)`` with the right shapes, the loss the mean cross-entropy, about ln(vocab) at
    initialisation, every parameter trained, and causal. Then ``fn``'s model is trained with
    :func:`your_gpt_val_loss` (seed ``seed``) and its final validation loss must lie within
    ``tolerance`` of the mean of ``reference_losses``, lmlib GPT's losses from the same runs (by
    default one run of ``lmlib.model.GPT`` with the same seed). ``tolerance`` defaults to three
    times the spread of the reference losses, at least 0.05. The result carries ``val_loss`` and
    ``reference_loss`` once the training ran.
    """
    def finish(result: Result) -> Result:
        if verbose:
            print(result)
        return result

    if not callable(fn):
        return finish(Result("your answer", "failed", 0, NOT_CALLABLE))
    who = getattr(fn, "__name__", None)
    who = who if who and who != "<lambda>" else "your model"
    hint = ("build it from your own pieces: token and position embeddings, n_layer pre-norm blocks "
            "(x = x + attn(ln_1(x)); x = x + mlp(ln_2(x))), a final LayerNorm and an output layer tied "
            "to the token embedding; compare with lmlib/model.py")
    tiny = GPTConfig(vocab_size=11, block_size=8, n_layer=2, n_embd=16, n_head=2, dropout=0.0)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        try:
            model = fn(tiny)
        except NotImplementedError:
            return finish(Result(who, "not done", 0))
        except Exception as err:
            return finish(Result(who, "failed", 0, f"{who}(config) raised {type(err).__name__}: {err}",
                                 [("config", _show_config(tiny)), ("hint", hint)]))
        if model is None:
            return finish(Result(who, "failed", 0, RETURNED_NONE, [("config", _show_config(tiny)), ("hint", hint)]))
        if not isinstance(model, torch.nn.Module):
            return finish(Result(who, "failed", 0, f"{who}(config) should build a torch.nn.Module, got "
                                 f"{type(model).__name__}", [("hint", hint)]))
        problem, passed = _interface_problem(model, tiny)
    if problem:
        return finish(Result(who, "failed", passed, problem, [("config", _show_config(tiny)), ("hint", hint)]))
    if reference_losses is None:
        reference_losses = [your_gpt_val_loss(GPT, seed, setup)]
    reference_losses = [float(x) for x in reference_losses]
    if tolerance is None:
        tolerance = max(3 * (max(reference_losses) - min(reference_losses)), 0.05)
    try:
        mine = your_gpt_val_loss(fn, seed, setup)
    except Exception as err:
        return finish(Result(who, "failed", passed, f"training raised {type(err).__name__}: {err}", [("hint", hint)]))
    target = statistics.fmean(reference_losses)
    gap = mine - target
    if not math.isfinite(mine) or abs(gap) > tolerance:
        why = ("it learns more slowly" if gap > 0 else
               "lower is suspicious: does some position see its own target?")
        result = Result(who, "failed", passed,
                        f"trained with the same config, seed and batches, your model's validation loss is "
                        f"{mine:.4f} and lmlib.model.GPT's {target:.4f}: a gap of {abs(gap):.4f}, more than "
                        f"the tolerance {tolerance:.4f} ({why})",
                        [("setup", _show_config(_your_gpt_config(setup))),
                         ("hint", "the interface is right, so compare the inside with lmlib/model.py: the "
                          "initialisation (std 0.02, residual projections scaled by 1/sqrt(2 n_layer)), "
                          "pre-norm residual branches, the 1/sqrt(head_dim) scale, GELU's tanh form")])
    else:
        result = Result(who, "passed", passed + 1)
    result.val_loss, result.reference_loss, result.tolerance = mine, target, tolerance
    return finish(result)


def _show_config(config: GPTConfig) -> str:
    return (f"GPTConfig(vocab_size={config.vocab_size}, block_size={config.block_size}, n_layer={config.n_layer}, "
            f"n_embd={config.n_embd}, n_head={config.n_head})")


# --- notebook 04 --------------------------------------------------------------------------------

def reference_split_qkv(weight: torch.Tensor, bias: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
    d = weight.shape[0]
    return [(w.t(), b) for w, b in zip(weight.split(d, dim=1), bias.split(d))]


def check_split_qkv(fn: Callable[[torch.Tensor, torch.Tensor], list], **options) -> Result:
    """``fn(c_attn_weight (d, 3d), c_attn_bias (3d,)) -> [(W_q, b_q), (W_k, b_k), (W_v, b_v)]`` in ``nn.Linear`` layout."""

    def make_case(gen: torch.Generator) -> Case:
        d = randint(gen, 1, 9)
        return torch.randn(d, 3 * d, generator=gen), torch.randn(3 * d, generator=gen)

    return check(
        fn, reference_split_qkv, make_case,
        hint="GPT-2's Conv1D weight is (in, out) = (d, 3d): the columns [0, d) are the query, [d, 2d) the "
        "key, [2d, 3d) the value. nn.Linear stores (out, in), so transpose each slice.",
        edge_cases=((torch.arange(12.0).view(2, 6), torch.arange(6.0)),),
        parts=("q", "k", "v"),
        **options,
    )


# --- notebook 05 --------------------------------------------------------------------------------

def reference_chinchilla_split(compute: float, tokens_per_param: float = 20.0) -> tuple[float, float]:
    params = (compute / (6 * tokens_per_param)) ** 0.5
    return params, tokens_per_param * params


def check_chinchilla_split(fn: Callable[[float, float], tuple[float, float]], **options) -> Result:
    """``fn(compute, tokens_per_param) -> (params, tokens)``.

    The split satisfies ``compute = 6 * params * tokens`` and ``tokens = tokens_per_param * params``.
    """

    def make_case(gen: torch.Generator) -> Case:
        return (float(10 ** (15 + 10 * torch.rand(1, generator=gen, dtype=torch.float64))),
                float(5 + 30 * torch.rand(1, generator=gen, dtype=torch.float64)))

    def without_six(c, r):
        n = (c / r) ** 0.5
        return n, r * n

    return check(
        fn, reference_chinchilla_split, make_case,
        hint="Substitute D = r N into C = 6 N D: C = 6 r N^2, so N = sqrt(C / (6 r)) and D = r N.",
        edge_cases=((5.76e23, 20.0), (6e20, 10.0)),
        mistakes=(
            Mistake("you left out the 6 of C = 6 N D (2 FLOPs per parameter and token forward, 4 backward)",
                    without_six),
            Mistake("you did not take the square root: C = 6 r N^2, so N = sqrt(C / (6 r))",
                    lambda c, r: (c / (6 * r), c / 6)),
        ),
        parts=("params", "tokens"),
        rtol=1e-6,
        **options,
    )


# --- notebook 06 --------------------------------------------------------------------------------

def reference_chinchilla_size(tokens_per_s: float, params: float, minutes: float) -> tuple[float, float]:
    compute = 6 * params * tokens_per_s * 60 * minutes  # FLOP/s of the measured model, times the seconds
    return reference_chinchilla_split(compute, 20.0)


def check_chinchilla_size(fn: Callable[[float, float, float], tuple[float, float]], **options) -> Result:
    """``fn(tokens_per_s, params, minutes) -> (params, tokens)``: the compute-optimal model for a time budget.

    A model of ``params`` parameters trained at ``tokens_per_s`` does ``6 * params * tokens_per_s``
    FLOPs per second; the budget is that times the seconds, split with D = 20 N.
    """

    def make_case(gen: torch.Generator) -> Case:
        def log_uniform(lo, hi):
            return float(10 ** (lo + (hi - lo) * torch.rand(1, generator=gen, dtype=torch.float64)))

        return log_uniform(2, 6), log_uniform(5, 9), log_uniform(0, 3)

    def split(compute):
        return reference_chinchilla_split(compute, 20.0)

    return check(
        fn, reference_chinchilla_size, make_case,
        hint="the machine does F = 6 * params * tokens_per_s FLOPs per second; the budget is "
        "C = F * 60 * minutes; with D = 20 N, C = 6 N D = 120 N^2, so N = sqrt(C / 120) and D = 20 N.",
        edge_cases=((5e3, 2.2e6, 45.0), (1e5, 1.2e8, 600.0), (300.0, 5e5, 1.0)),
        mistakes=(
            Mistake("you used the minutes as seconds: the budget is FLOP/s times 60 * minutes",
                    lambda r, n, m: split(6 * n * r * m)),
            Mistake("the 6 of the FLOP rate is missing: a model of N parameters does 6 N FLOPs per training "
                    "token, so the machine does 6 * params * tokens_per_s FLOPs per second",
                    lambda r, n, m: split(n * r * 60 * m)),
            Mistake("you did not take the square root: C = 120 N^2, so N = sqrt(C / 120)",
                    lambda r, n, m: (6 * n * r * 60 * m / 120, 20 * 6 * n * r * 60 * m / 120)),
        ),
        parts=("params", "tokens"),
        rtol=1e-6,
        **options,
    )


#: The course-model recipe's corpus knobs: a variant that changes one would be scored on other tokens.
CORPUS_KNOBS = ("n_files", "n_val", "vocab_size", "seed")


def reference_variant(recipe: dict) -> dict:
    return {**recipe, "lr": 2 * recipe["lr"]}


def check_variant(fn: Callable[[dict], dict], **options) -> Result:
    """``fn(recipe) -> recipe``: a new course-model recipe with exactly one training knob changed.

    The recipes are :func:`lmlib.recipes.course_gpt`'s. The same keys, one value changed, none of
    :data:`CORPUS_KNOBS`, and the recipe given left as it was.
    """
    if not callable(fn):
        return check(fn, reference_variant, lambda gen: (), hint="")
    scales = sorted(recipes.COURSE_GPT)

    def make_case(gen: torch.Generator) -> Case:
        return (recipes.course_gpt(scales[randint(gen, 0, len(scales))]),)

    @functools.wraps(fn)
    def run(recipe):
        before = copy.deepcopy(recipe)
        new = fn(recipe)
        if new is None:
            return None
        return {"recipe": new, "given_recipe_changed": recipe != before}

    def judge(got, expected, args):
        base, new = args[0], got["recipe"]
        if not isinstance(new, dict):
            return f"return a dictionary, a new recipe; got {type(new).__name__}"
        if got["given_recipe_changed"]:
            return ("the recipe you were given changed: build a new dictionary ({**recipe, 'lr': ...} or "
                    "dict(recipe)) instead of assigning into it")
        if set(new) != set(base):
            extra, missing = sorted(set(new) - set(base)), sorted(set(base) - set(new))
            return f"keep exactly the recipe's keys (added {extra}, removed {missing})"
        changed = sorted(k for k in base if new[k] != base[k])
        if not changed:
            return "nothing changed: change one training knob (lr, warmup, batch, n_layer, n_embd, steps, ...)"
        if set(changed) & set(CORPUS_KNOBS):
            return (f"you changed the corpus knob(s) {sorted(set(changed) & set(CORPUS_KNOBS))}: leave "
                    f"{CORPUS_KNOBS} alone, so that the held-out tokens, and the perplexities, stay comparable")
        if len(changed) > 1:
            return f"change exactly one knob; you changed {changed}"
        return None

    return check(
        run, lambda recipe: {"recipe": reference_variant(recipe), "given_recipe_changed": False}, make_case,
        hint="return {**recipe, 'lr': 2 * recipe['lr']} or another one-knob change of a training setting.",
        judge=judge,
        trials=3,
        **options,
    )
