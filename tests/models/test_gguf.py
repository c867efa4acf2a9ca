"""GGUF in and out on a tiny random Llama (no download): our writer and reader round-trip
exactly in F32, transformers' GGUF loader reads our files with the same logits, and every kind of
bad file is one line and exit 2. The real SmolLM2 file is tested in test_smollm2.py."""

from __future__ import annotations

import struct

import numpy as np
import pytest
import torch

from modelworks.errors import GGUFError
from modelworks.models.gguf import load_gguf, open_gguf, permute_rope, unpermute_rope
from modelworks.models.gguf_export import write_gguf
from modelworks.models.gguf_tokenizer import tokenizer_from_gguf
from modelworks.models.gpt import GPT, GPTConfig
from tests.conftest import cli

TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}"
)


@pytest.fixture(scope="module")
def tokenizer_file(tmp_path_factory):
    from pydoc_data.topics import topics

    from tokenizers import AddedToken

    from modelworks.preprocess.tokenizer import train_bpe

    tok = train_bpe(list(topics.values())[:100], 300)
    tok.add_special_tokens([AddedToken("<|im_start|>", special=True, normalized=False)])
    tok.add_special_tokens([AddedToken("<|im_end|>", special=True, normalized=False)])
    path = tmp_path_factory.mktemp("tok") / "tokenizer.json"
    tok.save(str(path))
    return path


@pytest.fixture(scope="module")
def model(tokenizer_file):
    from tokenizers import Tokenizer

    torch.manual_seed(0)
    vocab = Tokenizer.from_file(str(tokenizer_file)).get_vocab_size()
    cfg = GPTConfig(vocab_size=vocab + 4, context_len=64, n_layer=2, n_head=4, n_kv_head=2,
                    d_model=64, rope_theta=5e4, norm_eps=1e-6, init_std=0.1)  # fmt: skip
    m = GPT(cfg).eval()
    with torch.no_grad():  # norm gains other than 1, so a swapped norm would show
        for p in m.parameters():
            if p.dim() == 1:
                p.uniform_(0.5, 1.5)
    return m


def ids(vocab: int) -> torch.Tensor:
    return torch.randint(0, vocab, (2, 24), generator=torch.Generator().manual_seed(1))


def test_rope_permutation_round_trips_and_is_not_identity():
    w = np.arange(8 * 12 * 3, dtype=np.float32).reshape(8 * 12, 3)
    p = permute_rope(w, 4)
    assert not np.array_equal(p, w)
    np.testing.assert_array_equal(unpermute_rope(p, 4), w)


@pytest.mark.parametrize("qtype,tol", [("f32", 0.0), ("f16", 2e-2), ("q8_0", 0.15)])
def test_written_gguf_reads_back_with_the_same_logits(tmp_path, model, tokenizer_file, qtype, tol):
    out = write_gguf(model, tmp_path / "m.gguf", tokenizer_file, TEMPLATE, qtype, 0, {0}, True)
    back = load_gguf(out).eval()
    assert back.cfg == GPTConfig(**{**vars(model.cfg), "init_std": back.cfg.init_std})
    x = ids(model.cfg.vocab_size)
    with torch.no_grad():
        diff = (back(x) - model(x)).abs().max().item()
    assert diff <= tol, f"{qtype}: max abs logit diff {diff}"
    assert not list(tmp_path.glob(".*.tmp")), "the temporary file was left behind"


def test_tokenizer_and_chat_template_survive_the_round_trip(tmp_path, model, tokenizer_file):
    from tokenizers import Tokenizer

    from modelworks.models.gguf import chat_tokens

    out = write_gguf(model, tmp_path / "m.gguf", tokenizer_file, TEMPLATE, "f32", 3, {5}, False)
    reader = open_gguf(out)
    ours, theirs = tokenizer_from_gguf(reader, out), Tokenizer.from_file(str(tokenizer_file))
    text = "<|im_start|>user\nDefine  a function:\tdef f(x): return x ** 2<|im_end|> héllo"
    assert ours.encode(text).ids == theirs.encode(text).ids
    assert ours.encode("<|im_start|>").ids == [theirs.token_to_id("<|im_start|>")]
    assert chat_tokens(reader) == (3, {5}, TEMPLATE, False)


def test_transformers_reads_our_gguf_with_the_same_logits(tmp_path, model, tokenizer_file):
    pytest.importorskip("gguf")
    transformers = pytest.importorskip("transformers")
    write_gguf(model, tmp_path / "m.gguf", tokenizer_file, TEMPLATE, "q8_0", 0, {0}, True)
    ours = load_gguf(tmp_path / "m.gguf").eval()
    hf = transformers.AutoModelForCausalLM.from_pretrained(
        tmp_path, gguf_file="m.gguf", dtype=torch.float32
    ).eval()
    x = ids(model.cfg.vocab_size)
    with torch.no_grad():
        diff = (ours(x) - hf(x).logits).abs().max().item()
    assert diff < 1e-4, diff


# ------------------------------------------------------------------------------- bad input


def _writer(path, arch="llama"):
    import gguf

    w = gguf.GGUFWriter(str(path), arch)
    return w


