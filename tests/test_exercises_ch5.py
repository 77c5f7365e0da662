"""Chapter 5's checkers: the references and independent solutions pass; typical mistakes are named."""
import math
import re
import string
from collections import Counter

import sacrebleu
import torch
import torch.nn.functional as F

import lmlib.exercises as ex
from checker_asserts import passes, rejects
from lmlib.chat import CHAT_TOKENS, chat_example, encode_chat
from lmlib.recipes import EOT
from lmlib.tokenizers import ByteBPE


# --- notebook 01: text classification -----------------------------------------------------------

def test_f1_from_confusion():
    def mine(cm, k):
        tp = cm[k, k].item()
        return 2 * tp / (cm[k].sum().item() + cm[:, k].sum().item()) if tp else 0.0

    passes(ex.check_f1_from_confusion, ex.reference_f1_from_confusion)
    passes(ex.check_f1_from_confusion, mine)
    passes(ex.check_f1_from_confusion, lambda cm, k: mine(cm.T, k))  # F1 is symmetric in P and R
    rejects(ex.check_f1_from_confusion, lambda cm, k: (cm.diag().sum() / cm.sum()).item(), "accuracy")
    rejects(ex.check_f1_from_confusion, lambda cm, k: (cm[k, k] / cm[:, k].sum()).item(), "precision")
    rejects(ex.check_f1_from_confusion, lambda cm, k: (cm[k, k] / cm[k].sum()).item(), "recall")


def test_last_token_pool():
    def mine(h, mask):
        return h[torch.arange(h.shape[0]), mask.sum(1) - 1]

    passes(ex.check_last_token_pool, ex.reference_last_token_pool)
    passes(ex.check_last_token_pool, mine)
    rejects(ex.check_last_token_pool, lambda h, mask: h[:, -1], "padding")
    rejects(ex.check_last_token_pool, lambda h, mask: h[:, 0], "first token")
    rejects(ex.check_last_token_pool, lambda h, m: (h * m[..., None]).sum(1) / m.sum(1, keepdim=True), "averaged")
    rejects(ex.check_last_token_pool, lambda h, mask: h[torch.arange(h.shape[0]), mask.sum(1)], "raised IndexError")


# --- notebook 02: translation -------------------------------------------------------------------

def grams(tokens, n):
    return Counter(tuple(tokens[i: i + n]) for i in range(len(tokens) - n + 1))


def unclipped(candidate, references, n):
    seen = set().union(*(grams(r, n) for r in references))
    counts = grams(candidate, n)
    return sum(c for g, c in counts.items() if g in seen), sum(counts.values())


def clipped_by_sum(candidate, references, n):
    total = sum((grams(r, n) for r in references), Counter())
    counts = grams(candidate, n)
    return sum(min(c, total[g]) for g, c in counts.items()), sum(counts.values())


def test_modified_precision():
    assert ex.reference_modified_precision([7, 7, 7, 7], [[7, 3, 7], [3, 7]], 1) == (2, 4)
    assert ex.reference_modified_precision([1], [[1]], 2) == (0, 0)
    passes(ex.check_modified_precision, ex.reference_modified_precision)
    rejects(ex.check_modified_precision, unclipped, "did not clip")
    rejects(ex.check_modified_precision, clipped_by_sum, "SUM of the reference counts")
    rejects(ex.check_modified_precision, lambda c, r, n: ex.reference_modified_precision(c, r[:1], n),
            "only the first reference")


def my_bleu(cands, refs, brevity=True):
    logs = []
    for n in range(1, 5):
        match = sum(ex.reference_modified_precision(c, [r], n)[0] for c, r in zip(cands, refs))
        total = sum(max(len(c) - n + 1, 0) for c in cands)
        if match == 0:
            return 0.0
        logs.append(math.log(match / total))
    c, r = sum(map(len, cands)), sum(map(len, refs))
    bp = 1.0 if c > r or not brevity else math.exp(1 - r / c)
    return 100 * bp * math.exp(sum(logs) / 4)


