"""Chat / instruction tuning (SFT): next-token loss on the assistant's tokens only.

    modelworks run configs/chat.yaml         # synthetic instructions: pretrain, SFT, evaluate
    modelworks chat runs/chat                # talk to the result in the terminal
    modelworks serve runs/chat               # /v1/chat/completions with the run's template

Data: a `chat` collect source (`messages` with system/user/assistant roles, or instruction /
input / output, or prompt / completion records; collect/chat.py) or `synthetic_chat`. Preprocess
splits the conversations into `train.jsonl` / `val.jsonl` (`preprocess.val_fraction`) and stores
the chat template as `chat_template.jinja`: `tasks.chat.chat_template` when set, else a Hugging
Face base's own (its tokenizer_config.json), else chat_template.SFT_CHAT_TEMPLATE (the serving
default with the end-of-text token closing each assistant turn, so the model learns to stop).
When the run trains its own model (`finetune.from: pretrain`) preprocess also trains a BPE
tokenizer on the rendered train conversations and packs them as token shards, which pretrain
models as plain text.

Fine-tuning renders each conversation with the template, tokenises the whole text once with the
base's tokenizer and finds the assistant spans by rendering prefixes (messages[:i] with the
generation prompt vs messages[:i+1]): targets are -100 everywhere except the assistant tokens of
each span up to and including the end token that closes the turn; a template that closes turns
without the end token gets one inserted there, so every model learns to stop. Each example starts
with the start token, as pretraining documents did. Packing (`tasks.chat.packing`) concatenates
examples into rows of `seq_len` (train/sft.py: rows, loader, masked loss). Examples longer than
`seq_len` are truncated and counted in the manifest.

Evaluate: assistant-token loss and perplexity on val with a bootstrap CI over conversations, the
same for the base model before SFT, and greedy answers to val prompts (last assistant turn) with
their exact-match rate, for both.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pyarrow.parquet as pq
import torch
from tokenizers import Tokenizer
from torch import nn

from modelworks.artifacts import atomic_write_json, final_model_dir, tokenizer_path
from modelworks.chat_template import (  # noqa: F401  (CHAT_TEMPLATE: public here too)
    DEFAULT_CHAT_STOP,
    render_chat,
)
from modelworks.chat_template import (
    SFT_CHAT_TEMPLATE as CHAT_TEMPLATE,
)
from modelworks.collect.chat import to_messages
from modelworks.config import Config, ConfigError
from modelworks.progress import Reporter
from modelworks.splits import assign, read_given, split_stats
from modelworks.tasks.base import Task, TaskOptions, TestData, option
from modelworks.train.data import DataError
from modelworks.train.sft import (
    IGNORE,
    ExampleLoader,
    Rows,
    example_losses,
    masked_lm_loss,
    validation_loss,
)
from modelworks.train.trainer import TrainSetup

if TYPE_CHECKING:
    from modelworks.evaluate.checkpoint import Checkpoint


# ---------------------------------------------------------------------------------------------
# preprocess


class Options(TaskOptions):
    """`tasks.chat:`"""

    chat_template: str = option(
        "",
        stage="preprocess",
        description="a Jinja chat template (text, or a .jinja file path); empty: the base "
        "model's own, else the built-in User:/Assistant: template",
    )
    packing: bool = option(
        True, stage="finetune", description="pack several short conversations into one row"
    )


def prepare(cfg: Config, run_dir: Path, out: Path, reporter: Reporter) -> dict:
    path = run_dir / "collect" / "chats.parquet"
    if not path.is_file():
        raise ConfigError(
            f"{path} does not exist: task chat needs a collect source of type chat "
            "(jsonl/parquet conversations), synthetic_chat or python_qa"
        )
    rows = pq.read_table(path).to_pylist()
    convs = [to_messages(r, f"{path} row {i} ({r['id']})") for i, r in enumerate(rows)]
    given = read_given(path)
    parts = assign(given, cfg.preprocess.val_fraction, 0.0, cfg.seed)
    if not parts["train"] or not parts["val"]:
        raise DataError(f"{path}: {len(convs)} conversation(s) are too few to split train/val")
    splits = split_stats(
        parts, given, [r["source"] for r in rows], cfg.preprocess.val_fraction, 0.0
    )
    if not parts["test"]:  # a test split only when a source names one
        del parts["test"], splits["test"]
    for split, idx in parts.items():
        lines = (json.dumps({"id": rows[i]["id"], "messages": convs[i]}) for i in idx)
        (out / f"{split}.jsonl").write_text("".join(line + "\n" for line in lines))
    template, origin = resolve_template(cfg)
    try:  # a template that cannot render this data fails here, not in the middle of training
        render_chat(template, convs[0], False)
    except Exception as e:  # jinja2 syntax, undefined names, raise_exception(...)
        raise ConfigError(f"chat template from {origin}: {type(e).__name__}: {e}") from None
    (out / "chat_template.jinja").write_text(template)
    stats = {
        "conversations": len(convs),
        "split_sizes": {s: len(i) for s, i in parts.items()},
        "splits": splits,
        "chat_template": origin,
    }
    if cfg.finetune is None or cfg.finetune.from_ == "pretrain":  # the run trains its own model
        stats["tokens"] = _pack_own_tokens(cfg, [convs[i] for i in parts["train"]], template, out)
        stats["tokens_val"] = _pack_own_tokens(
            cfg, [convs[i] for i in parts["val"]], template, out, "val"
        )
    reporter.info(
        f"[preprocess] {len(convs)} conversations, train/val {len(parts['train'])}/"
        f"{len(parts['val'])}; chat template: {origin}"
    )
    return stats


def resolve_template(cfg: Config) -> tuple[str, str]:
    """(template, where it came from): tasks.chat.chat_template, else the base's, else ours."""
    spec = TASK.options_from(cfg).chat_template
    if spec:
        if "{" in spec:
            return spec, "tasks.chat.chat_template"
        path = Path(spec)
        if not path.is_file():
            raise ConfigError(f"tasks.chat.chat_template={spec!r}: neither a template nor a file")
        return path.read_text(), str(path)
    base = cfg.finetune.from_ if cfg.finetune is not None else "pretrain"
    gguf_file = _gguf_base(base)
    if gguf_file is not None:  # a GGUF base (or a ready model): the template in its metadata
        from modelworks.models.gguf import chat_tokens, open_gguf

        template = chat_tokens(open_gguf(gguf_file))[2]
        if template:
            return template, f"{gguf_file} (tokenizer.chat_template)"
    elif base != "pretrain" and Path(base).is_dir():
        folder = Path(base)
        for sub in ("", "finetune", "pretrain"):
            jinja, tcfg = (
                folder / sub / "chat_template.jinja",
                folder / sub / "tokenizer_config.json",
            )
            if jinja.is_file():
                return jinja.read_text(), str(jinja)
            if tcfg.is_file():
                template = json.loads(tcfg.read_text()).get("chat_template")
                if isinstance(template, str):
                    return template, str(tcfg)
    return CHAT_TEMPLATE, "built-in (User:/Assistant:)"


