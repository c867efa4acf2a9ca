"""The chat task (SFT): assistant-only masks, packing, record errors, and one tiny run end to end:
a GPT pretrained on generated User/Assistant text, fine-tuned on a copying task (SFT), served
over HTTP and chatted with in the terminal."""

from __future__ import annotations

import io
import json
import random
import subprocess
import sys

import pytest
from conftest import ROOT, served

from modelworks import load_config
from modelworks.artifacts import sha256_file
from modelworks.collect import collect
from modelworks.collect.chat import to_messages
from modelworks.errors import ModelworksError
from modelworks.pipeline import run, stage_functions
from modelworks.preprocess.tokenizer import EOT, train_bpe
from modelworks.serve.openai import DEFAULT_CHAT_TEMPLATE
from modelworks.tasks.chat import CHAT_TEMPLATE, ChatFormat, encode_all
from modelworks.train.data import DataError
from modelworks.train.sft import IGNORE, pack_rows

WORDS = ["cat", "dog", "sun", "red", "box", "pen", "cup", "map", "hat", "owl", "fig", "jam"]
CONV = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "Repeat: cat dog"},
    {"role": "assistant", "content": "cat dog"},
    {"role": "user", "content": "Again: sun"},
    {"role": "assistant", "content": "sun"},
]


@pytest.fixture(scope="module")
def tok():
    text = [f"User: {a} {b}\n\nAssistant: {b} {a}\n\n" for a in WORDS for b in WORDS]
    return train_bpe(text * 3, 300)


def _runs(ids, trained):
    """The token runs marked as trained, as lists of ids."""
    runs, cur = [], []
    for t, m in zip(ids, trained, strict=True):
        if m:
            cur.append(t)
        elif cur:
            runs, cur = [*runs, cur], []
    return runs + ([cur] if cur else [])


def test_assistant_mask_covers_exactly_the_assistant_turns_and_their_end(tok):
    eot = tok.token_to_id(EOT)
    fmt = ChatFormat(tok, CHAT_TEMPLATE, eot, {eot})
    ids, trained = fmt.encode(CONV)
    # the tokens are the serving-time tokens of the whole rendered text, start token first
    assert ids == [eot, *tok.encode(fmt.render(CONV), add_special_tokens=False).ids]
    runs = [tok.decode(r, skip_special_tokens=False) for r in _runs(ids, trained)]
    assert runs == [f" cat dog{EOT}", f" sun{EOT}"]  # content + end token; "\n\n" after is not
    # a template that closes turns without the end token gets one added, trained
    fmt = ChatFormat(tok, DEFAULT_CHAT_TEMPLATE, eot, {eot})
    ids, trained = fmt.encode(CONV)
    runs = [tok.decode(r, skip_special_tokens=False) for r in _runs(ids, trained)]
    assert runs == [f" cat dog\n\n{EOT}", f" sun\n\n{EOT}"]
    assert sum(trained) < len(ids) // 2  # system and user tokens are context only


def test_packing_keeps_every_example_whole_in_one_row():
    rng = random.Random(0)
    examples = []
    for i in range(40):
        n = rng.randint(3, 20)
        inp = [1000 * i + k for k in range(n)]
        tgt = [t if rng.random() < 0.5 else IGNORE for t in inp]
        examples.append((inp, tgt))
    x, y = pack_rows(examples, 32, pad_id=7)
    assert x.shape[1] == 32 and len(x) < 40  # several per row
    placed = 0
    for r in range(len(x)):
        row = [t for t in x[r].tolist()]
        pos = 0
        while pos < 32 and placed < 40 and row[pos] == 1000 * placed:
            inp, tgt = examples[placed]
            assert row[pos : pos + len(inp)] == inp  # whole, in one row
            assert y[r, pos : pos + len(inp)].tolist() == tgt  # targets stay with their example
            pos, placed = pos + len(inp), placed + 1
        assert (y[r, pos:] == IGNORE).all() and (x[r, pos:] == 7).all()  # the rest is padding
    assert placed == 40
    x1, _ = pack_rows(examples, 32, pad_id=7, packing=False)
    assert len(x1) == 40


