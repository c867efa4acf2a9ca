"""Translation: parallel-text reading, the target-only loss, beam search, sacrebleu scores, and a
tiny pretrain -> fine-tune -> evaluate run on the built-in numbers corpus."""

from __future__ import annotations

import json

import pytest
import sacrebleu
import torch
import torch.nn.functional as F

from modelworks import load_config
from modelworks.artifacts import sha256_file
from modelworks.collect import CollectError, collect
from modelworks.collect.parallel import number_words, read_parallel
from modelworks.evaluate.translation_metrics import DictionaryBaseline, corpus_scores
from modelworks.models.gpt import GPT, GPTConfig
from modelworks.pipeline import run
from modelworks.preprocess import preprocess
from modelworks.preprocess.tokenizer import train_bpe
from modelworks.serve.beam import beam_search, greedy_decode, sequence_logprob
from modelworks.tasks.language_modeling import lm_loss
from modelworks.tasks.translation import encode_pairs, load_split
from modelworks.train.sft import pack_rows


def _cfg(tmp, name, data=None, **extra):
    values = {
        "runs_dir": tmp / "runs",
        "name": name,
        "task": "translation",
        "threads": 1,
        "collect.sources.0.type": "parallel",
        "preprocess.val_fraction": 0.1,
        "preprocess.test_fraction": 0.1,
        "preprocess.vocab_size": 300,
    }
    if data is not None:
        values["collect.sources.0.paths"] = f"[{data}]"
    values.update(extra)
    return load_config(None, [f"{k}={v}" for k, v in values.items()])


# ------------------------------------------------------------------------------ reading data


def test_reads_tsv_with_columns_and_header_and_jsonl(tmp_path):
    (tmp_path / "a.tsv").write_text("Hi.\t你好。\nRun!\t跑！\n", encoding="utf-8")
    rows = list(read_parallel([str(tmp_path / "a.tsv")], "en", "zh", ["en", "zh"], "src"))
    assert [(r["text"], r["target"]) for r in rows] == [("Hi.", "你好。"), ("Run!", "跑！")]
    # the other direction is a config choice, not another file
    rows = list(read_parallel([str(tmp_path / "a.tsv")], "zh", "en", ["en", "zh"], "src"))
    assert rows[0]["text"] == "你好。" and rows[0]["target"] == "Hi."
    (tmp_path / "b.tsv").write_text("src\ttgt\nsee\tvoir\n")
    rows = list(read_parallel([str(tmp_path / "b.tsv")], "src", "tgt", [], "src"))
    assert [(r["text"], r["target"]) for r in rows] == [("see", "voir")]
    (tmp_path / "c.jsonl").write_text('{"s": "cat", "t": "chat"}\n\n{"s": "dog", "t": ""}\n')
    rows = list(read_parallel([str(tmp_path / "c.jsonl")], "s", "t", [], "src"))
    assert [(r["text"], r["target"]) for r in rows] == [("cat", "chat"), ("dog", "")]


def test_missing_field_or_column_names_file_and_field(tmp_path):
    (tmp_path / "c.jsonl").write_text('{"s": "cat", "t": "chat"}\n')
    with pytest.raises(ValueError, match=r"c\.jsonl: no row has the field 'target'"):
        list(read_parallel([str(tmp_path / "c.jsonl")], "s", "target", [], "collect.sources.0"))
    (tmp_path / "b.tsv").write_text("src\ttgt\nsee\tvoir\n")
    with pytest.raises(ValueError, match=r"b\.tsv: no column 'en' in its header line"):
        list(read_parallel([str(tmp_path / "b.tsv")], "en", "tgt", [], "collect.sources.0"))
    with pytest.raises(FileNotFoundError, match="no file matches"):
        list(read_parallel([str(tmp_path / "nope.tsv")], "s", "t", [], "collect.sources.0"))
    # through the stage: a one-line CollectError
    fields = {"collect.sources.0.source_field": "s", "collect.sources.0.target_field": "x"}
    cfg = _cfg(tmp_path, "bad", tmp_path / "c.jsonl", **fields)
    with pytest.raises(CollectError, match="no row has the field 'x'"):
        collect(cfg)


def test_empty_sides_are_dropped_and_counted_and_split_by_source(tmp_path):
    lines = [f"w{i} w{i % 7}\tv{i} v{i % 7}" for i in range(60)]
    lines += ["\tonly target", "only source\t", "w1 w1\tanother translation"]
    (tmp_path / "p.tsv").write_text("\n".join(lines) + "\n")
    fields = {
        f"collect.sources.0.{k}": v for k, v in (("source_field", "s"), ("target_field", "t"))
    }
    cfg = _cfg(
        tmp_path, "empty", tmp_path / "p.tsv", **{"collect.sources.0.columns": "[s, t]"}, **fields
    )
    collect(cfg)
    stats = preprocess(cfg)["summary"]
    assert stats["empty_source_dropped"] == 1 and stats["empty_target_dropped"] == 1
    assert sum(stats["split_sizes"].values()) == 61
    splits = {s: load_split(cfg.run_dir, s) for s in ("train", "val", "test")}
    # a source with two translations lands in one split only
    owners = [s for s, (src, _) in splits.items() if "w1 w1" in src]
    assert len(owners) == 1 and splits[owners[0]][0].count("w1 w1") == 2
    assert stats["tokenizer_roundtrip_failures"] == 0


