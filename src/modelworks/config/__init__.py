"""Typed configuration: one pydantic model per stage (sources.py, schema.py), loaded from YAML
plus dotted overrides (here).

Every user-facing knob lives here with a default and a one-line description; the CLI builds its
`--help` and its `--section.key VALUE` options from these models, so there is one source of truth.

    cfg = load_config("configs/quickstart.yaml", ["pretrain.lr=1e-3", "model.n_layer=2"])
"""

from __future__ import annotations

import dataclasses
import difflib
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any, get_args

import yaml
from pydantic import BaseModel, ValidationError

from modelworks.config.schema import (  # noqa: F401  (the public names, as before the split)
    Config,
    EvaluateConfig,
    FinetuneConfig,
    HarnessTaskConfig,
    ModelConfig,
    ParallelConfig,
    PreprocessConfig,
    PretrainConfig,
    ServeConfig,
    TrackingConfig,
    _plain,
)
from modelworks.config.sources import (  # noqa: F401
    SOURCE_TYPES,
    CollectConfig,
    SourceConfig,
    _Section,
    parse_source,
)
from modelworks.errors import ConfigError

# ---------------------------------------------------------------------------------------------
# Loading


def parse_override(text: str) -> tuple[list[str], Any]:
    """'pretrain.lr=1e-3' -> (['pretrain', 'lr'], 0.001); values are parsed as YAML scalars."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"override {text!r}: expected KEY=VALUE, e.g. pretrain.lr=1e-3")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return key.strip().split("."), value


def apply_override(data: dict, path: list[str], value: Any) -> None:
    node: Any = data
    for i, part in enumerate(path[:-1]):
        where = ".".join(path[: i + 1])
        if isinstance(node, list):
            node = _list_item(node, part, where)
        else:
            if part not in node or node[part] is None:  # a list when indexed: sources.0.limit
                node[part] = [] if path[i + 1].isdigit() else {}
            node = node[part]
            if not isinstance(node, dict | list):
                raise ConfigError(f"override {'.'.join(path)}: {where} is not a section")
    last = path[-1]
    if isinstance(node, list):
        idx = _index(last, ".".join(path))
        if idx >= len(node):
            raise ConfigError(f"override {'.'.join(path)}: index {idx} is out of range")
        node[idx] = value
    else:
        node[last] = value


def _index(part: str, where: str) -> int:
    if not part.isdigit():
        raise ConfigError(f"override {where}: {part!r} must be a list index (0, 1, ...)")
    return int(part)


def _list_item(node: list, part: str, where: str) -> Any:
    idx = _index(part, where)
    while len(node) <= idx:  # sources.0.limit on a default list: materialise the default item
        node.append({})
    return node[idx]


def _deep_merge(base: dict, over: dict) -> dict:
    """Mappings merge key by key; anything else (lists included) in `over` replaces `base`."""
    out = dict(base)
    for k, v in over.items():
        out[k] = (
            _deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
        )
    return out


def _read_yaml(p: Path) -> dict:
    if p.is_dir():
        inside = ", ".join(sorted(f.name for f in p.glob("*.yaml"))[:5])
        hint = f"; it holds {inside}" if inside else ""
        raise ConfigError(f"config file {p} is a folder, not a YAML file: name a file{hint}")
    if not p.is_file():
        raise ConfigError(f"config file {p} does not exist")
    try:
        loaded = yaml.safe_load(p.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise ConfigError(f"config file {p}{where}: YAML does not parse: {problem}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"config file {p}: not UTF-8 text") from None
    if loaded is None:  # refused rather than read as "all defaults": that is the quickstart
        raise ConfigError(
            f"config file {p} is empty: write the keys to change (e.g. `pretrain: {{steps: 100}}`)"
            ", or give no config file to run the defaults (the quickstart)"
        )
    if not isinstance(loaded, dict):
        raise ConfigError(f"config file {p}: top level must be a mapping of sections")
    return loaded


def load_config(
    path: str | Path | list[str | Path] | None = None, overrides: list[str] | None = None
) -> Config:
    """Built-in defaults, then each YAML file in order (later files override earlier ones, e.g.
    a pipeline then a model preset from configs/models/), then dotted overrides; validated.

    Only what the files and overrides set is in the sections' `model_fields_set` (the planner
    asks whether `pretrain.steps` was given); an error names where its key came from: the
    file, or `command line (KEY=VALUE)` for an override."""
    paths = [] if path is None else [path] if isinstance(path, str | Path) else list(path)
    files: list[tuple[str, dict]] = []
    data: dict = {}
    for p in paths:
        files.append((str(p), _read_yaml(Path(p))))
        data = _deep_merge(data, files[-1][1])
    given: list[tuple[list[str], str]] = []
    for text in overrides or []:
        keys, value = parse_override(text)
        apply_override(data, keys, value)
        given.append((keys, text))

    def blame(*locs: tuple) -> str:
        """Where these keys were set: the latest override, else the latest file; keys nobody
        set are the defaults'."""
        longest = max(len(loc) for loc in locs)
        for n in range(longest, 0, -1):  # then the sections holding them (a missing field)
            cut = [loc[:n] for loc in locs]
            for keys, text in reversed(given):
                if any(_overlaps(keys, loc) for loc in cut):
                    return f"command line ({text if text.isprintable() else repr(text)})"
            for name, file_data in reversed(files):
                if any(_found(file_data, loc) for loc in cut):
                    return name
        return " + ".join(map(str, paths)) or "defaults"

    return validate_config(data, blame=blame)