def _gguf_base(spec: str) -> Path | None:
    """The .gguf file `finetune.from` names (a path or a ready model's name), else None."""
    from modelworks.models.catalogue import lookup, resolve

    ready = lookup(spec)
    if ready is not None and ready.member.endswith(".gguf"):
        return resolve(spec)
    return Path(spec) if spec.lower().endswith(".gguf") and Path(spec).is_file() else None


def _pack_own_tokens(cfg, convs: list[list[dict]], template: str, out: Path, split="train"):
    """Rendered conversations as LM token shards, for this run's own pretrain."""
    from modelworks.preprocess.pack import ShardWriter, token_dtype, write_meta
    from modelworks.preprocess.tokenizer import EOT, eot_id, load_tokenizer, train_bpe

    if split == "train":
        plain = (render_chat(template, c, False) for c in convs)
        tok = train_bpe(plain, cfg.preprocess.vocab_size)
        tok.save(str(out / "tokenizer.json"))
        (out / "tokens").mkdir()
    tok = load_tokenizer(out / "tokenizer.json")
    eot, dtype = eot_id(tok), token_dtype(tok.get_vocab_size())
    sw = ShardWriter(out / "tokens", split, dtype, cfg.preprocess.shard_tokens)
    for c in convs:
        sw.add([*tok.encode(render_chat(template, c, False, EOT, EOT)).ids, eot])
    shards = sw.close()
    meta_path = out / "tokens" / "meta.json"
    splits = json.loads(meta_path.read_text())["splits"] if meta_path.is_file() else {}
    write_meta(out / "tokens", dtype, tok.get_vocab_size(), eot, {**splits, split: shards})
    return sum(s["tokens"] for s in shards)


