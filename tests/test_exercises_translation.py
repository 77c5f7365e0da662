"""Checkers of chapter 5, notebook 02 (translation): references pass, known-wrong solutions fail."""
import math
from collections import Counter

import sacrebleu

import lmlib.exercises
from lmlib.exercises import translation as tr


def grams(tokens, n):
    return Counter(tuple(tokens[i: i + n]) for i in range(len(tokens) - n + 1))


def unclipped(candidate, references, n):
    """Counts every candidate n-gram found in some reference, however often: 'the the the' scores 1."""
    seen = set().union(*(grams(r, n) for r in references))
    counts = grams(candidate, n)
    return sum(c for g, c in counts.items() if g in seen), sum(counts.values())


def clipped_by_sum(candidate, references, n):
    """Clips at the SUM of the reference counts instead of the maximum."""
    total = sum((grams(r, n) for r in references), Counter())
    counts = grams(candidate, n)
    return sum(min(c, total[g]) for g, c in counts.items()), sum(counts.values())


def test_modified_precision_reference_passes_and_is_exported():
    assert lmlib.exercises.check_modified_precision(tr.reference_modified_precision, seed=0)
    assert tr.reference_modified_precision([7, 7, 7, 7], [[7, 3, 7], [3, 7]], 1) == (2, 4)
    assert tr.reference_modified_precision([1], [[1]], 2) == (0, 0)


def test_modified_precision_wrong_solutions_fail(capsys):
    assert not tr.check_modified_precision(unclipped, seed=0)
    assert "Hint" in capsys.readouterr().out
    assert not tr.check_modified_precision(clipped_by_sum, seed=0)
    assert not tr.check_modified_precision(lambda c, r, n: tr.reference_modified_precision(c, r[:1], n), seed=0)


def my_bleu(cands, refs):
    logs = []
    for n in range(1, 5):
        match = sum(tr.reference_modified_precision(c, [r], n)[0] for c, r in zip(cands, refs))
        total = sum(max(len(c) - n + 1, 0) for c in cands)
        if match == 0:
            return 0.0
        logs.append(math.log(match / total))
    c, r = sum(map(len, cands)), sum(map(len, refs))
    bp = 1.0 if c > r else math.exp(1 - r / c)
    return 100 * bp * math.exp(sum(logs) / 4)


def sentence_average(cands, refs):
    return sum(my_bleu([c], [r]) for c, r in zip(cands, refs)) / len(cands)


def no_brevity_penalty(cands, refs):
    bleu = my_bleu(cands, refs)
    c, r = sum(map(len, cands)), sum(map(len, refs))
    return bleu if c > r or bleu == 0 else bleu / math.exp(1 - r / c)


def test_corpus_bleu_reference_and_a_correct_solution_pass():
    assert tr.check_corpus_bleu(tr.reference_corpus_bleu, seed=1)
    assert tr.check_corpus_bleu(my_bleu, seed=2)
    assert math.isclose(tr.reference_corpus_bleu([[1, 2, 3, 4, 5]], [[1, 2, 3, 4, 5]]), 100.0)
    score = sacrebleu.corpus_bleu(["a b c d"], [["a b c d e f"]], tokenize="none", smooth_method="none").score
    assert math.isclose(tr.reference_corpus_bleu([[1, 2, 3, 4]], [[1, 2, 3, 4, 5, 6]]), score)


def test_corpus_bleu_wrong_solutions_fail():
    assert not tr.check_corpus_bleu(sentence_average, seed=0)
    assert not tr.check_corpus_bleu(no_brevity_penalty, seed=0)
