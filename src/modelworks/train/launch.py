"""`--nproc N`: start torchrun for the user, re-running the same command in N processes.

    modelworks pretrain configs/quickstart.yaml --nproc 2
is the same as
    torchrun --standalone --nproc-per-node 2 -m modelworks pretrain configs/quickstart.yaml
"""

from __future__ import annotations

import subprocess
import sys


def relaunch(nproc: int, argv: list[str]) -> int:
    """Run `modelworks <argv>` under torchrun with `nproc` processes on this node."""
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc-per-node={nproc}",
        "-m",
        "modelworks",
        *argv,
    ]
    return subprocess.call(cmd)


def check_mesh(cfg, nproc: int) -> None:
    """Validate the mesh against the process count and the model before starting processes."""
    from modelworks.models.registry import model_config_from
    from modelworks.train.parallel import ParallelDims

    dims = ParallelDims.from_config(cfg.parallel, nproc)
    dims.local_batch(cfg.pretrain.batch_size)
    dims.check_arch(model_config_from(cfg.model))