def load_conversations(run_dir: Path, split: str) -> list[list[dict]]:
    path = Path(run_dir) / "preprocess" / f"{split}.jsonl"
    return [json.loads(line)["messages"] for line in path.read_text().splitlines() if line]


# ---------------------------------------------------------------------------------------------
# conversations -> tokens with an assistant-only mask


@dataclass
class ChatFormat:
    """How conversations become tokens for one model: its tokenizer, template and specials."""

    tokenizer: Tokenizer
    template: str
    bos: int  # the start token every sequence begins with
    eos: set[int]  # tokens that end an assistant turn (generation stops there)

    def render(self, messages: list[dict], add_generation_prompt: bool = False) -> str:
        text = self.tokenizer.decode
        bos, eos = text([self.bos], skip_special_tokens=False), ""
        if self.eos:
            eos = text([min(self.eos)], skip_special_tokens=False)
        return render_chat(self.template, messages, add_generation_prompt, bos, eos)

    def encode(self, messages: list[dict]) -> tuple[list[int], list[int]]:
        """(ids, trained): the conversation's tokens, starting with the start token, and 1
        where a token is an assistant token the model must predict (its turn's end included)."""
        import jinja2

        try:
            full = self.render(messages)
            spans = []
            for i, m in enumerate(messages):
                if m["role"] != "assistant":
                    continue
                prefix, upto = self.render(messages[:i], True), self.render(messages[: i + 1])
                if not (upto.startswith(prefix) and full.startswith(upto)):
                    raise DataError(
                        f"the chat template does not render message {i} as an extension of "
                        "the conversation before it; assistant turns cannot be located"
                    )
                spans.append((len(prefix), len(upto)))
        except jinja2.TemplateError as e:
            raise DataError(f"the chat template failed on a conversation: {e}") from None
        enc = self.tokenizer.encode(full, add_special_tokens=False)
        members: list[list[int]] = [[] for _ in spans]  # token indices starting in each span
        k = 0
        for j, (start, _) in enumerate(enc.offsets):
            while k < len(spans) and start >= spans[k][1]:
                k += 1
            if k < len(spans) and start >= spans[k][0]:
                members[k].append(j)
        mark, close_after = [0] * len(enc.ids), set()
        for js in members:
            for j in js:
                mark[j] = 1
                if enc.ids[j] in self.eos:  # the turn's end: train it, not what follows
                    break
            else:  # the template closed the turn without the end token: add it
                if js:
                    close_after.add(js[-1])
        ids: list[int] = []
        trained: list[int] = []
        for j, tid in enumerate(enc.ids):
            ids.append(tid)
            trained.append(mark[j])
            if j in close_after:
                ids.append(min(self.eos))
                trained.append(1)
        if not ids or ids[0] != self.bos:
            ids, trained = [self.bos, *ids], [0, *trained]
        return ids, trained


def chat_format_for_base(cfg: Config, run_dir: Path, base) -> ChatFormat:
    """The format a fine-tune of `base` (finetune.Base) trains with."""
    from modelworks.chat_template import hf_chat_tokens
    from modelworks.models.gpt import GPT
    from modelworks.preprocess.tokenizer import eot_id

    if not isinstance(base.model, GPT) or getattr(base.model.cfg, "n_classes", 0):
        raise ConfigError(
            f"finetune.from={cfg.finetune.from_!r} is a {type(base.model).__name__}; task chat "
            "fine-tunes a decoder (a gpt run or model folder, or a Llama-family folder)"
        )
    if base.tokenizer is None:
        raise ConfigError(f"finetune.from={cfg.finetune.from_!r}: no tokenizer.json with it")
    if base.kind == "gguf":
        bos, eos, _ = base.chat
    elif base.kind == "llama":
        bos, eos, _ = hf_chat_tokens(base.folder)
    else:
        bos = eot_id(base.tokenizer, base.folder)
        eos = {bos}
    if not eos:
        raise ConfigError(f"{base.folder}: no eos_token_id; the model could not learn to stop")
    template = (Path(run_dir) / "preprocess" / "chat_template.jinja").read_text()
    return ChatFormat(base.tokenizer, template, bos, eos)


