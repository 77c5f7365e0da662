"""Exercise checkers for chapter 6, Challenges and frontiers.

Notebook 01 (faster and smaller): ``check_quantize_int8``, ``check_quantize_groups``,
``check_prune_mask``, ``check_speculative_residual``; notebook 02 (cost
and energy): ``check_gpu_hours``; notebook 03 (privacy): ``check_exposure``,
``check_estimated_exposure``, ``check_plant_canary``, ``check_dp_gradient`` (DP-SGD's noisy gradient); notebook 04 (bias and robustness):
``check_swap_words``, ``check_keyboard_typos``; notebook 05 (interpretability):
``check_logit_lens_layer``, ``check_previous_token_score``, ``check_ridge_probe_accuracy``.
"""
from __future__ import annotations

import math
import random
import re
from collections.abc import Callable

import torch
import torch.nn.functional as F

from lmlib.audit import KEYBOARD_NEIGHBOURS, swap_map, swap_words, typos
from lmlib.compress import quantize_int8
from lmlib.cost import gpu_hours, training_flops
from lmlib.dp import clip_and_sum
from lmlib.exercises.core import Case, Mistake, Result, check, f64, randint
from lmlib.interpret import previous_token_scores
from lmlib.privacy import estimated_exposure, exposure, plant, rank_of
from lmlib.speculative import residual_distribution

__all__ = [
    "check_quantize_int8", "reference_quantize_int8",
    "check_quantize_groups", "reference_quantize_groups",
    "check_prune_mask", "reference_prune_mask",
    "check_speculative_residual", "reference_speculative_residual",
    "check_gpu_hours", "reference_gpu_hours",
    "check_exposure", "reference_exposure",
    "check_estimated_exposure", "reference_estimated_exposure",
    "check_plant_canary", "reference_plant_canary",
    "check_dp_gradient", "reference_dp_gradient",
    "check_swap_words", "reference_swap_words",
    "check_keyboard_typos", "reference_keyboard_typos",
    "check_logit_lens_layer", "reference_logit_lens_layer",
    "check_previous_token_score", "reference_previous_token_score",
    "check_ridge_probe_accuracy", "reference_ridge_probe_accuracy",
]


# --- notebook 01: faster and smaller ------------------------------------------------------------

def reference_quantize_int8(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return quantize_int8(weight, per_channel=True)


def _q_and_scale(out) -> tuple[torch.Tensor, torch.Tensor]:
    """(q, scale) with the scale as one float per row, whatever shape it was returned in."""
    if not (isinstance(out, (tuple, list)) and len(out) == 2):
        raise TypeError(f"return a tuple (q, scale), got {type(out).__name__}")
    q, scale = out
    if not isinstance(q, torch.Tensor):
        raise TypeError(f"q must be a tensor of int8 values, got {type(q).__name__}")
    return q, torch.as_tensor(scale, dtype=torch.float32).reshape(-1)


def check_quantize_int8(fn: Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]], **options) -> Result:
    """``fn(weight) -> (q int8, scale)``: symmetric int8 quantization with one scale per output row."""

    def make_case(gen: torch.Generator) -> Case:
        out, inp = randint(gen, 1, 12), randint(gen, 1, 12)
        return (torch.randn(out, inp, generator=gen) * float(torch.rand(1, generator=gen) * 3 + 0.1),)

    def with_scale(w, scale, rounding=torch.round):
        return rounding(w / scale).clamp(-127, 127).to(torch.int8), scale

    return check(
        fn, reference_quantize_int8, make_case,
        hint="per row: scale = max|w| / 127 (a row's largest weight maps to +-127), q = round(w / scale) as int8.",
        edge_cases=((torch.tensor([[1.0, -2.0, 0.5], [0.1, 0.2, -0.4]]),), (torch.tensor([[0.3, -1.27, 0.6]]),)),
        mistakes=(
            Mistake("you used one scale for the whole matrix; each output row gets its own scale, "
                    "max|w| of that row / 127", lambda w: quantize_int8(w, per_channel=False)),
            Mistake("you truncated w / scale towards zero; round to the nearest integer (torch.round)",
                    lambda w: with_scale(w, w.abs().amax(1, keepdim=True) / 127, torch.trunc)),
            Mistake("the scale maps max|w| to 128 or 255; for symmetric int8 it maps to 127: scale = max|w| / 127",
                    lambda w: with_scale(w, w.abs().amax(1, keepdim=True) / 255)),
        ),
        prepare=_q_and_scale,
        parts=("q", "scale"),
        **options,
    )


