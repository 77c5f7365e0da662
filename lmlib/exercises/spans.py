"""Exercise checkers for chapter 5, Applications, notebook 04 (token-level and span tasks)."""
from __future__ import annotations

from collections.abc import Callable

import torch

from lmlib.exercises.core import Case, check
from lmlib.spans import align_labels, bio_to_spans, token_f1

__all__ = [
    "check_bio_to_spans",
    "reference_bio_to_spans",
    "check_squad_f1",
    "reference_squad_f1",
    "check_align_labels",
    "reference_align_labels",
]

_TYPES = ("per", "loc", "org")
_WORDS = ("the", "a", "an", "Denver", "Broncos", "1990", "river", "River", "Nile", "of", "in", "blue",
          "Theatre", "king", "Paris", "France's", "U.S.", "Super", "Bowl", "50")


def reference_bio_to_spans(tags: list[str]) -> list[tuple[str, int, int]]:
    return bio_to_spans(tags)


def _random_tags(gen: torch.Generator) -> list[str]:
    n = int(torch.randint(0, 14, (1,), generator=gen))
    out = []
    for _ in range(n):
        kind = int(torch.randint(0, 3, (1,), generator=gen))
        typ = _TYPES[int(torch.randint(0, len(_TYPES), (1,), generator=gen))]
        out.append("O" if kind == 0 else f"{'BI'[kind - 1]}-{typ}")
    return out


def check_bio_to_spans(fn: Callable[[list[str]], list[tuple[str, int, int]]], **kwargs) -> bool:
    """``fn(tags) -> [(type, start, end), ...]``: entity spans of a BIO tag list, end exclusive."""
    return check(
        fn,
        reference_bio_to_spans,
        lambda gen: (_random_tags(gen),),
        name="bio_to_spans",
        hint="walk the tags keeping the open entity: B-x always opens a new one; I-x continues the open "
        "entity only if it has type x, otherwise it opens one (an I- without its B-, as conlleval reads "
        "it); O closes it; close the last one at the end. Spans are (type, start, end) with end exclusive, "
        "in order of their start.",
        fixed_cases=((["B-per", "I-per", "O"],), (["O", "I-loc", "I-loc"],), (["B-per", "I-loc", "B-loc"],),
                     (["B-org", "B-org"],), ([],)),
        **kwargs,
    )


def reference_squad_f1(prediction: str, gold: str) -> float:
    return token_f1(prediction, gold)


def _random_answer(gen: torch.Generator) -> str:
    n = int(torch.randint(0, 5, (1,), generator=gen))
    words = [_WORDS[int(torch.randint(0, len(_WORDS), (1,), generator=gen))] for _ in range(n)]
    punct = ["", ",", ".", "!"]
    return " ".join(w + punct[int(torch.randint(0, 4, (1,), generator=gen))] for w in words)


def check_squad_f1(fn: Callable[[str, str], float], **kwargs) -> bool:
    """``fn(prediction, gold) -> float``: the SQuAD v1.1 token F1 of one prediction against one answer."""
    return check(
        fn,
        reference_squad_f1,
        lambda gen: (_random_answer(gen), _random_answer(gen)),
        name="squad_f1",
        hint="normalise both strings first (lowercase, remove ASCII punctuation, remove the words a/an/the, "
        "split on whitespace); count the common words with multiplicity (Counter & Counter); "
        "F1 = 2PR/(P+R) with P = common/len(pred), R = common/len(gold); 0 when nothing is in common.",
        fixed_cases=(("the Denver Broncos", "Denver Broncos"), ("Denver Broncos team", "Broncos"),
                     ("river river", "the river river Nile"), ("The", "a"), ("U.S.", "US")),
        trials=20,
        **kwargs,
    )


def reference_align_labels(word_of_token: list[int], word_labels: list[int]) -> list[int]:
    return align_labels(word_of_token, word_labels, position="first")


def check_align_labels(fn: Callable[[list[int], list[int]], list[int]], **kwargs) -> bool:
    """``fn(word_of_token, word_labels) -> token labels``: first sub-token gets the word's label, others -100."""

    def make_case(gen: torch.Generator) -> Case:
        n_words = int(torch.randint(1, 8, (1,), generator=gen))
        pieces = torch.randint(1, 4, (n_words,), generator=gen).tolist()
        word_of_token = [w for w, k in enumerate(pieces) for _ in range(k)]
        return word_of_token, torch.randint(0, 13, (n_words,), generator=gen).tolist()

    return check(
        fn,
        reference_align_labels,
        make_case,
        name="align_labels",
        hint="a token is the first sub-token of its word when it is token 0 or the token before it belongs "
        "to another word; it gets word_labels[word]; every other token gets -100.",
        fixed_cases=(([0, 0, 1, 2, 2, 2], [3, 0, 5]), ([0], [7])),
        **kwargs,
    )