def encode_all(fmt: ChatFormat, convs, max_len: int) -> tuple[list, int]:
    """[(inputs, targets)] per conversation (targets -100 where not trained), cut to `max_len`
    inputs; and how many were longer than that."""
    out, n_trunc = [], 0
    for messages in convs:
        ids, trained = fmt.encode(messages)
        if len(ids) - 1 > max_len:
            ids, trained, n_trunc = ids[: max_len + 1], trained[: max_len + 1], n_trunc + 1
        targets = [t if m else IGNORE for t, m in zip(ids[1:], trained[1:], strict=True)]
        out.append((ids[:-1], targets))
    return out, n_trunc


# ---------------------------------------------------------------------------------------------
# training


def setup_training(cfg: Config, run_dir: Path, device, rank: int = 0, world: int = 1):
    """This run's own pretrain: a language model on the rendered train conversations."""
    from modelworks.tasks import language_modeling

    if not (Path(run_dir) / "preprocess" / "tokens" / "meta.json").is_file():
        raise ConfigError(
            "task chat pretrains only when it trains its own model (finetune.from: pretrain); "
            "re-run preprocess with that setting"
        )
    return language_modeling.setup_training(cfg, run_dir, device, rank, world)


def setup_finetune(cfg: Config, run_dir: Path, device: torch.device, base) -> tuple:
    ft = cfg.finetune
    fmt = chat_format_for_base(cfg, run_dir, base)
    max_len = min(ft.seq_len, base.model.cfg.context_len)
    train, n_trunc = encode_all(fmt, load_conversations(run_dir, "train"), max_len)
    val, v_trunc = encode_all(fmt, load_conversations(run_dir, "val"), max_len)
    order = np.random.default_rng(cfg.seed).permutation(len(train))
    train = [train[i] for i in order]  # packing fills rows in this order
    packing = TASK.options_from(cfg).packing
    loader = ExampleLoader(train, max_len, fmt.bos, ft.batch_size, cfg.seed, packing)
    val_rows = Rows(val, max_len, packing)

    def validate(m: nn.Module) -> dict[str, float]:
        return validation_loss(m, val_rows, fmt.bos, device, ft.batch_size)

    info = {
        "max_tokens": max_len,
        "train_texts": len(train),
        "train_rows": len(loader.rows),
        "packing": packing,
        "train_truncated": n_trunc,
        "val_truncated": v_trunc,
        "assistant_tokens": loader.rows.trained,
    }
    setup = TrainSetup(
        base.model.to(device), masked_lm_loss, loader, validate, ft.batch_size * max_len
    )
    return setup, info


def save_finetuned(cfg: Config, out: Path, base) -> None:
    """The template and special tokens go next to the weights: the folder serves on its own."""
    fmt = chat_format_for_base(cfg, cfg.run_dir, base)
    (out / "chat_template.jinja").write_text(fmt.template)
    stop = [DEFAULT_CHAT_STOP] if fmt.template == CHAT_TEMPLATE else []
    specials = {"bos_id": fmt.bos, "eos_ids": sorted(fmt.eos), "stop": stop}
    atomic_write_json(out / "chat.json", {**specials, "add_bos": base.add_bos})