def _close(w):
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def _tensor_type_offset(path) -> int:
    """Byte offset of the first tensor's type field (GGUF v3 tensor info)."""
    t = open_gguf(path).tensors[0]
    start = int(t.field.offset)
    return start + 8 + len(t.name.encode()) + 4 + 8 * len(t.shape)


def test_unknown_quantization_type_is_one_line(tmp_path, model, tokenizer_file):
    path = write_gguf(model, tmp_path / "m.gguf", tokenizer_file, None, "f32", 0, {0})
    at = _tensor_type_offset(path)
    data = bytearray(path.read_bytes())
    assert struct.unpack_from("<I", data, at)[0] == 0  # F32, so the offset is right
    struct.pack_into("<I", data, at, 200)
    path.write_bytes(bytes(data))
    with pytest.raises(GGUFError, match="unknown quantization type"):
        load_gguf(path)


def test_truncated_file_is_one_line(tmp_path, model, tokenizer_file):
    path = write_gguf(model, tmp_path / "m.gguf", tokenizer_file, None, "f32", 0, {0})
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(GGUFError, match="truncated or corrupt"):
        load_gguf(path)
    path.write_bytes(b"GGML" + data[4:])
    with pytest.raises(GGUFError, match="not a GGUF file"):
        load_gguf(path)


def test_unsupported_architecture_is_named(tmp_path):
    w = _writer(tmp_path / "q.gguf", "qwen2")
    w.add_block_count(1)
    _close(w)
    with pytest.raises(GGUFError, match="architecture 'qwen2' has q/k/v projection biases"):
        load_gguf(tmp_path / "q.gguf")


def test_cli_lines_for_a_tokenizer_without_merges_and_a_foreign_architecture(tmp_path):
    w = _writer(tmp_path / "nomerges.gguf")
    w.add_tokenizer_model("gpt2")
    w.add_token_list(["a", "b", "ab"])
    _close(w)
    w = _writer(tmp_path / "mamba.gguf", "mamba")
    w.add_tokenizer_model("gpt2")
    w.add_token_list(["a", "b", "ab"])
    w.add_token_merges(["a b"])
    _close(w)
    for name, expected in [("nomerges", "has no merges"), ("mamba", "architecture 'mamba'")]:
        proc = cli("chat", str(tmp_path / f"{name}.gguf"), check=False, timeout=120)
        assert proc.returncode == 2, proc.stderr
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and expected in lines[0], proc.stderr


def test_export_refuses_an_adapter_it_cannot_express(tmp_path, model, tokenizer_file):
    from torch import nn

    odd = GPT(model.cfg)
    odd.extra = nn.Linear(2, 2)
    with pytest.raises(GGUFError, match="no Llama equivalent"):
        write_gguf(odd, tmp_path / "x.gguf", tokenizer_file)
    assert not list(tmp_path.iterdir())


def test_hf_export_of_a_run_tuned_from_a_gguf_keeps_its_start_and_end_tokens(
    tmp_path, model, tokenizer_file
):
    """The run's chat.json names <|im_start|> as start and <|im_end|> as end (from the GGUF);
    the HF folder must say the same, not the end-of-text token for both."""
    import json

    from tokenizers import Tokenizer

    from modelworks.config import load_config
    from modelworks.export import export
    from modelworks.pipeline import stage_functions

    tok = Tokenizer.from_file(str(tokenizer_file))
    start, end = tok.token_to_id("<|im_start|>"), tok.token_to_id("<|im_end|>")
    gguf_file = write_gguf(
        model, tmp_path / "base.gguf", tokenizer_file, TEMPLATE, "f32", start, {end}, False
    )
    data = tmp_path / "chat.jsonl"
    rows = [{"prompt": f"say {w}", "completion": w} for w in ("yes", "no", "maybe") * 8]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = load_config(
        [],
        [
            f"runs_dir={tmp_path / 'runs'}", "name=tuned", "threads=1", "task=chat",
            "collect.sources.0.type=chat", f"collect.sources.0.paths=[{data}]",
            "preprocess.val_fraction=0.2", f"finetune.from={gguf_file}", "finetune.steps=1",
            "finetune.batch_size=2", "finetune.seq_len=32", "finetune.warmup_steps=0",
            "finetune.eval_every=1", "finetune.ckpt_every=1",
        ],
    )  # fmt: skip
    for stage in ("collect", "preprocess", "finetune"):
        stage_functions()[stage](cfg)
    out = export(cfg.run_dir, tmp_path / "hf", "hf")

    for name in ("config.json", "generation_config.json"):
        got = json.loads((out / name).read_text())
        assert (got["bos_token_id"], got["eos_token_id"]) == (start, end), name
    tcfg = json.loads((out / "tokenizer_config.json").read_text())
    assert (tcfg["bos_token"], tcfg["eos_token"]) == ("<|im_start|>", "<|im_end|>")
    assert tcfg["add_bos_token"] is False  # as the GGUF said: the template starts each turn
    exported = Tokenizer.from_file(str(out / "tokenizer.json"))
    assert exported.encode("hello").ids == tok.encode("hello", add_special_tokens=False).ids
