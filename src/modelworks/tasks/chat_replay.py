"""Self-distillation replay for chat SFT: the base model's own answers to general prompts.

Tuning a small instruct model on one narrow task (configs/assistant.yaml: Python docs) makes it
forget how it answered everything else. Mixing in conversations where the answer is the base
model's own greedy reply to a general prompt keeps that behaviour in the training signal (it
teaches nothing new: wrong base answers stay wrong). PROMPTS are general questions and requests
written for this, none of them in the general check (evaluate/general.py, which a test checks).

    python -m modelworks.tasks.chat_replay smollm2-135m-instruct \
        configs/data/general_replay.jsonl

writes one `{"messages": [...]}` line per prompt the model answered within `max_new_tokens`
(an answer cut off by the limit is dropped: the model would learn not to stop); a `chat`
source reads the file (`split: train`).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

PROMPTS: tuple[str, ...] = (
    "What is the capital of Italy?",
    "What is the capital of Spain?",
    "What is the capital of Portugal?",
    "What is the capital of Australia?",
    "What is the capital of India?",
    "What is the capital of Brazil?",
    "What is the capital of Mexico?",
    "What is the capital of Norway?",
    "What is the capital of Sweden?",
    "What is the capital of Kenya?",
    "What is the capital of Argentina?",
    "What is the capital of Ireland?",
    "What is the capital of Poland?",
    "What is the capital of Austria?",
    "What is the capital of Turkey?",
    "How many legs does a spider have?",
    "How many continents are there?",
    "How many minutes are in an hour?",
    "How many sides does a triangle have?",
    "How many players are on a soccer team?",
    "How many seconds are in a minute?",
    "How many weeks are in a year?",
    "How many planets are in the solar system?",
    "What color is grass?",
    "What color are bananas when they are ripe?",
    "What color do you get by mixing blue and yellow?",
    "What is the largest planet in our solar system?",
    "What is the tallest mountain in the world?",
    "What is the longest river in Africa?",
    "What is the largest desert in the world?",
    "What is the chemical symbol for gold?",
    "What is the chemical symbol for oxygen?",
    "What gas do plants absorb from the air?",
    "What is the freezing point of water in degrees Celsius?",
    "Which planet is closest to the Sun?",
    "What is the opposite of up?",
    "What is the opposite of big?",
    "What is the opposite of day?",
    "Who painted the Mona Lisa?",
    "Who wrote Hamlet?",
    "Who was the first person to walk on the Moon?",
    "Who discovered penicillin?",
    "What is 2 plus 2?",
    "What is 10 minus 3?",
    "What is 6 times 7?",
    "What is half of 50?",
    "What is the square root of 81?",
    "Is 17 a prime number?",
    "What language is spoken in Brazil?",
    "What is the main language spoken in Germany?",
    "What currency is used in Japan?",
    "What do bees make?",
    "What do cows drink?",
    "What animal is known as the king of the jungle?",
    "What is the fastest land animal?",
    "What is the largest mammal?",
    "Which season comes after winter?",
    "What is the first month of the year?",
    "What day comes after Monday?",
    "What is the freezing point of water in Fahrenheit?",
    "Give me three tips for staying healthy.",
    "Explain what photosynthesis is in one sentence.",
    "Write a short poem about the ocean.",
    "Describe a cat in two sentences.",
    "What is the difference between weather and climate?",
    "Why is the sky blue?",
    "What causes the seasons on Earth?",
    "Give an example of a renewable energy source.",
    "What is a noun?",
    "What is a verb? Give an example.",
    "Suggest a name for a pet dog.",
    "How do I boil an egg?",
    "What should I pack for a beach trip?",
    "Tell me a fun fact about elephants.",
    "What is gravity?",
    "Why do we need sleep?",
    "What is the internet?",
    "What does a doctor do?",
    "Summarize the story of Cinderella in two sentences.",
    "Translate 'thank you' into Spanish.",
    "What is the plural of mouse?",
    "Write a sentence using the word 'bright'.",
    "Name three primary colors.",
    "Name a fruit that is red.",
    "What is the boiling point of water in Fahrenheit?",
    "How many hours are in a week?",
    "What is the capital of South Korea?",
    "What is the smallest prime number?",
    "What is the largest country by area?",
    "Which ocean lies between Europe and North America?",
    "What instrument has 88 keys?",
    "What is the hardest natural substance?",
    "What do you call a baby cat?",
    "What is H2O commonly called?",
    "Where is the Eiffel Tower?",
    "Who invented the telephone?",
    "What is the main ingredient in bread?",
    "How many letters are in the English alphabet?",
    "Can you recommend a good habit to start in the morning?",
    "What is a computer?",
    "Write a haiku about autumn.",
    "What is the sun?",
)


def replay(target: str, max_new_tokens: int = 128) -> list[dict]:
    """[{"messages": [user, assistant]}] for each prompt `target` (a ready model's name, a .gguf
    file or a run) answers greedily within `max_new_tokens`, in PROMPTS order."""
    from modelworks.chat_template import engine_chat_text
    from modelworks.serve.batch import complete_all
    from modelworks.serve.sampling import SamplingParams
    from modelworks.tasks.chat_serve import load_chat_engine

    engine = load_chat_engine(target, "cpu")
    params = SamplingParams(max_tokens=max_new_tokens, temperature=0.0)
    chats = [engine_chat_text(engine, [{"role": "user", "content": p}]) for p in PROMPTS]
    done = complete_all(engine, [(engine.encode(c), params) for c in chats])
    texts, finish = [c.text for c in done], [c.finish_reason for c in done]
    return [
        {"messages": [{"role": "user", "content": p}, {"role": "assistant", "content": t.strip()}]}
        for p, t, f in zip(PROMPTS, texts, finish, strict=True)
        if f == "stop" and t.strip()
    ]


def main(argv: list[str]) -> None:
    if len(argv) != 2:
        raise SystemExit("usage: python -m modelworks.tasks.chat_replay MODEL OUT.jsonl")
    rows = replay(argv[0])
    Path(argv[1]).write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))


if __name__ == "__main__":
    main(sys.argv[1:])
