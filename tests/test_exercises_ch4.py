"""Chapter 4's checkers: the references and independent solutions pass; typical mistakes are named."""
import math
from collections import Counter

import torch
import torch.nn.functional as F

import lmlib.exercises as ex
from checker_asserts import passes, rejects
from lmlib.model import GPT
from lmlib.train import lr_at


# --- notebook 01 --------------------------------------------------------------------------------

def merge(ids, pair, new_id, step_after_merge=2):
    out, i = [], 0
    while i < len(ids):
        if i + 1 < len(ids) and (ids[i], ids[i + 1]) == tuple(pair):
            out.append(new_id)
            i += step_after_merge
        else:
            out.append(ids[i])
            i += 1
    return out


def test_bpe_merge():
    passes(ex.check_bpe_merge, ex.reference_bpe_merge)
    passes(ex.check_bpe_merge, merge)
    rejects(ex.check_bpe_merge, lambda ids, pair, new_id: list(ids), "unchanged")
    rejects(ex.check_bpe_merge, lambda ids, pair, new_id: merge(ids, pair, new_id, step_after_merge=1), "overlapping")
    rejects(ex.check_bpe_merge, lambda ids, pair, new_id: merge(ids[::-1], pair[::-1], new_id)[::-1], "from the right")


def train_bpe(text, num_merges, pick=None, first_id=256):
    pick = pick or (lambda counts: min(counts, key=lambda p: (-counts[p], p)))
    ids, merges = list(text.encode("utf-8")), []
    for k in range(num_merges):
        counts = Counter(zip(ids, ids[1:]))
        if not counts:
            break
        merges.append(pick(counts))
        ids = merge(ids, merges[-1], first_id + k)
    return merges


def test_train_bpe():
    assert ex.reference_train_bpe("aaabdaaabac", 2) == [(97, 97), (97, 98)]  # a tie, to the smaller pair
    passes(ex.check_train_bpe, ex.reference_train_bpe)
    passes(ex.check_train_bpe, train_bpe)
    rejects(ex.check_train_bpe, lambda t, n: train_bpe(t, n, pick=lambda c: c.most_common(1)[0][0]), "seen first")
    rejects(ex.check_train_bpe, lambda t, n: train_bpe(t, n, first_id=257), "start at 257")
    rejects(ex.check_train_bpe, lambda t, n: train_bpe(t, n, pick=lambda c: max(c, key=lambda p: (c[p], p))),
            "largest pair")


# --- notebook 02 --------------------------------------------------------------------------------

def test_minhash_signature():
    p = 2**31 - 1

    def table(h, a, b):
        return a[:, None] * h[None, :] + b[:, None]

    passes(ex.check_minhash_signature, ex.reference_minhash_signature)
    passes(ex.check_minhash_signature, lambda h, a, b: torch.stack([((ai * h + bi) % p).min() for ai, bi in zip(a, b)]))
    rejects(ex.check_minhash_signature, lambda h, a, b: (table(h, a, b) % p).max(dim=1).values, "maximum")
    rejects(ex.check_minhash_signature, lambda h, a, b: table(h, a, b).min(dim=1).values, "modulo")
    rejects(ex.check_minhash_signature, lambda h, a, b: (table(h, a, b) % p).min(dim=0).values, "expected shape (2,)")


def test_repeated_lines():
    def mine(docs, k):
        seen = {}
        for doc in docs:
            for line in set(doc.split("\n")):
                seen[line] = seen.get(line, 0) + 1
        return {line for line, n in seen.items() if n >= k}

    def occurrences(docs, k):
        n = Counter(line for doc in docs for line in doc.split("\n"))
        return {line for line, c in n.items() if c >= k}

    passes(ex.check_repeated_lines, ex.reference_repeated_lines)
    passes(ex.check_repeated_lines, mine)
    rejects(ex.check_repeated_lines, occurrences, "counted more than once")
    rejects(ex.check_repeated_lines, lambda docs, k: mine(docs, k + 1), "at least min_docs")
    rejects(ex.check_repeated_lines, lambda docs, k: sorted(mine(docs, k)), "return a set")


# --- notebook 03 --------------------------------------------------------------------------------

