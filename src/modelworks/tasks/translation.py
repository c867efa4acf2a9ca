"""Translation with a decoder-only model: pretrain on the corpus, fine-tune on prompt -> target.

Data: a `parallel` collect source (TSV/TXT/CSV or JSONL pairs; `source_field`/`target_field`
pick the direction; `dataset: numbers` is a built-in synthetic corpus). Preprocess strips both
sides, drops pairs with an empty side (counted), and splits train/val/test by *source sentence*
(`preprocess.val_fraction`, `test_fraction`, seeded): the same sentence with several translations
lands in one split only, so no test source is ever seen in training. It writes
`{train,val,test}.parquet` (source, target), `format.json` (the prompt template) and, for a model
trained here, a byte-level BPE `tokenizer.json` trained on both sides of the train split (Chinese
round-trips exactly; the count of sentences that would not is in stats.json).

Format: one sequence per pair, `<eot> prompt target <eot>`, where prompt is
`tasks.translation.prompt_template` with `{source}` replaced (default `"{source} =>"`) and
prompt and target are tokenized separately, so generation continues exactly where training did.

Training:
- `pretrain` is language modelling on the train split's text, `tasks.translation.pretrain_text`:
  `sentences` (default) = every source and target sentence as its own document (both languages,
  no pairing: the model learns the languages, the fine-tune teaches translation), or `pairs` =
  the formatted pairs with the loss on every token;
- `finetune` (usually `from: pretrain`) trains on the formatted pairs with the loss on the target
  tokens and the closing end token only (labels are -100 elsewhere, which cross-entropy skips).
  A pair longer than `seq_len` + 1 tokens is truncated and counted: a prompt keeps at most its
  last seq_len/2 tokens, then the sequence is cut at the end.

Evaluate (on `evaluate.split`, default test): greedy and beam search (`tasks.translation.beam_size`,
`length_penalty`; serve/beam.py), BLEU and chrF with sacrebleu (corpus level, bootstrap 95% CIs;
`tasks.translation.bleu_tokenize`, auto = zh for Chinese targets), next to a word-by-word dictionary
baseline built from the train split (evaluate/translation_metrics.py). A prompt longer than the
context minus `evaluate.max_new_tokens` keeps its last tokens and is counted. Writes
`translations.jsonl` (source, reference, greedy, beam, baseline per example) and metrics.json.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np
import torch
from tokenizers import Tokenizer
from torch import nn

from modelworks.artifacts import atomic_write_text, tokenizer_path
from modelworks.config import Config, ConfigError
from modelworks.evaluate.report import md_cell, md_table, training_table
from modelworks.preprocess.tokenizer import eot_id
from modelworks.progress import Reporter
from modelworks.tasks.base import Task, TaskOptions, TestData, option
from modelworks.tasks.translation_data import (
    format_prompt,
    load_split,
    prepare_test,
    prompt_template,
)
from modelworks.tasks.translation_data import prepare as prepare_data
from modelworks.tasks.translation_serve import (  # noqa: F401  (public here too)
    TranslateRequest,
    serve_routes,
    translate,
)
from modelworks.train.data import DataError
from modelworks.train.sft import IGNORE, ExampleLoader, Rows, masked_lm_loss, validation_loss
from modelworks.train.trainer import TrainSetup

if TYPE_CHECKING:
    from modelworks.evaluate.checkpoint import Checkpoint


# ---------------------------------------------------------------------------------------------
# tokens and batches


class Options(TaskOptions):
    """`tasks.translation:`"""

    prompt_template: str = option(
        "{source} =>",
        stage="preprocess",
        description="the decoder's prompt; {source} is replaced by the source text and the "
        "target follows it",
    )
    pretrain_text: Literal["sentences", "pairs"] = option(
        "sentences",
        stage="pretrain",
        description="what pretrain models; sentences: every source and target sentence of the "
        "train split as its own document; pairs: prompt + target documents",
    )
    beam_size: int = option(
        4, stage="evaluate", ge=1, description="beams of the beam search (greedy is measured too)"
    )
    length_penalty: float = option(
        1.0, stage="evaluate", ge=0, description="beams rank by logprob / length**length_penalty"
    )
    bleu_tokenize: Literal["auto", "13a", "zh", "ja-mecab", "ko-mecab", "char", "none"] = option(
        "auto",
        stage="evaluate",
        description="sacrebleu BLEU tokenizer; auto: zh for Chinese targets, else 13a",
    )


def prepare(cfg: Config, run_dir: Path, out: Path, reporter: Reporter) -> dict:
    return prepare_data(cfg, run_dir, out, reporter, TASK.options_from(cfg).prompt_template)


def encode_pairs(
    tok: Tokenizer, eot: int, sources: list[str], targets: list[str], template: str, max_len: int
) -> tuple[list[tuple[list[int], list[int]]], int]:
    """[(inputs, targets)] per pair (train/sft.py examples): inputs `<eot> prompt target` and
    targets `prompt target <eot>` shifted by one, with -100 on the prompt (no loss there); at
    most `max_len` positions. Also how many pairs were truncated."""
    prompts = tok.encode_batch(
        [format_prompt(template, s) for s in sources], add_special_tokens=False
    )
    tgts = tok.encode_batch(targets, add_special_tokens=False)
    examples, n_trunc = [], 0
    for p, t in zip(prompts, tgts, strict=True):
        p_ids, t_ids = p.ids, t.ids
        if 1 + len(p_ids) + len(t_ids) > max_len:
            n_trunc += 1
            p_ids = p_ids[-(max_len // 2) :]
        ids = ([eot, *p_ids, *t_ids, eot])[: max_len + 1]
        y = list(ids[1:])
        n_prompt = len(p_ids)  # targets 0..n_prompt-1 predict prompt tokens
        y[:n_prompt] = [IGNORE] * n_prompt
        examples.append((ids[:-1], y))
    return examples, n_trunc


def _tokenizer(path: Path) -> Tokenizer:
    if not path.is_file():
        raise DataError(f"{path} does not exist: the model has no tokenizer to read texts with")
    return Tokenizer.from_file(str(path))


def _pretrain_stream(tok, eot, sources, targets, template, mode, seed) -> np.ndarray:
    """The token stream pretrain models: documents separated by (and starting with) <eot>."""
    if mode == "pairs":
        prompts = tok.encode_batch(
            [format_prompt(template, s) for s in sources], add_special_tokens=False
        )
        tgts = tok.encode_batch(targets, add_special_tokens=False)
        seqs = [[eot, *p.ids, *t.ids] for p, t in zip(prompts, tgts, strict=True)]
    else:  # every sentence on its own, shuffled: a sentence's translation is not its neighbour
        encs = tok.encode_batch(sources + targets, add_special_tokens=False)
        order = np.random.default_rng(seed).permutation(len(encs))
        seqs = [[eot, *encs[i].ids] for i in order]
    return np.array([t for s in seqs for t in s] + [eot], dtype=np.int64)


def setup_training(
    cfg: Config, run_dir: Path, device: torch.device, rank: int = 0, world: int = 1
) -> TrainSetup:
    """Pretrain: a decoder (`model.name: gpt`) learns the corpus' text with the run's tokenizer."""
    from modelworks.tasks.language_modeling import build_lm, window_setup

    tok = _tokenizer(run_dir / "preprocess" / "tokenizer.json")
    eot = eot_id(tok, run_dir / "preprocess")
    model = build_lm(cfg, tok.get_vocab_size())
    if not hasattr(model, "new_cache"):
        raise ConfigError(
            f"task translation trains a decoder (model.name: gpt), not {cfg.model.name!r}"
        )
    model = model.to(device)
    template, mode = prompt_template(run_dir), TASK.options_from(cfg).pretrain_text
    train = _pretrain_stream(tok, eot, *load_split(run_dir, "train"), template, mode, cfg.seed)
    val = _pretrain_stream(tok, eot, *load_split(run_dir, "val"), template, mode, cfg.seed)
    return window_setup(model, train, val, cfg.pretrain, cfg.seed, device, rank, world)


def setup_finetune(cfg: Config, run_dir: Path, device: torch.device, base) -> tuple:
    """Fine-tune a decoder (this run's pretrain, another run, a Llama folder) on prompt ->
    target, the loss on the target tokens only."""
    from modelworks.models.gpt import GPT

    if not isinstance(base.model, GPT):
        raise ConfigError(
            f"finetune.from={cfg.finetune.from_!r} is a {type(base.model).__name__}; "
            "translation fine-tunes a decoder (gpt, a Llama folder)"
        )
    if base.tokenizer is None:
        raise ConfigError(f"finetune.from={cfg.finetune.from_!r}: no tokenizer.json with it")
    tok, eot = base.tokenizer, eot_id(base.tokenizer, base.folder)
    model = base.model
    ft = cfg.finetune
    max_len = min(ft.seq_len, model.cfg.context_len)
    template = prompt_template(run_dir)
    train, n_trunc = encode_pairs(tok, eot, *load_split(run_dir, "train"), template, max_len)
    val, v_trunc = encode_pairs(tok, eot, *load_split(run_dir, "val"), template, max_len)
    loader = ExampleLoader(train, max_len, eot, ft.batch_size, cfg.seed)
    val_rows = Rows(val, max_len, packing=False)

    def validate(m: nn.Module) -> dict[str, float]:
        return validation_loss(m, val_rows, eot, device, ft.batch_size)

    info = {
        "max_tokens": max_len,
        "train_texts": len(train),
        "train_truncated": n_trunc,
        "val_truncated": v_trunc,
        "prompt_template": template,
    }
    setup = TrainSetup(model.to(device), masked_lm_loss, loader, validate, ft.batch_size, "ex")
    return setup, info


# ---------------------------------------------------------------------------------------------
# evaluate


def evaluate(
    cfg: Config, run_dir: Path, out: Path, reporter: Reporter, ckpt: Checkpoint | None = None
):
    """Scores `ckpt` (evaluate/checkpoint.py; default: the one it chooses)."""
    from modelworks.evaluate.checkpoint import choose_checkpoint
    from modelworks.evaluate.report import EvaluateError
    from modelworks.evaluate.translation_metrics import (
        DictionaryBaseline,
        bleu_tokenize,
        corpus_scores,
    )
    from modelworks.runtime import resolve_device
    from modelworks.train.checkpoint import load_model

    e, o = cfg.evaluate, TASK.options_from(cfg)
    device = resolve_device(cfg.device)
    ckpt = ckpt or choose_checkpoint(cfg)
    stage, model_dir = ckpt.stage_dir.name, ckpt.stage_dir
    model = load_model(ckpt.folder, device).eval()
    if not hasattr(model, "new_cache"):
        raise EvaluateError(f"{ckpt.folder}: a {type(model).__name__} cannot generate text")
    tok = _tokenizer(tokenizer_path(run_dir, model_dir))
    eot = eot_id(tok, model_dir)
    template = prompt_template(run_dir)
    split = e.split or "test"
    sources, refs = load_split(run_dir, split)
    if not sources and e.split is None:
        split = "val"
        sources, refs = load_split(run_dir, split)
    if not sources:
        raise EvaluateError(f"{run_dir / 'preprocess'}: the {split!r} split is empty")
    if e.limit:
        sources, refs = sources[: e.limit], refs[: e.limit]
    tokenize = bleu_tokenize(o.bleu_tokenize, refs)
    boot = {"n_boot": e.bootstrap, "seed": cfg.seed}
    hyps, results, timing = {}, {}, {}
    threads = torch.get_num_threads()
    if device.type == "cpu" and not cfg.threads:
        # one token at a time through a small model: on a busy CPU, thread hand-offs cost more
        # than they save (measured: greedy 4x faster on one thread with other jobs running)
        torch.set_num_threads(1)
    try:
        for name, beam in (("greedy", 1), ("beam", o.beam_size)):
            t0 = time.perf_counter()
            hyps[name], n_cut = translate(
                model, tok, eot, sources, template, e.max_new_tokens, beam, o.length_penalty
            )
            timing[name] = time.perf_counter() - t0
            results[name] = corpus_scores(hyps[name], refs, tokenize, **boot)
    finally:
        torch.set_num_threads(threads)
    train_src, train_tgt = load_split(run_dir, "train")
    baseline = DictionaryBaseline(train_src, train_tgt)
    hyps["baseline"] = [baseline.translate(s) for s in sources]
    results["baseline"] = corpus_scores(hyps["baseline"], refs, tokenize, **boot)
    atomic_write_text(
        out / "translations.jsonl",
        "".join(
            json.dumps(
                {"source": s, "reference": r, **{k: v[i] for k, v in hyps.items()}},
                ensure_ascii=False,
            )
            + "\n"
            for i, (s, r) in enumerate(zip(sources, refs, strict=True))
        ),
    )
    trained = json.loads((model_dir / "manifest.json").read_text())["summary"]
    metrics = {
        "split": split,
        "rows": len(sources),
        "examples": len(sources),
        "bleu_tokenize": tokenize,
        "beam_size": o.beam_size,
        "length_penalty": o.length_penalty,
        "max_new_tokens": e.max_new_tokens,
        "prompts_truncated": n_cut,
        "seconds": timing,
        **{f"{name}_{k}": v for name, r in results.items() for k, v in r.items()},
        "dictionary_entries": len(baseline.table),
    }
    metrics["chrf_ratio_vs_baseline"] = metrics["beam_chrf"] / max(metrics["baseline_chrf"], 1e-9)
    reporter.info(
        f"[evaluate] {split}: BLEU greedy {metrics['greedy_bleu']:.2f} / beam "
        f"{metrics['beam_bleu']:.2f} / dictionary {metrics['baseline_bleu']:.2f}; chrF "
        f"{metrics['greedy_chrf']:.2f} / {metrics['beam_chrf']:.2f} / "
        f"{metrics['baseline_chrf']:.2f} on {len(sources)} pairs"
        + (f"; {n_cut} prompt(s) truncated" if n_cut else "")
    )
    return metrics, _sections(metrics, results, hyps, sources, refs, trained, stage), []


def _fmt(r: dict, key: str) -> str:
    ci = r.get(f"{key}_ci")
    return f"{r[key]:.2f}" + (f" [{ci[0]:.2f}, {ci[1]:.2f}]" if ci else "")


def _sections(m, results, hyps, sources, refs, trained, stage):
    label = {
        "greedy": "model, greedy",
        "beam": f"model, beam {m['beam_size']} (length penalty {m['length_penalty']:g})",
        "baseline": "word-by-word dictionary (train split)",
    }
    rows = "\n".join(
        ["| system | BLEU | chrF |", "|---|---|---|"]
        + [f"| {label[k]} | {_fmt(r, 'bleu')} | {_fmt(r, 'chrf')} |" for k, r in results.items()]
    )
    facts = md_table(
        [
            (f"{m['split']} pairs", str(m["examples"])),
            ("BLEU tokenizer (sacrebleu)", m["bleu_tokenize"]),
            ("BLEU signature", m["greedy_bleu_signature"]),
            ("chrF signature", m["greedy_chrf_signature"]),
            ("beam chrF / dictionary chrF", f"{m['chrf_ratio_vs_baseline']:.2f}"),
            ("prompts truncated to fit the context", str(m["prompts_truncated"])),
            (
                "decode seconds (greedy / beam)",
                f"{m['seconds']['greedy']:.1f} / {m['seconds']['beam']:.1f}",
            ),
        ]
    )
    samples = "\n".join(
        ["| source | reference | greedy | beam | dictionary |", "|---|---|---|---|---|"]
        + [
            "| "
            + " | ".join(
                md_cell(v)
                for v in (
                    sources[i],
                    refs[i],
                    *(hyps[k][i] for k in ("greedy", "beam", "baseline")),
                )
            )
            + " |"
            for i in range(min(10, len(sources)))
        ]
    )
    return [
        (
            f"Results ({m['split']} split; corpus scores [95% bootstrap CI over sentences])",
            rows + "\n\n" + facts,
        ),
        ("Sample translations", samples),
        (f"Training ({stage})", training_table(trained)),
    ]


TASK = Task(
    name="translation",
    prepare=prepare,
    setup_training=setup_training,
    evaluate=evaluate,
    setup_finetune=setup_finetune,
    serve_routes=serve_routes,
    options=Options,
    test_data=TestData("documents", "a parallel source (type: parallel)", prepare_test),
)
