"""Data for the `dpo` and `grpo` tasks: preprocess (splits + chat template), pairs -> token rows,
the pair loader, and the base model as a chat format.

Preprocess reads `collect/preferences.parquet` (collect/preference.py), drops what cannot be
trained (dpo: a pair whose chosen equals its rejected reply, counted; grpo: nothing), splits
train / val (`preprocess.val_fraction`; a source's own test split, the built-in word problems'
held-out templates, stays test) and stores the chat template (tasks/chat.py's rule: the
base's own, else ours) as `chat_template.jinja`.

A pair becomes two rows, prompt + chosen and prompt + rejected, rendered with the template;
only the final assistant turn (its end token included) is scored. A pair longer than the
context keeps its reply and loses the start of its prompt (counted as truncated).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import torch
from torch import nn

from modelworks.config import Config, ConfigError
from modelworks.progress import Reporter
from modelworks.splits import assign, read_given, split_stats
from modelworks.train.data import DataError, EpochSampler, _Sampled
from modelworks.train.preference import IGNORE, sequence_logps


def prepare(cfg: Config, run_dir: Path, out: Path, reporter: Reporter, pairs: bool) -> dict:
    from modelworks.chat_template import render_chat
    from modelworks.tasks.chat import resolve_template

    path = run_dir / "collect" / "preferences.parquet"
    if not path.is_file():
        raise ConfigError(
            f"{path} does not exist: task {cfg.task} needs a collect source of type "
            "preference (jsonl/parquet records) or word_problems"
        )
    rows = pq.read_table(path).to_pylist()
    given = read_given(path)
    keep, same = [], 0
    for i, r in enumerate(rows):
        if pairs:
            for key in ("chosen", "rejected"):
                if r[key] is None:
                    raise DataError(f"{path} row {i} ({r['id']}): field {key!r} is missing")
            if r["chosen"].strip() == r["rejected"].strip():
                same += 1
                continue
        keep.append(i)
    rows, given = [rows[i] for i in keep], [given[i] for i in keep]
    if same:
        reporter.info(f"[preprocess] skipped {same} pair(s) whose chosen equals rejected")
    parts = assign(given, cfg.preprocess.val_fraction, 0.0, cfg.seed)
    if not parts["train"] or not parts["val"]:
        raise DataError(f"{path}: {len(rows)} usable record(s) are too few to split train/val")
    splits = split_stats(
        parts, given, [r["source"] for r in rows], cfg.preprocess.val_fraction, 0.0
    )
    if not parts["test"]:
        del parts["test"], splits["test"]
    for split, idx in parts.items():
        lines = []
        for i in idx:
            r = rows[i]
            rec = {k: r[k] for k in ("id", "chosen", "rejected", "answer", "topic")}
            lines.append(json.dumps({**rec, "prompt": json.loads(r["prompt"])}) + "\n")
        (out / f"{split}.jsonl").write_text("".join(lines))
    template, origin = resolve_template(cfg)
    try:
        render_chat(template, json.loads(rows[0]["prompt"]), True)
    except Exception as e:
        raise ConfigError(f"chat template from {origin}: {type(e).__name__}: {e}") from None
    (out / "chat_template.jinja").write_text(template)
    reporter.info(
        f"[preprocess] {len(rows)} records, "
        + "/".join(f"{k} {len(v)}" for k, v in parts.items())
        + f"; chat template: {origin}"
    )
    return {
        "records": len(rows),
        "skipped_chosen_equals_rejected": same,
        "split_sizes": {s: len(i) for s, i in parts.items()},
        "splits": splits,
        "chat_template": origin,
    }


def load_split(run_dir: Path, split: str) -> list[dict]:
    path = Path(run_dir) / "preprocess" / f"{split}.jsonl"
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line]


def encode_reply(fmt, prompt: list[dict], reply: str, max_len: int):
    """(inputs, targets, truncated) for prompt + reply: targets only on the reply's tokens (its
    end token included); the prompt's start is cut when the whole does not fit max_len."""
    ids, trained = fmt.encode([*prompt, {"role": "assistant", "content": reply}])
    last = len(trained)  # keep only the final assistant turn's marks
    while last > 0 and not trained[last - 1]:
        last -= 1
    first = last
    while first > 0 and trained[first - 1]:
        first -= 1
    trained = [0] * first + trained[first:last] + [0] * (len(trained) - last)
    truncated = False
    if len(ids) - 1 > max_len:
        truncated = True
        cut = len(ids) - 1 - max_len
        room = first - 1  # prompt tokens after the start token
        drop = min(cut, max(room, 0))
        ids = ids[:1] + ids[1 + drop :]
        trained = trained[:1] + trained[1 + drop :]
        ids, trained = ids[: max_len + 1], trained[: max_len + 1]  # a reply that alone is too long
    targets = [t if m else IGNORE for t, m in zip(ids[1:], trained[1:], strict=True)]
    return ids[:-1], targets, truncated