def _overlaps(keys: list[str], loc: tuple) -> bool:
    loc = [str(x) for x in loc]
    n = min(len(keys), len(loc))
    return keys[:n] == loc[:n]


def _found(data: Any, loc: tuple) -> bool:
    for part in loc:
        in_list = isinstance(data, list) and isinstance(part, int) and part < len(data)
        if not (in_list or (isinstance(data, dict) and part in data)):
            return False
        data = data[part]
    return True


def _without_source_tags(loc: tuple) -> tuple:
    """An error's location without the source type pydantic puts after a source's index
    (collect.sources.0.files.paths -> collect.sources.0.paths)."""
    out: list = []
    for part in loc:
        if isinstance(part, str) and part in SOURCE_TYPES and out and isinstance(out[-1], int):
            continue
        out.append(part)
    return tuple(out)


def _did_you_mean(key: str) -> str:
    """'; did you mean 'pretrain.steps'?' for a misspelt key, or ''."""
    parts = [p for p in key.split(".") if not p.isdigit()]
    if not parts:
        return ""
    cls: Any = Config
    names: list[str] = []
    for part in parts[:-1]:  # the section the key is in (list items and optional ones too)
        field = cls.model_fields.get(part)
        inner = (get_args(field.annotation) or (field.annotation,)) if field else ()
        if part in ("sources", "data") and field is not None:  # a source: any type's options
            names = sorted({k for c in SOURCE_TYPES.values() for k in c.model_fields})
            break
        cls = next((t for t in inner if isinstance(t, type) and issubclass(t, BaseModel)), None)
        if cls is None:
            return ""
    names = names or sorted(f.alias or n for n, f in cls.model_fields.items())
    match = difflib.get_close_matches(parts[-1], names, n=1, cutoff=0.6)
    prefix = ".".join(key.split(".")[:-1])
    if match:
        options = [f"{prefix}.{match[0]}" if prefix else match[0]]
    elif not prefix:  # a knob outside its section, e.g. `steps` for `pretrain.steps`
        known = [k for k, *_ in describe_fields(Config)]
        options = [k for k in known if k.split(".")[-1] == parts[-1]][:3]
    else:
        options = []
    return f"; did you mean {' or '.join(map(repr, options))}?" if options else ""


def _check_schedule(cfg: Config, blame: Callable[..., str]) -> None:
    """Knobs that are valid alone but not together; one line naming both keys."""
    for name in ("pretrain", "finetune"):
        s = getattr(cfg, name)
        if s is None:
            continue
        if s.min_lr > s.lr and s.schedule != "constant":
            raise ConfigError(
                f"{blame((name, 'min_lr'), (name, 'lr'))}: {name}.min_lr={s.min_lr:g} is above "
                f"{name}.lr={s.lr:g}, so the decay would raise the learning rate; "
                f"set {name}.min_lr at most {name}.lr"
            )
        if s.warmup_steps > s.steps:
            raise ConfigError(
                f"{blame((name, 'warmup_steps'), (name, 'steps'))}: {name}.warmup_steps="
                f"{s.warmup_steps} is more than {name}.steps={s.steps}, so the learning rate "
                f"never reaches {name}.lr; set {name}.warmup_steps at most {name}.steps"
            )


_AUGMENT = {
    "augment_crop_padding": "augment_crop_padding",
    "augment_flip": "augment_flip",
    "augment_rotate_degrees": "augment_rotate_degrees",
}
_REC_TRAIN = {"rec_loss": "loss", "rec_negatives": "negatives"}
# knobs that moved from a stage section into their task's own section: (section, old key) ->
# (task, new key). An old config still loads, with one warning line naming the new key.
MOVED: dict[tuple[str, str], tuple[str, str]] = {
    ("preprocess", "image_size"): ("image_classification", "image_size"),
    ("preprocess", "channels"): ("image_classification", "channels"),
    **{
        (s, k): ("image_classification", v)
        for s in ("pretrain", "finetune")
        for k, v in _AUGMENT.items()
    },
    ("preprocess", "min_user_interactions"): ("recommendation", "min_user_interactions"),
    ("preprocess", "min_item_interactions"): ("recommendation", "min_item_interactions"),
    **{
        (s, k): ("recommendation", v)
        for s in ("pretrain", "finetune")
        for k, v in _REC_TRAIN.items()
    },
    ("evaluate", "ks"): ("recommendation", "ks"),
    ("evaluate", "sampled_negatives"): ("recommendation", "sampled_negatives"),
    ("preprocess", "prompt_template"): ("translation", "prompt_template"),
    ("preprocess", "pretrain_text"): ("translation", "pretrain_text"),
    ("evaluate", "beam_size"): ("translation", "beam_size"),
    ("evaluate", "length_penalty"): ("translation", "length_penalty"),
    ("evaluate", "bleu_tokenize"): ("translation", "bleu_tokenize"),
    ("preprocess", "chat_template"): ("chat", "chat_template"),
    ("finetune", "packing"): ("chat", "packing"),
    ("finetune", "pooling"): ("text_classification", "pooling"),
    ("evaluate", "explain_samples"): ("text_classification", "explain_samples"),
    ("evaluate", "ig_steps"): ("text_classification", "ig_steps"),
}


