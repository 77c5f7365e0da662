"""Chapter 6's checkers: the references and independent solutions pass; typical mistakes are named."""
import math
import random
import re

import torch
import torch.nn.functional as F

import lmlib.compress as C
import lmlib.exercises as ex
from checker_asserts import passes, rejects
from lmlib.audit import KEYBOARD_NEIGHBOURS


# --- notebook 01: faster and smaller ------------------------------------------------------------

def quantize(w, per_row=True, rounding=torch.round, levels=127):
    amax = w.abs().amax(1, keepdim=True) if per_row else w.abs().amax().reshape(1, 1)
    scale = (amax / levels).clamp(min=1e-12)
    return rounding(w / scale).clamp(-127, 127).to(torch.int8), scale


def test_quantize_int8():
    passes(ex.check_quantize_int8, ex.reference_quantize_int8)
    passes(ex.check_quantize_int8, quantize)
    passes(ex.check_quantize_int8, lambda w: (quantize(w)[0], quantize(w)[1].flatten()))  # the scale's shape is free
    rejects(ex.check_quantize_int8, lambda w: quantize(w, per_row=False), "one scale for the whole matrix")
    rejects(ex.check_quantize_int8, lambda w: quantize(w, rounding=torch.trunc), "truncated")
    rejects(ex.check_quantize_int8, lambda w: (quantize(w)[0].float(), quantize(w)[1]), "in q:", "integer tensor")
    rejects(ex.check_quantize_int8, lambda w: quantize(w, levels=255), "127")
    rejects(ex.check_quantize_int8, lambda w: quantize(w)[0], "tuple (q, scale)")


