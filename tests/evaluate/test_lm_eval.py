"""lm-evaluation-harness runs a modelworks run through the registered "modelworks" model class,
fully offline, on a local task (`dataset_path: json`), and agrees with our own harness."""

import json
import os
import tempfile

import numpy as np
import pytest

# before lm_eval (and the datasets library under it) reads them: no hub, caches in a temp folder
_cache = tempfile.mkdtemp(prefix="mw-lm-eval-")
os.environ.update(
    HF_DATASETS_OFFLINE="1",
    HF_HUB_OFFLINE="1",
    HF_DATASETS_CACHE=os.path.join(_cache, "datasets"),
    HF_EVALUATE_OFFLINE="1",
)
lm_eval = pytest.importorskip("lm_eval")

import torch  # noqa: E402

from modelworks.config import HarnessTaskConfig  # noqa: E402
from modelworks.evaluate.harness import run_task  # noqa: E402
from modelworks.evaluate.lm import LMScorer  # noqa: E402
from modelworks.models.gpt import GPTConfig  # noqa: E402
from modelworks.models.registry import build_model  # noqa: E402
from modelworks.preprocess.tokenizer import train_bpe  # noqa: E402
from modelworks.train.checkpoint import save_model  # noqa: E402


def _tiny_run(run_dir):
    """A run folder as the pipeline leaves it (pretrain checkpoint, preprocess tokenizer), with a
    seeded untrained GPT: both harnesses must agree on whatever the model says."""
    import pydoc_data.topics

    tok = train_bpe(list(pydoc_data.topics.topics.values())[:60], 400)
    (run_dir / "preprocess").mkdir(parents=True)
    tok.save(str(run_dir / "preprocess" / "tokenizer.json"))
    torch.manual_seed(0)
    cfg = GPTConfig(
        vocab_size=tok.get_vocab_size(),
        context_len=64,
        n_layer=2,
        n_head=2,
        n_kv_head=2,
        d_model=32,
        init_std=0.5,
    )
    save_model(run_dir / "pretrain", build_model(cfg))
    return run_dir


def test_lm_eval_accuracy_equals_ours(tmp_path):
    from lm_eval.tasks import TaskManager

    import modelworks.evaluate.lm_eval_model  # noqa: F401 (registers "modelworks")

    run_dir = _tiny_run(tmp_path / "run")
    rng = np.random.default_rng(0)
    words = ["function", "class", "return", "module", "string", "list", "value", "object"]
    items = []
    for k in range(16):
        choices = [str(w) for w in rng.choice(words, 4, replace=False)]
        items.append(
            {
                "question": f"The {choices[k % 4]} of the",
                "choices": choices,
                "answer": int(rng.integers(0, 4)),
            }
        )
    data = tmp_path / "quiz.jsonl"
    data.write_text("\n".join(json.dumps(i) for i in items) + "\n")
    tasks = tmp_path / "tasks"
    tasks.mkdir()
    (tasks / "quiz.yaml").write_text(
        "task: mw_quiz\n"
        "dataset_path: json\n"
        f"dataset_kwargs:\n  data_files:\n    test: {data}\n"
        "test_split: test\n"
        "output_type: multiple_choice\n"
        'doc_to_text: "{{question}}"\n'
        'doc_to_choice: "{{choices}}"\n'
        'doc_to_target: "{{answer}}"\n'
        "metric_list:\n"
        "  - {metric: acc, aggregation: mean, higher_is_better: true}\n"
        "  - {metric: acc_norm, aggregation: mean, higher_is_better: true}\n"
    )
    out = lm_eval.simple_evaluate(
        model="modelworks",
        model_args=f"pretrained={run_dir},device=cpu,batch_size=8",
        tasks=["mw_quiz"],
        task_manager=TaskManager(include_path=str(tasks), include_defaults=False),
        log_samples=True,
    )
    theirs = out["results"]["mw_quiz"]
    ours, records = run_task(
        LMScorer.from_run(run_dir, "cpu"),
        HarnessTaskConfig(path=str(data), type="multiple_choice"),
        n_boot=0,
    )
    assert theirs["acc,none"] == pytest.approx(ours["acc"], abs=1e-12)
    assert theirs["acc_norm,none"] == pytest.approx(ours["acc_norm"], abs=1e-12)
    # item by item, the same loglikelihoods
    samples = sorted(out["samples"]["mw_quiz"], key=lambda s: s["doc_id"])
    assert len(samples) == len(records) == 16
    for s, r in zip(samples, records, strict=True):
        lls = [float(resp[0][0]) for resp in s["resps"]]
        assert lls == pytest.approx(r["loglikelihoods"], rel=1e-6)
