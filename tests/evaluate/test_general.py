"""The general check's scoring: whole-word, case-insensitive matches of an accepted answer."""

from modelworks.evaluate.general import QUESTIONS, general_check, is_correct


def test_accepts_whole_words_only():
    assert is_correct("The capital of France is Paris.", ("Paris",))
    assert is_correct("about 100.0 degrees", ("100",))
    assert not is_correct("Parisian cafes", ("Paris",))
    assert not is_correct("1000 degrees", ("100",))


def test_general_check_counts_correct_answers():
    right = dict(QUESTIONS)
    result = general_check(lambda q: f"It is {right[q][0]}." if "capital" in q else "No idea.")
    capitals = sum("capital" in q for q, _ in QUESTIONS)
    assert result["total"] == len(QUESTIONS) == 20
    assert result["correct"] == capitals