# -------------------------------------------------------------------------- tokens and loss


def test_loss_is_on_target_tokens_and_end_token_only():
    tok = train_bpe(["hello world", "bonjour le monde", "hi", "salut"] * 20, 270)
    eot = tok.token_to_id("<|endoftext|>")
    ex, n_trunc = encode_pairs(tok, eot, ["hello world"], ["bonjour le monde"], "{source} =>", 64)
    p_ids = tok.encode("hello world =>").ids
    t_ids = tok.encode("bonjour le monde").ids
    assert n_trunc == 0
    assert ex[0][0] == [eot, *p_ids, *t_ids]
    assert ex[0][1] == [-100] * len(p_ids) + [*t_ids, eot]
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=tok.get_vocab_size(), context_len=64, n_layer=1, d_model=32))
    inputs, labels = pack_rows(ex, len(ex[0][0]), eot, packing=False)
    logits = model(inputs)[0, len(p_ids) :]
    want = F.cross_entropy(logits, torch.tensor([*t_ids, eot]))
    assert torch.allclose(lm_loss(model, (inputs, labels)), want)
    # too long for the context: cut, and counted
    ex, n_trunc = encode_pairs(tok, eot, ["hello world " * 20], ["salut " * 20], "{source}", 16)
    x, y = ex[0]
    assert n_trunc == 1 and len(x) == 16 and sum(t != -100 for t in y) >= 8


# -------------------------------------------------------------------------------- decoding


PROMPTS = ([0, 5, 7], [0, 1], [0, 9, 9, 3, 2], [0, 4], [0, 3, 3], [0, 8, 1])


@pytest.fixture
def random_gpt():
    torch.set_num_threads(1)  # token-by-token decoding of a tiny model: threads only add waits
    torch.manual_seed(0)
    cfg = GPTConfig(
        vocab_size=12, context_len=48, n_layer=2, n_head=2, n_kv_head=1, d_model=32,
        tie_embeddings=False,
    )  # fmt: skip
    model = GPT(cfg).eval()
    with torch.no_grad():  # peakier next-token distributions than the init's near-uniform ones
        model.lm_head.weight.mul_(40)
    return model


def test_beam_size_one_is_greedy(random_gpt):
    for prompt in PROMPTS:
        greedy = greedy_decode(random_gpt, prompt, eos=0, max_new_tokens=10)
        (beam,) = beam_search(random_gpt, prompt, 0, 10, beam_size=1, length_penalty=0.0)
        assert beam.ids == greedy.ids and beam.logprob == pytest.approx(greedy.logprob, abs=1e-4)


def test_beam_logprobs_are_exact_and_not_below_greedy(random_gpt):
    gains = []
    for prompt in PROMPTS:
        greedy = greedy_decode(random_gpt, prompt, eos=0, max_new_tokens=10)
        assert greedy.logprob == pytest.approx(
            sequence_logprob(random_gpt, prompt, greedy.ids + [0] * greedy.finished), abs=1e-3
        )
        hyps = beam_search(random_gpt, prompt, 0, 10, beam_size=4, length_penalty=0.0)
        assert hyps[0].logprob >= greedy.logprob - 1e-4
        gains.append(hyps[0].logprob - greedy.logprob)
        assert [h.score for h in hyps] == sorted((h.score for h in hyps), reverse=True)
        for h in hyps:  # the cache reordering kept every beam's own prefix
            ids = h.ids + ([0] if h.finished else [])
            assert h.logprob == pytest.approx(sequence_logprob(random_gpt, prompt, ids), abs=1e-3)
    assert max(gains) > 0.01  # on this model the search does find better sequences


# ---------------------------------------------------------------------------------- metrics


def test_scores_equal_sacrebleu_and_dictionary_baseline():
    refs = ["我喜欢猫。", "他走了。", "今天很好。"]
    hyps = ["我喜欢狗。", "他走了", "今天好。"]
    got = corpus_scores(hyps, refs, "zh", n_boot=200, seed=1)
    assert got["bleu"] == pytest.approx(sacrebleu.corpus_bleu(hyps, [refs], tokenize="zh").score)
    assert got["chrf"] == pytest.approx(sacrebleu.corpus_chrf(hyps, [refs]).score)
    assert got["bleu_ci"][0] <= got["bleu"] <= got["bleu_ci"][1]
    base = DictionaryBaseline(
        ["I like cats", "I like dogs", "cats sleep", "dogs run"] * 2,
        ["我喜欢猫", "我喜欢狗", "猫睡觉", "狗跑"] * 2,
    )
    assert base.translate("cats") == "猫" and base.translate("dogs") == "狗"


# ------------------------------------------------------------------------------ end to end