def test_quantize_groups():
    def mine(w, g):
        cols = w.shape[1]
        scales, qs = [], []
        for start in range(0, cols, g):
            block = w[:, start:start + g]
            s = (block.abs().amax(1, keepdim=True) / 127).clamp(min=1e-12)
            scales.append(s)
            qs.append(torch.round(block / s).clamp(-127, 127).to(torch.int8))
        return torch.cat(qs, 1), torch.cat(scales, 1)

    passes(ex.check_quantize_groups, ex.reference_quantize_groups)
    passes(ex.check_quantize_groups, mine)
    rejects(ex.check_quantize_groups, lambda w, g: (quantize(w)[0], quantize(w)[1].expand(-1, -(-w.shape[1] // g))),
            "one scale per row")
    rejects(ex.check_quantize_groups, lambda w, g: tuple(t.T for t in mine(w.T.contiguous(), g)), "down the columns")
    rejects(ex.check_quantize_groups, lambda w, g: mine(w, g)[0], "tuple (q, scale)")


def test_speculative_residual():
    def mine(p, q):
        left = torch.clamp(p - q, min=0)
        return left / left.sum() if left.sum() > 0 else p

    passes(ex.check_speculative_residual, ex.reference_speculative_residual)
    passes(ex.check_speculative_residual, mine)
    rejects(ex.check_speculative_residual, lambda p, q: torch.clamp(p - q, min=0), "not normalised")
    rejects(ex.check_speculative_residual, lambda p, q: mine(q, p), "max(0, p - q)")


def test_prune_mask():
    def mine(w, s):
        k = int(s * w.numel())
        mask = torch.ones(w.numel(), dtype=torch.bool)
        mask[w.abs().flatten().argsort()[:k]] = False
        return mask.reshape(w.shape)

    def signed(w, s):
        k = int(s * w.numel())
        mask = torch.ones(w.numel(), dtype=torch.bool)
        mask[w.flatten().argsort()[:k]] = False
        return mask.reshape(w.shape)

    passes(ex.check_prune_mask, ex.reference_prune_mask)
    passes(ex.check_prune_mask, mine)
    rejects(ex.check_prune_mask, signed, "signed weights")
    rejects(ex.check_prune_mask, lambda w, s: ~mine(w, s), "wrong way round")
    rejects(ex.check_prune_mask, lambda w, s: mine(w, s).float(), "bool tensor")
    rejects(ex.check_prune_mask, lambda w, s: torch.stack([mine(row[None], s)[0] for row in w]), "each row separately")


# --- notebook 02: cost and energy ---------------------------------------------------------------

def test_gpu_hours():
    passes(ex.check_gpu_hours, ex.reference_gpu_hours)
    passes(ex.check_gpu_hours, lambda n, d, p, m: 6 * n * d / (p * m) / 3600)
    rejects(ex.check_gpu_hours, lambda n, d, p, m: 6 * n * d / (p * m), "seconds")
    rejects(ex.check_gpu_hours, lambda n, d, p, m: 2 * n * d / (p * m) / 3600, "forward pass only")
    rejects(ex.check_gpu_hours, lambda n, d, p, m: 6 * n * d * m / p / 3600, "multiplied by the MFU")


# --- notebook 03: privacy -----------------------------------------------------------------------

def test_exposure():
    def bits(lps, rank, log=math.log2):
        return log(len(lps)) - log(rank)

    passes(ex.check_exposure, ex.reference_exposure)
    passes(ex.check_exposure, lambda lps, i: bits(lps, int((lps <= lps[i]).sum())))
    rejects(ex.check_exposure, lambda lps, i: bits(lps, int((lps < lps[i]).sum()) + 1), "ties")
    rejects(ex.check_exposure, lambda lps, i: bits(lps, int((lps <= lps[i]).sum()), math.log), "ln 2")
    rejects(ex.check_exposure, lambda lps, i: bits(lps, int((lps >= lps[i]).sum())), "wrong end")


def test_estimated_exposure():
    def no_plus_one(canary, sample):
        k = int((sample <= canary).sum())
        return -math.log2(k / len(sample)) if k else float("inf")

    passes(ex.check_estimated_exposure, ex.reference_estimated_exposure)
    passes(ex.check_estimated_exposure,
           lambda canary, sample: math.log2(len(sample) + 1) - math.log2(int((sample <= canary).sum()) + 1))
    rejects(ex.check_estimated_exposure, no_plus_one, "canary itself")
    rejects(ex.check_estimated_exposure,
            lambda canary, sample: math.log2(len(sample) + 1) - math.log2(int((sample > canary).sum()) + 1), "ABOVE")


def test_plant_canary():
    def mine(docs, text, k):
        out = list(docs)
        for _ in range(k):
            out.insert(random.randint(0, len(out)), text)
        return out

    def shuffled(docs, text, k):
        out = docs + [text] * k
        random.Random(0).shuffle(out)
        return out

    passes(ex.check_plant_canary, ex.reference_plant_canary)
    passes(ex.check_plant_canary, mine)
    rejects(ex.check_plant_canary, lambda docs, text, k: docs + [text] * (k + 1), "plant exactly k")
    rejects(ex.check_plant_canary, shuffled, "changed order")
    rejects(ex.check_plant_canary, lambda docs, text, k: docs + ([text * k] if k else []), "glued")
    rejects(ex.check_plant_canary, lambda docs, text, k: "\n\n".join(docs), "list of strings")


def test_dp_gradient():
    def mine(grads, max_norm, sigma, expected_batch, noise):
        total = torch.zeros(grads.shape[1], dtype=grads.dtype)
        for g in grads:
            total += g * min(1.0, max_norm / max(float(g.norm()), 1e-12))
        return (total + sigma * max_norm * noise) / expected_batch

    def per_coordinate(grads, max_norm, sigma, expected_batch, noise):
        return (grads.clamp(-max_norm, max_norm).sum(0) + sigma * max_norm * noise) / expected_batch

    passes(ex.check_dp_gradient, ex.reference_dp_gradient)
    passes(ex.check_dp_gradient, mine)
    rejects(ex.check_dp_gradient, per_coordinate, "each coordinate")
    rejects(ex.check_dp_gradient, lambda g, c, s, e, z: mine(g, c, s, len(g), z), "batch's own size")
    rejects(ex.check_dp_gradient, lambda g, c, s, e, z: mine(g, c, s, e, z / c), "noise_multiplier * max_norm")
    rejects(ex.check_dp_gradient, lambda g, c, s, e, z: mine(g.sum(0, keepdim=True), c, s, e, z), "clipped the sum")


# --- notebook 04: bias and robustness -----------------------------------------------------------

def test_swap_words():
    def mine(text, pairs):
        mapping = {**{a: b for a, b in pairs}, **{b: a for a, b in pairs}}

        def repl(m):
            w, new = m.group(0), mapping[m.group(0).lower()]
            return new.upper() if len(w) > 1 and w.isupper() else new.capitalize() if w[0].isupper() else new

        return re.sub(r"\b(" + "|".join(sorted(mapping, key=len, reverse=True)) + r")\b", repl, text, flags=re.I)

    def sequential(text, pairs):
        for a, b in pairs:
            text = re.sub(rf"\b{a}\b", b, text, flags=re.I)
            text = re.sub(rf"\b{b}\b", a, text, flags=re.I)
        return text

    def lowercase(text, pairs):
        mapping = {**{a: b for a, b in pairs}, **{b: a for a, b in pairs}}
        pattern = r"\b(" + "|".join(sorted(mapping, key=len, reverse=True)) + r")\b"
        return re.sub(pattern, lambda m: mapping[m.group(0).lower()], text, flags=re.I)

    def substrings(text, pairs):
        for a, b in pairs:
            text = text.replace(a, "\0").replace(b, a).replace("\0", b)
        return text

    passes(ex.check_swap_words, ex.reference_swap_words)
    passes(ex.check_swap_words, mine)
    rejects(ex.check_swap_words, substrings, "parts of words")
    rejects(ex.check_swap_words, sequential, "undid the first")
    rejects(ex.check_swap_words, lowercase, "lost their case")


def test_keyboard_typos():
    def mine(text, rate, rng):
        out = []
        for c in text:
            if c.lower() in KEYBOARD_NEIGHBOURS and rng.random() < rate:
                n = rng.choice(KEYBOARD_NEIGHBOURS[c.lower()])
                c = n.upper() if c.isupper() else n
            out.append(c)
        return "".join(out)

    def lower_case(text, rate, rng):
        return "".join(rng.choice(KEYBOARD_NEIGHBOURS[c.lower()]) if c.isalpha() and rng.random() < rate else c
                       for c in text)

    def per_word(text, rate, rng):  # one typo per chosen word: far fewer letters than the rate
        words = text.split(" ")
        for i, w in enumerate(words):
            if w[0].isalpha() and w[0].islower() and rng.random() < rate:
                words[i] = rng.choice(KEYBOARD_NEIGHBOURS[w[0]]) + w[1:]
        return " ".join(words)

    passes(ex.check_keyboard_typos, ex.reference_keyboard_typos)
    passes(ex.check_keyboard_typos, mine)
    rejects(ex.check_keyboard_typos,
            lambda text, rate, rng: "".join(rng.choice("abcdefghijklmnopqrstuvwxyz") if c.isalpha() and rng.random() < rate
                                            else c for c in text), "not one of its keyboard neighbours")
    rejects(ex.check_keyboard_typos, lower_case, "keep the case")
    rejects(ex.check_keyboard_typos,
            lambda text, rate, rng: "".join(rng.choice(KEYBOARD_NEIGHBOURS.get(c.lower(), "x")) if rng.random() < rate
                                            else c for c in text), "is not a letter a-z")
    rejects(ex.check_keyboard_typos, per_word, "you changed")
    rejects(ex.check_keyboard_typos,
            lambda text, rate, rng: "".join(c for c in text if not (c.isalpha() and rng.random() < rate)),
            "keeps the length")


# --- notebook 05: interpretability --------------------------------------------------------------

def test_logit_lens_layer():
    def mine(stream, w, b, unembed):
        mu = stream.mean(-1, keepdim=True)
        var = stream.var(-1, unbiased=False, keepdim=True)
        return ((stream - mu) / (var + 1e-5).sqrt() * w + b) @ unembed.T

    passes(ex.check_logit_lens_layer, ex.reference_logit_lens_layer)
    passes(ex.check_logit_lens_layer, mine)
    rejects(ex.check_logit_lens_layer, lambda s, w, b, u: s @ u.T, "skipped the final LayerNorm")
    rejects(ex.check_logit_lens_layer, lambda s, w, b, u: F.layer_norm(s, s.shape[-1:]) @ u.T, "gain and shift")
    rejects(ex.check_logit_lens_layer,
            lambda s, w, b, u: ((s - s.mean(-1, keepdim=True)) / s.std(-1, keepdim=True) * w + b) @ u.T,
            "unbiased variance")


def test_previous_token_score():
    def loop(weights):
        H, T, _ = weights.shape
        return torch.stack([sum(weights[h, i, i - 1] for i in range(1, T)) / (T - 1) for h in range(H)])

    passes(ex.check_previous_token_score, ex.reference_previous_token_score)
    passes(ex.check_previous_token_score, loop)
    rejects(ex.check_previous_token_score, lambda w: w.diagonal(dim1=-2, dim2=-1).mean(-1), "diagonal (each token's")
    rejects(ex.check_previous_token_score, lambda w: w.diagonal(offset=1, dim1=-2, dim2=-1).mean(-1), "offset=+1")
    rejects(ex.check_previous_token_score, lambda w: w.diagonal(offset=-1, dim1=-2, dim2=-1).sum(-1) / w.shape[-1],
            "divided by T")


def test_ridge_probe_accuracy():
    def mine(x_tr, y_tr, x_te, y_te, ridge):
        X = torch.cat([x_tr, torch.ones(len(x_tr), 1, dtype=x_tr.dtype)], 1)
        Xt = torch.cat([x_te, torch.ones(len(x_te), 1, dtype=x_te.dtype)], 1)
        Y = F.one_hot(y_tr, int(max(y_tr.max(), y_te.max())) + 1).to(X.dtype)
        W = torch.linalg.inv(X.T @ X + ridge * torch.eye(X.shape[1], dtype=X.dtype)) @ X.T @ Y
        return (Xt @ W).argmax(1).eq(y_te).double().mean().item()

    def no_bias(x_tr, y_tr, x_te, y_te, ridge):
        Y = F.one_hot(y_tr, int(max(y_tr.max(), y_te.max())) + 1).double()
        W = torch.linalg.solve(x_tr.T @ x_tr + ridge * torch.eye(x_tr.shape[1], dtype=x_tr.dtype), x_tr.T @ Y)
        return (x_te @ W).argmax(1).eq(y_te).double().mean().item()

    passes(ex.check_ridge_probe_accuracy, ex.reference_ridge_probe_accuracy)
    passes(ex.check_ridge_probe_accuracy, mine)
    rejects(ex.check_ridge_probe_accuracy,
            lambda x_tr, y_tr, x_te, y_te, r: ex.reference_ridge_probe_accuracy(x_tr, y_tr, x_tr, y_tr, r),
            "training points")
    rejects(ex.check_ridge_probe_accuracy, no_bias, "column of ones")
    rejects(ex.check_ridge_probe_accuracy,
            lambda x_tr, y_tr, x_te, y_te, r: ex.reference_ridge_probe_accuracy(x_tr, y_tr, x_te, y_te, 1e-6),
            "did not add ridge")


def test_compress_reference_is_the_library():
    q, scale = ex.reference_quantize_int8(torch.tensor([[1.0, -2.0]]))
    q2, scale2 = C.quantize_int8(torch.tensor([[1.0, -2.0]]))
    assert torch.equal(q, q2) and torch.equal(scale, scale2)