def test_lr_schedule():
    def mine(step, lr, min_lr, warmup, max_steps):
        if step < warmup:
            return lr * (step + 1) / warmup
        p = min(1.0, (step - warmup) / max(1, max_steps - 1 - warmup))
        return min_lr + 0.5 * (lr - min_lr) * (1 + math.cos(math.pi * p))

    def no_cap(step, lr, min_lr, warmup, max_steps):
        if step < warmup:
            return lr * (step + 1) / warmup
        p = (step - warmup) / max(1, max_steps - 1 - warmup)
        return min_lr + 0.5 * (lr - min_lr) * (1 + math.cos(math.pi * p))

    assert ex.reference_lr_schedule(0, 1e-3, 1e-4, 100, 2000) == 1e-5
    passes(ex.check_lr_schedule, ex.reference_lr_schedule)
    passes(ex.check_lr_schedule, mine)
    rejects(ex.check_lr_schedule, lambda s, lr, lo, w, m: lr * s / w if s < w else lr_at(s, lr, lo, w, m), "starts at 0")
    rejects(ex.check_lr_schedule, lambda s, lr, lo, w, m: lr_at(s, lr, 0.0, w, m), "down to 0")
    rejects(ex.check_lr_schedule, no_cap, "rises again")


def test_clip_by_global_norm():
    def mine(grads, max_norm):
        total = math.sqrt(sum(float((g ** 2).sum()) for g in grads))
        return [g * min(1.0, max_norm / (total + 1e-6)) for g in grads]

    def always_rescale(grads, max_norm):
        total = torch.sqrt(sum((g ** 2).sum() for g in grads))
        return [g * max_norm / (total + 1e-6) for g in grads]

    passes(ex.check_clip_by_global_norm, ex.reference_clip_by_global_norm)
    passes(ex.check_clip_by_global_norm, mine)
    rejects(ex.check_clip_by_global_norm, lambda gs, c: [g * min(1.0, c / (g.norm().item() + 1e-6)) for g in gs],
            "each tensor by its own norm")
    rejects(ex.check_clip_by_global_norm, always_rescale, "small gradients up")


def adamw(param, grad, m, v, step, lr, betas, eps, weight_decay, l2=False, correct=True, eps_inside=False):
    b1, b2 = betas
    if l2:
        grad = grad + weight_decay * param
    else:
        param = param - lr * weight_decay * param
    m = b1 * m + (1 - b1) * grad
    v = b2 * v + (1 - b2) * grad * grad
    m_hat = m / (1 - b1**step) if correct else m
    v_hat = v / (1 - b2**step) if correct else v
    den = torch.sqrt(v_hat + eps) if eps_inside else torch.sqrt(v_hat) + eps
    return param - lr * m_hat / den, m, v


def test_newton_schulz():
    def mine(g, steps, a=3.4445, b=-4.7750, c=2.0315, normalise=True):
        x = g.T if g.shape[0] > g.shape[1] else g
        if normalise:
            x = x / torch.linalg.matrix_norm(x)
        for _ in range(steps):
            gram = x @ x.T
            x = a * x + b * gram @ x + c * gram @ gram @ x
        return x.T if g.shape[0] > g.shape[1] else x

    passes(ex.check_newton_schulz, ex.reference_newton_schulz)
    passes(ex.check_newton_schulz, mine)
    rejects(ex.check_newton_schulz, lambda g, k: mine(g, k, normalise=False), "Frobenius norm")
    rejects(ex.check_newton_schulz, lambda g, k: mine(g, k, 1.5, -0.5, 0.0), "cubic")
    rejects(ex.check_newton_schulz, lambda g, k: mine(g, k, 3.4445, 2.0315, -4.7750), "swapped")


def test_adamw_step():
    passes(ex.check_adamw_step, ex.reference_adamw_step)
    passes(ex.check_adamw_step, adamw)
    rejects(ex.check_adamw_step, lambda *a: adamw(*a, l2=True), "L2")
    rejects(ex.check_adamw_step, lambda *a: adamw(*a, correct=False), "bias correction")
    rejects(ex.check_adamw_step, lambda *a: adamw(*a, eps_inside=True), "inside the square root")


def train_step(model, optimizer, x, y, max_norm, zero=True, clip=True, clip_after=False):
    if zero:
        for p in model.parameters():
            p.grad = None
    loss = F.cross_entropy(model(x)[0].flatten(0, 1), y.flatten())
    loss.backward()
    if clip:
        total = torch.sqrt(sum((p.grad ** 2).sum() for p in model.parameters()))
        for p in model.parameters():
            p.grad.mul_(min(1.0, max_norm / (total.item() + 1e-6)))
    optimizer.step()
    if clip_after:
        torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm)
    return loss


def test_train_step():
    passes(ex.check_train_step, ex.reference_train_step)
    passes(ex.check_train_step, train_step)
    rejects(ex.check_train_step, lambda *a: train_step(*a, zero=False), "not zeroed")
    rejects(ex.check_train_step, lambda *a: train_step(*a, clip=False, clip_after=True), "unclipped")
    rejects(ex.check_train_step, lambda *a: train_step(*a, clip=False), "unclipped")


