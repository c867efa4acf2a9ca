"""export, GGUF side: a run's model as a GGUF file, and any format from a GGUF (a ready model).

    modelworks export runs/assistant out --format gguf                  # out/model.gguf, F16
    modelworks export runs/assistant out/a.gguf --format gguf --gguf-type q8_0
    modelworks export smollm2-135m-instruct out/smollm2-hf --format hf  # a ready model, as HF

The GGUF carries the tokenizer, start/end tokens and chat template (a chat fine-tune's chat.json
and chat_template.jinja, else the run's template), so llama.cpp and ollama chat with it as-is.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

from modelworks.errors import ExportError
from modelworks.models.gguf_export import QTYPES, write_gguf


def gguf_out_path(out: Path) -> Path:
    """OUT ending in .gguf is the file; any other OUT is a folder that gets model.gguf."""
    return out if out.suffix.lower() == ".gguf" else out / "model.gguf"


def export_run_gguf(run_dir: Path, out: Path, model, model_dir: Path, qtype: str) -> Path:
    """Write a run's `model` (loaded from `model_dir`) as GGUF."""
    from modelworks.artifacts import tokenizer_path
    from modelworks.chat_template import run_chat_template
    from modelworks.preprocess.tokenizer import eot_id, load_tokenizer

    tok_file = tokenizer_path(run_dir, model_dir)
    if not tok_file.is_file():
        raise ExportError(f"{run_dir}: no tokenizer.json; a GGUF needs the model's tokenizer")
    template, bos, eos, add_bos = run_chat_template(run_dir), None, None, True
    chat = model_dir / "chat.json"
    if chat.is_file():  # a chat fine-tune: its own special tokens and template
        specials = json.loads(chat.read_text())
        bos, eos = specials["bos_id"], set(specials["eos_ids"])
        add_bos = specials.get("add_bos", True)  # runs before it was stored: True
        if (model_dir / "chat_template.jinja").is_file():
            template = (model_dir / "chat_template.jinja").read_text()
    if bos is None:
        bos = eot_id(load_tokenizer(tok_file), tok_file.parent)
        eos = {bos}
    return write_gguf(
        model, gguf_out_path(out), tok_file, template, qtype, bos, eos, add_bos, run_dir.name
    )


def export_from_gguf(source: Path, out: Path, fmt: str, qtype: str) -> Path:
    """A GGUF file (a ready model) written as `fmt`: gguf (re-typed), hf or safetensors."""
    from modelworks.models.gguf import chat_tokens, load_gguf, open_gguf
    from modelworks.models.gguf_tokenizer import tokenizer_from_gguf

    if fmt not in ("gguf", "hf", "safetensors"):
        raise ExportError(
            f"--format {fmt} from a GGUF file is not supported; use gguf, hf or safetensors"
        )
    reader = open_gguf(source)
    tok = tokenizer_from_gguf(reader, source)
    bos, eos, template, add_bos = chat_tokens(reader)
    model = load_gguf(source, reader=reader)
    with tempfile.TemporaryDirectory() as tmp:
        tok_file = Path(tmp) / "tokenizer.json"
        tok.save(str(tok_file))
        if fmt == "gguf":
            return write_gguf(
                model, gguf_out_path(out), tok_file, template, qtype, bos, eos, add_bos, source.stem
            )
        if fmt == "hf":
            from modelworks.models.hf import export_hf

            eos_text = tok.id_to_token(min(eos)) if eos else "<|endoftext|>"
            bos_text = tok.id_to_token(bos) if bos is not None else None
            return export_hf(model, out, tok_file, eos_text, template, bos_text, add_bos)
        from modelworks.train.checkpoint import save_model

        if out.exists() and any(out.iterdir()):
            raise ExportError(f"{out} exists and is not empty; choose a new or empty folder")
        save_model(out, model)
        tok.save(str(out / "tokenizer.json"))
        return out


__all__ = ["QTYPES", "export_from_gguf", "export_run_gguf", "gguf_out_path"]
