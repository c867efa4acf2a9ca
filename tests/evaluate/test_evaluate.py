"""The evaluate stage: metrics with bootstrap intervals, bits-per-byte, harness tasks, the report,
`modelworks compare`, and one clear line for what cannot be evaluated."""

import json
import math
import re
import shutil
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from modelworks.config import HarnessTaskConfig, load_config
from modelworks.evaluate import check_evaluable
from modelworks.evaluate.harness import run_task
from modelworks.evaluate.lm import LMScorer, document_scores
from modelworks.evaluate.metrics import bits_per_byte, bootstrap, classification_cis, ratio_ci
from modelworks.evaluate.report import EvaluateError
from modelworks.pipeline import run
from modelworks.preprocess.pack import TokenShards
from modelworks.preprocess.tokenizer import eot_id, train_bpe
from modelworks.serve.engine import Engine
from tests.conftest import cli, tiny_overrides


def _mc_items(texts: list[str], n: int, rng) -> list[dict]:
    """Real continuations of held-out text against random-letter strings of the same length."""
    items = []
    for k in range(n):
        t = texts[k % len(texts)]
        a = 200 + 97 * k % max(1, len(t) - 300)
        q, gold = t[a : a + 40], t[a + 40 : a + 60].strip() or "the"
        junk = ["".join(rng.choice(list("qxzjkvw"), len(gold))) for _ in range(3)]
        ans = k % 4
        choices = junk[:ans] + [gold] + junk[ans:]
        items.append({"question": q, "choices": choices, "answer": ans})
    return items


@pytest.fixture(scope="module")
def lm_run(tmp_path_factory):
    """A tiny language model trained a little, evaluated with a multiple-choice task."""
    root = tmp_path_factory.mktemp("evaluate")
    overrides = tiny_overrides(root / "runs", "a") + ["pretrain.steps=60", "evaluate.batches=0"]
    cfg = load_config(None, overrides)
    run(cfg)
    docs = pd.read_parquet(cfg.run_dir / "preprocess" / "documents.parquet")
    texts = docs[docs["split"] == "val"]["text"].tolist()
    rng = np.random.default_rng(0)
    quiz = root / "quiz.jsonl"
    quiz.write_text("\n".join(json.dumps(i) for i in _mc_items(texts, 24, rng)) + "\n")
    return SimpleNamespace(cfg=cfg, root=root, quiz=quiz, texts=texts, overrides=overrides)


def test_metrics_json_has_perplexity_bpb_and_intervals(lm_run):
    m = json.loads((lm_run.cfg.run_dir / "evaluate" / "metrics.json").read_text())
    assert m["split"] == "val" and m["tokens"] > 1000
    assert m["perplexity"] == pytest.approx(math.exp(m["loss"]))
    for key in ("loss", "perplexity", "bits_per_byte"):
        lo, hi = m[f"{key}_ci"]
        assert lo <= m[key] <= hi, key
    # every validation token is scored once: the split's content tokens, its texts' bytes
    val = TokenShards(lm_run.cfg.run_dir / "preprocess" / "tokens", "val")
    content = [d[d != val.eot_id] for d in val.documents()]
    assert m["tokens"] == sum(len(c) for c in content)
    assert m["bytes"] == sum(len(t.encode()) for t in lm_run.texts)
    assert m["bits_per_byte"] == pytest.approx(m["loss"] * m["tokens"] / m["bytes"] / math.log(2))


def test_scorer_logprobs_match_a_hand_computation(lm_run):
    scorer = LMScorer.from_run(lm_run.cfg.run_dir, "cpu")
    text = "Return the list of values."
    ids = [scorer.start_id, *scorer.encode(text)]
    with torch.no_grad():
        logp = torch.log_softmax(scorer.model(torch.tensor([ids])).float(), -1)[0]
    hand = sum(logp[i, ids[i + 1]].item() for i in range(len(ids) - 1))
    assert scorer.loglikelihood_rolling([text])[0] == pytest.approx(hand, rel=1e-5)
    # bits per byte of that one text, by hand
    nats, n_tok, n_bytes, _ = document_scores(scorer, [np.array(ids[1:] + [0])], scorer.start_id)
    assert n_bytes[0] == len(text.encode()) and n_tok[0] == len(ids) - 1
    assert bits_per_byte(nats.sum(), n_bytes.sum()) == pytest.approx(
        -hand / len(text.encode()) / math.log(2), rel=1e-5
    )
    # a continuation's loglikelihood is the tail of the whole text's
    ll, _ = scorer.loglikelihood([("Return the", " list of values.")])[0]
    n_ctx = len(scorer.encode("Return the"))
    assert ll == pytest.approx(sum(logp[i, ids[i + 1]].item() for i in range(n_ctx, len(ids) - 1)))


