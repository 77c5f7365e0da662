"""Exercise checkers for chapter 6, "Bias and robustness": counterfactual swaps and typo noise."""
from __future__ import annotations

import random
from collections.abc import Callable

import torch

from lmlib.audit import KEYBOARD_NEIGHBOURS, swap_words, typos
from lmlib.exercises.core import Case, check

__all__ = [
    "check_swap_words",
    "reference_swap_words",
    "check_keyboard_typos",
    "reference_keyboard_typos",
]

_PAIRS = [("he", "she"), ("his", "hers"), ("man", "woman"), ("son", "daughter"), ("john", "mary"),
          ("king", "queen"), ("boy", "girl")]
# words that contain a listed word without being it: a whole-word swap must leave them alone
_DECOYS = ["the", "shell", "hero", "sherry", "manner", "woman's", "kingdom", "boyish", "johnson", "sons",
           "person", "amazing", "she'd", "boys", "hiss"]
_FILLERS = ["a", "told", "went", "home", "and", "very", "kind", "to", "with", "today"]


def reference_swap_words(text: str, pairs: list[tuple[str, str]]) -> str:
    return swap_words(text, pairs)


def check_swap_words(fn: Callable[[str, list[tuple[str, str]]], str], **kwargs) -> bool:
    """``fn(text, pairs) -> str``: swap each word of each (a, b) pair with its partner, whole words, case kept."""

    def make_case(gen: torch.Generator) -> Case:
        pick = lambda seq: seq[int(torch.randint(len(seq), (1,), generator=gen))]
        k = int(torch.randint(1, len(_PAIRS) + 1, (1,), generator=gen))
        pairs = [_PAIRS[i] for i in torch.randperm(len(_PAIRS), generator=gen)[:k].tolist()]
        words = []
        for _ in range(int(torch.randint(3, 15, (1,), generator=gen))):
            w = pick(pick([[w for p in _PAIRS for w in p], _DECOYS, _FILLERS]))
            w = pick([w, w, w.capitalize(), w.upper()])
            words.append(w + pick(["", "", "", ",", ".", "!", ";"]))
        return " ".join(words), pairs

    return check(
        fn,
        reference_swap_words,
        make_case,
        name="swap_words",
        hint="match whole words only (a regex with \\b ... \\b and re.IGNORECASE), replace every match in "
        "ONE pass (replacing 'he' by 'she' and then 'she' by 'he' undoes the first swap), and give the "
        "new word the case of the old one: 'He' -> 'She', 'HE' -> 'SHE'.",
        fixed_cases=(("He said she saw the shell.", [("he", "she")]),
                     ("JOHN met Mary and Johnson.", [("john", "mary")])),
        **kwargs,
    )


def reference_keyboard_typos(text: str, rate: float, rng: random.Random) -> str:
    return typos(text, rate, rng, kinds=("keyboard",))


def _typo_problem(text: str, rate: float, noisy) -> str:
    """'ok', or what is wrong with ``noisy`` as keyboard typos of ``text`` at ``rate``."""
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
            return f"letter {i} {a!r} became {b!r}, which is not one of its keyboard neighbours {KEYBOARD_NEIGHBOURS[a.lower()]!r}"
        if a.isupper() != b.isupper():
            return f"letter {i} {a!r} became {b!r}: keep the case of the letter you replace"
        changed += 1
    share = changed / letters
    if abs(share - rate) > 0.05:
        return f"at rate {rate} you changed {share:.3f} of the letters (expected about {rate})"
    return "ok"


def check_keyboard_typos(fn: Callable[[str, float, random.Random], str], **kwargs) -> bool:
    """``fn(text, rate, rng) -> str``: replace each letter, with probability ``rate``, by a keyboard neighbour.

    The output is random, so the checker tests properties on a long text instead of exact
    equality: same length, only letters changed, each into a neighbour of the same case, and the
    share of changed letters within 0.05 of ``rate``. Case inputs are ``(seed, rate)``.
    """
    words = ["The", "quick", "brown", "fox", "JUMPS", "over", "lazy", "dogs", "42", "times,", "twice!"]

    def properties(f):
        def run(seed: int, rate: float) -> str:
            rng = random.Random(seed)
            text = " ".join(rng.choice(words) for _ in range(600))
            return _typo_problem(text, rate, f(text, rate, random.Random(seed + 1)))
        return run

    def make_case(gen: torch.Generator) -> Case:
        return int(torch.randint(2**31, (1,), generator=gen)), round(float(torch.rand(1, generator=gen)), 2)

    return check(
        properties(fn),
        properties(reference_keyboard_typos),
        make_case,
        name="keyboard_typos",
        hint="walk over the characters; for a letter a-z (either case) draw rng.random() < rate, and if "
        "so replace it by rng.choice(KEYBOARD_NEIGHBOURS[letter.lower()]) in the letter's case; copy "
        "every other character unchanged.",
        fixed_cases=((0, 0.0), (1, 1.0), (2, 0.3)),
        **kwargs,
    )
