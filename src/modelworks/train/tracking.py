"""Experiment tracking beside metrics.jsonl and TensorBoard: MLflow or Weights & Biases.

    track: mlflow                  # params, metrics per logged step, manifests, reports, model
    tracking: {uri: sqlite:///runs/mlflow.db, experiment: modelworks}
    track: wandb                   # offline: ./<run>/wandb, `wandb sync` uploads it later

One tracker run per modelworks run: its id is kept in `<run>/tracking.json`, so pretrain,
finetune and evaluate (separate commands, possibly separate days) log into the same run. Params
are the resolved config, flattened (`pretrain.lr`); metrics are logged as each training log
line is written, named `<stage>/<metric>` with the training step; a finished stage adds its
manifest.json (and stats.json, report.md/html, metrics.json where it has them) as artifacts
under `<stage>/`, and the trained model's weights and config under `<stage>/model/`.

MLflow's default store is `sqlite:///<runs_dir>/mlflow.db` with artifacts in
`<runs_dir>/mlartifacts/`; any tracking URI works (`http://host:5000`, `file:...` with
MLFLOW_ALLOW_FILE_STORE=true). Needs `pip install modelworks[track]`.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from modelworks.artifacts import atomic_write_json
from modelworks.config import Config
from modelworks.errors import ConfigError

STAGE_FILES = ("manifest.json", "stats.json", "metrics.json", "report.md", "report.html")
MODEL_FILES = ("model.safetensors", "config.json", "tokenizer.json", "labels.json")


def flatten(d: Any, prefix: str = "") -> dict[str, str]:
    out: dict[str, str] = {}
    if isinstance(d, dict):
        for k, v in d.items():
            out.update(flatten(v, f"{prefix}{k}."))
    else:
        out[prefix[:-1]] = json.dumps(d) if isinstance(d, list | dict) else str(d)
    return out


class Tracker:
    """What the stages call; one implementation per service."""

    def log_metrics(self, record: dict, stage: str) -> None:
        raise NotImplementedError

    def log_files(self, files: list[Path], folder: str) -> None:
        raise NotImplementedError

    def close(self) -> None:
        pass

    def log_stage(self, stage_dir: Path, stage: str, model: bool = False) -> None:
        """A finished stage: its manifest and reports; the model's files when `model`."""
        self.log_files([stage_dir / f for f in STAGE_FILES if (stage_dir / f).is_file()], stage)
        if model:
            files = [stage_dir / f for f in MODEL_FILES if (stage_dir / f).is_file()]
            self.log_files(files, f"{stage}/model")
        metrics = stage_dir / "metrics.json"
        if stage == "evaluate" and metrics.is_file():
            scalars = {
                k: v
                for k, v in json.loads(metrics.read_text()).items()
                if isinstance(v, int | float) and not isinstance(v, bool)
            }
            self.log_metrics({"step": 0, **scalars}, stage)


class MLflowTracker(Tracker):
    def __init__(self, cfg: Config, state: dict) -> None:
        try:
            from mlflow.tracking import MlflowClient
        except ImportError:
            raise ConfigError(
                "track: mlflow needs MLflow: pip install 'modelworks[track]' "
                "(mlflow-skinny, sqlalchemy, alembic)"
            ) from None
        runs = Path(cfg.runs_dir).resolve()
        self.uri = cfg.tracking.uri or f"sqlite:///{runs / 'mlflow.db'}"
        runs.mkdir(parents=True, exist_ok=True)
        self.client = MlflowClient(tracking_uri=self.uri)
        self.run_id = state.get("run_id") if state.get("uri") == self.uri else None
        if self.run_id is not None:
            try:
                self.client.get_run(self.run_id)
            except Exception:  # deleted or another store: start a new run
                self.run_id = None
        if self.run_id is None:
            exp = self.client.get_experiment_by_name(cfg.tracking.experiment)
            exp_id = (
                exp.experiment_id
                if exp is not None
                else self.client.create_experiment(
                    cfg.tracking.experiment, artifact_location=(runs / "mlartifacts").as_uri()
                )
            )
            run = self.client.create_run(exp_id, run_name=cfg.name, tags={"task": cfg.task})
            self.run_id = run.info.run_id
        self.state = {"service": "mlflow", "uri": self.uri, "run_id": self.run_id}

    def log_params(self, params: dict[str, str]) -> None:
        from mlflow.entities import Param

        have = self.client.get_run(self.run_id).data.params
        params = {k[:250]: v[:6000] for k, v in params.items()}
        new = [Param(k, v) for k, v in params.items() if k not in have]
        for i in range(0, len(new), 100):
            self.client.log_batch(self.run_id, params=new[i : i + 100])
        # MLflow params are write-once: a key a later command changed (evaluate.split, a
        # re-run's pretrain.lr) is kept as a tag holding its latest value
        for k, v in params.items():
            if k in have and have[k] != v:
                self.client.set_tag(self.run_id, f"changed.{k}"[:250], v)

    def log_metrics(self, record: dict, stage: str) -> None:
        from mlflow.entities import Metric

        now, step = int(time.time() * 1000), int(record.get("step", 0))
        metrics = [
            Metric(f"{stage}/{k}", float(v), now, step)
            for k, v in record.items()
            if k != "step" and isinstance(v, int | float) and not isinstance(v, bool)
        ]
        if metrics:
            self.client.log_batch(self.run_id, metrics=metrics)

    def log_files(self, files: list[Path], folder: str) -> None:
        for f in files:
            self.client.log_artifact(self.run_id, str(f), artifact_path=folder)

    def close(self) -> None:
        self.client.set_terminated(self.run_id)


