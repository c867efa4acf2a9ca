"""The dpo and grpo tasks end to end on a tiny random GPT (no pretrain: a model folder built here):
DPO learns held-out preferences with the reference cached (full) or adapters off (LoRA); bad
pairs are skipped, counted, truncated or refused in one line; GRPO raises a user reward (by
import path) within a fixed number of steps; a reward that raises does not lose the step."""

from __future__ import annotations

import json
import logging
import random

import pytest

from modelworks import load_config
from modelworks.collect.preference import (
    exact_match_reward,
    final_answer,
    word_problems,
)
from modelworks.errors import ConfigError, ModelworksError
from modelworks.models.gpt import GPTConfig
from modelworks.models.registry import build_model
from modelworks.pipeline import run, stage_functions
from modelworks.preprocess.tokenizer import train_bpe
from modelworks.train.checkpoint import save_model

COLOURS = ["red", "blue", "green", "gold", "pink", "grey", "teal", "navy"]
THINGS = ["cat", "car", "cup", "hat", "box", "pen", "map", "owl", "fig", "jam"]


def _base(tmp, context: int = 64):
    """A random tiny GPT and a BPE tokenizer trained on the toy vocabulary, as a model folder."""
    texts = [f"User: What colour is the {t}?\n\nAssistant: the {t} is {c} 12 34 #### 5"
             for t in THINGS for c in COLOURS]  # fmt: skip
    tok = train_bpe(texts * 4, 320)
    import torch

    torch.manual_seed(0)
    cfg = GPTConfig(vocab_size=tok.get_vocab_size(), context_len=context, n_layer=2, n_head=4,
                    n_kv_head=2, d_model=32)  # fmt: skip
    folder = tmp / "base"
    save_model(folder, build_model(cfg))
    tok.save(str(folder / "tokenizer.json"))
    return folder


def _pairs(path, n: int, seed: int = 0):
    """The chosen reply names the thing's true colour (its place in COLOURS is fixed by the
    thing), the rejected one another colour; messages-style and plain records mixed."""
    rng = random.Random(seed)
    with open(path, "w") as f:
        for i in range(n):
            t = rng.choice(THINGS)
            good = COLOURS[THINGS.index(t) % 2]
            bad = rng.choice([c for c in COLOURS if c != good])
            q = {"role": "user", "content": f"What colour is the {t}?"}
            if i % 2:
                rec = {
                    "chosen": [q, {"role": "assistant", "content": f"the {t} is {good}"}],
                    "rejected": [q, {"role": "assistant", "content": f"the {t} is {bad}"}],
                }
            else:
                rec = {"prompt": q["content"], "chosen": f"the {t} is {good}",
                       "rejected": f"the {t} is {bad}"}  # fmt: skip
            f.write(json.dumps(rec) + "\n")


def _cfg(tmp, name, task, data_overrides, *extra):
    return load_config(
        [],
        [
            f"runs_dir={tmp / 'runs'}", "threads=1", f"name={name}", f"task={task}",
            *data_overrides, "preprocess.val_fraction=0.2", f"finetune.from={tmp / 'base'}",
            "finetune.seq_len=64", "finetune.batch_size=8", "finetune.warmup_steps=2",
            "finetune.log_every=1", "evaluate.bootstrap=200", "evaluate.limit=8", *extra,
        ],
    )  # fmt: skip


def _metrics(run_dir, stage="finetune"):
    path = run_dir / stage / ("metrics.jsonl" if stage == "finetune" else "metrics.json")
    if stage == "finetune":
        return [json.loads(line) for line in path.read_text().splitlines()]
    return json.loads(path.read_text())


