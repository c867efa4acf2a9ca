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
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pyarrow.parquet as pq
import torch
from torch import nn

from modelworks.artifacts import atomic_write_json
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
from modelworks.tasks.chat_data import (  # noqa: F401  (public here too)
    ChatFormat,
    _gguf_base,
    _pack_own_tokens,
    chat_format_for_base,
    encode_all,
    load_conversations,
    prepare_test,
)
from modelworks.tasks.chat_eval import evaluate
from modelworks.tasks.chat_serve import load_chat_engine, serve_routes  # noqa: F401
from modelworks.train.data import DataError
from modelworks.train.sft import (
    ExampleLoader,
    Rows,
    masked_lm_loss,
    validation_loss,
)
from modelworks.train.trainer import TrainSetup

if TYPE_CHECKING:
    pass


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


# ---------------------------------------------------------------------------------------------
# conversations -> tokens with an assistant-only mask


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


# ---------------------------------------------------------------------------------------------
# evaluate


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