class WandbTracker(Tracker):
    """Weights & Biases in offline mode: nothing leaves the machine until `wandb sync`."""

    def __init__(self, cfg: Config, state: dict) -> None:
        import os

        try:
            import wandb
        except ImportError:
            raise ConfigError("track: wandb needs wandb: pip install 'modelworks[track]'") from None
        os.environ.setdefault("WANDB_MODE", "offline")
        os.environ.setdefault("WANDB_SILENT", "true")
        run_dir = cfg.run_dir.resolve()
        self.run = wandb.init(
            project=cfg.tracking.experiment,
            name=cfg.name,
            id=state.get("run_id"),
            resume="allow",
            dir=str(run_dir),
            mode=os.environ["WANDB_MODE"],
            config=flatten(cfg.model_dump(mode="json")),
            settings=wandb.Settings(console="off", x_disable_stats=True),
        )
        self.state = {"service": "wandb", "run_id": self.run.id, "dir": str(self.run.dir)}

    def log_params(self, params: dict[str, str]) -> None:
        self.run.config.update(params, allow_val_change=True)

    def log_metrics(self, record: dict, stage: str) -> None:
        # W&B's own step must only grow across stages: the training step goes in as a metric
        data = {f"{stage}/{k}": v for k, v in record.items() if isinstance(v, int | float)}
        self.run.log(data)

    def log_files(self, files: list[Path], folder: str) -> None:
        import shutil

        target = Path(self.run.dir) / folder  # files under the run's folder are synced with it
        target.mkdir(parents=True, exist_ok=True)
        for f in files:
            shutil.copy2(f, target / f.name)

    def close(self) -> None:
        self.run.finish()


def open_tracker(cfg: Config) -> Tracker | None:
    """The run's tracker (creating its tracker run, logging the params), or None for none."""
    if cfg.track == "none":
        return None
    path = cfg.run_dir / "tracking.json"
    state = json.loads(path.read_text()) if path.is_file() else {}
    state = state if state.get("service") == cfg.track else {}
    tracker = (MLflowTracker if cfg.track == "mlflow" else WandbTracker)(cfg, state)
    tracker.log_params(flatten(cfg.model_dump(mode="json")))
    if tracker.state != state:  # unchanged: the file is left as it is
        cfg.run_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_json(path, tracker.state)
    return tracker


def track_stage(cfg: Config, stage: str, tracker: Tracker | None = None) -> None:
    """After a stage committed: its files into the run's tracker (opened here if not given)."""
    own = tracker is None
    tracker = tracker or open_tracker(cfg)
    if tracker is None:
        return
    try:
        if stage in ("pretrain", "finetune"):  # the data it trained on, then the model
            for up in ("collect", "preprocess"):
                if (cfg.run_dir / up / "manifest.json").is_file():
                    tracker.log_stage(cfg.run_dir / up, up)
        tracker.log_stage(cfg.run_dir / stage, stage, model=stage in ("pretrain", "finetune"))
    finally:
        if own:
            tracker.close()


def track_data(cfg: Config, name: str, folder: Path) -> None:
    """`evaluate --data` results into the run's tracker: metrics as `evaluate_data.<name>/...`,
    files under `evaluate_data/<name>/`."""
    tracker = open_tracker(cfg)
    if tracker is None:
        return
    try:
        tracker.log_stage(folder, f"evaluate_data/{name}")
        metrics = json.loads((folder / "metrics.json").read_text())
        scalars = {
            k: v
            for k, v in metrics.items()
            if isinstance(v, int | float) and not isinstance(v, bool)
        }
        tracker.log_metrics({"step": 0, **scalars}, f"evaluate_data.{name}")
    finally:
        tracker.close()