@pytest.mark.parametrize("method", ["full", "lora"])
def test_dpo_learns_held_out_preferences(tmp_path, method):
    _base(tmp_path)
    data = tmp_path / "pairs.jsonl"
    _pairs(data, 240)
    steps = 40
    lr = "3e-3" if method == "full" else "2e-2"
    cfg = _cfg(
        tmp_path, f"dpo_{method}", "dpo",
        ["collect.sources.0.type=preference", f"collect.sources.0.paths=[{data}]"],
        f"finetune.method={method}", f"finetune.steps={steps}", f"finetune.lr={lr}",
        f"finetune.eval_every={steps}", f"finetune.ckpt_every={steps}", "tasks.dpo.beta=0.5",
        "finetune.lora_dropout=0",
    )  # fmt: skip
    run(cfg, force=())
    log = _metrics(cfg.run_dir)
    summary = json.loads((cfg.run_dir / "finetune" / "manifest.json").read_text())["summary"]
    want = "cached log-probs" if method == "full" else "adapters switched off"
    assert summary["reference"] == want
    first = log[0]
    assert abs(first["train_dpo_loss"] - 0.6931) < 1e-3  # policy == reference at step 1
    val = [r for r in log if "val_reward_accuracy" in r][-1]
    assert val["val_reward_accuracy"] >= 0.85, val
    assert val["val_margin"] > 0.5 and val["val_loss"] < 0.5, val
    m = _metrics(cfg.run_dir, "evaluate")  # the val split: the source names no test split
    assert m["split"] == "val" and m["reward_accuracy"] >= 0.85
    assert m["reward_accuracy_ci"][0] > 0.5
    assert m["preference_accuracy"] > m["base_preference_accuracy"]
    assert (cfg.run_dir / "evaluate" / "preference_curves.png").is_file()


def test_dpo_bad_pairs_are_skipped_truncated_or_refused(tmp_path):
    _base(tmp_path, context=32)
    data = tmp_path / "pairs.jsonl"
    _pairs(data, 40)
    with open(data, "a") as f:
        f.write(json.dumps({"prompt": "same?", "chosen": "the cat", "rejected": "the cat"}) + "\n")
        long = " ".join(["the red cat is blue"] * 30)
        f.write(json.dumps({"prompt": long, "chosen": "the cat is red", "rejected": "no"}) + "\n")
    cfg = _cfg(
        tmp_path, "bad", "dpo",
        ["collect.sources.0.type=preference", f"collect.sources.0.paths=[{data}]"],
        "finetune.steps=2", "finetune.seq_len=32", "finetune.batch_size=4",
    )  # fmt: skip
    for stage in ("collect", "preprocess", "finetune"):
        stage_functions()[stage](cfg)
    pre = json.loads((cfg.run_dir / "preprocess" / "manifest.json").read_text())["summary"]
    assert pre["skipped_chosen_equals_rejected"] == 1
    ft = json.loads((cfg.run_dir / "finetune" / "manifest.json").read_text())["summary"]
    assert ft["train_truncated"] + ft["val_truncated"] == 1
    missing = tmp_path / "missing.jsonl"
    missing.write_text(json.dumps({"prompt": "hi", "chosen": "yes"}) + "\n")
    source = ["collect.sources.0.type=preference", f"collect.sources.0.paths=[{missing}]"]
    cfg = _cfg(tmp_path, "missing", "dpo", source)
    with pytest.raises(ModelworksError, match=rf"{missing}:1: field 'rejected' is missing"):
        stage_functions()["collect"](cfg)


def test_word_problems_split_by_template_and_corrupt_the_answer():
    rows = list(word_problems(100))
    test_topics = {r["topic"] for r in rows if r["split"] == "test"}
    train_topics = {r["topic"] for r in rows if r["split"] is None}
    assert test_topics and not test_topics & train_topics
    for r in rows:
        assert final_answer(r["chosen"]) == r["answer"]
        assert final_answer(r["rejected"]) != r["answer"]
        assert exact_match_reward("", r["chosen"], r["answer"]) == 1.0
        assert exact_match_reward("", r["rejected"], r["answer"]) == 0.0
    assert final_answer("so 1,200.0 apples\n#### 1,200.") == "1200"
    assert final_answer("no marker 12") is None


REWARDS = '''
def digits(prompt, completion, answer):
    """Share of the reply's characters that are digits: what GRPO should raise."""
    return sum(ch.isdigit() for ch in completion) / max(len(completion), 1)


def flaky(prompt, completion, answer):
    if "cup" in prompt:
        raise RuntimeError("boom")
    if "hat" in prompt:
        return "not a number"
    return float(len(completion) > 3)
'''


def _prompts(path, n: int):
    rng = random.Random(0)
    with open(path, "w") as f:
        for _ in range(n):
            t = rng.choice(THINGS)
            f.write(json.dumps({"prompt": f"Say a number about the {t}", "answer": "5"}) + "\n")


