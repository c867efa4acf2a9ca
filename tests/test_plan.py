"""The compute planner: exact counts, memory that moves the right way, one-line errors, and its
predictions checked against the real trainer on CPU (peak memory within 25%, step time within
30%).

How the trainer is measured (`_probe`, this file run as a script in a fresh process, 1 thread):
- memory: the growth of peak RSS (VmHWM, what ru_maxrss reports) over the RSS just before the
  model is built, less the code pages mapped meanwhile (RssFile), in a forked child of a process
  warmed up by a tiny training run, so that torch's code pages and lazy imports (the planner's
  fixed overhead) are not counted; with glibc's mmap threshold fixed, so that freed tensors
  leave RSS and it tracks the tensors training holds (glibc's default keeps freed blocks
  resident: RSS then ran 0.9x-1.9x of that, the planner's `allocator_slack` for cpu);
- time: the calibration config and the targets train in threads that take one step each in
  turn (one runs at a time), so that each turn sees the same speed of a shared machine, which
  drifts by tens of percent over seconds; a step's time is its thread's CPU time, the first
  step (which makes the optimizer states) left out. In each turn the planner predicts each
  target at the MFU the calibration step reached, by the trainer's formula (FLOPs per step over
  step time and the matmul peak the trainer measured); the turn with the median ratio is kept.
"""

from __future__ import annotations

import contextlib
import gc
import itertools
import json
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch

from modelworks.cli import main
from modelworks.config import load_config
from modelworks.errors import ModelworksError
from modelworks.models.registry import build_model
from modelworks.plan import CPU_MFU, PlanError, format_table, load_hardware, model_of, plan

ROOT = Path(__file__).resolve().parents[1]
VOCAB = 1024
WARMUP = ["model.d_model=32", "model.n_layer=1", "pretrain.batch_size=2", "pretrain.seq_len=16"]
CALIBRATION = ["model.d_model=192", "model.n_layer=2", "model.n_head=6", "model.n_kv_head=2"]
CALIBRATION += ["pretrain.batch_size=8", "pretrain.seq_len=128"]
# three shapes at different batch and sequence lengths, through different memory paths
TARGETS = {
    "mha_long_seq": ["model.d_model=128", "model.n_layer=3", "model.n_head=4", "model.n_kv_head=4",
                     "pretrain.batch_size=4", "pretrain.seq_len=256"],
    "gqa_checkpointed": ["model.d_model=192", "model.n_layer=3", "model.n_head=6",
                         "model.n_kv_head=2", "pretrain.batch_size=6", "pretrain.seq_len=128",
                         "pretrain.activation_checkpointing=true"],
    "wide_accumulated": ["model.d_model=256", "model.n_layer=2", "model.n_head=4",
                         "model.n_kv_head=2", "pretrain.batch_size=2", "pretrain.seq_len=128",
                         "pretrain.grad_accum=2"],
}  # fmt: skip
STEPS = 8


def _cfg(*overrides: str, files: tuple[str, ...] = ()):
    return load_config([ROOT / f for f in files], list(overrides))


# ---------------------------------------------------------------------------------------------
# Measuring the real trainer (runs in a fresh process)


class _Stop(Exception):
    pass


