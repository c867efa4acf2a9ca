"""collect: gather raw data from the configured sources into one Parquet file
(`collect.stage.collect`; the source types are declared by the reader modules beside it, see
collect/source.py).

    modelworks collect configs/quickstart.yaml

This package's own import is light: the config imports the readers' source classes, so the
stage (which imports the config) is loaded only when asked for.
"""

from __future__ import annotations

from typing import Any

_STAGE = {"collect", "CollectError", "TEXT_SCHEMA", "IMAGE_SCHEMA", "TABLE_SCHEMA"}


def __getattr__(name: str) -> Any:
    if name in _STAGE:
        from modelworks.collect import stage

        return getattr(stage, name)
    raise AttributeError(f"module 'modelworks.collect' has no attribute {name!r}")
