"""Image sources from tables and arrays: each yields {"id", "image" (bytes), "label", "source"}.

- `image_table`: CSV/TSV/Parquet files with an image-path column and a label column; relative
  paths are resolved against the table file's folder. Delimited files are read as their suffix
  means them (collect/rows.py). A row without a label, with an empty path or naming a file that
  does not exist is a bad row (skipped and counted; past `max_bad_rows` the stage stops); a file
  that is not an image is skipped and counted by preprocess, as for `image_folder`. A missing
  column is an error naming the file and the columns it has.
- `npz`: NumPy `.npz` files holding an image array (N, H, W) or (N, H, W, C) with C in 1/3/4 and
  a label array (N,). uint8 is kept; float arrays with values in [0, 1] are scaled by 255, other
  values are clipped to 0..255. Keys: `array_keys` = [images, labels], else x/y or images/labels.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import ClassVar, Literal

from pydantic import Field

from modelworks.collect.rows import BadRows, delimited, missing_column
from modelworks.collect.source import Paths, RowPolicy, Source, SplitField, matching_files
from modelworks.collect.sources import _png

TABLE_SUFFIXES = (".csv", ".tsv", ".txt", ".parquet")
DEFAULT_ARRAY_KEYS = (("x", "y"), ("images", "labels"))


def _table_rows(
    table: Path, needed: list[str], where: str, quoting: str, bad: BadRows
) -> Iterator[tuple[int, dict]]:
    suffix = table.suffix.lower()
    if suffix == ".parquet":
        import pyarrow.parquet as pq

        try:
            names = pq.read_schema(table).names
        except Exception as e:  # pyarrow raises several types for a non-Parquet file
            raise ValueError(f"{table}: not a readable Parquet file ({e})") from None
        _check_columns(table, names, needed, where)
        rows = pq.read_table(table, columns=needed).to_pylist()
        yield from enumerate(rows, 1)
    elif suffix in (".csv", ".tsv", ".txt"):
        try:
            with open(table, encoding="utf-8-sig", newline="") as f:
                names, rows = delimited(f, table, [], quoting, bad)
                _check_columns(table, names, needed, where)
                yield from rows
        except UnicodeDecodeError:
            raise ValueError(f"{table}: not UTF-8 text") from None
    else:
        raise ValueError(
            f"{table}: unsupported table type {table.suffix!r} ({', '.join(TABLE_SUFFIXES)})"
        )


def _check_columns(table: Path, names: list[str], needed: list[str], where: str) -> None:
    fields = dict(zip(needed, ("path_field", "label_field", "split_field"), strict=False))
    for col in needed:
        if col not in names:
            raise missing_column(table, col, f"{where}.{fields[col]}", names)


def image_table(
    patterns: list[str],
    path_field: str,
    label_field: str,
    where: str,
    quoting: str = "auto",
    bad: BadRows | None = None,
    split_field: str = "",
) -> Iterator[dict]:
    """Rows of (image path, label) from CSV/TSV/Parquet tables; paths relative to the table.
    Rows without a label, with an empty path or naming a file that does not exist are bad rows
    (`bad`; without one, the default `max_bad_rows` is checked when the tables are read)."""
    own = bad is None
    bad = BadRows(where) if bad is None else bad
    what = "CSV/TSV/Parquet files with an image-path and a label column"
    for table in matching_files(patterns, where, what):
        needed = [path_field, label_field] + ([split_field] if split_field else [])
        for line, row in _table_rows(table, needed, where, quoting, bad):
            label = row.get(label_field)
            if label is None or str(label).strip() == "":
                bad.skip(table, line, "missing label", f"column {label_field!r} is empty")
                continue
            rel = row.get(path_field)
            if rel is None or str(rel).strip() == "":
                bad.skip(table, line, "empty image path", f"column {path_field!r} is empty")
                continue
            path = Path(str(rel).strip())
            path = path if path.is_absolute() else table.parent / path
            if not path.is_file():
                bad.skip(table, line, "image file missing", f"{path} does not exist")
                continue
            bad.ok()
            yield {
                "id": str(path),
                "image": path.read_bytes(),
                "label": str(label).strip(),
                "source": str(table),
                "split": row.get(split_field) if split_field else None,
            }
    if own:
        bad.check()


def _to_uint8(images, path: Path):
    import numpy as np

    if images.dtype == np.uint8:
        return images
    if images.dtype.kind not in "biuf":
        raise ValueError(f"{path}: images have dtype {images.dtype}; need integers or floats")
    arr = np.nan_to_num(images.astype(np.float64))
    if images.dtype.kind == "f" and arr.size and arr.min() >= 0 and arr.max() <= 1:
        arr = arr * 255
    return np.clip(np.round(arr), 0, 255).astype(np.uint8)


def _label_text(value) -> str:
    import numpy as np

    if isinstance(value, np.floating) and float(value).is_integer():
        return str(int(value))
    if isinstance(value, np.integer | np.bool_):
        return str(int(value))
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return str(value)


def npz_arrays(patterns: list[str], keys: list[str], where: str) -> Iterator[dict]:
    """Images and labels from NumPy .npz files (keys `array_keys`, else x/y or images/labels)."""
    import numpy as np

    if keys and len(keys) != 2:
        raise ValueError(f"{where}.array_keys: give [images key, labels key], got {keys}")
    for path in matching_files(patterns, where, ".npz files with an image and a label array"):
        try:
            data = np.load(path, allow_pickle=False)
        except Exception as e:  # numpy raises OSError/ValueError/BadZipFile for bad files
            raise ValueError(f"{path}: not a readable .npz file ({e})") from None
        if not isinstance(data, np.lib.npyio.NpzFile):
            raise ValueError(f"{path}: a single .npy array; give an .npz with images and labels")
        with data:
            names = list(data.files)
            if keys:
                img_key, lbl_key = keys
            else:
                pair = next((p for p in DEFAULT_ARRAY_KEYS if set(p) <= set(names)), None)
                if pair is None:
                    raise ValueError(
                        f"{path}: no x/y or images/labels arrays ({where}.array_keys); "
                        f"arrays are {names}"
                    )
                img_key, lbl_key = pair
            for k in (img_key, lbl_key):
                if k not in names:
                    raise ValueError(f"{path}: no array {k!r} ({where}.array_keys); has {names}")
            try:
                images, labels = data[img_key], data[lbl_key]
            except ValueError as e:  # object arrays need pickle, which we never load
                raise ValueError(f"{path}: cannot read arrays without pickle ({e})") from None
        if images.ndim == 4 and images.shape[-1] == 1:
            images = images[..., 0]
        if not (images.ndim == 3 or (images.ndim == 4 and images.shape[-1] in (3, 4))):
            raise ValueError(
                f"{path}: array {img_key!r} has shape {images.shape}; "
                "need (N, H, W) or (N, H, W, C) with C in 1, 3, 4"
            )
        labels = labels.reshape(-1) if labels.ndim == 2 and labels.shape[1] == 1 else labels
        if labels.ndim != 1 or len(labels) != len(images):
            raise ValueError(
                f"{path}: {len(images)} images but labels {lbl_key!r} have shape {labels.shape}"
            )
        images = _to_uint8(images, path)
        for i, (img, label) in enumerate(zip(images, labels, strict=True)):
            yield {
                "id": f"{path}:{i}",
                "image": _png(img),
                "label": _label_text(label),
                "source": str(path),
            }


class ImageTableSource(Paths, RowPolicy, SplitField, Source):
    """csv/tsv/parquet tables of image path + label."""

    kind: ClassVar[str] = "image"
    type: Literal["image_table"] = "image_table"
    path_field: str = Field(
        "path", description="column holding the image path (relative to the table's folder)"
    )
    label_field: str = Field("label", description="column holding the label")

    def read(self, where, problems, run_dir, bad):
        return image_table(
            self.paths,
            self.path_field,
            self.label_field,
            where,
            self.quoting,
            bad,
            self.split_field,
        )


class NpzSource(Paths, Source):
    """NumPy .npz files of image and label arrays."""

    kind: ClassVar[str] = "image"
    type: Literal["npz"] = "npz"
    array_keys: list[str] = Field(
        default_factory=list,
        description="[images key, labels key]; empty = x/y, else images/labels",
    )

    def read(self, where, problems, run_dir, bad):
        return npz_arrays(self.paths, self.array_keys, where)
