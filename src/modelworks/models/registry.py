"""Model registry: architecture name -> (model class, config dataclass).

A model file registers itself with `@register("name", ConfigClass)`; configs then pick it with
`model: {name: ..., <config fields>}`. Later architectures and user models plug in the same way.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from torch import nn

_REGISTRY: dict[str, tuple[type[nn.Module], type]] = {}


def register(name: str, config_cls: type):
    def wrap(model_cls: type[nn.Module]) -> type[nn.Module]:
        _REGISTRY[name] = (model_cls, config_cls)
        return model_cls

    return wrap


def _load_builtins() -> None:
    from modelworks.models import gpt  # noqa: F401  (registers "gpt")


def available() -> list[str]:
    _load_builtins()
    return sorted(_REGISTRY)


def lookup(name: str) -> tuple[type[nn.Module], type]:
    _load_builtins()
    if name not in _REGISTRY:
        raise ValueError(f"model.name {name!r} is not a registered model; known: {available()}")
    return _REGISTRY[name]


def model_config_from(section: Any, source: str = "config"):
    """Build the architecture's config dataclass from the `model:` section (name + fields)."""
    from modelworks.config import ConfigError

    fields = section.model_dump() if hasattr(section, "model_dump") else dict(section)
    name = fields.pop("name", "gpt")
    try:
        _, config_cls = lookup(name)
    except ValueError as e:
        raise ConfigError(f"{source}: {e}") from None
    known = {f.name: f for f in dataclasses.fields(config_cls)}
    for key, value in fields.items():
        if key not in known:
            raise ConfigError(f"{source}: unknown key 'model.{key}' for model {name!r}")
        expected = type(known[key].default)
        ok = isinstance(value, expected) or (expected is float and isinstance(value, int))
        if expected is not type(None) and (not ok or isinstance(value, bool) != (expected is bool)):
            raise ConfigError(
                f"{source}: model.{key} (got {value!r}): expected {expected.__name__}"
            )
    try:
        return config_cls(**fields)
    except ValueError as e:
        raise ConfigError(f"{source}: model: {e}") from None


def build_model(model_config) -> nn.Module:
    return _REGISTRY[name_of(model_config)][0](model_config)


def name_of(model_config) -> str:
    _load_builtins()
    for name, (_, config_cls) in _REGISTRY.items():
        if isinstance(model_config, config_cls):
            return name
    raise ValueError(f"no registered model takes {type(model_config).__name__}")