def reference_quantize_groups(weight: torch.Tensor, group_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    return quantize_int8(weight, group_size=group_size)


def check_quantize_groups(fn: Callable[[torch.Tensor, int], tuple[torch.Tensor, torch.Tensor]], **options) -> Result:
    """``fn(weight, group_size) -> (q int8, scale (out, groups))``: int8 with a scale per group of a row."""

    def make_case(gen: torch.Generator) -> Case:
        out, inp = randint(gen, 1, 8), randint(gen, 1, 40)
        return torch.randn(out, inp, generator=gen) * float(torch.rand(1, generator=gen) * 3 + 0.1), randint(gen, 1, 12)

    def per_row(w, g):
        q, scale = quantize_int8(w)
        return q, scale.expand(-1, -(-w.shape[1] // g))

    def by_columns(w, g):  # groups running down the columns instead of along the rows
        q, scale = quantize_int8(w.T.contiguous(), group_size=g)
        return q.T, scale.T

    w = torch.tensor([[0.1, -0.2, 8.0, 0.3, 0.05], [1.0, -1.0, 0.5, 0.25, -0.125]])
    return check(
        fn, reference_quantize_groups, make_case,
        hint="split every row into runs of group_size weights (the last run may be shorter); scale = max|w| of "
        "the run / 127, and q = round(w / its run's scale) as int8. scale has one column per run.",
        edge_cases=((w, 2), (w, 5), (w, 1), (w, 3)),
        mistakes=(
            Mistake("you used one scale per row; each run of group_size weights of a row gets its own", per_row),
            Mistake("your groups run down the columns; they run along each row (the input dimension), "
                    "which is what one output needs together", by_columns),
        ),
        prepare=_q_and_groups,
        parts=("q", "scale"),
        **options,
    )


def _q_and_groups(out) -> tuple[torch.Tensor, torch.Tensor]:
    if not (isinstance(out, (tuple, list)) and len(out) == 2):
        raise TypeError(f"return a tuple (q, scale), got {type(out).__name__}")
    q, scale = out
    if not isinstance(q, torch.Tensor) or not isinstance(scale, torch.Tensor) or scale.dim() != 2:
        raise TypeError("return q (int8, the weight's shape) and scale as a 2-D tensor (rows, groups)")
    return q, scale.float()


def reference_prune_mask(weight: torch.Tensor, sparsity: float) -> torch.Tensor:
    """True where a weight is kept: all but the ``int(sparsity * numel)`` smallest magnitudes."""
    k = int(sparsity * weight.numel())
    mask = torch.ones(weight.numel(), dtype=torch.bool)
    mask[weight.abs().flatten().argsort()[:k]] = False
    return mask.reshape(weight.shape)


def check_prune_mask(fn: Callable[[torch.Tensor, float], torch.Tensor], **options) -> Result:
    """``fn(weight, sparsity) -> bool mask``: keep all but the fraction ``sparsity`` of smallest |w|."""

    def make_case(gen: torch.Generator) -> Case:
        out, inp = randint(gen, 2, 12), randint(gen, 2, 12)
        return torch.randn(out, inp, generator=gen), round(float(torch.rand(1, generator=gen)) * 0.95, 2)

    def by_value(w, s):
        k = int(s * w.numel())
        mask = torch.ones(w.numel(), dtype=torch.bool)
        mask[w.flatten().argsort()[:k]] = False
        return mask.reshape(w.shape)

    def per_row(w, s):
        return torch.stack([reference_prune_mask(row[None], s)[0] for row in w])

    return check(
        fn, reference_prune_mask, make_case,
        hint="rank |w| (not w), remove the int(sparsity * numel) smallest; True marks the weights that stay.",
        edge_cases=((torch.tensor([[0.5, -3.0], [0.1, 2.0]]), 0.5), (torch.tensor([[1.0, -0.2, 0.3]]), 0.0),
                    (torch.tensor([[-0.1, -4.0, 2.0, 0.2], [3.0, -0.05, 1.0, -2.5]]), 0.25)),
        mistakes=(
            Mistake("you ranked the signed weights; magnitude pruning ranks |w|, so a large negative "
                    "weight stays", by_value),
            Mistake("you pruned each row separately; remove the smallest fraction of the whole matrix", per_row),
        ),
        **options,
    )


def reference_speculative_residual(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    return residual_distribution(p, q)


def check_speculative_residual(fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], **options) -> Result:
    """``fn(p (V,), q (V,)) -> (V,)``: the distribution a rejected draft token is replaced from."""

    def make_case(gen: torch.Generator) -> Case:
        v = randint(gen, 2, 12)
        p = torch.softmax(torch.randn(v, generator=gen, dtype=torch.float64) * 2, 0)
        q = torch.softmax(torch.randn(v, generator=gen, dtype=torch.float64) * 2, 0)
        return p, q

    p = torch.tensor([0.5, 0.3, 0.2], dtype=torch.float64)
    return check(
        fn, reference_speculative_residual, make_case,
        hint="keep what the target p gives beyond the draft q: max(0, p - q) per token, divided by its sum "
        "so it sums to 1; when p == q nothing is left over, and the answer is p itself.",
        edge_cases=((p, torch.tensor([0.2, 0.3, 0.5], dtype=torch.float64)),
                    (p, torch.tensor([1.0, 0.0, 0.0], dtype=torch.float64)), (p, p.clone())),
        mistakes=(
            Mistake("the leftover mass is not normalised: divide max(0, p - q) by its sum",
                    lambda p, q: (p - q).clamp(min=0)),
            Mistake("the replacement comes from where the TARGET has more mass than the draft: max(0, p - q), "
                    "not max(0, q - p)", lambda p, q: residual_distribution(q, p)),
            Mistake("negative differences must be cut to zero before normalising (max(0, p - q))",
                    lambda p, q: (p - q).abs() / (p - q).abs().sum()),
        ),
        **options,
    )


# --- notebook 02: cost and energy ---------------------------------------------------------------

def reference_gpu_hours(n_params: float, n_tokens: float, peak_flops: float, mfu: float) -> float:
    return gpu_hours(training_flops(n_params, n_tokens), peak_flops, mfu)


def check_gpu_hours(fn: Callable[[float, float, float, float], float], **options) -> Result:
    """``fn(n_params, n_tokens, peak_flops, mfu) -> hours`` of training on one accelerator."""

    def make_case(gen: torch.Generator) -> Case:
        u = torch.rand(4, generator=gen, dtype=torch.float64).tolist()
        return 10 ** (6 + 5 * u[0]), 10 ** (9 + 4 * u[1]), 10 ** (13 + 2 * u[2]), 0.1 + 0.5 * u[3]

    return check(
        fn, reference_gpu_hours, make_case,
        hint="FLOPs = 6 N D; divide by the achieved FLOP/s (peak x MFU) for seconds, then by 3600.",
        edge_cases=((1e9, 1e10, 1e14, 0.5),),
        mistakes=(
            Mistake("you counted 2 N D FLOPs, the forward pass only; training also runs the backward "
                    "pass (about 4 N D): 6 N D in all", lambda n, d, p, m: 2 * n * d / (p * m) / 3600),
            Mistake("you multiplied by the MFU; the achieved rate is peak x MFU, so divide by both",
                    lambda n, d, p, m: 6 * n * d * m / p / 3600),
        ),
        rtol=1e-6,
        **options,
    )


# --- notebook 03: privacy -----------------------------------------------------------------------

def reference_exposure(log_perplexities: torch.Tensor, index: int) -> float:
    return exposure(rank_of(log_perplexities, index), len(log_perplexities))


def check_exposure(fn: Callable[[torch.Tensor, int], float], **options) -> Result:
    """``fn(log_perplexities (N,), index) -> float``: exposure in bits of candidate ``index`` among all N."""

    def make_case(gen: torch.Generator) -> Case:
        n = randint(gen, 2, 300)
        lps = (torch.rand(n, generator=gen, dtype=torch.float64) * 20).round(decimals=1)  # ties occur
        return lps, randint(gen, 0, n)

    def bits(lps, rank):
        return math.log2(len(lps)) - math.log2(rank)

    ties = torch.tensor([3.0, 1.0, 3.0, 2.0, 3.0, 5.0], dtype=torch.float64)
    return check(
        fn, reference_exposure, make_case,
        hint="rank = how many candidates have a log-perplexity <= the canary's (itself included, so rank >= 1, "
        "and ties count against the canary); exposure = log2(N) - log2(rank), in bits (base 2).",
        edge_cases=((ties, 0), (ties, 1), (ties, 5)),
        mistakes=(
            Mistake("ties must count against the canary: the rank counts every candidate with a "
                    "log-perplexity <= the canary's (<=, not <)",
                    lambda lps, i: bits(lps, int((lps < lps[i]).sum()) + 1)),
            Mistake("you ranked from the wrong end: the most likely candidates have the LOWEST "
                    "log-perplexity, so count those <= the canary's",
                    lambda lps, i: bits(lps, int((lps >= lps[i]).sum()))),
        ),
        **options,
    )


def reference_estimated_exposure(canary_log_perplexity: float, sample_log_perplexities: torch.Tensor) -> float:
    return estimated_exposure(canary_log_perplexity, sample_log_perplexities)


def check_estimated_exposure(fn: Callable[[float, torch.Tensor], float], **options) -> Result:
    """``fn(canary_log_perplexity, sample_log_perplexities (m,)) -> float``: the sampling estimate of exposure."""

    def make_case(gen: torch.Generator) -> Case:
        sample = torch.randn(randint(gen, 1, 500), generator=gen, dtype=torch.float64) * 3 + 20
        return float(torch.randn(1, generator=gen, dtype=torch.float64) * 4 + 14), sample

    return check(
        fn, reference_estimated_exposure, make_case,
        hint="count the k sampled candidates with log-perplexity <= the canary's; the canary itself makes "
        "the fraction (k + 1) / (m + 1), so the estimate is log2(m + 1) - log2(k + 1) and never infinite.",
        edge_cases=((1.0, f64([2.0, 3.0, 4.0])), (3.0, f64([2.0, 3.0, 4.0])), (9.0, f64([2.0]))),
        mistakes=(
            Mistake("you left out the canary itself: the fraction is (k + 1) / (m + 1), which also keeps "
                    "the estimate finite when no sample is as likely as the canary",
                    lambda c, s: -math.log2(int((s <= c).sum()) / len(s)) if int((s <= c).sum()) else math.inf),
            Mistake("you counted the samples ABOVE the canary's log-perplexity; count those at or below it "
                    "(the candidates at least as likely)",
                    lambda c, s: math.log2(len(s) + 1) - math.log2(int((s > c).sum()) + 1)),
        ),
        **options,
    )


def reference_plant_canary(docs: list[str], text: str, k: int) -> list[str]:
    return plant(docs, [text], [k], seed=0)


def _planting_problem(got, expected, args) -> str | None:
    """What any correct planting shares (the places are random): the documents, in order, and k copies."""
    docs, text, k = args
    if not isinstance(got, list) or not all(isinstance(d, str) for d in got):
        return f"return a list of strings (documents), got {type(got).__name__}"
    copies = got.count(text)
    if copies != k:
        joined = any(text in d and d != text for d in got)
        return (f"the canary appears as a document {copies} time(s); plant exactly k = {k} copies, each a "
                "separate document" + (" (you glued copies together into one document)" if joined else ""))
    rest = [d for d in got if d != text]
    if sorted(rest) != sorted(docs):
        return "some original documents are missing or changed: keep every document and only insert the copies"
    if rest != list(docs):
        return "the original documents changed order: insert the copies between them, do not shuffle"
    return None


def check_plant_canary(fn: Callable[[list[str], str, int], list[str]], **options) -> Result:
    """``fn(docs, text, k) -> list of documents``: ``docs`` in order with ``k`` copies of ``text`` inserted."""

    def make_case(gen: torch.Generator) -> Case:
        docs = [f"document {int(i)}" for i in torch.randint(1000, (randint(gen, 1, 40),), generator=gen)]
        return docs, "my number is 0451", randint(gen, 0, 30)

    return check(
        fn, reference_plant_canary, make_case,
        hint="return a new list with every original document, in its original order, plus exactly k "
        "copies of the canary text as separate documents (k = 0 plants nothing).",
        edge_cases=((["a", "b", "c"], "SECRET", 0), (["a"], "SECRET", 5), (["d1", "d2", "d3", "d4"], "SECRET", 3)),
        judge=_planting_problem,
        **options,
    )


# --- notebook 04: bias and robustness -----------------------------------------------------------

_PAIRS = [("he", "she"), ("his", "hers"), ("man", "woman"), ("son", "daughter"), ("john", "mary"),
          ("king", "queen"), ("boy", "girl")]
# words that contain a listed word without being it: a whole-word swap must leave them alone
_DECOYS = ["the", "shell", "hero", "sherry", "manner", "woman's", "kingdom", "boyish", "johnson", "sons",
           "person", "amazing", "she'd", "boys", "hiss"]
_FILLERS = ["a", "told", "went", "home", "and", "very", "kind", "to", "with", "today"]


def reference_dp_gradient(grads: torch.Tensor, max_norm: float, noise_multiplier: float, expected_batch: float,
                          noise: torch.Tensor) -> torch.Tensor:
    """DP-SGD's gradient from per-example gradients ``grads`` (B, D) and a standard normal draw
    ``noise`` (D,): ``(sum of the clipped rows + noise_multiplier * max_norm * noise) / expected_batch``."""
    total = clip_and_sum({"g": grads}, max_norm)[0]["g"]
    return (total + noise_multiplier * max_norm * noise) / expected_batch


def check_dp_gradient(fn: Callable[[torch.Tensor, float, float, float, torch.Tensor], torch.Tensor],
                      **options) -> Result:
    """``fn(grads (B, D), max_norm, noise_multiplier, expected_batch, noise (D,)) -> (D,)``: DP-SGD's step."""

    def make_case(gen: torch.Generator) -> Case:
        b, d = randint(gen, 1, 9), randint(gen, 1, 7)
        grads = torch.randn(b, d, generator=gen, dtype=torch.float64) * float(randint(gen, 1, 4))
        return (grads, float(randint(gen, 1, 5)) / 2, float(randint(gen, 0, 5)) / 2, float(randint(gen, 1, 12)),
                torch.randn(d, generator=gen, dtype=torch.float64))

    def rows_clipped(grads, max_norm):
        return grads * (max_norm / grads.norm(dim=1, keepdim=True).clamp(min=1e-12)).clamp(max=1.0)

    return check(
        fn, reference_dp_gradient, make_case,
        hint="scale each row g_i by min(1, max_norm / ||g_i||) (the norm of the whole row), sum the rows, add "
        "noise_multiplier * max_norm * noise, and divide by expected_batch.",
        edge_cases=((f64([[3.0, 4.0], [0.3, 0.4]]), 1.0, 0.0, 2.0, f64([0.0, 0.0])),
                    (f64([[3.0, 4.0], [0.3, 0.4]]), 1.0, 1.0, 4.0, f64([1.0, -2.0])),
                    (f64([[6.0, 8.0]]), 2.0, 0.5, 3.0, f64([0.5, 0.5]))),
        mistakes=(
            Mistake("you clipped each coordinate (clamp to [-C, C]); DP-SGD scales each example's whole gradient "
                    "so that its norm is at most C",
                    lambda g, c, s, e, z: (g.clamp(-c, c).sum(0) + s * c * z) / e),
            Mistake("you clipped the sum (or the mean) of the gradients; clip every example's gradient first, "
                    "so that no single example moves the model by more than C",
                    lambda g, c, s, e, z: (rows_clipped(g.sum(0, keepdim=True), c)[0] + s * c * z) / e),
            Mistake("you divided by the batch's own size; divide by the expected batch size, which does not "
                    "depend on who is in the batch",
                    lambda g, c, s, e, z: (rows_clipped(g, c).sum(0) + s * c * z) / len(g)),
            Mistake("the noise's standard deviation is noise_multiplier * max_norm, not noise_multiplier alone",
                    lambda g, c, s, e, z: (rows_clipped(g, c).sum(0) + s * z) / e),
        ),
        trials=10,
        **options,
    )


def reference_swap_words(text: str, pairs: list[tuple[str, str]]) -> str:
    return swap_words(text, pairs)


def check_swap_words(fn: Callable[[str, list[tuple[str, str]]], str], **options) -> Result:
    """``fn(text, pairs) -> str``: swap each word of each (a, b) pair with its partner, whole words, case kept."""

    def make_case(gen: torch.Generator) -> Case:
        def pick(seq):
            return seq[randint(gen, 0, len(seq))]

        pairs = [_PAIRS[i] for i in torch.randperm(len(_PAIRS), generator=gen)[:randint(gen, 1, len(_PAIRS) + 1)].tolist()]
        words = []
        for _ in range(randint(gen, 3, 15)):
            w = pick(pick([[w for p in _PAIRS for w in p], _DECOYS, _FILLERS]))
            w = pick([w, w, w.capitalize(), w.upper()])
            words.append(w + pick(["", "", "", ",", ".", "!", ";"]))
        return " ".join(words), pairs

    def substrings(text, pairs):
        for a, b in pairs:
            text = text.replace(a, "\0").replace(b, a).replace("\0", b)
        return text

    def two_passes(text, pairs):
        for a, b in pairs:
            text = re.sub(rf"\b{a}\b", b, text, flags=re.I)
            text = re.sub(rf"\b{b}\b", a, text, flags=re.I)
        return text

    def lowercase(text, pairs):
        mapping = swap_map(pairs)
        pattern = r"\b(" + "|".join(sorted(mapping, key=len, reverse=True)) + r")\b"
        return re.sub(pattern, lambda m: mapping[m.group(0).lower()], text, flags=re.I)

    return check(
        fn, reference_swap_words, make_case,
        hint="match whole words only (a regex with \\b ... \\b and re.IGNORECASE), replace every match in "
        "ONE pass (replacing 'he' by 'she' and then 'she' by 'he' undoes the first swap), and give the "
        "new word the case of the old one: 'He' -> 'She', 'HE' -> 'SHE'.",
        edge_cases=(("He said she saw the shell.", [("he", "she")]), ("JOHN met Mary and Johnson.", [("john", "mary")]),
                    ("the man sat", [("man", "woman")])),
        mistakes=(
            Mistake("you replaced parts of words too ('the' became 'tshe'); match whole words only, with \\b "
                    "on both sides", substrings),
            Mistake("your second replacement undid the first ('he' -> 'she' -> 'he'); replace all the words "
                    "in one pass, looking each match up in a dictionary", two_passes),
            Mistake("the swapped words lost their case; give the new word the case of the old one "
                    "('He' -> 'She', 'HE' -> 'SHE')", lowercase),
        ),
        **options,
    )


def reference_keyboard_typos(text: str, rate: float, rng: random.Random) -> str:
    return typos(text, rate, rng, kinds=("keyboard",))


def _typo_problem(noisy, expected, args) -> str | None:
    """None, or what is wrong with ``noisy`` as keyboard typos of the text at the rate."""
    text, rate, _ = args
    if not isinstance(noisy, str):
        return f"expected a string, got {type(noisy).__name__}"
    if len(noisy) != len(text):
        return f"a substitution keeps the length: the text had {len(text)} characters, yours has {len(noisy)}"
    letters = changed = 0
    for i, (a, b) in enumerate(zip(text, noisy)):
        is_letter = a.lower() in KEYBOARD_NEIGHBOURS
        letters += is_letter
        if a == b:
            continue
        if not is_letter:
            return f"character {i} {a!r} is not a letter a-z but became {b!r}: leave it alone"
        if b.lower() not in KEYBOARD_NEIGHBOURS[a.lower()]:
            near = KEYBOARD_NEIGHBOURS[a.lower()]
            return f"letter {i} {a!r} became {b!r}, which is not one of its keyboard neighbours {near!r}"
        if a.isupper() != b.isupper():
            return f"letter {i} {a!r} became {b!r}: keep the case of the letter you replace"
        changed += 1
    share = changed / letters
    if abs(share - rate) > 0.05:
        return f"at rate {rate} you changed {share:.3f} of the letters (expected about {rate})"
    return None


def check_keyboard_typos(fn: Callable[[str, float, random.Random], str], **options) -> Result:
    """``fn(text, rate, rng) -> str``: replace each letter, with probability ``rate``, by a keyboard neighbour.

    The output is random, so the checker tests properties on a long text instead of exact
    equality: same length, only letters changed, each into a neighbour of the same case, and the
    share of changed letters within 0.05 of ``rate``.
    """
    words = ["The", "quick", "brown", "fox", "JUMPS", "over", "lazy", "dogs", "42", "times,", "twice!"]

    def case(seed: int, rate: float) -> Case:
        rng = random.Random(seed)
        return " ".join(rng.choice(words) for _ in range(600)), rate, random.Random(seed + 1)

    return check(
        fn, reference_keyboard_typos,
        lambda gen: case(randint(gen, 0, 2**31), round(float(torch.rand(1, generator=gen)), 2)),
        hint="walk over the characters; for a letter a-z (either case) draw rng.random() < rate, and if "
        "so replace it by rng.choice(KEYBOARD_NEIGHBOURS[letter.lower()]) in the letter's case; copy "
        "every other character unchanged.",
        edge_cases=(case(0, 0.0), case(1, 1.0), case(2, 0.3)),
        judge=_typo_problem,
        **options,
    )


# --- notebook 05: interpretability --------------------------------------------------------------

def reference_logit_lens_layer(stream: torch.Tensor, norm_weight: torch.Tensor, norm_bias: torch.Tensor,
                               unembed: torch.Tensor) -> torch.Tensor:
    normed = F.layer_norm(stream, stream.shape[-1:], norm_weight, norm_bias, eps=1e-5)
    return normed @ unembed.T


def check_logit_lens_layer(fn: Callable[..., torch.Tensor], **options) -> Result:
    """``fn(stream (B, T, C), norm_weight (C,), norm_bias (C,), unembed (V, C)) -> logits (B, T, V)``.

    The logit lens for one layer: the final LayerNorm (eps 1e-5), then the unembedding matrix.
    """

    def make_case(gen: torch.Generator) -> Case:
        B, T, C, V = randint(gen, 1, 4), randint(gen, 1, 9), randint(gen, 2, 17), randint(gen, 2, 30)
        stream = torch.randn(B, T, C, generator=gen, dtype=torch.float64) * 4 + 2
        weight = torch.rand(C, generator=gen, dtype=torch.float64) + 0.5
        bias = torch.randn(C, generator=gen, dtype=torch.float64) * 0.3
        return stream, weight, bias, torch.randn(V, C, generator=gen, dtype=torch.float64)

    return check(
        fn, reference_logit_lens_layer, make_case,
        hint="normalise each position's vector over the feature axis (subtract its mean, divide by "
        "sqrt(variance + 1e-5), biased variance), scale by norm_weight, add norm_bias, then multiply "
        "by unembed transposed: (B, T, C) @ (C, V). Skipping the norm reads the wrong scale.",
        edge_cases=((f64([[[1.0, 3.0, 8.0], [2.0, 2.5, -1.0]]]), f64([1.0, 2.0, 0.5]), f64([0.1, 0.0, -0.2]),
                     f64([[1.0, 0.0, 1.0], [0.5, -1.0, 2.0]])),),
        mistakes=(
            Mistake("you skipped the final LayerNorm: the unembedding expects normalised vectors, so "
                    "apply the norm (with its gain and shift) first", lambda s, w, b, u: s @ u.T),
            Mistake("you normalised without the gain and shift: multiply by norm_weight and add norm_bias",
                    lambda s, w, b, u: F.layer_norm(s, s.shape[-1:], eps=1e-5) @ u.T),
            Mistake("you used the unbiased variance (or left out eps): LayerNorm divides by "
                    "sqrt(mean((x - mean)^2) + 1e-5)",
                    lambda s, w, b, u: ((s - s.mean(-1, keepdim=True)) / s.std(-1, keepdim=True) * w + b) @ u.T),
        ),
        **options,
    )


def reference_previous_token_score(weights: torch.Tensor) -> torch.Tensor:
    return previous_token_scores(weights[None, None])[0]


def check_previous_token_score(fn: Callable[[torch.Tensor], torch.Tensor], **options) -> Result:
    """``fn(weights (H, T, T)) -> (H,)``: each head's mean weight from query i on key i - 1, i >= 1."""

    def make_case(gen: torch.Generator) -> Case:
        H, T = randint(gen, 1, 6), randint(gen, 2, 12)
        scores = torch.randn(H, T, T, generator=gen, dtype=torch.float64) * 2
        scores = scores.masked_fill(~torch.ones(T, T, dtype=torch.bool).tril(), float("-inf"))
        return (scores.softmax(-1),)

    fixed = torch.tensor([[[1.0, 0.0, 0.0], [0.75, 0.25, 0.0], [0.25, 0.5, 0.25]],
                          [[1.0, 0.0, 0.0], [0.5, 0.5, 0.0], [0.0, 0.0, 1.0]]], dtype=torch.float64)
    return check(
        fn, reference_previous_token_score, make_case,
        hint="the weight query i puts on key i - 1 lies just below the diagonal (offset -1); average "
        "it over the T - 1 queries that have a previous token (i = 1 ... T-1), separately per head.",
        edge_cases=((fixed,), (torch.tensor([[[1.0, 0.0], [1.0, 0.0]]], dtype=torch.float64),)),
        mistakes=(
            Mistake("you read the diagonal (each token's weight on itself); the previous token is one "
                    "below it: diagonal(offset=-1)", lambda w: w.diagonal(dim1=-2, dim2=-1).mean(-1)),
            Mistake("you read above the diagonal (offset=+1), where a causal head's weights are all zero; "
                    "the previous token is below it: offset=-1", lambda w: w.diagonal(offset=1, dim1=-2, dim2=-1).mean(-1)),
            Mistake("you divided by T; only the T - 1 queries from position 1 on have a previous token",
                    lambda w: w.diagonal(offset=-1, dim1=-2, dim2=-1).sum(-1) / w.shape[-1]),
        ),
        **options,
    )


def _design(x: torch.Tensor) -> torch.Tensor:
    return torch.cat([x.double(), torch.ones(len(x), 1, dtype=torch.float64)], dim=1)


def _ridge_accuracy(X: torch.Tensor, y: torch.Tensor, X_test: torch.Tensor, y_test: torch.Tensor,
                    ridge: float, classes: int) -> float:
    Y = F.one_hot(y.long(), classes).double()
    W = torch.linalg.solve(X.T @ X + ridge * torch.eye(X.shape[1], dtype=torch.float64), X.T @ Y)
    return float((X_test @ W).argmax(-1).eq(y_test).double().mean())


def reference_ridge_probe_accuracy(x_train: torch.Tensor, y_train: torch.Tensor, x_test: torch.Tensor,
                                   y_test: torch.Tensor, ridge: float) -> float:
    K = int(max(y_train.max(), y_test.max())) + 1
    return _ridge_accuracy(_design(x_train), y_train, _design(x_test), y_test, ridge, K)


def check_ridge_probe_accuracy(fn: Callable[..., float], **options) -> Result:
    """``fn(x_train, y_train, x_test, y_test, ridge) -> float``: held-out accuracy of a ridge probe.

    Append a column of ones to the features, regress the one-hot labels (K = largest label + 1
    columns) with ``W = (X^T X + ridge * I)^-1 X^T Y``, predict the argmax of ``X_test W``.
    """

    def clusters(gen: torch.Generator, K: int, D: int, n_train: int, ridge: float) -> Case:
        centers = torch.randn(K, D, generator=gen, dtype=torch.float64)
        y = torch.randint(K, (n_train + 200,), generator=gen)
        x = centers[y] + torch.randn(n_train + 200, D, generator=gen, dtype=torch.float64) * 1.5 + 3.0
        return x[:n_train], y[:n_train], x[n_train:], y[n_train:], ridge

    def make_case(gen: torch.Generator) -> Case:
        return clusters(gen, randint(gen, 2, 5), randint(gen, 8, 40), randint(gen, 10, 60),
                        float(torch.rand(1, generator=gen)) * 50 + 0.5)

    # one feature, classes split near 5: without the column of ones every point gets the same class
    line = (f64([[1.0], [2.0], [3.0], [7.0], [8.0], [9.0], [4.5]]), torch.tensor([0, 0, 0, 1, 1, 1, 0]),
            f64([[4.0], [6.0], [10.0], [5.5], [4.8], [2.0]]), torch.tensor([0, 1, 1, 0, 1, 0]), 0.5)
    # fewer points than features: the ridge decides the fit
    wide = clusters(torch.Generator().manual_seed(0), 3, 30, 12, 50.0)

    def classes(y_tr, y_te):
        return int(max(y_tr.max(), y_te.max())) + 1

    return check(
        fn, reference_ridge_probe_accuracy, make_case,
        hint="report accuracy on the TEST points (training accuracy of a probe with as many weights "
        "as points is close to 1 and says nothing); add the ones column before solving, put ridge "
        "on the diagonal of X^T X (all D + 1 entries), and take the argmax over classes.",
        edge_cases=(line, wide),
        mistakes=(
            Mistake("you reported the accuracy on the training points; a probe is judged on held-out "
                    "(test) points", lambda xtr, ytr, xte, yte, r: reference_ridge_probe_accuracy(xtr, ytr, xtr, ytr, r)),
            Mistake("you left out the column of ones (the bias): append it to the features before solving",
                    lambda xtr, ytr, xte, yte, r: _ridge_accuracy(xtr.double(), ytr, xte.double(), yte, r,
                                                                  classes(ytr, yte))),
            Mistake("you did not add ridge to the diagonal of X^T X: W = (X^T X + ridge * I)^-1 X^T Y",
                    lambda xtr, ytr, xte, yte, r: reference_ridge_probe_accuracy(xtr, ytr, xte, yte, 1e-6)),
        ),
        atol=1e-9,
        rtol=0.0,
        **options,
    )
