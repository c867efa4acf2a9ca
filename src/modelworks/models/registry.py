"""Model registry: architecture name -> (builder, config dataclass).

A model file registers itself with `@register("name", ConfigClass)`, and `models/__init__.py`
imports every built-in model file, so the registry is full whenever this module is imported
(Python imports the package first); configs pick a model with
`model: {name: ..., <config fields>}`. Any user `nn.Module` plugs in without registering:
`model: {class: "my_pkg.module:MyModel", args: {...}}` (stored as the `custom` architecture).
"""

from __future__ import annotations

import dataclasses
import importlib
from collections.abc import Callable
from typing import Any

from torch import nn

from modelworks.errors import ConfigError, ModelError

_REGISTRY: dict[str, tuple[Callable[[Any], nn.Module], type]] = {}


def register(name: str, config_cls: type):
    def wrap(builder):
        _REGISTRY[name] = (builder, config_cls)
        return builder

    return wrap


@dataclasses.dataclass
class CustomConfig:
    cls: str = ""  # "package.module:ClassName", importable from the current environment
    args: dict = dataclasses.field(default_factory=dict)  # keyword arguments for the class


@register("custom", CustomConfig)
def build_custom(cfg: CustomConfig) -> nn.Module:
    module_name, _, attr = cfg.cls.partition(":")
    if not module_name or not attr:
        raise ModelError(f"model.class {cfg.cls!r}: expected 'package.module:ClassName'")
    try:
        target = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as e:
        raise ModelError(f"model.class {cfg.cls!r} cannot be imported: {e}") from None
    if not (isinstance(target, type) and issubclass(target, nn.Module)):
        raise ModelError(f"model.class {cfg.cls!r} is not a torch.nn.Module subclass")
    try:
        return target(**cfg.args)
    except TypeError as e:
        raise ModelError(f"model.args do not fit {cfg.cls}: {e}") from None


def available() -> list[str]:
    return sorted(_REGISTRY)


def lookup(name: str) -> tuple[Callable[[Any], nn.Module], type]:
    if name not in _REGISTRY:
        raise ModelError(f"model.name {name!r} is not a registered model; known: {available()}")
    return _REGISTRY[name]


def _field_type(f: dataclasses.Field) -> type:
    if f.default is not dataclasses.MISSING:
        return type(f.default)
    return type(f.default_factory())  # type: ignore[misc]


def model_config_from(section: Any, source: str | Callable[[str], str] = "config"):
    """Build the architecture's config dataclass from the `model:` section (name + fields).
    Errors open with `source`, or `source(key)` (where that model key was set)."""
    import difflib

    def where(key: str) -> str:
        return source(key) if callable(source) else source

    fields = section.model_dump() if hasattr(section, "model_dump") else dict(section)
    name = fields.pop("name", "gpt")
    if "class" in fields:
        fields["cls"] = fields.pop("class")
    if "cls" in fields:
        name = "custom"
    try:
        _, config_cls = lookup(name)
    except ModelError as e:
        raise ConfigError(f"{where('name')}: {e}") from None
    known = {f.name: f for f in dataclasses.fields(config_cls)}
    for key, value in fields.items():
        if key not in known:
            match = difflib.get_close_matches(key, sorted(known), n=1, cutoff=0.6)
            hint = f"; did you mean 'model.{match[0]}'?" if match else ""
            raise ConfigError(f"{where(key)}: unknown key 'model.{key}' for model {name!r}{hint}")
        expected = _field_type(known[key])
        ok = isinstance(value, expected) or (expected is float and isinstance(value, int))
        if not ok or isinstance(value, bool) != (expected is bool):
            raise ConfigError(
                f"{where(key)}: model.{key} (got {value!r}): expected {expected.__name__}"
            )
    try:
        return config_cls(**fields)
    except ValueError as e:
        raise ConfigError(f"{where('')}: model: {e}") from None


def build_model(model_config) -> nn.Module:
    """Instantiate the model; it remembers its config so checkpoints can rebuild it."""
    model = _REGISTRY[name_of(model_config)][0](model_config)
    model.modelworks_config = model_config
    return model


def name_of(model_config) -> str:
    for name, (_, config_cls) in _REGISTRY.items():
        if type(model_config) is config_cls:
            return name
    raise ModelError(f"no registered model takes {type(model_config).__name__}")


def fill_from_data(model_cfg, **values) -> None:
    """Set the model-config fields left at 0 (vocab_size, context_len, in_features, n_classes...)
    from what the data says; a field set explicitly must be large enough."""
    for key, value in values.items():
        current = getattr(model_cfg, key, None)
        if current is None:
            continue
        if current == 0:
            setattr(model_cfg, key, value)
        elif key in ("vocab_size", "n_classes", "context_len") and current < value:
            raise ConfigError(f"model.{key}={current} is smaller than the data needs ({value})")
        elif key in ("in_features", "image_size", "channels") and current != value:
            raise ConfigError(
                f"model.{key}={current} but the data has {value}; set it to {value} or 0"
            )