def test_corpus_bleu():
    assert math.isclose(ex.reference_corpus_bleu([[1, 2, 3, 4, 5]], [[1, 2, 3, 4, 5]]), 100.0)
    score = sacrebleu.corpus_bleu(["a b c d"], [["a b c d e f"]], tokenize="none", smooth_method="none").score
    assert math.isclose(ex.reference_corpus_bleu([[1, 2, 3, 4]], [[1, 2, 3, 4, 5, 6]]), score)
    passes(ex.check_corpus_bleu, ex.reference_corpus_bleu)
    passes(ex.check_corpus_bleu, my_bleu)
    rejects(ex.check_corpus_bleu, lambda cands, refs: sum(my_bleu([c], [r]) for c, r in zip(cands, refs)) / len(cands),
            "per-sentence")
    rejects(ex.check_corpus_bleu, lambda cands, refs: my_bleu(cands, refs, brevity=False), "brevity penalty")
    rejects(ex.check_corpus_bleu, lambda cands, refs: my_bleu(cands, refs) / 100, "percentage")


def test_decoder_example():
    def mine(src, tgt, sep, eos):
        seq = torch.tensor([*src, sep, *tgt, eos])
        y = seq[1:].clone()
        y[: len(src)] = -100
        return seq[:-1], y

    def lists(src, tgt, sep, eos):  # plain lists are accepted as well as tensors
        x, y = mine(src, tgt, sep, eos)
        return x.tolist(), y.tolist()

    def separator_ignored(src, tgt, sep, eos):
        x, y = mine(src, tgt, sep, eos)
        y[len(src)] = -100
        return x, y

    passes(ex.check_decoder_example, mine)
    passes(ex.check_decoder_example, lists)
    rejects(ex.check_decoder_example, lambda src, tgt, sep, eos: (torch.tensor([*src, sep, *tgt]),
                                                                   torch.tensor([*src[1:], sep, *tgt, eos])),
            "nothing is ignored")
    rejects(ex.check_decoder_example, separator_ignored, "one target too many")
    rejects(ex.check_decoder_example, lambda src, tgt, sep, eos: mine(src, tgt, sep, eos)[1], "pair")


# --- notebook 03: instruction tuning ------------------------------------------------------------

def targets(ids, prompt_len, masked=None, fill=-100, shift=True):
    y = (ids[1:] if shift else ids).clone()
    y[: prompt_len - 1 if masked is None else masked] = fill
    return y


def test_sft_targets():
    passes(ex.check_sft_targets, ex.reference_sft_targets)
    passes(ex.check_sft_targets, targets)
    rejects(ex.check_sft_targets, lambda ids, p: targets(ids, p, masked=p), "off by one", "too many")
    rejects(ex.check_sft_targets, lambda ids, p: targets(ids, p, masked=p, shift=False), "did not shift")
    rejects(ex.check_sft_targets, lambda ids, p: targets(ids, p, fill=0), "hold 0 instead of -100")


def test_lora_forward():
    passes(ex.check_lora_forward, ex.reference_lora_forward)
    passes(ex.check_lora_forward, lambda x, W, A, B, s: x @ W.T + s * (x @ A.T) @ B.T)
    rejects(ex.check_lora_forward, lambda x, W, A, B, s: s * (x @ W.T + x @ A.T @ B.T), "scaled the base output")
    rejects(ex.check_lora_forward, lambda x, W, A, B, s: x @ W.T + x @ A.T @ B.T, "left out scale")
    rejects(ex.check_lora_forward, lambda x, W, A, B, s: x @ W + s * x @ A.T @ B.T, "without transposing")


# --- notebook 04: token tasks -------------------------------------------------------------------

def spans(tags, continue_other_types=False, orphan_i=True, close_at_end=True):
    out, open_ = [], None
    for i, t in enumerate(list(tags) + (["O"] if close_at_end else [])):
        kind, typ = (t[0], t[2:]) if t != "O" else ("O", None)
        if open_ and (kind == "O" or kind == "B" or (kind == "I" and typ != open_[0] and not continue_other_types)):
            out.append((open_[0], open_[1], i))
            open_ = None
        if kind == "B" or (kind == "I" and open_ is None and orphan_i):
            open_ = (typ, i)
    return out


