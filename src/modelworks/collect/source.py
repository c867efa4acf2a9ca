"""The base of every collect source (`collect.sources[i]`) and the option groups several share.

Each reader module declares its own source types next to the code that reads them: a subclass of
`Source` with `type: Literal["<name>"]`, its options as pydantic fields (default and one-line
description, for --help), the `kind` of collection it yields and `read()`. config/sources.py joins
them into one discriminated union on `type` (adding a source type: its class, and one line
there), so an option a type does not have is an unknown key.
"""

from __future__ import annotations

import glob
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field

if TYPE_CHECKING:
    from modelworks.collect.rows import BadRows

KINDS = (
    "text",
    "image",
    "table",
    "parallel",
    "interactions",
    "chat",
    "events",
    "preference",
    "detection",
)


class Source(BaseModel):
    """Options every source has; `kind` is what it collects (one kind per run)."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)
    kind: ClassVar[str] = "text"
    # draws its records with the run's `seed` (a generator): the seed is part of collect's hash
    uses_run_seed: ClassVar[bool] = False

    type: str
    limit: int | None = Field(
        None, ge=1, description="stop after this many records from this source"
    )
    split: str | None = Field(
        None,
        description="the split all this source's records go to: train, val or test (unset: "
        "drawn at random, see preprocess.val_fraction); hf: the dataset split to read (default "
        "train), its records keep its name (validation = val)",
    )

    def read(
        self, where: str, problems: list[str], run_dir: Path, bad: BadRows
    ) -> Iterator[dict]:  # pragma: no cover - every source type defines it
        """The source's records: dicts with `id` and the kind's columns. `where` names the
        source in errors (collect.sources.N), `problems` collects skipped files, `bad` skipped
        rows (collect/rows.py)."""
        raise NotImplementedError


def matching_files(patterns: list[str], where: str, what: str) -> Iterator[Path]:
    """The files each glob matches, in order; one line naming `<where>.paths` when the list is
    empty (`what` says what to give) or a pattern matches nothing."""
    if not patterns:
        raise FileNotFoundError(f"{where}.paths: empty; give {what}")
    for pattern in patterns:
        hits = sorted(p for p in map(Path, glob.glob(pattern, recursive=True)) if p.is_file())
        if not hits:
            raise FileNotFoundError(f"{where}.paths: no file matches {pattern!r}")
        yield from hits


class Paths(BaseModel):
    paths: list[str] = Field(
        default_factory=list, description="files, globs or folders to read (see type)"
    )


class Columns(BaseModel):
    columns: list[str] = Field(
        default_factory=list,
        description="csv/tsv/txt files have no header; these name their columns in order",
    )


class RowPolicy(BaseModel):
    """Table readers: how csv/tsv/txt rows are split, and how many bad ones a source may have."""

    quoting: Literal["auto", "none", "csv"] = Field(
        "auto",
        description="csv/tsv/txt files: auto: .csv has RFC 4180 quotes, .tsv/.txt none "
        "(tab-separated, quotes are text); none or csv overrides the suffix",
    )
    max_bad_rows: float = Field(
        0.01,
        ge=0,
        description="unreadable rows (missing label, extra fields, broken quotes, bad times) are "
        "skipped and counted; the stage stops above this many (a fraction of the rows read "
        "when < 1)",
    )


class SplitField(BaseModel):
    split_field: str = Field(
        "",
        description="the column naming each record's split (train, val, test); empty rows are "
        "drawn at random",
    )


class HubDataset(BaseModel):
    """A Hugging Face dataset: a local folder or data file, or a Hub name when online."""

    dataset: str = Field(
        "", description="dataset folder or data file (offline), or Hub name (online)"
    )
    subset: str | None = Field(None, description="dataset configuration name")
    streaming: bool = Field(True, description="stream records instead of downloading first")