def migrate(data: dict) -> dict:
    """`data` with the task knobs of older configs moved to `tasks.<task>.<key>` (MOVED), one
    FutureWarning per moved key; two old places giving one knob different values fail."""
    data = dict(data)
    moved_from: dict[tuple[str, str], str] = {}
    for (section, old), (task, new) in MOVED.items():
        sec = data.get(section)
        if not isinstance(sec, dict) or old not in sec:
            continue
        sec = data[section] = dict(sec)
        value = sec.pop(old)
        tasks = data["tasks"] = dict(data.get("tasks") or {})
        target = tasks[task] = dict(tasks.get(task) or {})
        here, there = f"{section}.{old}", f"tasks.{task}.{new}"
        if (task, new) in moved_from and target[new] != value:
            raise ConfigError(
                f"{moved_from[task, new]}={target[new]!r} and {here}={value!r} both set {there}; "
                f"set it once, as {there}"
            )
        if new not in target or (task, new) in moved_from:
            target[new] = value
        moved_from[task, new] = here
        warnings.warn(
            f"{here} is now {there} (this config still works; write {there})",
            FutureWarning,
            stacklevel=3,
        )
    return data


def validate_config(
    data: dict, source: str = "config", blame: Callable[..., str] | None = None
) -> Config:
    """`data` as a Config; errors name the key and where it came from: `blame(loc, ...)` (the
    key's path as a tuple) when given, else `source`. Task knobs of older configs move to their
    task's section first (`migrate`)."""
    where = blame or (lambda *locs: source)
    data = migrate(data)
    try:
        cfg = Config.model_validate(data)
    except ValidationError as e:
        err = e.errors()[0]
        err["loc"] = _without_source_tags(err["loc"])
        key = ".".join(str(p) for p in err["loc"])
        if err["type"] == "union_tag_invalid":  # a source type nobody declares
            got = err["input"].get("type") if isinstance(err["input"], dict) else err["input"]
            raise ConfigError(
                f"{where(err['loc'] + ('type',))}: {key}.type (got {got!r}): not a source type; "
                f"one of {', '.join(SOURCE_TYPES)}"
            ) from None
        if err["type"] == "extra_forbidden":
            hint = _did_you_mean(key)
            raise ConfigError(f"{where(err['loc'])}: unknown key {key!r}{hint}") from None
        got = err.get("input")
        got_text = "" if isinstance(got, dict) else f" (got {got!r})"
        raise ConfigError(f"{where(err['loc'])}: {key}{got_text}: {err['msg']}") from None
    _check_schedule(cfg, where)
    # validate the architecture's fields now, and store them resolved, so that a config spelling
    # out the defaults hashes the same as one leaving them out
    from modelworks.models.registry import model_config_from, name_of  # late: imports torch

    arch = model_config_from(
        cfg.model, source=lambda key: where(("model", key) if key else ("model",))
    )
    cfg.model = ModelConfig(name=name_of(arch), **dataclasses.asdict(arch))
    return cfg


def dump_config(cfg: Config) -> str:
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)


def describe_fields(model: type[BaseModel], prefix: str = "") -> list[tuple[str, Any, str, str]]:
    """(dotted key, default, type name, description) for every leaf knob, for --help."""
    rows = []
    for name, field in model.model_fields.items():
        key = f"{prefix}{field.alias or name}"
        ann = field.annotation
        if ann == FinetuneConfig | None:  # an optional section: list its knobs
            ann = FinetuneConfig
        if isinstance(ann, type) and issubclass(ann, BaseModel) and ann is not ModelConfig:
            rows.extend(describe_fields(ann, key + "."))
            continue
        default = field.get_default(call_default_factory=True)
        default = _plain(default)
        if isinstance(default, list):
            default = [_plain(d) for d in default]
        type_name = getattr(ann, "__name__", None) or str(ann).replace("typing.", "")
        rows.append((key, default, type_name, field.description or ""))
    return rows