def test_long_examples_are_truncated_and_counted(tok):
    eot = tok.token_to_id(EOT)
    fmt = ChatFormat(tok, CHAT_TEMPLATE, eot, {eot})
    long = [{"role": "user", "content": " ".join(WORDS * 5)}, {"role": "assistant", "content": "x"}]
    fits = len(fmt.encode(CONV)[0]) - 1  # inputs: every token but the last
    out, n_trunc = encode_all(fmt, [CONV, long], fits)
    assert n_trunc == 1 and [len(inp) for inp, _ in out] == [fits, fits]


def test_record_errors_name_the_record_and_the_field(tmp_path):
    with pytest.raises(DataError, match=r"a\.jsonl:3: messages\[1\]\.role is 'bot'"):
        to_messages({"messages": [CONV[1], {"role": "bot", "content": "x"}]}, "a.jsonl:3")
    with pytest.raises(DataError, match="no assistant turn"):
        to_messages({"messages": [CONV[1]]}, "a.jsonl:1")
    with pytest.raises(DataError, match=r"messages\[0\]\.content"):
        to_messages({"messages": [{"role": "user"}]}, "a.jsonl:1")
    assert to_messages({"instruction": "Add", "input": "1 2", "output": "3"}, "x") == [
        {"role": "user", "content": "Add\n\n1 2"},
        {"role": "assistant", "content": "3"},
    ]
    # through the collect stage: the file and line are named
    data = tmp_path / "chats.jsonl"
    good = {"prompt": "hi", "completion": "hello"}
    bad = {"messages": [{"role": "robot", "content": "x"}]}
    data.write_text(json.dumps(good) + "\n" + json.dumps(bad) + "\n")
    cfg = load_config(
        [],
        [f"runs_dir={tmp_path}", "task=chat", "collect.sources.0.type=chat",
         f"collect.sources.0.paths=[{data}]"],
    )  # fmt: skip
    with pytest.raises(ModelworksError, match=rf"{data}:2: messages\[0\]\.role is 'robot'"):
        collect(cfg)


def _copy_task(path, n, seed):
    rng = random.Random(seed)
    with open(path, "w") as f:
        for _ in range(n):
            w = " ".join(rng.sample(WORDS, 2))
            f.write(json.dumps({"prompt": f"Repeat: {w}", "completion": w}) + "\n")


def _chat_run(tmp, steps: int, d_model: int = 32, lr: float = 1e-2):
    """A tiny GPT pretrained on generated sentences (run `base`), then SFT on copying (`sft`)."""
    rng = random.Random(1)
    text = tmp / "text.jsonl"
    with open(text, "w") as f:
        for _ in range(80):  # the chat's words, but nothing learns to copy from it
            words = [" ".join(rng.sample(WORDS, 2)) for _ in range(16)]
            pairs = zip(words[::2], words[1::2], strict=True)
            turns = [f"User: Repeat: {a}\n\nAssistant: {b}" for a, b in pairs]
            f.write(json.dumps({"text": "\n\n".join(turns)}) + "\n")
    common = [f"runs_dir={tmp / 'runs'}", "threads=1", "preprocess.min_chars=0"]
    base = load_config(
        [],
        [
            *common, "name=base", "collect.sources.0.type=files",
            f"collect.sources.0.paths=[{text}]", "preprocess.vocab_size=300",
            f"model.d_model={d_model}", "model.n_layer=2", "model.n_head=4", "model.n_kv_head=2",
            "pretrain.steps=8", "pretrain.batch_size=4", "pretrain.seq_len=64",
            "pretrain.warmup_steps=2", "pretrain.eval_every=8", "pretrain.ckpt_every=8",
            "pretrain.eval_batches=1",
        ],
    )  # fmt: skip
    for stage in ("collect", "preprocess", "pretrain"):
        stage_functions()[stage](base)
    data = tmp / "copy.jsonl"
    _copy_task(data, 600, 0)
    cfg = load_config(
        [],
        [
            *common, "name=sft", "task=chat",
            "collect.sources.0.type=chat", f"collect.sources.0.paths=[{data}]",
            "preprocess.val_fraction=0.05", f"finetune.from={base.run_dir}",
            f"finetune.steps={steps}", f"finetune.lr={lr}", "finetune.batch_size=8",
            "finetune.seq_len=64", f"finetune.warmup_steps={min(10, steps)}",
            f"finetune.eval_every={steps}",
            f"finetune.ckpt_every={steps}", "finetune.log_every=50", "evaluate.bootstrap=200",
            "evaluate.max_new_tokens=8", "evaluate.limit=20",
        ],
    )  # fmt: skip
    run(cfg, force=())
    return cfg.run_dir