def _status_kib(key: str) -> int:
    """VmRSS (now) or VmHWM (peak since start or the last reset; what ru_maxrss reports)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise KeyError(key)


def _train(overrides: list[str], steps: int, out_dir: Path, at_step=lambda: None) -> dict:
    """Run `steps` steps of the real trainer on random tokens: the growth of peak RSS over the
    RSS before the model is built, each step's CPU time (this thread's), and its wall time and
    MFU as the trainer logs them. `at_step()` runs as each step starts. The trainer is stopped
    at the start of one more step, so its final validation and checkpoint (not training steps)
    are not measured."""
    from modelworks.tasks.language_modeling import lm_loss
    from modelworks.train.trainer import Trainer, TrainSetup

    cfg = load_config(
        None,
        [
            *overrides,
            f"pretrain.steps={steps + 1}",
            "pretrain.log_every=1",
            "pretrain.warmup_steps=0",
        ],
    )
    p = cfg.pretrain
    gc.collect()  # the previous run's model, kept alive by the _Stop traceback's cycles
    base, base_file = _status_kib("VmRSS"), _status_kib("RssFile")
    arch, _ = model_of(cfg, VOCAB)
    model = build_model(arch)
    g = torch.Generator().manual_seed(0)
    batch = tuple(torch.randint(0, VOCAB, (p.batch_size, p.seq_len), generator=g) for _ in "xy")

    class Loader:
        def next_batch(self):
            return batch

        def state_dict(self):
            return {}

        def load_state_dict(self, state):
            pass

    calls, peak, step_starts = [0], [0], []

    def loss_fn(m, b):
        if calls[0] % p.grad_accum == 0:  # a step starts (its first micro-batch)
            step_starts.append(time.thread_time())
            at_step()
            step_starts.append(time.thread_time())
        calls[0] += 1
        if calls[0] > steps * p.grad_accum:
            # code pages faulted in on the way are not training's memory
            peak[0] = _status_kib("VmHWM") - (_status_kib("RssFile") - base_file)
            raise _Stop
        return lm_loss(m, b)

    flops = model.estimate_flops(p.seq_len)
    setup = TrainSetup(
        model, loss_fn, Loader(), lambda m: {}, p.batch_size * p.seq_len, "tok", flops
    )
    out_dir.mkdir(parents=True, exist_ok=True)
    with contextlib.suppress(_Stop):
        Trainer(setup, p, out_dir, torch.device("cpu")).fit(resume=False)
    records = [json.loads(line) for line in (out_dir / "metrics.jsonl").read_text().splitlines()]
    tokens = p.batch_size * p.seq_len * p.grad_accum
    return {
        "peak_bytes": (peak[0] - base) * 1024,
        "step_seconds": [tokens / r["tok_per_s"] for r in records],
        "step_cpu_seconds": [b - a for a, b in itertools.pairwise(step_starts[1:-1])][::2],
        "mfu": [r["mfu"] for r in records],
        "flops_per_step": flops * tokens,
    }


def _tensor_peak(target: list[str], out: Path) -> int:
    """Peak RSS growth over 2 training steps (the second is the first with optimizer states), in
    a forked child with glibc's heap caching off: a fixed mmap threshold returns each freed
    tensor to the OS at once, so RSS follows the tensors that training holds (with the default
    dynamic threshold glibc keeps freed blocks resident, and RSS wanders around that)."""
    import ctypes
    import os

    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: a copy of the warmed-up process
        code = 1
        try:
            os.close(read)
            libc = ctypes.CDLL("libc.so.6")
            libc.mallopt(-3, 128 * 1024)  # M_MMAP_THRESHOLD, now fixed
            _train(WARMUP, 2, out / "warm")  # fault the shared code pages back in
            gc.collect()
            libc.malloc_trim(0)  # so that no later trim of free heap lowers RSS under the base
            Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
            os.write(write, str(_train(target, 2, out)["peak_bytes"]).encode())
            code = 0
        finally:
            os._exit(code)
    os.close(write)
    with os.fdopen(read) as f:
        text = f.read()
    _, status = os.waitpid(pid, 0)
    if status:
        raise RuntimeError(f"measuring {target} failed in the child process")
    return int(text)


class _Turns:
    """Trainers in threads taking one step each in turn, so that all see the same speed of a
    shared, busy machine (it drifts by tens of percent over seconds); one runs at a time."""

    def __init__(self, names: list[str]) -> None:
        self.order, self.turn = list(names), names[0]
        self.cond = threading.Condition()

    def _pass(self, name: str) -> None:
        if self.turn == name and self.order:
            self.turn = self.order[(self.order.index(name) + 1) % len(self.order)]
        self.cond.notify_all()

    def step(self, name: str, first: bool) -> None:
        with self.cond:
            if not first:
                self._pass(name)
            self.cond.wait_for(lambda: self.turn == name)

    def leave(self, name: str) -> None:
        with self.cond:
            self._pass(name)
            self.order.remove(name)


def _step_in_turn(configs: dict[str, list[str]], steps: int, out: Path) -> dict[str, dict]:
    turns, runs, errors = _Turns(list(configs)), {}, []

    def run(name: str) -> None:
        first = [True]

        def at_step() -> None:
            turns.step(name, first[0])
            first[0] = False

        try:
            runs[name] = _train(configs[name], steps, out / f"time_{name}", at_step)
        except BaseException as e:  # re-raised below, in the main thread
            errors.append(e)
        finally:
            turns.leave(name)

    threads = [threading.Thread(target=run, args=(name,)) for name in configs]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    return runs


def _probe(targets: dict[str, list[str]], calibration: list[str], steps: int, out: Path) -> dict:
    """Measurements for every target, in one fresh process: tensor peak memory (each in a forked
    child), then step times of the calibration config and the targets taking steps in turn; each
    turn gives a prediction for each target, and the turn with the median ratio is kept."""
    from modelworks.runtime import measure_matmul_flops

    torch.set_num_threads(1)
    # first use of each op maps code pages and imports lazily: part of the fixed overhead
    _train(WARMUP, 2, out / "warm")
    result = {
        name: {"tensor_peak_bytes": _tensor_peak(t, out / name)} for name, t in targets.items()
    }
    runs = _step_in_turn({"calibration": calibration, **targets}, steps, out)
    peak = measure_matmul_flops(torch.device("cpu"), torch.float32)  # the trainer's, cached
    cal = runs["calibration"]
    for name, target in targets.items():
        # the planner at 100% of the peak, scaled to the MFU below (a matmul peak measured under
        # contention can put a CPU-time MFU above 1, which the planner rightly refuses)
        full = plan(load_config(None, target), "cpu", mfu=1.0, vocab_size=VOCAB)
        turns = []
        for k in range(1, steps):  # the first step of each makes the optimizer states
            mfu = cal["flops_per_step"] / cal["step_cpu_seconds"][k] / peak  # trainer's formula
            predicted = full["compute"]["step_seconds"] / mfu
            turns.append((predicted, runs[name]["step_cpu_seconds"][k], mfu))
        predicted, got, mfu = sorted(turns, key=lambda t: t[0] / t[1])[len(turns) // 2]
        result[name].update(
            step_seconds=got,
            predicted_step_seconds=predicted,
            mfu=mfu,
            turns=[t[:2] for t in turns],
            plan=full,
        )
    return result


# ---------------------------------------------------------------------------------------------
# Predictions against the real trainer


@pytest.fixture(scope="module")
def measured(tmp_path_factory) -> dict:
    if sys.platform != "linux":
        pytest.skip("measures RSS through /proc and glibc's mallopt")
    spec = {"targets": TARGETS, "calibration": CALIBRATION, "steps": STEPS}
    spec["out"] = str(tmp_path_factory.mktemp("plan_probe"))
    proc = subprocess.run(
        [sys.executable, __file__, json.dumps(spec)], capture_output=True, text=True, timeout=240
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.splitlines()[-1])


@pytest.mark.parametrize("name", TARGETS)
def test_predicted_peak_memory_matches_the_trainer(measured, name):
    got, predicted = measured[name]["tensor_peak_bytes"], measured[name]["plan"]["memory"]["peak"]
    assert abs(predicted / got - 1) <= 0.25, f"{name}: predicted {predicted:,} B, measured {got:,}"


@pytest.mark.parametrize("name", TARGETS)
def test_predicted_step_time_matches_the_trainer(measured, name):
    m = measured[name]
    got, predicted = m["step_seconds"], m["predicted_step_seconds"]
    assert abs(predicted / got - 1) <= 0.30, (
        f"{name}: predicted {predicted:.3f} s at MFU {m['mfu']:.3f}, measured {got:.3f} s"
    )


# ---------------------------------------------------------------------------------------------
# The planner on its own


@pytest.mark.parametrize(
    "overrides",
    [
        ("model.n_layer=2", "model.n_head=4", "model.n_kv_head=2", "model.d_model=64"),
        ("model.tie_embeddings=false", "model.n_kv_head=4", "model.ffn_hidden=200"),
        ("model.n_layer=6", "model.n_head=6", "model.n_kv_head=2", "model.d_model=384"),
    ],
)
def test_parameter_count_and_flops_are_the_real_models(overrides):
    cfg = _cfg(*overrides)
    result = plan(cfg, "h100")
    arch, _ = model_of(cfg)
    real = build_model(arch)
    assert result["model"]["parameters"] == sum(p.numel() for p in real.parameters())
    assert result["compute"]["flops_per_token"] == real.estimate_flops(cfg.pretrain.seq_len)
    assert result["model"]["vocab_size"] == cfg.preprocess.vocab_size  # 0: the tokenizer's


def test_llama_1b_preset_has_llama_3_2_1b_parameter_count():
    result = plan(_cfg(files=("configs/models/llama-1b.yaml",)), "h100", vocab_size=128256)
    assert result["model"]["parameters"] == 1_235_814_400  # Meta's count for Llama 3.2 1B


def test_fsdp_memory_falls_as_dp_grows():
    def cfg(dp):  # the same micro-batch of 4 on every device: batch_size is global
        return _cfg(f"pretrain.batch_size={4 * dp}", files=("configs/models/llama-350m.yaml",))

    peak = {
        (s, dp): plan(cfg(dp), "a100-80gb", s, dp)["memory"]
        for s, dp in [("single", 1), ("ddp", 2), ("fsdp", 2), ("fsdp", 4)]
    }
    totals = [peak[k]["total"] for k in [("single", 1), ("fsdp", 2), ("fsdp", 4)]]
    assert totals[0] > totals[1] > totals[2]
    assert peak["ddp", 2]["total"] > peak["single", 1]["total"]  # DDP adds gradient buckets
    for key in ("weights", "gradients", "optimizer"):
        assert peak["fsdp", 4][key] == pytest.approx(peak["single", 1][key] / 4, rel=1e-6)


def test_batch_size_is_global_as_in_the_trainer():
    result = plan(_cfg("pretrain.batch_size=8", "pretrain.grad_accum=2"), "h100", "ddp", 4)
    layout = result["layout"]
    assert (layout["micro_batch"], layout["global_batch"]) == (2, 16)
    assert layout["tokens_per_step"] == 16 * layout["seq_len"]
    with pytest.raises(PlanError, match="batch_size=6 does not divide over dp=4"):
        plan(_cfg("pretrain.batch_size=6"), "h100", "ddp", 4)


def test_activation_checkpointing_trades_memory_for_compute():
    cfg = _cfg("pretrain.batch_size=8", files=("configs/models/gpt-124m.yaml",))
    off, on = (plan(cfg, "l4", activation_checkpointing=ac) for ac in (False, True))
    assert on["memory"]["activations"] < off["memory"]["activations"]
    assert on["memory"]["total"] < off["memory"]["total"]
    assert on["memory"]["max_micro_batch"] > off["memory"]["max_micro_batch"]
    assert on["compute"]["step_seconds"] > off["compute"]["step_seconds"]


def test_tensor_parallel_splits_weights_and_activations():
    cfg = _cfg("pretrain.batch_size=4", files=("configs/models/llama-1b.yaml",))
    one, two = plan(cfg, "h100"), plan(cfg, "h100", "tp", 1, 2)
    assert two["memory"]["weights"] < one["memory"]["weights"]
    assert two["memory"]["activations_per_layer"] < one["memory"]["activations_per_layer"]
    assert two["memory"]["logits"] == one["memory"]["logits"]  # the head is not split


def test_largest_micro_batch_is_the_edge_of_fitting():
    def memory(*overrides):
        return plan(_cfg(*overrides, files=("configs/models/llama-1b.yaml",)), "a100-40gb")[
            "memory"
        ]

    b = memory()["max_micro_batch"]
    assert b >= 1
    assert memory(f"pretrain.batch_size={b}")["fits"]
    assert not memory(f"pretrain.batch_size={b + 1}")["fits"]


@pytest.mark.parametrize(
    ("kwargs", "words"),
    [
        ({"strategy": "single", "dp": 2}, ["single", "dp=2"]),
        ({"strategy": "ddp", "dp": 2, "tp": 2}, ["ddp", "tp=2"]),
        ({"strategy": "fsdp+tp", "dp": 1, "tp": 2}, ["fsdp+tp", "dp=1"]),
        ({"strategy": "tp", "tp": 3}, ["tp=3", "n_head=4"]),
        ({"strategy": "fsdp", "dp": 0}, ["dp=0"]),
        ({"strategy": "zero3", "dp": 2}, ["zero3", "fsdp+tp"]),
    ],
)
def test_a_bad_mesh_is_one_clear_line(kwargs, words):
    with pytest.raises(PlanError) as e:
        plan(_cfg("model.n_head=4", "model.n_kv_head=2"), "h100", **kwargs)
    assert isinstance(e.value, ModelworksError)
    assert "\n" not in str(e.value)
    assert all(w in str(e.value) for w in words), str(e.value)


def test_unknown_hardware_names_the_known_ones():
    with pytest.raises(PlanError, match="unknown hardware 'h1000'") as e:
        plan(_cfg(), "h1000")
    assert all(name in str(e.value) for name in ("cpu", "a100-80gb", "h100", "rtx4090"))


def test_a_hardware_file_extends_the_table(tmp_path):
    path = tmp_path / "hw.yaml"
    path.write_text("my-gpu: {bf16_tflops: 100, fp32_tflops: 50, memory_gib: 10}\n")
    assert load_hardware(path)["my-gpu"].memory_gib == 10
    result = plan(_cfg(), "my-gpu", extra_hardware=path)
    assert result["memory"]["capacity"] == 10 * 2**30
    assert result["run"]["cost"] is None  # no price: no cost, unless given
    assert plan(_cfg(), "my-gpu", price_per_hour=2.0, extra_hardware=path)["run"]["cost"] > 0
    path.write_text("my-gpu: {memory_gb: 10}\n")
    with pytest.raises(PlanError, match="my-gpu: unexpected 'memory_gb'"):
        load_hardware(path)


def test_run_length_time_and_cost():
    result = plan(_cfg(files=("configs/models/gpt-124m.yaml",)), "h100", "ddp", 8)
    run, n = result["run"], result["model"]["parameters"]
    assert run["compute_optimal_tokens"] == 20 * n and run["tokens"] == 20 * n
    assert run["cost"] == pytest.approx(run["hours"] * 8 * 2.99)
    half = plan(_cfg(files=("configs/models/gpt-124m.yaml",)), "h100", "ddp", 8, tokens=10 * n)
    assert half["run"]["hours"] == pytest.approx(run["hours"] / 2, rel=0.01)


def test_cli_prints_a_table_json_and_one_line_errors(capsys):
    # the real command: configs, options and overrides in any order
    cfg = str(ROOT / "configs" / "quickstart.yaml")
    assert main(["plan", cfg, "--hardware", "h100", "model.n_layer=2", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["layout"]["hardware"] == "h100" and result["model"]["n_layer"] == 2
    argv = ["plan", "--hardware", "h100", "--dp", "2", cfg, "--strategy", "fsdp", "--tokens", "3B"]
    assert main(argv) == 0
    table = capsys.readouterr().out
    assert "fsdp on 2 x h100" in table and "3.00B tokens" in table and "fits" in table
    assert main(["plan", cfg, "--pretrain.batch_size", "64", "--hardware", "h100", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["layout"]["micro_batch"] == 64
    assert main(["plan", cfg, "--hardware", "nope"]) == 2
    assert capsys.readouterr().err.count("\n") == 1


# what torch.cuda.get_device_name says on each GPU of the table: the trainer looks its peak up
# by this name, the planner by the table's; a GPU added to one must be added here
DEVICE_NAMES = {
    "a100-40gb": "NVIDIA A100-SXM4-40GB",
    "a100-80gb": "NVIDIA A100-SXM4-80GB",
    "h100": "NVIDIA H100 80GB HBM3",
    "h200": "NVIDIA H200",
    "l4": "NVIDIA L4",
    "l40s": "NVIDIA L40S",
    "a10": "NVIDIA A10",
    "rtx4090": "NVIDIA GeForce RTX 4090",
    "rtx3090": "NVIDIA GeForce RTX 3090",
    "v100": "Tesla V100-SXM2-32GB",
    "t4": "Tesla T4",
}


@pytest.mark.parametrize("tf32", [True, False])
def test_fp32_peak_is_the_precision_the_trainer_sets(tf32):
    """Plan, trainer and logged MFU agree: the planner's fp32 peak is the table's peak for the
    matmul precision the trainer sets on CUDA (TF32 by default, plain fp32 with tf32=false)."""
    from modelworks.runtime import gpu_table_peak, matmul_precision

    gpus = [name for name, hw in load_hardware().items() if hw.kind == "gpu"]
    assert sorted(gpus) == sorted(DEVICE_NAMES)
    cfg = _cfg(f"pretrain.tf32={str(tf32).lower()}", "model.n_layer=1")
    trainer_sets = matmul_precision("cuda", "float32", tf32)  # what Trainer.__init__ applies
    assert trainer_sets == ("tf32" if tf32 else "float32")
    for name in gpus:
        result = plan(cfg, name)
        assert result["layout"]["matmul_precision"] == trainer_sets
        peak = result["compute"]["peak_flops_per_device"]
        assert peak == gpu_table_peak(DEVICE_NAMES[name], "float32", tf32), name
    # the two truths differ where there are TF32 cores (A100: 156 vs 19.5), not on V100 or T4
    on = plan(_cfg("model.n_layer=1"), "a100-40gb")["compute"]
    off = plan(_cfg("model.n_layer=1", "pretrain.tf32=false"), "a100-40gb")["compute"]
    assert (on["peak_flops_per_device"], off["peak_flops_per_device"]) == (156e12, 19.5e12)
    assert "tf32" in on["peak_source"] and "float32" in off["peak_source"]
    assert "no TF32" in plan(_cfg("model.n_layer=1"), "v100")["compute"]["peak_source"]


def test_trainer_on_cpu_runs_float32_whatever_tf32_says(tmp_path):
    from modelworks.train.trainer import Trainer, TrainSetup

    cfg = _cfg("model.n_layer=1", "model.d_model=32", "pretrain.tf32=true")
    arch, _ = model_of(cfg, VOCAB)
    setup = TrainSetup(build_model(arch), lambda m, b: 0, None, lambda m: {}, 1)
    trainer = Trainer(setup, cfg.pretrain, tmp_path, torch.device("cpu"))
    assert trainer.precision == "float32" and trainer.dtype == torch.float32
    assert plan(cfg, "cpu")["layout"]["matmul_precision"] == trainer.precision


@pytest.mark.parametrize("gpu", ["t4", "v100"])
def test_bfloat16_on_a_gpu_without_it_plans_float16_and_says_so(gpu):
    from modelworks.runtime import training_dtype

    cfg = _cfg("model.n_layer=1", "pretrain.dtype=bfloat16")
    result = plan(cfg, gpu)
    assert result["layout"]["dtype"] == "float16" == training_dtype("bfloat16", has_bf16=False)
    assert any(f"{gpu} has no bfloat16: planned in float16" in n for n in result["notes"])
    assert result["compute"]["peak_flops_per_device"] == load_hardware()[gpu].bf16_tflops * 1e12
    assert "has no bfloat16" in format_table(result)
    a100 = plan(cfg, "a100-80gb")
    assert a100["layout"]["dtype"] == "bfloat16" and len(a100["notes"]) == 1  # the run length


@pytest.mark.parametrize(
    ("given", "name"),
    [
        ("H100", "h100"),
        ("rtx-4090", "rtx4090"),
        ("RTX_4090", "rtx4090"),
        ("A100 80GB", "a100-80gb"),
    ],
)
def test_hardware_names_ignore_case_and_separators(given, name):
    assert plan(_cfg("model.n_layer=1"), given)["layout"]["hardware"] == name


def test_plan_uses_the_configured_steps_and_says_which_it_used(capsys):
    cfg = _cfg(files=("configs/quickstart.yaml",))  # pretrain.steps: 400
    run = plan(cfg, "h100")["run"]
    assert run["steps"] == 400 and run["tokens"] == 400 * 16 * 128
    assert run["basis"] == "planning the configured run: 400 steps x 16 sequences x 128 tokens"
    preset = plan(_cfg(files=("configs/models/gpt-124m.yaml",)), "h100")["run"]
    assert preset["tokens"] == preset["compute_optimal_tokens"]
    assert preset["basis"] == "no steps configured: Chinchilla 20 tokens/parameter"
    assert main(["plan", str(ROOT / "configs/models/gpt-124m.yaml"), "pretrain.steps=50"]) == 0
    out = capsys.readouterr().out
    assert "planning the configured run: 50 steps x 16 sequences x 1024 tokens" in out
    assert ", 50 steps," in out


def test_cpu_plan_measures_this_machine():
    result = plan(_cfg("model.n_layer=1"), "cpu")
    assert result["compute"]["peak_source"].startswith("measured matmul")
    assert result["compute"]["mfu"] == CPU_MFU and result["memory"]["allocator_slack"] > 0


if __name__ == "__main__":  # the probe, in a fresh process (see `measured`)
    args = json.loads(sys.argv[1])
    print(
        json.dumps(_probe(args["targets"], args["calibration"], args["steps"], Path(args["out"])))
    )