TINY = dict(n_layer=1, n_head=2, n_embd=16, block_size=16, batch=4, steps=8, lr=3e-3, warmup=2, eval_steps=2)


class NoMask(GPT):
    def __init__(self, config):
        super().__init__(config)
        for block in self.blocks:
            block.attn.causal = False


class LogitsOnly(GPT):
    def forward(self, idx, targets=None):
        return super().forward(idx, targets)[0]


class DefaultInit(GPT):
    def __init__(self, config):
        super().__init__(config)
        self.wte.weight.data.normal_(0, 1)


def test_your_gpt(mirror, monkeypatch):
    monkeypatch.setenv("LMLIB_SCALE", "smoke")  # the default sizes, at their smallest
    result = ex.check_your_gpt(ex.reference_your_gpt, setup=TINY)
    assert result and result.checks == 11, str(result)
    assert abs(result.val_loss - result.reference_loss) < 1e-4  # the same model, seed and batches
    passes(ex.check_your_gpt, lambda config: GPT(config))
    rejects(ex.check_your_gpt, NoMask, "changing the last token")
    rejects(ex.check_your_gpt, LogitsOnly, "(logits, loss)")
    rejects(ex.check_your_gpt, DefaultInit, "initialis")
    far = ex.check_your_gpt(GPT, [result.reference_loss + 1.0], tolerance=0.05, setup=TINY)
    assert not far and "more than the tolerance" in far.diagnosis, str(far)


# --- notebook 04 --------------------------------------------------------------------------------

def test_split_qkv():
    def columns(w, b):
        d = w.shape[0]
        return [(w[:, i * d:(i + 1) * d], b[i * d:(i + 1) * d]) for i in range(3)]

    passes(ex.check_split_qkv, ex.reference_split_qkv)
    passes(ex.check_split_qkv, lambda w, b: [(wi.t(), bi) for wi, bi in columns(w, b)])
    rejects(ex.check_split_qkv, columns, "in q[0]:", "transpose")
    rejects(ex.check_split_qkv, lambda w, b: [ex.reference_split_qkv(w, b)[i] for i in (1, 0, 2)],
            "wrong order", "(q, k, v)")
    rejects(ex.check_split_qkv, lambda w, b: [(wi.t(), b) for wi, _ in columns(w, b)], "expected shape")


# --- notebook 05 --------------------------------------------------------------------------------

def test_chinchilla_split():
    n, d = ex.reference_chinchilla_split(5.76e23, 20.0)  # Chinchilla's budget: ~70B parameters, ~1.4T tokens
    assert 6.5e10 < n < 7.2e10 and math.isclose(d, 20 * n) and math.isclose(6 * n * d, 5.76e23)

    def mine(c, r):
        n = math.sqrt(c / (6 * r))
        return n, r * n

    passes(ex.check_chinchilla_split, ex.reference_chinchilla_split)
    passes(ex.check_chinchilla_split, mine)
    rejects(ex.check_chinchilla_split, lambda c, r: (math.sqrt(c / r), r * math.sqrt(c / r)), "the 6 of C = 6 N D")
    rejects(ex.check_chinchilla_split, lambda c, r: mine(c, r)[::-1], "wrong order", "(params, tokens)")
    rejects(ex.check_chinchilla_split, lambda c, r: (c / (6 * r), c / 6), "square root")


# --- notebook 06 --------------------------------------------------------------------------------

def test_chinchilla_size():
    def mine(r, n0, minutes):
        n = math.sqrt(6 * n0 * r * 60 * minutes / 120)
        return n, 20 * n

    passes(ex.check_chinchilla_size, ex.reference_chinchilla_size)
    passes(ex.check_chinchilla_size, mine)
    rejects(ex.check_chinchilla_size, lambda r, n0, m: mine(r, n0, m / 60), "minutes as seconds")
    rejects(ex.check_chinchilla_size, lambda r, n0, m: mine(r, n0 / 6, m), "6 of the FLOP rate")
    rejects(ex.check_chinchilla_size, lambda r, n0, m: mine(r, n0, m)[::-1], "wrong order")


def test_variant():
    def in_place(recipe):
        recipe["warmup"] += 1
        return recipe

    passes(ex.check_variant, ex.reference_variant)
    passes(ex.check_variant, lambda recipe: {**recipe, "steps": recipe["steps"] + 10})
    rejects(ex.check_variant, in_place, "recipe you were given changed")
    rejects(ex.check_variant, lambda recipe: {**recipe, "vocab_size": 1024}, "corpus knob")
    rejects(ex.check_variant, lambda recipe: {**recipe, "lr": 1.0, "steps": 5}, "exactly one knob")
    rejects(ex.check_variant, lambda recipe: dict(recipe), "nothing changed")
