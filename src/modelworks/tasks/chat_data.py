"""Chat data: conversations from preprocess, the format (template + assistant-only mask) a model
trains with, and new conversations for `evaluate --data` (tasks/chat.py has the task)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pyarrow.parquet as pq
from tokenizers import Tokenizer

from modelworks.chat_template import (  # noqa: F401  (CHAT_TEMPLATE: public here too)
    DEFAULT_CHAT_STOP,
    render_chat,
)
from modelworks.collect.chat import to_messages
from modelworks.config import Config, ConfigError
from modelworks.train.data import DataError
from modelworks.train.sft import (
    IGNORE,
)


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


def prepare_test(run: Config, run_dir: Path, shadow: Path, pre: Path) -> dict:
    """`evaluate --data`: the new conversations, as test.jsonl."""

    path = shadow / "collect" / "chats.parquet"
    rows = pq.read_table(path).to_pylist()
    lines = [
        json.dumps({"id": r["id"], "messages": to_messages(r, f"--data {r['id']}")}) + "\n"
        for r in rows
    ]
    (pre / "test.jsonl").write_text("".join(lines))
    return {"rows": 0, "labels": {}}
