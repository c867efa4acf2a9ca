"""The `collect:` section: every source type and its options (`SourceConfig`), and the base
class of every config section (unknown keys are errors, assignments are validated)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class SourceConfig(_Section):
    type: Literal[
        "python_docs",
        "files",
        "sklearn_digits",
        "image_folder",
        "idx",
        "image_table",
        "npz",
        "table",
        "interactions",
        "stdlib_calls",
        "stdlib_imports",
        "parallel",
        "warc",
        "crawl",
        "hf",
        "chat",
        "synthetic_chat",
        "python_qa",
        "digit_scenes",
        "coco",
        "yolo",
    ] = Field(
        "python_docs",
        description="python_docs: Python's own documentation and stdlib docstrings; "
        "files: local txt/md/html/jsonl/csv/parquet/warc files, globs or folders (.gz too); "
        "warc: WARC/WARC.gz files; crawl: a polite web crawl from `urls`; "
        "hf: a Hugging Face dataset (`dataset`: local path, or Hub name when online); "
        "sklearn_digits: scikit-learn's 8x8 digits; "
        "image_folder: root/<class>/<image>; idx: MNIST-style [images, labels] files; "
        "image_table: csv/tsv/parquet of image path + label (path_field, label_field); "
        "npz: NumPy .npz image + label arrays (array_keys); "
        "table: labelled texts from csv/tsv/txt/jsonl/parquet (text_field, label_field); "
        "interactions: user/item logs from csv/parquet (user_field, item_field, time_field); "
        "stdlib_calls / stdlib_imports: built-in recommendation data from the Python stdlib; "
        "parallel: translation pairs from tsv/txt/jsonl (source_field, target_field); "
        "chat: conversations (`messages` with roles, or instruction/input/output, or "
        "prompt/completion records) from jsonl/parquet; synthetic_chat: generated instruction "
        "pairs (repeat, reverse, uppercase, add; `limit` of them, default 2000); python_qa: "
        "questions about Python's builtins, keywords and stdlib modules answered from their "
        "docs, each with a topic; held-out topics go to the test split; object detection: "
        "digit_scenes: built-in scenes of scikit-learn digits with boxes (`limit` scenes, "
        "default 2000), coco: COCO JSON files (image_dir), yolo: image folders with YOLO txt "
        "labels",
    )
    image_dir: str = Field(
        "", description="coco: folder the images' file_name is relative to; '' = the JSON's folder"
    )
    paths: list[str] = Field(
        default_factory=list, description="files, globs or folders to read (see type)"
    )
    text_field: str = Field("text", description="field holding the text in jsonl files")
    label_field: str = Field("label", description="table, image_table: column holding the label")
    source_field: str = Field(
        "source", description="parallel: field/column holding the text to translate"
    )
    target_field: str = Field(
        "target", description="parallel: field/column holding its translation"
    )
    path_field: str = Field(
        "path",
        description="image_table: column holding the image path (relative to the table's folder)",
    )
    array_keys: list[str] = Field(
        default_factory=list,
        description="npz: [images key, labels key]; empty = x/y, else images/labels",
    )
    columns: list[str] = Field(
        default_factory=list,
        description="table, parallel, interactions: csv/tsv/txt files have no header; these name "
        "their columns in order",
    )
    quoting: Literal["auto", "none", "csv"] = Field(
        "auto",
        description="csv/tsv/txt files: auto: .csv has RFC 4180 quotes, .tsv/.txt none "
        "(tab-separated, quotes are text); none or csv overrides the suffix",
    )
    max_bad_rows: float = Field(
        0.01,
        ge=0,
        description="table readers: unreadable rows (missing label, extra fields, broken quotes, "
        "bad times) are skipped and counted; the stage stops above this many (a fraction of the "
        "rows read when < 1)",
    )
    user_field: str = Field("user", description="interactions: column holding the user id")
    item_field: str = Field("item", description="interactions: column holding the item id")
    time_field: str = Field(
        "timestamp", description="interactions: column ordering each user's items; '' = row order"
    )
    rating_field: str = Field(
        "rating", description="interactions: optional rating column (kept when present)"
    )
    urls: list[str] = Field(default_factory=list, description="crawl: seed URLs")
    allow_domains: list[str] = Field(
        default_factory=list,
        description="crawl: domains to follow links into (subdomains too); empty = seeds' hosts",
    )
    max_pages: int = Field(100, ge=1, description="crawl: pages in the collection at most")
    max_depth: int = Field(2, ge=0, description="crawl: link hops from a seed at most")
    delay_s: float = Field(
        1.0, ge=0, description="crawl: seconds between requests to a host (robots.txt may raise it)"
    )
    user_agent: str = Field(
        "modelworks-crawler/0.1 (+https://github.com/modelworks)",
        description="crawl: User-Agent sent and matched against robots.txt",
    )
    timeout_s: float = Field(10.0, gt=0, description="crawl: seconds before a request times out")
    retries: int = Field(2, ge=0, description="crawl: retries after a timeout, 429 or 5xx")
    backoff_s: float = Field(
        1.0, ge=0, description="crawl: first retry waits this long, doubling each time"
    )
    max_bytes: int = Field(5_000_000, ge=1, description="crawl: larger bodies are skipped")
    state_dir: str | None = Field(
        None,
        description="crawl: where fetched pages are kept for resuming; "
        "default <runs_dir>/<name>/crawl_state/<source index>",
    )
    dataset: str = Field(
        "",
        description="hf: dataset folder or data file (offline), or Hub name (online); table: "
        "the same, read for text_field + label_field instead of paths; "
        "parallel: numbers = built-in digits -> English words pairs (no files)",
    )
    subset: str | None = Field(None, description="hf: dataset configuration name")
    split: str | None = Field(
        None,
        description="the split all this source's records go to: train, val or test (unset: "
        "drawn at random, see preprocess.val_fraction); hf: the dataset split to read (default "
        "train), its records keep its name (validation = val)",
    )
    split_field: str = Field(
        "",
        description="table, image_table, parallel, chat, files (csv/jsonl/parquet): the column "
        "naming each record's split (train, val, test); empty rows are drawn at random",
    )
    streaming: bool = Field(True, description="hf: stream records instead of downloading first")
    limit: int | None = Field(
        None, ge=1, description="stop after this many documents from this source"
    )


class CollectConfig(_Section):
    sources: list[SourceConfig] = Field(
        default_factory=lambda: [SourceConfig()], description="where documents come from"
    )