@pytest.fixture(scope="module")
def chat_run(tmp_path_factory):
    # 150 steps: at 100 the base model (whose documents split by an id that holds the tmp path)
    # left one pytest basetemp in ~10 without a learned end of turn
    return _chat_run(tmp_path_factory.mktemp("chat"), steps=150)


def _check_sft(run_dir) -> dict:
    m = json.loads((run_dir / "evaluate" / "metrics.json").read_text())
    assert m["loss"] < m["base_loss"] - 1.0, m  # nats per assistant token, on val
    assert m["loss_ci"][1] < m["base_loss_ci"][0]
    assert m["exact_match"] >= m["base_exact_match"], m
    manifest = json.loads((run_dir / "finetune" / "manifest.json").read_text())["summary"]
    assert manifest["train_truncated"] == 0 and manifest["train_rows"] < manifest["train_texts"]
    assert (run_dir / "finetune" / "chat_template.jinja").read_text() == CHAT_TEMPLATE
    base = run_dir.parent / "base" / "pretrain"  # only read: its weights are as pretrain left them
    written = json.loads((base / "manifest.json").read_text())["outputs"]
    digest = next(o["sha256"] for o in written if o["path"] == "model.safetensors")
    assert sha256_file(base / "model.safetensors") == digest
    return m


def test_sft_beats_its_base_on_held_out_conversations(chat_run):
    _check_sft(chat_run)


@pytest.mark.slow
def test_longer_sft_learns_to_copy_held_out_word_pairs(tmp_path):
    # the splits hang on the tmp path (document ids hold it): at 600 steps 8 paths gave 0.55-1.0
    # and one CI path 0.1; at 1000 steps 15 paths, that one included, all gave 1.0
    m = _check_sft(_chat_run(tmp_path, steps=1000, d_model=64, lr=3e-3))
    assert m["exact_match"] >= 0.8 and m["base_exact_match"] == 0.0, m


def _greedy_reply(run_dir, messages: list[dict]) -> str:
    """The reply computed in this process: the run's model, template and end token."""
    from modelworks.serve.openai import engine_chat_text
    from modelworks.tasks.chat import load_chat_engine

    engine = load_chat_engine(run_dir, "cpu")
    ids = engine.encode(engine_chat_text(engine, messages))
    gen = engine.generate(ids, 12, temperature=0.0, stop=engine.chat_stop)
    assert gen.finish_reason == "stop" and gen.text.strip()  # it learned to end its turn
    return gen.text


def test_served_chat_run_answers_chat_completions(chat_run):
    import httpx

    messages = [{"role": "user", "content": "Repeat: owl fig"}]
    with served(chat_run) as (url, _):
        body = {"messages": messages, "temperature": 0, "max_tokens": 12}
        r = httpx.post(f"{url}/v1/chat/completions", json=body, timeout=60)
        assert r.status_code == 200, r.text
        choice = r.json()["choices"][0]
    assert choice["finish_reason"] == "stop"
    assert choice["message"]["content"] == _greedy_reply(chat_run, messages)