def load_chat_engine(
    target: str | Path,
    device: str = "auto",
    name: str | None = None,
    weights: str | Path | None = None,
    **kw,
):
    """A serve.engine.Engine with its chat template for a chat run, a chat model folder (a
    fine-tune's finetune/), any run, or a Hugging Face folder; `engine.chat_stop` lists stop
    strings that end the assistant's turn. `weights`: a checkpoint folder of the run to load
    instead of its final model (evaluate's choice)."""
    from modelworks.chat_template import run_chat_template
    from modelworks.models.catalogue import resolve_target
    from modelworks.models.gguf import is_gguf
    from modelworks.models.hf import is_hf_folder
    from modelworks.preprocess.tokenizer import load_tokenizer
    from modelworks.runtime import resolve_device
    from modelworks.serve.engine import Engine
    from modelworks.train.checkpoint import load_model

    given, target = Path(target), resolve_target(target)  # a ready model: its cached file
    if is_gguf(target):  # its own template, start and end tokens
        engine = Engine.from_gguf(target, device, name or given.stem, **kw)
        engine.chat_stop = [] if engine.chat_template else [DEFAULT_CHAT_STOP]
        return engine
    if not target.is_dir():
        raise ConfigError(
            f"{target}: no such folder (a run, a model or a Hugging Face folder), .gguf file "
            "or ready model (`modelworks pull` lists them)"
        )
    if is_hf_folder(target):
        engine = Engine.from_hf(target, device, name, **kw)
        engine.chat_stop = [] if engine.chat_template else [DEFAULT_CHAT_STOP]
        return engine
    is_model = (target / "chat.json").is_file()
    model_dir = target if is_model else final_model_dir(target)
    if (model_dir / "chat.json").is_file():
        specials = json.loads((model_dir / "chat.json").read_text())
        tok = load_tokenizer(model_dir / "tokenizer.json" if is_model else tokenizer_path(target))
        engine = Engine(
            load_model(weights or model_dir, resolve_device(device)),
            tok,
            name or (target.parent.name if is_model else target.name),
            specials["bos_id"],
            set(specials["eos_ids"]),
            (model_dir / "chat_template.jinja").read_text(),
            **{"add_start": specials.get("add_bos", True), **kw},  # older runs: no add_bos
        )
        engine.chat_stop = specials["stop"]
        return engine
    engine = Engine.from_run(target, device, name, weights, **kw)  # a run without chat SFT
    engine.chat_template = run_chat_template(target)
    engine.chat_stop = [DEFAULT_CHAT_STOP] if engine.chat_template in (None, CHAT_TEMPLATE) else []
    return engine


def serve_routes(app, run_dir: Path, cfg, device: str) -> None:
    """`modelworks serve` hook: the OpenAI endpoints (chat included, with the run's template)."""
    from modelworks.serve.engine import engine_options
    from modelworks.serve.lm_routes import add_lm_routes

    add_lm_routes(
        app, lambda: load_chat_engine(run_dir, device, cfg.model_name, **engine_options(cfg))
    )


# ---------------------------------------------------------------------------------------------
# evaluate


