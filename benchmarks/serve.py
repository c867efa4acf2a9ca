"""Serving speed: batch-1 generation against transformers, and streaming clients at concurrency.

1. Batch 1: tokens/s of greedy generation of `--new-tokens` tokens after the same prompt, by
   (a) our batching engine (`Engine.submit`, the path the server uses), (b) our one-sequence
   `Engine.generate`, and (c) Hugging Face transformers `generate` (greedy, KV cache) on the same
   weights (our HF export of the same model). The goal is (a) >= 2x (c). Greedy tokens of (a)
   and (c) are compared, as a check that both run the same function.
2. Concurrency: `modelworks serve` in a subprocess; 1, 4, 16 concurrent streaming clients each
   send requests back to back (prompt of `--prompt-tokens`, `--new-tokens` tokens, ignore_eos).
   Per request, with vLLM's definitions: TTFT (send -> first token), TPOT ((end - first token) /
   (tokens - 1)), ITL (gaps between streamed chunks); output tokens/s = all tokens / wall time.
   The goal is throughput at 16 >= 6x throughput at 1.
3. `--soak SECONDS`: 64 streaming clients (`--soak-clients`) back to back; counts 5xx, transport
   errors and streams cut before their finish chunk and [DONE], and samples the server's RSS.

The model has random weights of the chosen shape (speed does not depend on what it learned); the
tokenizer is a BPE trained on Python's own docs. Prints a table and writes
benchmarks/results/serve.json.

    python benchmarks/serve.py                        # CPU, preset small, ~3 minutes
    python benchmarks/serve.py --preset tiny --requests 8
    python benchmarks/serve.py --preset tiny --soak 60           # + 60 s at 64 streams
    python benchmarks/serve.py --device cuda --preset 124m
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from _common import write_json  # noqa: E402

from modelworks.models.gpt import GPT, GPTConfig  # noqa: E402
from modelworks.models.hf import export_hf  # noqa: E402
from modelworks.serve.engine import Engine, SamplingParams  # noqa: E402

PRESETS = {  # (d_model, n_layer, n_head, n_kv_head, vocab)
    "tiny": (64, 2, 4, 2, 512),
    "small": (256, 4, 4, 2, 2048),
    "124m": (768, 12, 12, 12, 6144),  # vocab: what the pydoc topics support
}


def build(preset: str, out: Path) -> Path:
    from pydoc_data.topics import topics

    from modelworks.preprocess.tokenizer import train_bpe

    d, n_layer, n_head, n_kv, vocab = PRESETS[preset]
    tok = train_bpe(list(topics.values()), vocab)
    tok.save(str(out / "tokenizer.json"))
    torch.manual_seed(0)
    cfg = GPTConfig(
        vocab_size=vocab,
        context_len=1024,
        n_layer=n_layer,
        n_head=n_head,
        n_kv_head=n_kv,
        d_model=d,
        init_std=0.1,
    )
    return export_hf(GPT(cfg).eval(), out / "hf", out / "tokenizer.json")


def prompt_ids(engine: Engine, n: int) -> list[int]:
    from pydoc_data.topics import topics

    return engine.encode(" ".join(topics.values()))[:n]


def batch1(folder: Path, device: str, n_prompt: int, n_new: int, repeats: int) -> dict:
    from transformers import AutoModelForCausalLM

    engine = Engine.from_hf(folder, device, max_batch=16)
    ids = prompt_ids(engine, n_prompt)
    hf = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).to(device).eval()
    hf_in = torch.tensor([[engine.eot, *ids]], device=device)

    def ours_batched():
        done, toks = threading.Event(), []

        def on(ev):
            if ev.token_id is not None:
                toks.append(ev.token_id)
            if ev.finish_reason:
                done.set()

        engine.submit(ids, SamplingParams(max_tokens=n_new, temperature=0, ignore_eos=True), on)
        done.wait()
        return toks

    def ours_single():
        return engine.generate(ids, n_new, temperature=0).token_ids

    def theirs():
        with torch.no_grad():
            # an explicit mask: the start token is also the pad token, which HF would mask out
            out = hf.generate(
                hf_in,
                attention_mask=torch.ones_like(hf_in),
                do_sample=False,
                max_new_tokens=n_new,
                min_new_tokens=n_new,
            )
        return out[0, hf_in.shape[1] :].tolist()

    runs = {
        "modelworks engine (batching loop)": ours_batched,
        "modelworks Engine.generate": ours_single,
        "transformers generate": theirs,
    }
    times: dict[str, list[float]] = {k: [] for k in runs}
    tokens = {}
    for name, fn in runs.items():
        tokens[name] = fn()  # warm-up
    for _ in range(repeats):  # interleaved, so all see the same machine load
        for name, fn in runs.items():
            t = time.perf_counter()
            fn()
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            times[name].append(time.perf_counter() - t)
    a, c = tokens["modelworks engine (batching loop)"], tokens["transformers generate"]
    same = sum(x == y for x, y in zip(a, c, strict=False))
    res = {name: n_new / statistics.median(ts) for name, ts in times.items()}

    def engine_only(batch: int) -> float:  # B prompts at once, no HTTP: the engine's own scaling
        left = threading.Semaphore(0)

        def on(ev):
            if ev.finish_reason:
                left.release()

        t = time.perf_counter()
        for _ in range(batch):
            params = SamplingParams(max_tokens=n_new, temperature=0, ignore_eos=True)
            engine.submit(ids, params, on)
        for _ in range(batch):
            left.acquire()
        return batch * n_new / (time.perf_counter() - t)

    scaling = {b: statistics.median(engine_only(b) for _ in range(repeats)) for b in (1, 4, 16)}
    return {
        "engine_only_tokens_per_s": scaling,
        "tokens_per_s": res,
        "speedup_vs_transformers": res["modelworks engine (batching loop)"]
        / res["transformers generate"],
        "greedy_tokens_identical": f"{same}/{n_new}",
    }


async def one_request(client, base, ids, n_new) -> dict:
    # logprobs=0: every token comes in its own chunk even when its text is held back (random
    # weights emit many incomplete UTF-8 characters), so chunks time tokens as vLLM's client does
    body = {
        "prompt": ids,
        "max_tokens": n_new,
        "temperature": 0,
        "ignore_eos": True,
        "logprobs": 0,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    t0 = time.perf_counter()
    stamps, n_out = [], 0
    async with client.post(f"{base}/v1/completions", json=body) as r:
        r.raise_for_status()
        async for raw in r.content:  # one SSE line at a time
            line = raw.decode().rstrip("\n")
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            if chunk.get("usage"):
                n_out = chunk["usage"]["completion_tokens"]
            elif chunk["choices"] and (chunk["choices"][0]["logprobs"] or {}).get("tokens"):
                stamps.extend(
                    [time.perf_counter()] * len(chunk["choices"][0]["logprobs"]["tokens"])
                )
    end = time.perf_counter()
    return {
        "ttft": stamps[0] - t0,
        "itl": [float(x) for x in np.diff(stamps)],
        "e2e": end - t0,
        "tpot": (end - stamps[0]) / max(1, n_out - 1),
        "tokens": n_out,
    }


async def load_test(base: str, ids: list[int], n_new: int, conc: int, per_client: int) -> dict:
    import aiohttp  # as vLLM's benchmark client: a lighter client than httpx's on shared cores

    timeout, connector = aiohttp.ClientTimeout(total=600), aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(timeout=timeout, connector=connector) as client:

        async def worker():
            return [await one_request(client, base, ids, n_new) for _ in range(per_client)]

        t = time.perf_counter()
        results = [r for rs in await asyncio.gather(*[worker() for _ in range(conc)]) for r in rs]
        wall = time.perf_counter() - t
    ms = lambda xs, q: 1000 * float(np.percentile(xs, q)) if xs else float("nan")  # noqa: E731
    itl = [x for r in results for x in r["itl"]]
    out = {
        "concurrency": conc,
        "requests": len(results),
        "wall_s": wall,
        "output_tokens_per_s": sum(r["tokens"] for r in results) / wall,
    }
    for key, xs in [
        ("ttft", [r["ttft"] for r in results]),
        ("tpot", [r["tpot"] for r in results]),
        ("itl", itl),
    ]:
        out[f"{key}_ms"] = {"mean": 1000 * float(np.mean(xs)), "p50": ms(xs, 50), "p99": ms(xs, 99)}
    return out


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


async def soak(base: str, ids: list[int], n_new: int, conc: int, seconds: float, pid: int) -> dict:
    """`conc` clients stream back to back for `seconds`: count 5xx, other errors, and streams
    that ended without their finish chunk and [DONE]; server RSS at each quarter of the run."""
    import httpx

    counts = {"requests": 0, "5xx": 0, "errors": 0, "dropped_streams": 0}
    first_errors: list[str] = []  # what the first few failures were, for the report
    end = time.monotonic() + seconds
    body = {"prompt": ids, "max_tokens": n_new, "temperature": 0.8, "ignore_eos": True,
            "stream": True}  # fmt: skip
    rss = [rss_mb(pid)]

    async def client(http):
        while time.monotonic() < end:
            counts["requests"] += 1
            try:
                async with http.stream("POST", f"{base}/v1/completions", json=body) as r:
                    if r.status_code >= 500:
                        counts["5xx"] += 1
                        continue
                    finished = done = False
                    async for line in r.aiter_lines():
                        if line == "data: [DONE]":
                            done = True
                        elif line.startswith("data: "):
                            chunk = json.loads(line[6:])
                            finished |= chunk["choices"][0]["finish_reason"] is not None
                    counts["dropped_streams"] += not (finished and done)
            except httpx.HTTPError as e:
                counts["errors"] += 1
                if len(first_errors) < 5:
                    first_errors.append(f"{type(e).__name__}: {e}")

    async def sampler():
        while time.monotonic() < end:
            await asyncio.sleep(seconds / 4)
            rss.append(rss_mb(pid))

    limits = httpx.Limits(max_connections=conc, keepalive_expiry=2.0)  # < the server's keep-alive
    async with httpx.AsyncClient(timeout=600, limits=limits) as http:
        await asyncio.gather(sampler(), *[client(http) for _ in range(conc)])
    return {"concurrency": conc, "seconds": seconds, **counts, "server_rss_mb": rss,
            "first_errors": first_errors}  # fmt: skip


def start_server(folder: Path, device: str, threads: int) -> tuple[subprocess.Popen, str]:
    import httpx

    sock = __import__("socket").socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    cmd = [
        sys.executable,
        "-m",
        "modelworks",
        "serve",
        str(folder),
        f"serve.port={port}",
        "serve.max_batch=16",
        f"device={device}",
        f"threads={threads}",
    ]
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    for _ in range(600):
        try:
            if httpx.get(f"{base}/health", timeout=1).status_code == 200:
                return proc, base
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    proc.kill()
    raise RuntimeError("server did not start")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", choices=PRESETS, default="small")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--prompt-tokens", type=int, default=32)
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--requests", type=int, default=16, help="requests per concurrency level")
    ap.add_argument("--concurrency", default="1,4,16")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    ap.add_argument("--soak", type=float, default=0, help="seconds of soak at the end (0: none)")
    ap.add_argument("--soak-clients", type=int, default=64)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "serve.json"))
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        folder = build(args.preset, Path(tmp))
        b1 = batch1(folder, args.device, args.prompt_tokens, args.new_tokens, args.repeats)
        print(
            f"\nbatch 1: {args.prompt_tokens}-token prompt, {args.new_tokens} new tokens, "
            f"preset {args.preset}, {args.device}"
        )
        print(f"{'engine':<36} {'tokens/s':>10}")
        for name, v in b1["tokens_per_s"].items():
            print(f"{name:<36} {v:>10.1f}")
        sc = b1["engine_only_tokens_per_s"]
        print(
            "engine alone, no HTTP, B prompts at once: "
            + ", ".join(f"B={b}: {v:.0f} tok/s" for b, v in sc.items())
            + f" ({sc[16] / sc[1]:.1f}x at 16)"
        )
        print(
            f"speed-up vs transformers: {b1['speedup_vs_transformers']:.2f}x (goal >= 2x); "
            f"greedy tokens identical: {b1['greedy_tokens_identical']}"
        )

        proc, base = start_server(folder, args.device, args.threads)
        try:
            engine = Engine.from_hf(folder, "cpu")
            ids = prompt_ids(engine, args.prompt_tokens)
            levels = []
            for conc in [int(c) for c in args.concurrency.split(",")]:
                per_client = max(1, args.requests // conc)
                levels.append(asyncio.run(load_test(base, ids, args.new_tokens, conc, per_client)))
            soaked = None
            if args.soak:
                soaked = asyncio.run(
                    soak(base, ids, args.new_tokens, args.soak_clients, args.soak, proc.pid)
                )
        finally:
            proc.terminate()
            proc.wait(timeout=30)
    print(f"\nstreaming clients ({args.new_tokens} tokens each, ms: mean / p50 / p99)")
    print(f"{'conc':>4} {'reqs':>5} {'out tok/s':>10} {'TTFT':>22} {'TPOT':>22} {'ITL':>22}")
    f = lambda d: f"{d['mean']:.1f}/{d['p50']:.1f}/{d['p99']:.1f}"  # noqa: E731
    for lv in levels:
        print(
            f"{lv['concurrency']:>4} {lv['requests']:>5} {lv['output_tokens_per_s']:>10.1f} "
            f"{f(lv['ttft_ms']):>22} {f(lv['tpot_ms']):>22} {f(lv['itl_ms']):>22}"
        )
    by = {lv["concurrency"]: lv["output_tokens_per_s"] for lv in levels}
    scale = by[max(by)] / by[min(by)]
    print(f"throughput at {max(by)} / at {min(by)}: {scale:.2f}x (goal >= 6x)")
    if soaked:
        print(
            f"soak: {soaked['concurrency']} streams for {soaked['seconds']:g} s: "
            f"{soaked['requests']} requests, {soaked['5xx']} 5xx, {soaked['errors']} errors, "
            f"{soaked['dropped_streams']} dropped streams; server RSS (MB) "
            + " -> ".join(f"{m:.0f}" for m in soaked["server_rss_mb"])
        )
    load_after = os.getloadavg()
    if max(load_before[0], load_after[0]) > (os.cpu_count() or 1):
        print(
            f"warning: load average {load_before[0]:.1f} -> {load_after[0]:.1f} on "
            f"{os.cpu_count()} cores: other processes share the machine; numbers are noisy"
        )
    result = {
        "args": vars(args),
        "batch1": b1,
        "concurrency": levels,
        "throughput_scaling": scale,
        "soak": soaked,
        "torch": torch.__version__,
        "machine": platform.machine(),
        "cpus": os.cpu_count(),
        "load_average": [load_before[0], load_after[0]],
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    write_json(args.out, result)


if __name__ == "__main__":
    main()
