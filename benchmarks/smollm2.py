"""SmolLM2-135M-Instruct (the ready model `smollm2-135m-instruct`, GGUF Q4_1) served by our engine:
fp32 vs int8 weight-only (serve/quant.py), against transformers `generate` on the same weights.

    modelworks pull smollm2-135m-instruct
    python benchmarks/smollm2.py                 # all parts, ~5 min on 2 cores
    python benchmarks/smollm2.py --skip-hf       # without the transformers peer
    python benchmarks/smollm2.py --skip-hf --skip-int8 --rounds 3   # fp32: 1 vs 16 streams

Measures: load time from the cache (first load in this process, then again), weight bytes, batch-1
greedy decode tok/s on a chat prompt (64 new tokens after a warm-up that pays torch.compile; the
median and best of 5 runs, fp32 / int8 / transformers / llama.cpp taking turns so that they share
the load), paired median decode-step times, aggregate tok/s of 16 concurrent streams through the
batching loop (the median of 3 runs; all on the one prompt, and for fp32 also on 16 different
questions, which share only the chat template's system prompt), peak RSS, and how many of the
int8 engine's greedy tokens agree with fp32's. llama.cpp (llama-cpp-python, optional:
`pip install 'modelworks[llama-cpp]'` compiles it) runs on the same GGUF at batch 1 (its
high-level API) and over the 16 streams of one prompt (its batch API, as its own `batched`
example: the prompt once, its cache copied to each sequence, one `llama_decode` of 16 rows a
step); without it those rows are skipped with a one-line reason. Writes
benchmarks/results/smollm2.json.
"""

from __future__ import annotations

import argparse
import os
import resource
import threading
import time

import torch
from _common import cpu_model, write_json

PROMPT = "Explain in a few sentences what a Python list comprehension is."
# the distinct-prompts case: 16 different questions (they share only the chat template's system
# prompt, which the engine copies between slots rather than computing it 16 times)
QUESTIONS = [
    PROMPT, "What is a Python dictionary used for?", "How does a for loop work in Python?",
    "Explain what a function is in programming.", "What is the difference between a list and a "
    "tuple?", "Why do programmers write unit tests?", "What does the `return` statement do?",
    "Explain recursion with a short example.", "What is an exception in Python?",
    "How do you read a text file in Python?", "What is a class in object-oriented programming?",
    "What does `import` do in Python?", "Explain what a variable is.",
    "What is the purpose of comments in code?", "How does a while loop differ from a for loop?",
    "What is a string in Python?",
]  # fmt: skip


def rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def chat_ids(engine, question: str = PROMPT) -> list[int]:
    from modelworks.chat_template import engine_chat_text

    return engine.encode(engine_chat_text(engine, [{"role": "user", "content": question}]))


def paired_steps(models: dict, n: int = 40) -> dict[str, float]:
    """Median ms of one batch-1 decode step (KV cache at ~60 positions) for each model, the
    models taking turns step by step so that they see the same machine load."""
    import statistics

    ids = torch.tensor([[1] + list(range(1000, 1059))])
    caches = {k: m.new_cache(1, 60 + n + 8) for k, m in models.items()}
    times: dict[str, list[float]] = {k: [] for k in models}
    with torch.no_grad():
        for k, m in models.items():
            m(ids, cache=caches[k], start_pos=0, last_only=True)
            m(torch.tensor([[5]]), cache=caches[k], start_pos=60)  # warm-up (compile)
        for i in range(n):
            for k, m in models.items():
                t = time.perf_counter()
                m(torch.tensor([[7]]), cache=caches[k], start_pos=61 + i)
                times[k].append((time.perf_counter() - t) * 1e3)
    return {k: statistics.median(v) for k, v in times.items()}