def test_bio_to_spans():
    passes(ex.check_bio_to_spans, ex.reference_bio_to_spans)
    passes(ex.check_bio_to_spans, spans)
    rejects(ex.check_bio_to_spans, lambda tags: [(t, s, e - 1) for t, s, e in spans(tags)], "exclusive")
    rejects(ex.check_bio_to_spans, lambda tags: spans(tags, orphan_i=False), "without an open entity")
    rejects(ex.check_bio_to_spans, lambda tags: spans(tags, continue_other_types=True), "another type")
    rejects(ex.check_bio_to_spans, lambda tags: spans(tags, close_at_end=False), "still open at the end")


def normalised(s):
    s = "".join(c for c in s.lower() if c not in set(string.punctuation))
    return re.sub(r"\b(a|an|the)\b", " ", s).split()


def f1(p, g, common):
    if not common:
        return 0.0
    prec, rec = common / len(p), common / len(g)
    return 2 * prec * rec / (prec + rec)


def test_squad_f1():
    def mine(pred, gold):
        p, g = normalised(pred), normalised(gold)
        return f1(p, g, sum((Counter(p) & Counter(g)).values()))

    def recall_only(pred, gold):
        p, g = normalised(pred), normalised(gold)
        common = sum((Counter(p) & Counter(g)).values())
        return common / len(g) if common else 0.0

    passes(ex.check_squad_f1, ex.reference_squad_f1)
    passes(ex.check_squad_f1, mine)
    rejects(ex.check_squad_f1, lambda pred, gold: f1(pred.split(), gold.split(),
                                                      sum((Counter(pred.split()) & Counter(gold.split())).values())),
            "did not normalise")
    rejects(ex.check_squad_f1, lambda pred, gold: f1(normalised(pred), normalised(gold),
                                                      len(set(normalised(pred)) & set(normalised(gold)))),
            "a set")
    rejects(ex.check_squad_f1, recall_only, "recall")


def test_align_labels():
    def mine(word_of_token, labels):
        return [labels[w] if t == 0 or word_of_token[t - 1] != w else -100 for t, w in enumerate(word_of_token)]

    def last(word_of_token, labels):
        return [labels[w] if t + 1 == len(word_of_token) or word_of_token[t + 1] != w else -100
                for t, w in enumerate(word_of_token)]

    passes(ex.check_align_labels, ex.reference_align_labels)
    passes(ex.check_align_labels, mine)
    rejects(ex.check_align_labels, lambda word_of_token, labels: [labels[w] for w in word_of_token], "every sub-token")
    rejects(ex.check_align_labels, last, "LAST sub-token")
    rejects(ex.check_align_labels, lambda wot, labels: [x if x != -100 else 0 for x in mine(wot, labels)], "not 0")


def test_context_windows():
    def mine(n, room, stride):
        starts = range(0, max(n - room, 0) + stride, stride)
        out = []
        for start in starts:
            out.append((start, min(start + room, n)))
            if start + room >= n:
                break
        return out

    def past_the_end(n, room, stride):
        return [(s, min(s + room, n)) for s in range(0, n, stride)]

    passes(ex.check_context_windows, mine)
    passes(ex.check_context_windows, lambda n, room, stride: [list(w) for w in mine(n, room, stride)])
    rejects(ex.check_context_windows, past_the_end, "start passed the end")
    rejects(ex.check_context_windows, lambda n, room, stride: [(0, n)], "expected 2 items, got 1")  # room ignored


def test_bm25_scores():
    def mine(query, documents, k1, b, idf=lambda ratio: math.log(1 + ratio), length=True, saturate=True):
        avgdl = sum(map(len, documents)) / len(documents)
        scores = []
        for doc in documents:
            counts = Counter(doc)
            total = 0.0
            for term in query:
                n = sum(term in d for d in documents)
                tf = counts[term]
                norm = k1 * (1 - b + b * len(doc) / avgdl) if length else k1
                total += idf((len(documents) - n + 0.5) / (n + 0.5)) * (tf / (tf + norm) if saturate else tf)
            scores.append(total)
        return scores

    passes(ex.check_bm25_scores, ex.reference_bm25_scores)
    passes(ex.check_bm25_scores, mine)
    passes(ex.check_bm25_scores, lambda *args: torch.tensor(mine(*args)))
    rejects(ex.check_bm25_scores, lambda *args: mine(*args, idf=math.log), "without the 1 +")
    rejects(ex.check_bm25_scores, lambda *args: mine(*args, saturate=False), "not saturated")
    rejects(ex.check_bm25_scores, lambda *args: mine(*args, length=False), "document length")
    rejects(ex.check_bm25_scores, lambda query, documents, k1, b: mine(query, documents, k1, b)[:-1],
            "expected")