class _Unigram(nn.Module):
    """Token frequencies as a language model: the same log-probs at every position."""

    def __init__(self, logp: torch.Tensor) -> None:
        super().__init__()
        self.logp = nn.Parameter(logp)
        self.cfg = SimpleNamespace(context_len=64)

    def forward(self, x):
        return self.logp.expand(*x.shape, -1)


def test_bits_per_byte_is_comparable_across_tokenizers():
    # text with a known entropy: i.i.d. letters from 4, 2 bits per byte. A unigram model over
    # each tokenizer's tokens gets close to it, whatever the tokens are; per token they differ.
    rng = np.random.default_rng(0)

    def doc(n):
        return "".join(rng.choice(list("acgt"), n))

    train, val = [doc(3000) for _ in range(30)], [doc(2000) for _ in range(4)]
    bpb, per_token = [], []
    for vocab in (64, 400):
        tok = train_bpe(train, vocab)
        eot = eot_id(tok)
        counts = np.bincount(
            [t for d in train for t in tok.encode(d).ids], minlength=tok.get_vocab_size()
        )
        logp = torch.tensor(np.log((counts + 0.01) / (counts + 0.01).sum()), dtype=torch.float32)
        scorer = LMScorer(_Unigram(logp), tok, eot)
        docs = [np.array([*tok.encode(d).ids, eot]) for d in val]
        nats, n_tok, n_bytes, _ = document_scores(scorer, docs, eot)
        assert n_bytes.sum() == sum(len(d) for d in val)
        bpb.append(bits_per_byte(nats.sum(), n_bytes.sum()))
        per_token.append(nats.sum() / n_tok.sum())
    assert per_token[1] > 2 * per_token[0], per_token  # per-token loss is not comparable
    assert all(abs(b - 2.0) < 0.2 for b in bpb), bpb  # bits per byte is
    assert abs(bpb[0] - bpb[1]) < 0.2, bpb


def test_bootstrap_intervals_cover_the_truth_and_shrink_with_data():
    rng = np.random.default_rng(1)
    widths = []
    for n in (100, 2000):
        y = rng.integers(0, 3, n)
        pred = np.where(rng.random(n) < 0.7, y, (y + 1) % 3)  # 70% right
        cis = classification_cis(y, pred, 3, n_boot=500, seed=0)
        lo, hi = cis["accuracy_ci"]
        assert lo < 0.7 < hi and lo <= (y == pred).mean() <= hi
        assert cis["macro_f1_ci"][0] < cis["macro_f1_ci"][1]
        widths.append(hi - lo)
    assert widths[1] < widths[0] / 2
    # a ratio statistic (loss per token) resamples whole documents
    nats, toks = np.array([10.0, 20.0, 30.0]), np.array([5, 10, 15])
    assert ratio_ci(nats, toks, n_boot=200) == pytest.approx((2.0, 2.0))
    assert bootstrap(lambda i: float(len(i)), 1) == (1.0, 1.0)


def test_multiple_choice_prefers_real_text(lm_run):
    scorer = LMScorer.from_run(lm_run.cfg.run_dir, "cpu")
    task = HarnessTaskConfig(path=str(lm_run.quiz), type="multiple_choice")
    result, records = run_task(scorer, task, n_boot=200)
    assert result["items"] == 24
    assert result["acc"] >= 0.8 and result["acc_norm"] >= 0.8, result  # chance is 0.25
    assert result["acc_ci"][0] <= result["acc"] <= result["acc_ci"][1]
    # acc counts the items whose gold choice has the highest loglikelihood
    assert result["acc"] == np.mean([np.argmax(r["loglikelihoods"]) == r["gold"] for r in records])


def test_exact_match_agrees_with_the_generation_engine(lm_run, tmp_path):
    engine = Engine.from_run(lm_run.cfg.run_dir, "cpu")
    prompts = ["The list", "def ", "Return the", "A class", "import", "if x"]
    items = []
    for k, p in enumerate(prompts):
        out = engine.generate(p, 6, temperature=0.0).text.split("\n")[0].strip()
        items.append({"question": p, "answer": out if k % 2 == 0 else out + " not this"})
    path = tmp_path / "qa.jsonl"
    path.write_text("\n".join(json.dumps(i) for i in items))
    scorer = LMScorer.from_run(lm_run.cfg.run_dir, "cpu")
    task = HarnessTaskConfig(path=str(path), type="exact_match", max_new_tokens=6)
    result, _ = run_task(scorer, task, n_boot=0)
    assert result["exact_match"] == 0.5 and "exact_match_ci" not in result