def _numbers_cfg(tmp_path, name, pretrain_steps, finetune_steps, limit, d_model):
    train = {"batch_size": 32, "seq_len": 32, "eval_every": 100}
    return _cfg(
        tmp_path,
        name,
        **{"collect.sources.0.dataset": "numbers", "collect.sources.0.limit": 1000},
        **{"model.name": "gpt", "model.n_layer": 2, "model.n_head": 4, "model.n_kv_head": 2},
        **{"model.d_model": d_model},
        **{f"pretrain.{k}": v for k, v in train.items()},
        **{f"finetune.{k}": v for k, v in train.items()},
        **{"pretrain.warmup_steps": min(10, pretrain_steps)},
        **{"finetune.warmup_steps": min(10, finetune_steps)},
        **{"pretrain.steps": pretrain_steps, "pretrain.ckpt_every": pretrain_steps},
        **{"finetune.from": "pretrain", "finetune.steps": finetune_steps, "finetune.lr": 3e-3},
        **{"finetune.ckpt_every": finetune_steps, "finetune.weight_decay": 0.0},
        **{
            "tasks.translation.beam_size": 2,
            "evaluate.max_new_tokens": 12,
            "evaluate.bootstrap": 100,
        },
        **{"evaluate.limit": limit, "pretrain.lr": 3e-3},
    )


def test_pipeline_scores_are_sacrebleus_and_base_is_kept(tmp_path):
    """The mechanics on a few steps: every stage runs, the fine-tune leaves its base alone, and
    metrics.json holds sacrebleu's own numbers for the saved translations."""
    from modelworks.train import pretrain

    cfg = _numbers_cfg(tmp_path, "mechanics", 4, 8, 12, 32)
    collect(cfg)
    preprocess(cfg)
    pretrain(cfg)
    base = cfg.run_dir / "pretrain" / "model.safetensors"
    digest = sha256_file(base)
    run(cfg)
    assert sha256_file(base) == digest  # the fine-tune never writes its base
    m = json.loads((cfg.run_dir / "evaluate" / "metrics.json").read_text())
    assert m["split"] == "test" and m["examples"] == 12 and m["bleu_tokenize"] == "13a"
    rows = [
        json.loads(line)
        for line in (cfg.run_dir / "evaluate" / "translations.jsonl").read_text().splitlines()
    ]
    refs = [r["reference"] for r in rows]
    assert len(rows) == 12 and refs[0] == number_words(int(rows[0]["source"].replace(" ", "")))
    for name in ("greedy", "beam", "baseline"):  # the report's numbers are sacrebleu's
        hyps = [r[name] for r in rows]
        assert m[f"{name}_bleu"] == pytest.approx(sacrebleu.corpus_bleu(hyps, [refs]).score)
        assert m[f"{name}_chrf"] == pytest.approx(sacrebleu.corpus_chrf(hyps, [refs]).score)
    report = (cfg.run_dir / "evaluate" / "report.md").read_text()
    assert "word-by-word dictionary" in report and "Sample translations" in report


@pytest.fixture(scope="module")
def numbers_run(tmp_path_factory):
    """A tiny GPT pretrained and fine-tuned on numbers 0-999 (evaluated on 60 test numbers)."""
    cfg = _numbers_cfg(tmp_path_factory.mktemp("translation"), "numbers", 20, 150, 60, 64)
    run(cfg)
    return cfg


@pytest.mark.slow
def test_numbers_finetune_beats_dictionary_on_held_out_numbers(numbers_run):
    m = json.loads((numbers_run.run_dir / "evaluate" / "metrics.json").read_text())
    assert m["split"] == "test" and m["examples"] == 60
    # held-out numbers: the dictionary knows each digit's word, the model the whole structure
    assert m["greedy_chrf"] > m["baseline_chrf"] + 10, m
    assert m["beam_chrf"] > m["baseline_chrf"] + 10, m


@pytest.mark.slow
def test_serve_translates_over_http(numbers_run):
    import httpx
    from conftest import served

    with served(numbers_run.run_dir) as (base, _):
        r = httpx.post(f"{base}/v1/translate", json={"input": ["3 0 7", "6 8 1"]}, timeout=60)
        assert r.status_code == 200, r.text
        out = [d["translation"] for d in r.json()["data"]]
        assert len(out) == 2 and all("hundred" in t for t in out), out
        r = httpx.post(f"{base}/v1/translate", json={"input": "3 0 7", "beam_size": 2}, timeout=60)
        assert r.status_code == 200 and r.json()["data"][0]["translation"]
        r = httpx.post(f"{base}/v1/translate", json={"input": ""}, timeout=60)
        assert r.status_code == 400 and r.json()["error"]["param"] == "input"
        r = httpx.post(f"{base}/v1/translate", json={"input": "1", "beam_size": 0}, timeout=60)
        assert r.status_code == 400 and r.json()["error"]["param"] == "beam_size"
        r = httpx.post(f"{base}/v1/completions", json={"prompt": "3 0 7 =>", "max_tokens": 4})
        assert r.status_code == 200 and r.json()["choices"][0]["text"]
