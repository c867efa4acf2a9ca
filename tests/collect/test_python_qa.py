"""The python_qa source: answers come from Python's own docs, held-out topics land in test only."""

import builtins
import inspect
import json

import pyarrow.parquet as pq

from modelworks.collect import collect
from modelworks.collect.python_qa import HELD_OUT, first_sentence, python_qa
from modelworks.config import Config


def test_topics_decide_splits_and_answers_come_from_the_docs():
    rows = list(python_qa())
    topics = {r["topic"] for r in rows}
    assert {"builtins", "keywords", "modules", "json", "email"} <= topics
    for r in rows:  # held-out topics are test, all others are left for train/val
        assert r["split"] == ("test" if r["topic"] in HELD_OUT else None), r["id"]
    by_id = {r["id"]: json.loads(r["messages"]) for r in rows}
    user, assistant = by_id["python_qa:builtins:len"]
    assert user["content"] == "What does the built-in `len` do?"
    assert assistant["content"] == first_sentence(inspect.getdoc(builtins.len))
    assert assistant["content"].startswith("Return the number of items")
    _, answer = by_id["python_qa:json:json.decoder?"]
    assert answer["content"] == "json.decoder"
    _, answer = by_id["python_qa:keywords:while"]
    assert '"while" statement' in answer["content"]
    assert len(by_id) == len(rows)  # ids are unique


def test_collect_writes_no_held_out_topic_outside_test(tmp_path):
    cfg = Config.model_validate(
        {"name": "qa", "task": "chat", "runs_dir": str(tmp_path),
         "collect": {"sources": [{"type": "python_qa"}]}}
    )  # fmt: skip
    collect(cfg)
    rows = pq.read_table(tmp_path / "qa" / "collect" / "chats.parquet").to_pylist()
    test = [r for r in rows if r["split"] == "test"]
    rest = [r for r in rows if r["split"] != "test"]
    assert test and rest
    assert {r["topic"] for r in test} == set(HELD_OUT)
    assert not {r["topic"] for r in rest} & set(HELD_OUT)
    assert all(r["split"] is None for r in rest)


def test_a_system_turn_opens_every_conversation_when_asked(tmp_path):
    """`system` puts the task's instruction first in every conversation (and nothing else
    changes); without it there is no system turn (the model's template adds its default)."""
    plain = list(python_qa())
    assert all(json.loads(r["messages"])[0]["role"] == "user" for r in plain)
    cfg = Config.model_validate(
        {"name": "qa", "task": "chat", "runs_dir": str(tmp_path),
         "collect": {"sources": [{"type": "python_qa", "system": "Answer from the docs."}]}}
    )  # fmt: skip
    collect(cfg)
    rows = pq.read_table(tmp_path / "qa" / "collect" / "chats.parquet").to_pylist()
    assert len(rows) == len(plain)
    by_id = {r["id"]: json.loads(r["messages"]) for r in plain}
    for r in rows:
        system, *rest = json.loads(r["messages"])
        assert system == {"role": "system", "content": "Answer from the docs."}
        assert rest == by_id[r["id"]]