def evaluate(
    cfg: Config, run_dir: Path, out: Path, reporter: Reporter, ckpt: Checkpoint | None = None
):
    """Assistant-token loss / perplexity on val (95% bootstrap CI over conversations) and greedy
    answers to val prompts, for `ckpt` (evaluate/checkpoint.py; default: the one it chooses)
    and for its base before SFT."""
    from modelworks.evaluate.checkpoint import choose_checkpoint
    from modelworks.evaluate.metrics import fmt_ci, perplexity, ratio_ci
    from modelworks.evaluate.report import EvaluateError, md_cell, md_table, training_table
    from modelworks.evaluate.translation_metrics import corpus_scores

    ckpt = ckpt or choose_checkpoint(cfg)
    stage = ckpt.stage_dir.name
    has_test = (Path(run_dir) / "preprocess" / "test.jsonl").is_file()  # a source named one
    split = cfg.evaluate.split or ("test" if has_test else "val")
    if not (Path(run_dir) / "preprocess" / f"{split}.jsonl").is_file():
        raise EvaluateError(f"evaluate.split={split!r}: the run has no such split (val, test)")
    convs = load_conversations(run_dir, split)
    if not convs:
        raise EvaluateError(f"{run_dir}/preprocess/{split}.jsonl: no conversations to evaluate on")
    engine = load_chat_engine(run_dir, cfg.device, cfg.name, weights=ckpt.folder)
    fmt = ChatFormat(engine.tokenizer, engine.chat_template, engine.eot, engine.eos)
    train_cfg = cfg.finetune if stage == "finetune" else cfg.pretrain
    max_len = min(train_cfg.seq_len, engine.context_len)
    examples, n_trunc = encode_all(fmt, convs, max_len)
    n_gen = min(cfg.evaluate.limit or len(convs), len(convs))  # evaluate.limit: 0 = all
    e = cfg.evaluate
    results = {"tuned": _score(engine, fmt, examples, convs[:n_gen], e.max_new_tokens)}
    trained = json.loads((run_dir / stage / "manifest.json").read_text())["summary"]
    if stage == "finetune":  # the same measures before SFT
        from modelworks.base_model import load_base
        from modelworks.serve.engine import Engine

        base = load_base(cfg)
        base_engine = Engine(
            base.model.to(engine.device), engine.tokenizer, "base", engine.eot, engine.eos
        )
        base_engine.chat_template, base_engine.chat_stop = engine.chat_template, engine.chat_stop
        results["base"] = _score(base_engine, fmt, examples, convs[:n_gen], e.max_new_tokens)
    metrics: dict = {
        "split": split,
        "rows": len(convs),
        "conversations": len(convs),
        "truncated": n_trunc,
    }
    for who, r in results.items():
        pre = "" if who == "tuned" else "base_"
        nats, counts = r["nats"], r["counts"]
        loss = float(nats.sum() / max(counts.sum(), 1))
        metrics[f"{pre}loss"] = loss
        metrics[f"{pre}perplexity"] = perplexity(loss)
        metrics[f"{pre}exact_match"] = r["exact_match"]
        hits = np.array([float(a["hit"]) for a in r["answers"]])
        text = corpus_scores(
            [a["response"] for a in r["answers"]], [a["reference"] for a in r["answers"]],
            "13a", e.bootstrap, cfg.seed,
        )  # fmt: skip
        metrics[f"{pre}chrf"] = text["chrf"]
        metrics[f"{pre}general_correct"] = r["general"]["correct"]
        metrics["general_total"] = r["general"]["total"]
        if e.bootstrap:
            ci = ratio_ci(nats, counts, n_boot=e.bootstrap, seed=cfg.seed)
            metrics[f"{pre}loss_ci"] = list(ci)
            metrics[f"{pre}perplexity_ci"] = [perplexity(v) for v in ci]
            if len(hits) > 1:
                em = ratio_ci(hits, np.ones_like(hits), n_boot=e.bootstrap, seed=cfg.seed)
                metrics[f"{pre}exact_match_ci"] = list(em)
                metrics[f"{pre}chrf_ci"] = text.get("chrf_ci")
        metrics["assistant_tokens"] = int(counts.sum())
    metrics["answered"] = n_gen
    generations = results["tuned"]["answers"]
    atomic_write_json(out / "generations.json", generations)
    atomic_write_json(out / "general.json", {k: r["general"] for k, r in results.items()})
    m = metrics
    reporter.info(
        f"[evaluate] val assistant-token loss {m['loss']:.4f} (perplexity {m['perplexity']:.2f})"
        + (f" vs base {m['base_loss']:.4f}" if "base_loss" in m else "")
        + f"; exact match {m['exact_match']:.3f} on {n_gen} answers"
        + (f" (base {m['base_exact_match']:.3f})" if "base_exact_match" in m else "")
    )
    rows = [
        (f"{split} conversations / assistant tokens", f"{len(convs)} / {m['assistant_tokens']:,}"),
        ("assistant-token loss (nats)", fmt_ci(m["loss"], m.get("loss_ci"))),
        ("perplexity", fmt_ci(m["perplexity"], m.get("perplexity_ci"), 2)),
        (
            f"greedy exact match ({n_gen} answers)",
            fmt_ci(m["exact_match"], m.get("exact_match_ci")),
        ),
        ("chrF of the answers (0-100)", fmt_ci(m["chrf"], m.get("chrf_ci"), 1)),
        ("general check (correct)", f"{m['general_correct']} / {m['general_total']}"),
    ]
    if "base_loss" in m:
        rows += [
            ("base model (before SFT) loss", fmt_ci(m["base_loss"], m.get("base_loss_ci"))),
            ("base model exact match", fmt_ci(m["base_exact_match"], m.get("base_exact_match_ci"))),
            ("base model chrF", fmt_ci(m["base_chrf"], m.get("base_chrf_ci"), 1)),
            ("base model general check", f"{m['base_general_correct']} / {m['general_total']}"),
        ]
        if m["base_general_correct"]:  # the target: under 10% relative loss
            m["general_relative_loss"] = 1 - m["general_correct"] / m["base_general_correct"]
            rows.append(("general check relative loss", f"{m['general_relative_loss']:.1%}"))
    rows.append((f"conversations truncated to {max_len} tokens", str(n_trunc)))
    samples = "\n".join(
        ["| prompt | reference | response |", "|---|---|---|"]
        + [
            f"| {md_cell(g['prompt'])} | {md_cell(g['reference'])} | {md_cell(g['response'])} |"
            for g in generations[:8]
        ]
    )
    sections = [
        (f"Results ({split} split; [95% bootstrap CI over conversations])", md_table(rows)),
        (f"Sample answers (greedy, last user turn of {split} conversations)", samples),
        (f"Training ({stage})", training_table(trained)),
    ]
    return metrics, sections, []


