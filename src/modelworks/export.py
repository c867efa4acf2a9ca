"""export: a trained run's weights as one self-contained folder.

    modelworks export runs/quickstart out/quickstart-hf                      # Hugging Face Llama
    modelworks export runs/quickstart out/model --format safetensors --checkpoint best
    modelworks export runs/big out/step-1000 --checkpoint step_001000        # consolidates DCP

Which formats apply depends on the run's model (`formats_for`): a language model (our GPT) and a
text classifier on our encoder take all four (the classifier's `hf` folder loads with
AutoModelForSequenceClassification, see models/hf_encoder.py); a classifier on our GPT and the
image classifiers (vit, cnn, mlp) take safetensors, onnx and int8; other models safetensors.

Sources (`--checkpoint`): `final` (default: the run's final model, `<run>/finetune/` when it
was fine-tuned, else `<run>/pretrain/`), `best` (its `best/`), or a checkpoint folder name under
its `checkpoints/` or a path. A
checkpoint saved sharded by FSDP/TP (torch.distributed.checkpoint) is consolidated here, on one
process, into a plain model; checksums are verified first. Formats: `safetensors` (our
model.safetensors + config.json, loadable with `train.checkpoint.load_model`, with the run's
tokenizer.json and labels.json when it has them), `hf` (a folder that
`transformers.AutoModelForCausalLM.from_pretrained` loads, with the run's tokenizer and chat
template; for a text classifier, AutoModelForSequenceClassification), `onnx`
and `int8` (an ONNX graph, fp32 or dynamically quantised, checked against onnxruntime; see
export_onnx.py).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from torch import nn

from modelworks.artifacts import (
    checkpoint_folder,
    final_model_dir,
    staged_folder,
    tokenizer_path,
)
from modelworks.errors import ExportError
from modelworks.models.registry import build_model, lookup, name_of
from modelworks.train.checkpoint import CheckpointError, load_model, save_model, verify

FORMATS = ("hf", "safetensors", "onnx", "int8", "gguf")


def formats_for(model: nn.Module) -> tuple[str, tuple[str, ...]]:
    """What `model` is, in the user's words, and the --format values that apply to it."""
    from modelworks.models.encoder import Encoder
    from modelworks.models.gpt import GPT
    from modelworks.models.gpt_classifier import GPTClassifier

    if isinstance(model, GPTClassifier):  # before GPT: it is one
        return "a text classifier on our GPT", ("safetensors", "onnx", "int8")
    if isinstance(model, GPT):
        return "a language model (our GPT)", FORMATS
    if isinstance(model, Encoder):
        if model.head is not None:
            return "a text classifier (encoder)", ("hf", "safetensors", "onnx", "int8")
        return "an encoder without a classification head", ("safetensors",)
    name = name_of(model.modelworks_config)
    if name in ("vit", "cnn", "mlp"):
        return f"an image classifier ({name})", ("safetensors", "onnx", "int8")
    if name == "unet":
        return "an image generator (U-Net denoiser)", ("safetensors", "onnx")
    if name == "detector":  # ONNX: the raw maps; models/detector.decode turns them into boxes
        return "an object detector", ("safetensors", "onnx")
    return f"a {name} model", ("safetensors",)


def source_folder(run_dir: Path, checkpoint: str = "final") -> Path:
    """The folder holding the weights `checkpoint` names in `run_dir`."""
    stage = final_model_dir(run_dir)
    folder = checkpoint_folder(stage, checkpoint)
    if not (folder / "config.json").is_file():
        known = sorted(p.name for p in (stage / "checkpoints").glob("step_*"))
        raise ExportError(
            f"{folder}: no trained model here (--checkpoint is final, best, a folder, or one of "
            f"{known or 'no checkpoints'})"
        )
    return folder


