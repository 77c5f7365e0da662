"""The chapter 5 token-task checkers accept their reference solutions and reject known-wrong ones."""
import re
import string
from collections import Counter

from lmlib import exercises


def test_bio_to_spans_checker():
    assert exercises.check_bio_to_spans(exercises.reference_bio_to_spans, verbose=False)

    def strict_b_only(tags):  # ignores an I- without its B- (not the CoNLL convention)
        spans, open_ = [], None
        for i, t in enumerate(tags + ["O"]):
            if open_ and not (t.startswith("I-") and t[2:] == open_[0]):
                spans.append((open_[0], open_[1], i))
                open_ = None
            if t.startswith("B-"):
                open_ = (t[2:], i)
        return spans

    def inclusive_end(tags):
        return [(t, s, e - 1) for t, s, e in exercises.reference_bio_to_spans(tags)]

    def ignores_type_change(tags):  # I-loc after B-per extends the person
        spans, open_ = [], None
        for i, t in enumerate(tags + ["O"]):
            if open_ and (t == "O" or t.startswith("B-")):
                spans.append((open_[0], open_[1], i))
                open_ = None
            if t != "O" and open_ is None:
                open_ = (t[2:], i)
        return spans

    for wrong in (strict_b_only, inclusive_end, ignores_type_change):
        assert not exercises.check_bio_to_spans(wrong, verbose=False)


def test_squad_f1_checker():
    assert exercises.check_squad_f1(exercises.reference_squad_f1, verbose=False)

    def norm(s):
        s = "".join(c for c in s.lower() if c not in set(string.punctuation))
        return re.sub(r"\b(a|an|the)\b", " ", s).split()

    def set_overlap(pred, gold):  # counts shared words once, not with multiplicity
        p, g = norm(pred), norm(gold)
        common = len(set(p) & set(g))
        if not common:
            return 0.0
        prec, rec = common / len(p), common / len(g)
        return 2 * prec * rec / (prec + rec)

    def no_normalisation(pred, gold):
        p, g = pred.split(), gold.split()
        common = sum((Counter(p) & Counter(g)).values())
        if not common:
            return 0.0
        prec, rec = common / len(p), common / len(g)
        return 2 * prec * rec / (prec + rec)

    def recall_only(pred, gold):
        p, g = norm(pred), norm(gold)
        common = sum((Counter(p) & Counter(g)).values())
        return common / len(g) if common else 0.0

    for wrong in (set_overlap, no_normalisation, recall_only):
        assert not exercises.check_squad_f1(wrong, verbose=False)


def test_align_labels_checker():
    assert exercises.check_align_labels(exercises.reference_align_labels, verbose=False)

    def every_subtoken(word_of_token, labels):
        return [labels[w] for w in word_of_token]

    def last_subtoken(word_of_token, labels):
        return [labels[w] if t + 1 == len(word_of_token) or word_of_token[t + 1] != w else -100
                for t, w in enumerate(word_of_token)]

    for wrong in (every_subtoken, last_subtoken):
        assert not exercises.check_align_labels(wrong, verbose=False)
