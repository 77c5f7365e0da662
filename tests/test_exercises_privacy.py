"""The privacy checkers accept their reference solutions and reject known-wrong ones."""
import math
import random

from lmlib import exercises


def test_exposure_checker():
    def mine(lps, index):
        rank = int((lps <= lps[index]).sum())
        return math.log2(len(lps)) - math.log2(rank)

    def strict_rank(lps, index):  # forgets the canary itself and the ties
        rank = int((lps < lps[index]).sum()) + 1
        return math.log2(len(lps)) - math.log2(rank)

    def natural_log(lps, index):
        rank = int((lps <= lps[index]).sum())
        return math.log(len(lps)) - math.log(rank)

    def reversed_order(lps, index):  # treats a high log-perplexity as likely
        rank = int((lps >= lps[index]).sum())
        return math.log2(len(lps)) - math.log2(rank)

    assert exercises.check_exposure(exercises.reference_exposure, verbose=False)
    assert exercises.check_exposure(mine, verbose=False)
    for wrong in (strict_rank, natural_log, reversed_order):
        assert not exercises.check_exposure(wrong, verbose=False)


def test_estimated_exposure_checker():
    def mine(canary, sample):
        k = int((sample <= canary).sum())
        return math.log2(len(sample) + 1) - math.log2(k + 1)

    def no_plus_one(canary, sample):  # infinite when no sample is as likely as the canary
        k = int((sample <= canary).sum())
        return -math.log2(k / len(sample)) if k else float("inf")

    def fraction_above(canary, sample):
        k = int((sample > canary).sum())
        return math.log2(len(sample) + 1) - math.log2(k + 1)

    assert exercises.check_estimated_exposure(exercises.reference_estimated_exposure, verbose=False)
    assert exercises.check_estimated_exposure(mine, verbose=False)
    for wrong in (no_plus_one, fraction_above):
        assert not exercises.check_estimated_exposure(wrong, verbose=False)


def test_plant_canary_checker():
    def mine(docs, text, k):
        out = list(docs)
        for _ in range(k):
            out.insert(random.randint(0, len(out)), text)
        return out

    def one_copy_too_many(docs, text, k):
        return docs + [text] * (k + 1)

    def shuffled(docs, text, k):
        out = docs + [text] * k
        random.shuffle(out)
        return out

    def joined(docs, text, k):  # glues the copies into one document
        return docs + ([text * k] if k else [])

    assert exercises.check_plant_canary(exercises.reference_plant_canary, verbose=False)
    assert exercises.check_plant_canary(mine, verbose=False)
    for wrong in (one_copy_too_many, shuffled, joined):
        assert not exercises.check_plant_canary(wrong, verbose=False)


def test_plant_canary_checker_reports_a_wrong_type(capsys):
    assert not exercises.check_plant_canary(lambda docs, text, k: "\n\n".join(docs))
    assert "list of strings" in capsys.readouterr().out