def load_weights(folder: Path) -> nn.Module:
    """A plain model from a final/best folder or a checkpoint, plain or sharded (DCP)."""
    if (folder / "checksums.json").is_file() and not verify(folder):
        raise ExportError(f"{folder}: checksums do not match; the checkpoint is corrupt")
    if not (folder / ".metadata").is_file():
        return load_model(folder)
    import json

    import torch.distributed.checkpoint as dcp

    meta = json.loads((folder / "config.json").read_text())
    _, config_cls = lookup(meta["name"])
    model = build_model(config_cls(**meta["config"]))
    state = model.state_dict()
    try:  # no process group needed: one process reads every shard and reassembles
        dcp.load({"model": state}, checkpoint_id=str(folder), no_dist=True)
    except Exception as e:  # DCP wraps reader errors in its own exception types
        raise CheckpointError(f"{folder}: cannot read sharded checkpoint ({e})") from None
    model.load_state_dict(state)
    return model


def export(
    run_dir: str | Path,
    out_dir: str | Path,
    fmt: str = "hf",
    checkpoint: str = "final",
    gguf_type: str = "f16",
) -> Path:
    """Write the run's model (or a .gguf file's, or a ready model's) to `out_dir` in `fmt`;
    returns what was written (`gguf`: the file; see export_gguf.py)."""
    from modelworks.export_gguf import export_from_gguf, export_run_gguf
    from modelworks.models.catalogue import resolve_target
    from modelworks.models.gguf import is_gguf

    run_dir, out_dir = resolve_target(run_dir), Path(out_dir)
    if fmt not in FORMATS:
        raise ExportError(f"--format {fmt!r} is not one of {', '.join(FORMATS)}")
    if is_gguf(run_dir):
        return export_from_gguf(run_dir, out_dir, fmt, gguf_type)
    if not run_dir.is_dir():
        raise ExportError(f"{run_dir}: no such run folder, .gguf file or ready model")
    folder = source_folder(run_dir, checkpoint)
    model = load_weights(folder)
    kind, formats = formats_for(model)
    if fmt not in formats:
        raise ExportError(
            f"{run_dir}: --format {fmt} does not apply to this run's model, {kind}; its formats "
            f"are {', '.join(formats)}"
        )
    if fmt == "gguf":
        return export_run_gguf(run_dir, out_dir, model, folder, gguf_type)
    tokenizer = tokenizer_path(run_dir)
    labels = run_dir / "preprocess" / "labels.json"
    if fmt == "hf" and kind.startswith("a text classifier"):
        from modelworks.models.hf_encoder import export_hf_classifier
        from modelworks.tasks.text_classification import classes_of, max_tokens

        for needed in (tokenizer, labels):
            if not needed.is_file():
                raise ExportError(
                    f"{needed} does not exist; the hf export of a text classifier needs the "
                    "run's tokenizer and label names"
                )
        return export_hf_classifier(
            model, out_dir, tokenizer, classes_of(run_dir), max_tokens(run_dir, model)
        )
    if fmt == "hf":
        from modelworks.chat_template import run_chat_template
        from modelworks.models.hf import export_hf

        template = run_chat_template(run_dir)
        tok_file = tokenizer if tokenizer.is_file() else None
        eos, bos, add_bos = "<|endoftext|>", None, True
        chat = final_model_dir(run_dir) / "chat.json"
        if chat.is_file() and tok_file is not None:  # a chat fine-tune: its own start and end
            from modelworks.preprocess.tokenizer import load_tokenizer

            specials, tok = json.loads(chat.read_text()), load_tokenizer(tok_file)
            eos = tok.id_to_token(min(specials["eos_ids"]))
            bos = tok.id_to_token(specials["bos_id"])
            add_bos = specials.get("add_bos", True)
        return export_hf(model, out_dir, tok_file, eos, template, bos, add_bos)
    if out_dir.exists() and any(out_dir.iterdir()):
        raise ExportError(f"{out_dir} exists and is not empty; choose a new or empty folder")
    with staged_folder(out_dir) as tmp:
        if fmt == "onnx" and name_of(model.modelworks_config) == "unet":
            from modelworks.export_denoiser import write_denoiser_onnx

            write_denoiser_onnx(model, run_dir, tmp)
        elif fmt == "onnx":
            from modelworks.export_onnx import write_onnx

            write_onnx(model, run_dir, tmp)
        elif fmt == "int8":
            from modelworks.export_int8 import write_int8

            write_int8(model, run_dir, tmp)
        else:
            save_model(tmp, model)
            for extra in (tokenizer, labels):  # what it takes to use the weights: ids, names
                if extra.is_file():
                    shutil.copyfile(extra, tmp / extra.name)
    return out_dir