def streams(engine, k: int, n: int, distinct: bool = False) -> float:
    """Aggregate tok/s of `k` greedy streams of `n` tokens submitted together: all on one chat
    prompt, or (`distinct`) on k different questions."""
    from modelworks.serve.engine import SamplingParams

    prompts = [chat_ids(engine, QUESTIONS[i % len(QUESTIONS)] if distinct else PROMPT)
               for i in range(k)]  # fmt: skip
    ids = prompts[0]
    lock, all_done = threading.Lock(), threading.Event()
    counts, finished = [0] * k, [0]

    def on_event(i):  # runs on the engine's thread: never block here
        def cb(event):
            if event.token_id is not None:
                counts[i] += 1
            if event.finish_reason is not None:
                with lock:
                    finished[0] += 1
                    if finished[0] == k:
                        all_done.set()

        return cb

    params = SamplingParams(max_tokens=n, temperature=0, ignore_eos=True)
    engine.generate(ids, max_new_tokens=4, temperature=0)  # warm-up
    t = time.perf_counter()
    for i in range(k):
        engine.submit(prompts[i], params, on_event(i))
    if not all_done.wait(timeout=1800):
        raise RuntimeError(f"{k} streams did not finish in 30 minutes")
    return sum(counts) / (time.perf_counter() - t)


def hf_generate(hf, ids: list[int], n: int) -> float:
    kw = {"do_sample": False, "eos_token_id": None, "pad_token_id": 2}
    x = torch.tensor([ids])
    with torch.no_grad():
        t = time.perf_counter()
        out = hf.generate(x, max_new_tokens=n, min_new_tokens=n, **kw)
    return (out.shape[1] - x.shape[1]) / (time.perf_counter() - t)


def llama_cpp_batch1(path, ids: list[int], n: int, threads: int, rounds: int) -> list[float]:
    """llama.cpp (llama-cpp-python) greedy decode tok/s at batch 1 on the same GGUF and prompt
    ids, `rounds` runs, through its high-level API (one sequence at a time)."""
    import llama_cpp

    llm = llama_cpp.Llama(model_path=str(path), n_ctx=512, n_threads=threads, verbose=False)

    def once(k: int) -> float:
        t, out = time.perf_counter(), 0
        for _ in llm.generate(ids, top_k=1, temp=0.0, reset=True):  # EOS does not stop it
            out += 1
            if out == k:
                break
        return out / (time.perf_counter() - t)

    once(4)  # warm-up
    return [once(n) for _ in range(rounds)]


