"""The two assertions every ``test_exercises_ch<N>.py`` makes about a checker."""


def passes(checker, fn):
    """``fn`` is a right answer: the checker must accept it."""
    result = checker(fn)
    assert result, str(result)


def rejects(checker, wrong, *phrases):
    """``wrong`` is a wrong answer: the checker must fail it, with each phrase in its diagnosis."""
    result = checker(wrong)
    assert not result and result.status == "failed", str(result)
    for phrase in phrases:
        assert phrase in result.diagnosis, f"{phrase!r} is not in the diagnosis:\n{result}"
