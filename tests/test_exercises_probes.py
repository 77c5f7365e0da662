"""The chapter 6 bias-and-robustness checkers accept the references and reject known-wrong solutions."""
import re

from lmlib import exercises
from lmlib.audit import KEYBOARD_NEIGHBOURS


def test_swap_words_checker():
    assert exercises.check_swap_words(exercises.reference_swap_words, verbose=False)

    def mine(text, pairs):  # an independent correct solution
        mapping = {**{a: b for a, b in pairs}, **{b: a for a, b in pairs}}

        def repl(m):
            w, new = m.group(0), mapping[m.group(0).lower()]
            return new.upper() if len(w) > 1 and w.isupper() else new.capitalize() if w[0].isupper() else new

        return re.sub(r"\b(" + "|".join(sorted(mapping, key=len, reverse=True)) + r")\b", repl, text, flags=re.I)

    assert exercises.check_swap_words(mine, verbose=False)

    def str_replace(text, pairs):  # not whole-word: "the" -> "tshe"
        for a, b in pairs:
            text = text.replace(a, "\0").replace(b, a).replace("\0", b)
        return text

    def sequential(text, pairs):  # whole words, but two passes undo each other
        for a, b in pairs:
            text = re.sub(rf"\b{a}\b", b, text, flags=re.I)
            text = re.sub(rf"\b{b}\b", a, text, flags=re.I)
        return text

    def lowercase(text, pairs):  # right words, case lost
        mapping = {**{a: b for a, b in pairs}, **{b: a for a, b in pairs}}
        return re.sub(r"\b(" + "|".join(mapping) + r")\b", lambda m: mapping[m.group(0).lower()], text, flags=re.I)

    for wrong in (str_replace, sequential, lowercase):
        assert not exercises.check_swap_words(wrong, verbose=False, seed=0)


def test_keyboard_typos_checker():
    assert exercises.check_keyboard_typos(exercises.reference_keyboard_typos, verbose=False)

    def mine(text, rate, rng):
        out = []
        for c in text:
            if c.lower() in KEYBOARD_NEIGHBOURS and rng.random() < rate:
                n = rng.choice(KEYBOARD_NEIGHBOURS[c.lower()])
                c = n.upper() if c.isupper() else n
            out.append(c)
        return "".join(out)

    assert exercises.check_keyboard_typos(mine, verbose=False)

    def any_letter(text, rate, rng):  # a random letter, not a neighbour
        return "".join(rng.choice("abcdefghijklmnopqrstuvwxyz") if c.isalpha() and rng.random() < rate else c for c in text)

    def lower_case(text, rate, rng):  # neighbour, but always lowercase
        return "".join(rng.choice(KEYBOARD_NEIGHBOURS[c.lower()]) if c.isalpha() and rng.random() < rate else c
                       for c in text)

    def every_char(text, rate, rng):  # also corrupts digits and punctuation
        return "".join(rng.choice(KEYBOARD_NEIGHBOURS.get(c.lower(), "x")) if rng.random() < rate else c for c in text)

    def per_word(text, rate, rng):  # rate applied to words: one typo per chosen word, far fewer letters
        words = text.split(" ")
        for i, w in enumerate(words):
            if w[0].isalpha() and w[0].islower() and rng.random() < rate:
                words[i] = rng.choice(KEYBOARD_NEIGHBOURS[w[0]]) + w[1:]
        return " ".join(words)

    def dropper(text, rate, rng):  # drops letters instead of replacing them
        return "".join(c for c in text if not (c.isalpha() and rng.random() < rate))

    for wrong in (any_letter, lower_case, every_char, per_word, dropper):
        assert not exercises.check_keyboard_typos(wrong, verbose=False, seed=0)


def test_keyboard_typos_checker_reports_the_problem(capsys):
    assert not exercises.check_keyboard_typos(lambda text, rate, rng: text.upper(), seed=0)
    out = capsys.readouterr().out
    assert "FAIL keyboard_typos" in out and "Hint" in out
