"""modelworks: collect -> preprocess -> pretrain -> evaluate -> deploy, each a command and a call.

from modelworks import load_config, run
cfg = load_config("configs/quickstart.yaml", ["pretrain.steps=100"])
run(cfg)
"""

from modelworks.config import Config
from modelworks.config import load_config as _load_config

__version__ = "0.1.0"


def load_config(path=None, overrides=None) -> Config:
    """The config from YAML files and KEY=VALUE overrides (config.load_config), with its task and
    the task's `tasks.<name>:` options checked too."""
    from modelworks.tasks import check_task_config

    cfg = _load_config(path, overrides)
    check_task_config(cfg)
    return cfg


def collect(cfg: Config, reporter=None) -> dict:
    from modelworks.collect import collect as _collect

    return _collect(cfg, reporter)


def preprocess(cfg: Config, reporter=None) -> dict:
    from modelworks.preprocess import preprocess as _preprocess

    return _preprocess(cfg, reporter)


def pretrain(cfg: Config, reporter=None, resume: bool = True) -> dict:
    from modelworks.train import pretrain as _pretrain

    return _pretrain(cfg, reporter, resume)


def evaluate(cfg: Config, reporter=None) -> dict:
    from modelworks.evaluate import evaluate as _evaluate

    return _evaluate(cfg, reporter)


def run(cfg: Config, force=(), reporter=None) -> dict:
    from modelworks.pipeline import run as _run

    return _run(cfg, force, reporter)


def serve(run_dir, cfg=None, device: str = "auto") -> None:
    from modelworks.serve import serve as _serve

    _serve(run_dir, cfg, device)


__all__ = ["Config", "load_config", "collect", "preprocess", "pretrain", "evaluate", "run", "serve"]