def llama_cpp_streams(path, ids: list[int], n: int, threads: int, k: int, tokens=None) -> float:
    """llama.cpp's aggregate greedy tok/s over `k` streams of one prompt, through its batch API
    as its own `batched` example does: the prompt decoded once, its cache copied to the other
    sequences (as our engine shares the prefix), then one `llama_decode` of k rows a step."""
    import llama_cpp as lc
    import numpy as np

    llm = lc.Llama(model_path=str(path), n_ctx=512, n_threads=threads, verbose=False)
    p = lc.llama_context_default_params()
    p.n_ctx, p.n_batch, p.n_ubatch = k * (-(-(len(ids) + n + 8) // 256) * 256), 512, 512
    p.n_seq_max, p.n_threads, p.n_threads_batch = k, threads, threads
    ctx = lc.llama_init_from_model(llm._model.model, p)
    batch = lc.llama_batch_init(max(len(ids), k), 0, k)
    tokens = [] if tokens is None else tokens  # each step's token of every stream
    nv = llm.n_vocab()

    def decode(rows: list[tuple[int, int, int]]) -> np.ndarray:  # (token, position, sequence)
        batch.n_tokens = len(rows)
        for i, (tok, pos, seq) in enumerate(rows):
            batch.token[i], batch.pos[i], batch.n_seq_id[i] = tok, pos, 1
            batch.seq_id[i][0], batch.logits[i] = seq, 0
        batch.logits[len(rows) - 1 if rows[0][2] == rows[-1][2] else 0] = 1
        if rows[0][2] != rows[-1][2]:  # a decode step: every row's logits
            for i in range(len(rows)):
                batch.logits[i] = 1
        if lc.llama_decode(ctx, batch) != 0:
            raise RuntimeError("llama_decode failed")
        m = 1 if rows[0][2] == rows[-1][2] else len(rows)
        return np.ctypeslib.as_array(lc.llama_get_logits(ctx), shape=(m * nv,)).reshape(m, nv)

    try:
        t = time.perf_counter()
        first = int(decode([(tok, j, 0) for j, tok in enumerate(ids)])[-1].argmax())
        mem = lc.llama_get_memory(ctx)
        for s in range(1, k):
            lc.llama_memory_seq_cp(mem, 0, s, -1, -1)
        nxt, made = [first] * k, k
        tokens.append(nxt)
        for step in range(n - 1):
            logits = decode([(nxt[s], len(ids) + step, s) for s in range(k)])
            nxt, made = logits.argmax(-1).tolist(), made + k
            tokens.append(nxt)
        return made / (time.perf_counter() - t)
    finally:
        lc.llama_batch_free(batch)
        lc.llama_free(ctx)
        llm.close()


def main() -> None:
    import statistics

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--streams", type=int, default=16)
    ap.add_argument("--rounds", type=int, default=5, help="batch-1 runs per engine, in turns")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--skip-hf", action="store_true")
    ap.add_argument("--skip-int8", action="store_true")
    ap.add_argument("--skip-llama-cpp", action="store_true")
    ap.add_argument("--out", default="benchmarks/results/smollm2.json")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    from modelworks.models.catalogue import resolve
    from modelworks.serve.engine import Engine
    from modelworks.serve.quant import weight_bytes

    path = resolve("smollm2-135m-instruct")
    res: dict = {"model": str(path), "cpu": cpu_model(), "threads": a.threads,
                 "torch": torch.__version__, "load_before": os.getloadavg()[0],
                 "tokens": a.tokens}  # fmt: skip
    t = time.perf_counter()
    Engine.from_gguf(path, "cpu", pack_weights=False).close()
    res["load_s_first"] = time.perf_counter() - t
    t = time.perf_counter()
    fp32 = Engine.from_gguf(path, "cpu", max_batch=a.streams)
    res["load_s_again"] = time.perf_counter() - t
    res["rss_mb_fp32_loaded"] = rss_mb()
    res["fp32_weight_mb"] = weight_bytes(fp32.model) / 2**20
    engines = {"fp32": fp32}
    if not a.skip_int8:
        int8 = Engine.from_gguf(path, "cpu", max_batch=a.streams, quantize="int8")
        res["int8_weight_mb"] = weight_bytes(int8.model) / 2**20
        engines["int8"] = int8
    runs: dict[str, list[float]] = {k: [] for k in engines}
    tokens = {}
    ids = chat_ids(fp32)
    for e in engines.values():
        e.generate(ids, max_new_tokens=8, temperature=0)  # warm-up (compile, packing)
    hf = None
    if not a.skip_hf:
        import transformers

        hf = transformers.AutoModelForCausalLM.from_pretrained(
            path.parent, gguf_file=path.name, dtype=torch.float32
        ).eval()
        hf_generate(hf, ids, 8)
        runs["transformers"] = []
    llama = None
    if not a.skip_llama_cpp:
        try:
            import llama_cpp  # noqa: F401

            llama, runs["llama.cpp"] = True, []
        except ImportError:
            print(
                "llama.cpp: skipped (llama-cpp-python not installed: pip install "
                "'modelworks[llama-cpp]', which compiles llama.cpp, ~5 min on 2 cores)"
            )
    for _ in range(a.rounds):  # in turns, so that each sees the same machine load
        for k, e in engines.items():
            t = time.perf_counter()
            g = e.generate(ids, max_new_tokens=a.tokens, temperature=0)
            runs[k].append(len(g.token_ids) / (time.perf_counter() - t))
            tokens[k] = g.token_ids
        if hf is not None:
            runs["transformers"].append(hf_generate(hf, ids, a.tokens))
        if llama:
            runs["llama.cpp"] += llama_cpp_batch1(path, ids, a.tokens, a.threads, 1)
    for k, v in runs.items():  # the median, and the best run (the least disturbed by load)
        res[f"{k}_batch1_tok_s"] = statistics.median(v)
        res[f"{k}_batch1_tok_s_best"] = max(v)
    del hf
    if "int8" in tokens:
        ref, got = tokens["fp32"], tokens["int8"]
        same = next((i for i, (x, y) in enumerate(zip(ref, got, strict=False)) if x != y), len(ref))
        res["int8_greedy_tokens_equal_to_fp32_prefix"] = same
    for k, ms in paired_steps({k: e.model for k, e in engines.items()}).items():
        res[f"{k}_step_ms_median"] = ms
    for k, e in engines.items():  # the median of 3 runs each (one run swings by up to 2x)
        e.prefix_tokens_reused = 0
        runs = [streams(e, a.streams, a.tokens) for _ in range(3)]
        res[f"{k}_{a.streams}_streams_tok_s"] = statistics.median(runs)
        res[f"{k}_{a.streams}_streams_runs"] = [round(x, 1) for x in runs]
        if k == "fp32":  # 16 different questions: only the system prompt is shared
            runs = [streams(e, a.streams, a.tokens, distinct=True) for _ in range(3)]
            res[f"fp32_{a.streams}_distinct_streams_tok_s"] = statistics.median(runs)
            res[f"fp32_{a.streams}_distinct_streams_runs"] = [round(x, 1) for x in runs]
        res[f"{k}_prefix_tokens_reused"] = e.prefix_tokens_reused // 3
        e.close()
    if llama:  # the same 16 streams of one prompt through llama.cpp's batch API
        runs = [llama_cpp_streams(path, ids, a.tokens, a.threads, a.streams) for _ in range(3)]
        res[f"llama.cpp_{a.streams}_streams_tok_s"] = statistics.median(runs)
        res[f"llama.cpp_{a.streams}_streams_runs"] = [round(x, 1) for x in runs]
    res["peak_rss_mb"] = rss_mb()
    res["load_after"] = os.getloadavg()[0]
    for k, v in res.items():
        print(f"{k:<40} {v:.2f}" if isinstance(v, float) else f"{k:<40} {v}")
    r = res
    if "int8" in engines:
        step = r["fp32_step_ms_median"] / r["int8_step_ms_median"]
        print(f"int8 / fp32 decode step (paired medians): {step:.2f}x faster")
        print(f"int8 / fp32 batch 1: {r['int8_batch1_tok_s'] / r['fp32_batch1_tok_s']:.2f}x; "
              f"weights {r['int8_weight_mb'] / r['fp32_weight_mb']:.2f}x")  # fmt: skip
    for k in engines:
        agg = r[f"{k}_{a.streams}_streams_tok_s"] / r[f"{k}_batch1_tok_s"]
        print(f"{k}: {a.streams} streams (one prompt) vs 1: {agg:.2f}x aggregate")
    agg = r[f"fp32_{a.streams}_distinct_streams_tok_s"] / r["fp32_batch1_tok_s"]
    print(f"fp32: {a.streams} streams ({a.streams} different questions) vs 1: {agg:.2f}x")
    if "llama.cpp_batch1_tok_s" in r:
        peer = r["llama.cpp_batch1_tok_s"]
        print(f"vs llama.cpp batch 1 (n_threads={a.threads}): fp32 "
              f"{r['fp32_batch1_tok_s'] / peer:.2f}x, fp32 {a.streams} streams aggregate "
              f"{r[f'fp32_{a.streams}_streams_tok_s'] / peer:.2f}x" + (
                  f", int8 {r['int8_batch1_tok_s'] / peer:.2f}x" if "int8" in engines else ""
              ))  # fmt: skip
    if f"llama.cpp_{a.streams}_streams_tok_s" in r:
        peer = r[f"llama.cpp_{a.streams}_streams_tok_s"]
        print(f"llama.cpp: {a.streams} streams vs 1: {peer / r['llama.cpp_batch1_tok_s']:.2f}x; "
              f"ours / llama.cpp at {a.streams} streams: "
              f"{r[f'fp32_{a.streams}_streams_tok_s'] / peer:.2f}x")  # fmt: skip
    if "transformers_batch1_tok_s" in r:
        peer = r["transformers_batch1_tok_s"]
        print(f"vs transformers batch 1: fp32 {r['fp32_batch1_tok_s'] / peer:.2f}x, "
              f"int8 {r['int8_batch1_tok_s'] / peer:.2f}x")  # fmt: skip
    write_json(a.out, res)


if __name__ == "__main__":
    main()