def _score(engine, fmt: ChatFormat, examples, convs, max_new_tokens: int) -> dict:
    """Per-conversation assistant-token nats and counts; greedy answers to the last turn; the
    general check (evaluate/general.py). The answers go through the engine's batching loop
    together (the same tokens as one at a time, tests/serve/test_serve.py)."""
    from modelworks.evaluate.general import QUESTIONS, general_check

    nats, counts, _ = example_losses(engine.model, examples, engine.device)
    jobs, answers = [], []  # (prompt ids, max new tokens), and what each answer is scored for
    for messages in convs:
        last = max(i for i, m in enumerate(messages) if m["role"] == "assistant")
        ids = engine.encode(fmt.render(messages[:last], True))
        room = engine.context_len - len(ids) - 1
        if room < 1:
            continue
        jobs.append((ids, min(max_new_tokens, room)))
        prompt = messages[last - 1]["content"] if last else ""
        answers.append({"prompt": prompt, "reference": messages[last]["content"]})
    general = {}  # the general check: one user turn, greedy
    for question, _ in QUESTIONS:
        ids = engine.encode(fmt.render([{"role": "user", "content": question}], True))
        room = engine.context_len - len(ids) - 1  # a tiny test model's context may not fit it
        general[question] = len(jobs) if room > 0 else None
        if room > 0:
            jobs.append((ids, min(24, room)))
    texts = _greedy_all(engine, jobs)
    hits = 0
    for a, text in zip(answers, texts, strict=False):
        a["response"] = text.strip()
        a["hit"] = a["response"] == a["reference"].strip()
        hits += a["hit"]
    return {
        "nats": nats,
        "counts": counts,
        "exact_match": hits / max(len(answers), 1),
        "answers": answers,
        "general": general_check(lambda q: "" if general[q] is None else texts[general[q]].strip()),
    }


def prepare_test(run: Config, run_dir: Path, shadow: Path, pre: Path) -> dict:
    """`evaluate --data`: the new conversations, as test.jsonl."""
    import pyarrow.parquet as pq

    from modelworks.collect.chat import to_messages

    path = shadow / "collect" / "chats.parquet"
    rows = pq.read_table(path).to_pylist()
    lines = [
        json.dumps({"id": r["id"], "messages": to_messages(r, f"--data {r['id']}")}) + "\n"
        for r in rows
    ]
    (pre / "test.jsonl").write_text("".join(lines))
    return {"rows": 0, "labels": {}}


def _greedy_all(engine, jobs: list[tuple[list[int], int]]) -> list[str]:
    """Greedy completions of every (prompt ids, max new tokens), stopping at the engine's end
    tokens and chat stop strings, run through its batching loop `max_batch` at a time."""
    import threading

    from modelworks.serve.sampling import SamplingParams

    texts, left = [""] * len(jobs), threading.Semaphore(0)

    def on_event(i: int):
        def cb(event) -> None:  # on the engine's thread
            texts[i] += event.text or ""
            if event.finish_reason is not None:
                left.release()

        return cb

    try:
        for i, (ids, n) in enumerate(jobs):
            params = SamplingParams(max_tokens=n, temperature=0.0, stop=list(engine.chat_stop))
            engine.submit(ids, params, on_event(i))
        for _ in jobs:
            left.acquire()
    finally:
        engine.close()  # no batching thread left running inside torch at exit
    return texts


TASK = Task(
    name="chat",
    prepare=prepare,
    setup_training=setup_training,
    evaluate=evaluate,
    setup_finetune=setup_finetune,
    save_finetuned=save_finetuned,
    serve_routes=serve_routes,
    options=Options,
    test_data=TestData("chats", "a chat source (jsonl/parquet conversations)", prepare_test),
)