def test_terminal_chat_replies_resets_and_exits_on_eof(chat_run):
    proc = subprocess.run(
        [sys.executable, "-m", "modelworks", "chat", str(chat_run), "--temperature", "0"],
        input="Repeat: cat jam\n/reset\nRepeat: hat pen\n",
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "(new conversation)" in proc.stdout
    replies = [ln for ln in proc.stdout.splitlines() if ln.startswith("assistant> ")]
    second = _greedy_reply(chat_run, [{"role": "user", "content": "Repeat: hat pen"}])
    assert len(replies) == 2 and replies[1] == f"assistant> {second.lstrip()}", proc.stdout


def test_terminal_chat_on_a_hugging_face_folder(chat_run, tmp_path):
    from transformers import AutoTokenizer

    from modelworks.export import export
    from modelworks.serve.engine import Engine
    from modelworks.serve.openai import engine_chat_text
    from modelworks.serve.repl import chat_repl

    out = export(chat_run, tmp_path / "hf", "hf")  # the fine-tuned model, with its template
    messages = [{"role": "user", "content": "Repeat: hat pen"}]
    ours = engine_chat_text(Engine.from_run(chat_run, "cpu"), messages)
    theirs = AutoTokenizer.from_pretrained(out).apply_chat_template(
        messages, tokenize=False, add_generation_prompt=True
    )
    assert theirs == ours
    stdout = io.StringIO()
    assert chat_repl(out, "cpu", None, 12, 0.0, io.StringIO("Repeat: hat pen\n"), stdout) == 0
    reply = _greedy_reply(chat_run, [{"role": "user", "content": "Repeat: hat pen"}])
    assert f"assistant> {reply.lstrip()}\n" in stdout.getvalue()


def test_chat_refuses_an_encoder_base(tmp_path):
    from modelworks.config import ConfigError
    from modelworks.finetune import Base
    from modelworks.models.encoder import Encoder, EncoderConfig
    from modelworks.tasks.chat import chat_format_for_base

    cfg = load_config([], [f"runs_dir={tmp_path}", "task=chat", "finetune.from=somewhere"])
    enc = Encoder(EncoderConfig(vocab_size=64, context_len=16, d_model=16, n_layer=1, n_head=2))
    with pytest.raises(ConfigError, match="fine-tunes a decoder"):
        chat_format_for_base(cfg, tmp_path, Base(enc, None, tmp_path, "bert"))


@pytest.mark.parametrize(
    ("task", "what"),
    [
        ("text_classification", "a text classifier"),
        ("image_classification", "an image classifier"),
        ("recommendation", "a recommender"),
    ],
)
def test_chat_with_a_run_that_cannot_write_says_what_the_run_is(tmp_path, capsys, task, what):
    from modelworks.cli import main
    from modelworks.config import dump_config

    run_dir = tmp_path / "runs" / "labels"
    run_dir.mkdir(parents=True)  # the resolved config every run stores
    cfg = load_config([], [f"runs_dir={tmp_path / 'runs'}", "name=labels", f"task={task}"])
    (run_dir / "config.yaml").write_text(dump_config(cfg))
    assert main(["chat", str(run_dir), "--device", "cpu"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "<|endoftext|>" not in err[0]
    assert err[0].startswith(f"error: {run_dir} is a {task} run ({what}:")
    assert "chat needs a language-model or chat run" in err[0]
    assert "Hugging Face Llama folder" in err[0]


def test_replay_prompts_stay_out_of_the_general_check():
    # the general check measures forgetting; replaying its own questions would hide it
    from modelworks.evaluate.general import QUESTIONS
    from modelworks.tasks.chat_replay import PROMPTS

    asked = {q.lower() for q, _ in QUESTIONS}
    assert len(set(PROMPTS)) == len(PROMPTS) and not asked & {p.lower() for p in PROMPTS}
    replay = ROOT / "configs" / "data" / "general_replay.jsonl"
    if replay.is_file():  # the committed replay file answers only these prompts
        rows = [json.loads(line) for line in replay.read_text().splitlines()]
        assert rows and all(r["messages"][0]["content"] in PROMPTS for r in rows)