# --- notebook 05: the assistant -----------------------------------------------------------------

def test_the_reference_assistant_mask_is_chat_example():
    tok = ByteBPE.train("Hello there, how are you? I am fine. Thanks!", 280, special_tokens=[EOT, *CHAT_TOKENS],
                        progress=False)
    messages = [{"role": "system", "content": "Be kind."}, {"role": "user", "content": "Hello there"},
                {"role": "assistant", "content": "I am fine."}, {"role": "user", "content": "how are you?"},
                {"role": "assistant", "content": ""}]
    special = {t: tok.special_tokens[t] for t in CHAT_TOKENS}
    assert torch.equal(ex.reference_assistant_mask(encode_chat(tok, messages), special), chat_example(tok, messages)[1])


def my_mask(ids, special):
    tags = {special["<|system|>"], special["<|user|>"], special["<|assistant|>"]}
    keep, inside = [], False
    for t in ids.tolist():
        if t in tags:
            inside = t == special["<|assistant|>"]
            keep.append(False)
        else:
            keep.append(inside)
            if t == special["<|end|>"]:
                inside = False
    y = ids[1:].clone()
    y[~torch.tensor(keep[1:])] = -100
    return y


def test_assistant_mask():
    def without_end(ids, special):  # the closing END is masked: the model never learns to stop
        y = my_mask(ids, special)
        y[ids[1:] == special["<|end|>"]] = -100
        return y

    def unshifted(ids, special):  # forgot that targets are the next tokens
        y = ids.clone()
        y[~torch.tensor([False] + (my_mask(ids, special) != -100).tolist())] = -100
        return y

    passes(ex.check_assistant_mask, ex.reference_assistant_mask)
    passes(ex.check_assistant_mask, my_mask)
    rejects(ex.check_assistant_mask, lambda ids, special: ids[1:].clone(), "nothing is masked")
    rejects(ex.check_assistant_mask, without_end, "never learns to stop")
    rejects(ex.check_assistant_mask, unshifted, "one position too many", "ids[1:]")


def my_dpo_loss(pc, pr, rc, rr, beta):
    return -F.logsigmoid(beta * ((pc - rc) - (pr - rr))).mean()


def test_dpo_loss():
    passes(ex.check_dpo_loss, ex.reference_dpo_loss)
    passes(ex.check_dpo_loss, my_dpo_loss)
    rejects(ex.check_dpo_loss, lambda pc, pr, rc, rr, beta: -F.logsigmoid((pc - rc) - (pr - rr)).mean(), "beta")
    rejects(ex.check_dpo_loss, lambda pc, pr, rc, rr, beta: -F.logsigmoid(beta * (pc - pr)).mean(), "reference model")
    rejects(ex.check_dpo_loss, lambda *args: -my_dpo_loss(*args), "sign is flipped")
    rejects(ex.check_dpo_loss, lambda pc, pr, rc, rr, beta: -F.logsigmoid(beta * ((pc - rc) - (pr - rr))).sum(),
            "a sum where the mean was asked for")


@torch.no_grad()
def my_choice_scores(model, context, endings, shift=1, mean=True):
    scores = []
    for e in endings:
        ids = torch.cat([context, e])
        logp = F.log_softmax(model(ids[None])[0][0], dim=-1)
        picked = logp[len(context) - shift: len(ids) - shift].gather(-1, e[:, None])
        scores.append(picked.mean() if mean else picked.sum())
    return torch.stack(scores)


def test_choice_scores():
    passes(ex.check_choice_scores, ex.reference_choice_scores)
    passes(ex.check_choice_scores, my_choice_scores)
    rejects(ex.check_choice_scores, lambda m, c, e: my_choice_scores(m, c, e, mean=False), "summed")
    rejects(ex.check_choice_scores, lambda m, c, e: my_choice_scores(m, c, e, shift=0), "values differ")