def test_grpo_raises_a_user_reward_within_a_fixed_number_of_steps(tmp_path, monkeypatch):
    (tmp_path / "toy_rewards.py").write_text(REWARDS)
    monkeypatch.syspath_prepend(str(tmp_path))
    _base(tmp_path)
    data = tmp_path / "prompts.jsonl"
    _prompts(data, 100)
    cfg = _cfg(
        tmp_path, "grpo", "grpo",
        ["collect.sources.0.type=preference", f"collect.sources.0.paths=[{data}]"],
        "finetune.steps=40", "finetune.lr=1e-2", "finetune.batch_size=4",
        "finetune.eval_every=40", "finetune.ckpt_every=40", "tasks.grpo.group_size=8",
        "tasks.grpo.reward=toy_rewards:digits", "tasks.grpo.max_new_tokens=8",
        "tasks.grpo.kl_coef=0.01", "tasks.grpo.val_prompts=8", "finetune.method=full",
    )  # fmt: skip
    for stage in ("collect", "preprocess", "finetune"):
        stage_functions()[stage](cfg)
    log = [r for r in _metrics(cfg.run_dir) if "train_reward" in r]
    early = sum(r["train_reward"] for r in log[:8]) / 8
    late = sum(r["train_reward"] for r in log[-8:]) / 8
    assert late > early + 0.2 and late > 3 * early, (early, late)
    assert all(r["train_kl"] >= 0 for r in log) and log[-1]["train_kl"] > 0
    summary = json.loads((cfg.run_dir / "finetune" / "manifest.json").read_text())["summary"]
    assert summary["reference"] == "frozen copy"


def test_grpo_reward_that_raises_is_named_in_one_line_and_the_step_goes_on(
    tmp_path, monkeypatch, caplog
):
    (tmp_path / "toy_rewards.py").write_text(REWARDS)
    monkeypatch.syspath_prepend(str(tmp_path))
    _base(tmp_path)
    data = tmp_path / "prompts.jsonl"
    _prompts(data, 60)
    cfg = _cfg(
        tmp_path, "flaky", "grpo",
        ["collect.sources.0.type=preference", f"collect.sources.0.paths=[{data}]"],
        "finetune.steps=3", "finetune.batch_size=8", "finetune.eval_every=3",
        "finetune.ckpt_every=3", "tasks.grpo.group_size=2", "tasks.grpo.max_new_tokens=4",
        "tasks.grpo.reward=toy_rewards:flaky", "finetune.method=lora", "tasks.grpo.val_prompts=4",
    )  # fmt: skip
    for stage in ("collect", "preprocess"):
        stage_functions()[stage](cfg)
    with caplog.at_level(logging.WARNING, logger="modelworks"):
        stage_functions()["finetune"](cfg)
    lines = [r.getMessage() for r in caplog.records if "reward toy_rewards:flaky" in r.getMessage()]
    assert any("RuntimeError: boom" in m and "the cup" in m for m in lines), lines
    assert any("not a number" in m and "the hat" in m for m in lines), lines
    assert all("\n" not in m for m in lines)
    log = [r for r in _metrics(cfg.run_dir) if "train_reward" in r]
    assert len(log) == 3 and any(r["train_reward_failures"] for r in log)
    summary = json.loads((cfg.run_dir / "finetune" / "manifest.json").read_text())["summary"]
    assert summary["steps"] == 3 and summary["reference"] == "adapters switched off"
    bad = load_config([], [f"runs_dir={tmp_path / 'runs'}", "name=x", "task=grpo",
                           "tasks.grpo.reward=toy_rewards_nope:fn"])  # fmt: skip
    from modelworks.tasks.grpo import load_reward, options

    with pytest.raises(ModelworksError, match="tasks.grpo.reward='toy_rewards_nope:fn'"):
        load_reward(options(bad).reward)


@pytest.mark.parametrize("task", ["dpo", "grpo"])
def test_pretrain_of_a_tuning_only_task_is_one_line(tmp_path, task):
    from modelworks.tasks import get_task

    cfg = load_config(None, [f"runs_dir={tmp_path}", f"task={task}"])
    with pytest.raises(ConfigError, match=f"task '{task}' tunes a pretrained model") as e:
        get_task(task).setup_training(cfg, cfg.run_dir, "cpu")
    assert "\n" not in str(e.value)