def encode_pairs(fmt, records: list[dict], max_len: int):
    """[(chosen example, rejected example)] and how many pairs were truncated."""
    out, n_trunc = [], 0
    for r in records:
        xc, yc, tc = encode_reply(fmt, r["prompt"], r["chosen"], max_len)
        xr, yr, tr = encode_reply(fmt, r["prompt"], r["rejected"], max_len)
        n_trunc += tc or tr
        out.append(((xc, yc), (xr, yr)))
    return out, n_trunc


def pad_rows(examples, pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(x) for x, _ in examples)
    x = torch.full((len(examples), width), pad_id, dtype=torch.long)
    y = torch.full((len(examples), width), IGNORE, dtype=torch.long)
    for i, (inp, tgt) in enumerate(examples):
        x[i, : len(inp)] = torch.tensor(inp)
        y[i, : len(tgt)] = torch.tensor(tgt)
    return x, y


def pair_batch(pairs, idx, pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows: the chosen replies of pairs `idx`, then their rejected ones."""
    rows = [pairs[i][0] for i in idx] + [pairs[i][1] for i in idx]
    return pad_rows(rows, pad_id)


def pair_logps(model: nn.Module, x, y, ipo: bool):
    """(chosen, rejected) sequence log-probs of a pair batch (sums; per-token means for ipo)."""
    s, n = sequence_logps(model, x, y)
    if ipo:
        s = s / n.clamp(min=1)
    b = len(s) // 2
    return s[:b], s[b:]


def reference_logps(model: nn.Module, pairs, pad_id, device, ipo: bool, batch: int = 8):
    """(N, 2) reference log-probs of every pair, computed once (no grad, eval mode)."""
    out = []
    was = model.training
    model.eval()
    with torch.no_grad():
        for i in range(0, len(pairs), batch):
            x, y = pair_batch(pairs, range(i, min(i + batch, len(pairs))), pad_id)
            c, r = pair_logps(model, x.to(device), y.to(device), ipo)
            out.append(torch.stack([c, r], -1).cpu())
    model.train(was)
    return torch.cat(out) if out else torch.zeros(0, 2)


class PairLoader(_Sampled):
    """(inputs, targets, pair indices) of a shuffled epoch over pairs; 2B rows per batch."""

    def __init__(self, pairs, pad_id: int, batch_size: int, seed: int) -> None:
        if len(pairs) < batch_size:
            raise DataError(
                f"{len(pairs)} training pairs are fewer than one batch of {batch_size}; "
                "lower finetune.batch_size or add data"
            )
        self.pairs, self.pad_id = pairs, pad_id
        self.sampler = EpochSampler(len(pairs), batch_size, seed)

    def next_batch(self):
        idx = self.sampler.next_indices()
        x, y = pair_batch(self.pairs, idx, self.pad_id)
        return x, y, torch.from_numpy(np.asarray(idx, dtype=np.int64))


def format_for_base(cfg: Config, run_dir: Path, base):
    """tasks/chat.py's ChatFormat for `base`; a chat fine-tune's own start and end tokens
    (its chat.json: e.g. SmolLM2's <|im_end|>) when the base is one, such as runs/assistant."""
    from modelworks.tasks.chat import ChatFormat, chat_format_for_base

    check_decoder(cfg, base)
    specials = Path(base.folder) / "chat.json"
    if base.kind == "modelworks" and specials.is_file() and base.tokenizer is not None:
        meta = json.loads(specials.read_text())
        template = (Path(run_dir) / "preprocess" / "chat_template.jinja").read_text()
        return ChatFormat(base.tokenizer, template, meta["bos_id"], set(meta["eos_ids"]))
    return chat_format_for_base(cfg, run_dir, base)


def save_chat_files(cfg: Config, out: Path, base) -> None:
    """The template and special tokens next to the weights (as tasks/chat.py writes them), so
    the tuned folder chats and serves on its own."""
    from modelworks.artifacts import atomic_write_json
    from modelworks.tasks.chat import CHAT_TEMPLATE, DEFAULT_CHAT_STOP

    fmt = format_for_base(cfg, cfg.run_dir, base)
    (out / "chat_template.jinja").write_text(fmt.template)
    stop = [DEFAULT_CHAT_STOP] if fmt.template == CHAT_TEMPLATE else []
    atomic_write_json(
        out / "chat.json", {"bos_id": fmt.bos, "eos_ids": sorted(fmt.eos), "stop": stop}
    )


def check_decoder(cfg: Config, base) -> None:
    from modelworks.models.gpt import GPT

    if not isinstance(base.model, GPT) or getattr(base.model.cfg, "n_classes", 0):
        raise ConfigError(
            f"finetune.from={cfg.finetune.from_!r} is a {type(base.model).__name__}; task "
            f"{cfg.task} tunes a decoder (a chat run, a gpt model folder, a Llama folder or GGUF)"
        )
