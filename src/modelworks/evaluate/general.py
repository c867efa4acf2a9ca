"""The general check: does fine-tuning keep what the base model already knew?

A small fixed set of general questions (capitals, counts, common facts) that
SmolLM2-135M-Instruct answers correctly before any tuning (checked on 2026-12-06). Chat evaluate
scores the base and the tuned model on them; the target for an SFT run is under 10% relative loss
(tuned correct / base correct >= 0.9). An answer counts when it contains an accepted word.
"""

from __future__ import annotations

import re
from collections.abc import Callable

# (question, accepted answers as whole words, case-insensitive)
QUESTIONS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("What is the capital of France?", ("Paris",)),
    ("What is the capital of Japan?", ("Tokyo",)),
    ("What is the capital of Greece?", ("Athens",)),
    ("What is the capital of Germany?", ("Berlin",)),
    ("What is the capital of Canada?", ("Ottawa",)),
    ("What is the capital of England?", ("London",)),
    ("What is the capital of Russia?", ("Moscow",)),
    ("What is the capital of China?", ("Beijing",)),
    ("What is the capital of Egypt?", ("Cairo",)),
    ("What is the capital of the United Kingdom?", ("London",)),
    ("How many days are there in a week?", ("7", "seven")),
    ("How many months are there in a year?", ("12", "twelve")),
    ("What color is the sky on a clear day?", ("blue",)),
    ("What is the largest ocean on Earth?", ("Pacific",)),
    ("What is the chemical symbol for water?", ("H2O", "H₂O")),
    ("Which planet is known as the Red Planet?", ("Mars",)),
    ("What is the opposite of hot?", ("cold",)),
    ("Who wrote Romeo and Juliet?", ("Shakespeare",)),
    ("How many hours are there in a day?", ("24", "twenty-four")),
    ("What is the boiling point of water in degrees Celsius?", ("100", "one hundred")),
)


def is_correct(response: str, accepted: tuple[str, ...]) -> bool:
    return any(re.search(rf"(?<!\w){re.escape(a)}(?!\w)", response, re.I) for a in accepted)


def general_check(answer: Callable[[str], str]) -> dict:
    """Score `answer(question) -> response` on QUESTIONS: {"correct", "total", "answers"}."""
    answers = []
    for question, accepted in QUESTIONS:
        response = answer(question)
        answers.append(
            {"question": question, "response": response, "correct": is_correct(response, accepted)}
        )
    return {
        "correct": sum(a["correct"] for a in answers),
        "total": len(answers),
        "answers": answers,
    }
