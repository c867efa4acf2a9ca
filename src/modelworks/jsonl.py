"""JSON Lines: one parser for every reader of `.jsonl` files (collect sources, tables, chats,
parallel text, evaluation tasks), so a bad line reads the same wherever it is found."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any


def json_lines(
    lines: Iterable[str],
    path: str | Path,
    error: type[Exception] = ValueError,
    skip: Callable[[int, str], None] | None = None,
) -> Iterator[tuple[int, Any]]:
    """(line number from 1, parsed value) for every non-blank line; a line that is not JSON
    raises `error("<path>:<line>: not valid JSON (<reason>)")`, or with `skip` is passed to
    `skip(line, reason)` and left out (the table readers' bad-row policy)."""
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            value = json.loads(line)
        except json.JSONDecodeError as e:
            if skip is not None:
                skip(n, e.msg)
                continue
            raise error(f"{path}:{n}: not valid JSON ({e.msg})") from None
        yield n, value