def test_evaluate_with_tasks_writes_a_self_contained_report(lm_run):
    cfg = load_config(
        None,
        lm_run.overrides
        + [
            f"evaluate.tasks=[{{path: {lm_run.quiz}, type: multiple_choice}}]",
        ],
    )
    from modelworks.evaluate import evaluate

    evaluate(cfg)
    out = cfg.run_dir / "evaluate"
    m = json.loads((out / "metrics.json").read_text())
    assert m["tasks"]["quiz"]["acc"] >= 0.8
    md = (out / "report.md").read_text()
    for heading in ("Data funnel", "Interpretability", "Tasks", "Config", "Sample generations"):
        assert f"## {heading}" in md, heading
    html = (out / "report.html").read_text()
    images = re.findall(r"<img [^>]*src='([^']+)'", html)
    assert len(images) >= 4 and all(s.startswith("data:image/png;base64,") for s in images)
    assert "Learning rate and throughput" in html and "bits per byte" in html
    explain = json.loads((out / "explain.json").read_text())
    assert explain["n_layer"] == 2 and len(explain["attributions"]) == len(explain["tokens"])


def test_compare_lists_differing_config_and_metrics(lm_run, tmp_path):
    cfg_b = load_config(None, tiny_overrides(lm_run.root / "runs", "b") + ["pretrain.lr=0.001"])
    for stage in ("collect", "preprocess"):  # same data: only pretrain and evaluate run again
        shutil.copytree(lm_run.cfg.run_dir / stage, cfg_b.run_dir / stage)
    assert run(cfg_b)["preprocess"] == "skipped"
    out = tmp_path / "cmp"
    proc = cli("compare", str(lm_run.cfg.run_dir), str(cfg_b.run_dir), "--out", str(out))
    rows = {line.split("|")[1].strip(): line for line in proc.stdout.splitlines() if "|" in line}
    assert "pretrain.lr" in rows and "pretrain.steps" in rows and "model.d_model" not in rows
    assert "bits_per_byte" in rows and "perplexity" in rows
    data = json.loads((out / "compare.json").read_text())
    assert data["config"]["pretrain.steps"] == [60, 16]
    a = json.loads((lm_run.cfg.run_dir / "evaluate" / "metrics.json").read_text())
    assert data["metrics"]["loss"][0]["value"] == a["loss"]
    assert (out / "loss_curves.png").stat().st_size > 10_000


def test_bad_input_gets_one_clear_line(lm_run, tmp_path):
    # a run with no checkpoint
    proc = cli("evaluate", *tiny_overrides(tmp_path / "runs", "empty"), check=False)
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and "no checkpoint" in proc.stderr
    # a split that does not exist, a split that is empty
    runs = lm_run.root / "runs"
    cfg = load_config(None, lm_run.overrides + ["evaluate.split=test"])
    from modelworks.evaluate import evaluate

    with pytest.raises(Exception, match="no split 'test'"):
        evaluate(cfg)
    shutil.copytree(runs / "a", tmp_path / "runs" / "c")
    meta_path = tmp_path / "runs" / "c" / "preprocess" / "tokens" / "meta.json"
    meta = json.loads(meta_path.read_text())
    meta["splits"]["test"] = []
    meta_path.write_text(json.dumps(meta))
    cfg = load_config(None, tiny_overrides(tmp_path / "runs", "c") + ["evaluate.split=test"])
    with pytest.raises(EvaluateError, match="the 'test' split is empty"):
        evaluate(cfg)
    # metrics that do not fit the task
    cfg = load_config(
        None,
        tiny_overrides(runs, "a")
        + [
            "task=image_classification",
            f"evaluate.tasks=[{{path: {lm_run.quiz}, type: exact_match}}]",
        ],
    )
    with pytest.raises(EvaluateError, match="does not fit"):
        check_evaluable(cfg)
    # a task file with an item that lacks its answer
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"question": "q", "choices": ["a", "b"], "answer": 0}\n{"question": "q"}\n')
    scorer = LMScorer.from_run(lm_run.cfg.run_dir, "cpu")
    with pytest.raises(EvaluateError, match=r"bad.jsonl:2: no key 'answer'"):
        run_task(scorer, HarnessTaskConfig(path=str(bad), type="multiple_choice"))
