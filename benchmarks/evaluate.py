"""Evaluate-stage speed: report generation, and scoring a ~10M-parameter GPT on held-out text.

Targets (issue 8): report generation under 10 s; evaluating a 10M-parameter model on 1 MB of
validation text under a minute on the CI machine.

1. Report: trains the tiny test config end to end once (collect ... evaluate) into a scratch
   folder, then times the report part of the evaluate stage alone (loss and curve PNGs, attention
   and attribution PNGs, report.md, self-contained report.html), `--repeats` times.
2. Scoring: a randomly initialised GPT of about 10M parameters (8 layers, d_model 320, vocab
   4096, context 256) scores `--mb` MB of text (Tiny Shakespeare from ../shared/data when
   present, else Python's documentation strings) with `evaluate.lm.document_scores`
   (per-document windows, bits per byte). Baselines in the same run, on the same documents: the
   scorer before issue 8's rework ("before": one padded row per window, `batch_size` rows per
   forward, the full log-softmax), and the plain stream loss of the training loop
   (`tasks.language_modeling.lm_eval_loss` over the same tokens as one stream of full windows).
   The floor is the matmul work alone: 2 x parameters x tokens at the measured matmul FLOP/s.

    python benchmarks/evaluate.py                 # --mb 1.0; minutes on 2 loaded CPU cores
    python benchmarks/evaluate.py --quick         # 0.2 MB, no report timing
    python benchmarks/evaluate.py --mb 0.1 --device cpu --threads 2
    python benchmarks/evaluate.py --device cuda
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def report_timing(repeats: int) -> dict:
    from modelworks.config import load_config
    from modelworks.evaluate.explain import report_section
    from modelworks.evaluate.report import (
        config_section,
        plot_curves,
        plot_loss,
        read_metrics,
        write_report,
    )
    from modelworks.pipeline import run
    from modelworks.serve.engine import Engine
    from tests.conftest import tiny_overrides

    with tempfile.TemporaryDirectory() as tmp:
        cfg = load_config(None, tiny_overrides(Path(tmp) / "runs"))
        run(cfg)
        out = cfg.run_dir / "evaluate"
        engine = Engine.from_run(cfg.run_dir, "cpu")
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            records = read_metrics(cfg.run_dir / "pretrain" / "metrics.jsonl")
            plot_loss(records, out / "loss.png", baseline=5.0)
            plot_curves(records, out / "curves.png")
            section, images = report_section(
                engine.model, engine.tokenizer, cfg.evaluate.prompts[0], out, engine.eot
            )
            images = [("loss.png", "Loss"), ("curves.png", "Curves"), *images]
            sections = [section, ("Config", config_section(cfg.model_dump(mode="json")))]
            write_report(out, "benchmark", sections, images)
            times.append(time.perf_counter() - t0)
        html_kb = (out / "report.html").stat().st_size / 1024
    return {
        "report_seconds_median": float(np.median(times)),
        "report_seconds_max": float(max(times)),
        "report_html_kb": round(html_kb, 1),
        "target_seconds": 10.0,
    }


def load_text(mb: float) -> list[str]:
    shakespeare = ROOT.parent / "shared" / "data" / "tinyshakespeare" / "input.txt"
    if shakespeare.is_file():
        text = shakespeare.read_text()
        docs, source = text.split("\n\n"), "tinyshakespeare"
    else:
        import pydoc_data.topics as topics

        docs, source = list(topics.topics.values()), "pydoc topics"
    out, size = [], 0
    while size < mb * 1e6:
        for d in docs:
            out.append(d)
            size += len(d.encode())
            if size >= mb * 1e6:
                break
    print(f"text: {size / 1e6:.2f} MB from {source}, {len(out)} documents")
    return out


def before_scorer_class():
    """`LMScorer` as it was before issue 8 (verbatim `token_logprobs`), the in-run baseline."""
    import torch.nn.functional as F

    from modelworks.evaluate.lm import LMScorer

    class BeforeScorer(LMScorer):
        @torch.no_grad()
        def token_logprobs(self, seqs, greedy=True):
            L = self.context_len
            windows = []  # (seq index, offset into targets, inputs, targets)
            for s, seq in enumerate(seqs):
                for a in range(0, max(len(seq) - 1, 0), L):
                    windows.append((s, a, seq[a : a + L], seq[a + 1 : a + L + 1]))
            out_lp = [np.zeros(max(len(q) - 1, 0)) for q in seqs]
            out_greedy = [np.zeros(max(len(q) - 1, 0), dtype=bool) for q in seqs]
            order = sorted(range(len(windows)), key=lambda i: -len(windows[i][2]))
            for b in range(0, len(order), self.batch_size):
                batch = [windows[i] for i in order[b : b + self.batch_size]]
                width = max(len(w[2]) for w in batch)
                x = torch.zeros(len(batch), width, dtype=torch.long)
                for r, w in enumerate(batch):
                    x[r, : len(w[2])] = torch.tensor(w[2])
                with self._autocast():
                    logits = self.model(x.to(self.device))
                logp = F.log_softmax(logits.float(), dim=-1).cpu()
                for r, (s, a, _, tgt) in enumerate(batch):
                    t = torch.tensor(tgt)
                    rows = logp[r, : len(tgt)]
                    out_lp[s][a : a + len(tgt)] = rows.gather(1, t[:, None])[:, 0].double().numpy()
                    out_greedy[s][a : a + len(tgt)] = (rows.argmax(1) == t).numpy()
            return list(zip(out_lp, out_greedy, strict=True))

    return BeforeScorer


def scoring_timing(mb: float, device: str, before: bool) -> dict:
    from modelworks import runtime
    from modelworks.evaluate.lm import LMScorer, document_scores
    from modelworks.evaluate.metrics import bits_per_byte
    from modelworks.models.gpt import GPT, GPTConfig
    from modelworks.preprocess.tokenizer import eot_id, train_bpe
    from modelworks.runtime import measure_matmul_flops
    from modelworks.tasks.language_modeling import lm_eval_loss
    from modelworks.train.data import sequential_batches

    docs = load_text(mb)
    tok = train_bpe(load_text(1.0), 4096)
    eot = eot_id(tok)
    encoded = [np.array([*e.ids, eot]) for e in tok.encode_batch(docs)]
    torch.manual_seed(0)
    cfg = GPTConfig(
        vocab_size=tok.get_vocab_size(),
        context_len=256,
        n_layer=8,
        n_head=5,
        n_kv_head=5,
        d_model=320,
    )
    model = GPT(cfg).to(device).eval()
    params = model.num_params()
    dev = torch.device(device)
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    flops_before = measure_matmul_flops(dev, torch.float32, seconds=2.0)

    def timed(scorer_cls):
        scorer = scorer_cls(model, tok, eot, batch_size=32)
        sync()
        t0, c0 = time.perf_counter(), time.process_time()
        scores = document_scores(scorer, encoded, eot)
        sync()
        return scores, time.perf_counter() - t0, time.process_time() - c0

    (nats, n_tok, n_bytes, _), ours, ours_cpu = timed(LMScorer)
    old = {}
    if before:
        (old_nats, *_), old_s, old_cpu = timed(before_scorer_class())
        old = {
            "before_seconds": round(old_s, 2),
            "before_cpu_seconds": round(old_cpu, 2),
            "speedup_vs_before": round(old_s / ours, 2),
            "speedup_vs_before_cpu_time": round(old_cpu / ours_cpu, 2),
            "max_rel_diff_doc_nats_vs_before": float(
                np.max(np.abs(nats - old_nats) / np.maximum(np.abs(old_nats), 1e-12))
            ),
            "rel_diff_perplexity_vs_before": float(
                abs(np.expm1((nats.sum() - old_nats.sum()) / n_tok.sum()))
            ),
        }
    stream = torch.tensor(np.concatenate(encoded))
    t0, c0 = time.perf_counter(), time.process_time()
    base_loss, base_tokens = lm_eval_loss(model, sequential_batches(stream, 32, 256, 0), dev)
    sync()
    base, base_cpu = time.perf_counter() - t0, time.process_time() - c0
    # two probes, before and after: on shared cores the achievable FLOP/s drifts with the load
    runtime._measured.clear()  # the probe caches its first figure per device
    flops = max(flops_before, measure_matmul_flops(dev, torch.float32, seconds=2.0))
    floor = 2 * params * int(n_tok.sum()) / flops
    return {
        "parameters": params,
        "megabytes": round(float(n_bytes.sum()) / 1e6, 3),
        "tokens": int(n_tok.sum()),
        "documents": len(n_tok),
        "score_seconds": round(ours, 2),
        "score_cpu_seconds": round(ours_cpu, 2),
        "score_seconds_per_MB": round(ours / (float(n_bytes.sum()) / 1e6), 1),
        "matmul_gflops": round(flops / 1e9, 1),
        "flops_floor_seconds": round(floor, 2),
        "floor_over_score": round(floor / ours, 3),
        **old,
        "bits_per_byte": bits_per_byte(float(nats.sum()), int(n_bytes.sum())),
        "baseline_stream_seconds": round(base, 2),
        "baseline_stream_cpu_seconds": round(base_cpu, 2),
        "baseline_stream_tokens": base_tokens,
        "baseline_stream_loss": base_loss,
        "loss": float(nats.sum() / n_tok.sum()),
        "target_seconds_for_1MB": 60.0,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mb", type=float, default=1.0, help="megabytes of text to score")
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--repeats", type=int, default=3, help="report generations to time")
    ap.add_argument("--skip-scoring", action="store_true")
    ap.add_argument("--skip-report", action="store_true")
    ap.add_argument("--no-before", action="store_true", help="skip the pre-issue-8 scorer")
    ap.add_argument("--quick", action="store_true", help="--mb 0.2 --skip-report")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "evaluate.json"))
    args = ap.parse_args()
    if args.quick:
        args.mb, args.skip_report = 0.2, True
    if args.threads:
        torch.set_num_threads(args.threads)
    load = os.getloadavg()[0]
    result = {
        "date": time.strftime("%Y-%m-%d"),
        "machine": platform.processor() or platform.machine(),
        "cores": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "load_before": round(load, 2),
        "device": args.device,
    }
    if not args.skip_report:
        result["report"] = report_timing(args.repeats)
    if not args.skip_scoring:
        result["scoring"] = scoring_timing(args.mb, args.device, not args.no_before)
    result["load_after"] = round(os.getloadavg()[0], 2)
    print("\n| measure | value | target |\n|---|---|---|")
    if "report" in result:
        r = result["report"]
        print(
            f"| report generation (median of {args.repeats}) | "
            f"{r['report_seconds_median']:.2f} s | < {r['target_seconds']:.0f} s |"
        )
        print(f"| report.html size | {r['report_html_kb']} KB | |")
    if "scoring" in result:
        s = result["scoring"]
        print(
            f"| scoring {s['megabytes']} MB ({s['tokens']:,} tokens) with a "
            f"{s['parameters'] / 1e6:.1f}M GPT | {s['score_seconds']} s "
            f"({s['score_seconds_per_MB']} s/MB) | < {60 * s['megabytes']:.0f} s |"
        )
        if "before_seconds" in s:
            print(
                f"| before (pre-issue-8 scorer), same documents | {s['before_seconds']} s "
                f"(ours **{s['speedup_vs_before']}x** faster, by CPU time "
                f"{s['speedup_vs_before_cpu_time']}x; perplexity rel. diff "
                f"{s['rel_diff_perplexity_vs_before']:.1e}) | |"
            )
        print(
            f"| baseline: stream loss over the same tokens | {s['baseline_stream_seconds']} s "
            f"(CPU {s['baseline_stream_cpu_seconds']} s; ours CPU {s['score_cpu_seconds']} s) | |"
        )
        print(
            f"| floor: 2 x {s['parameters'] / 1e6:.1f}M params x tokens at "
            f"{s['matmul_gflops']} GFLOP/s matmul | {s['flops_floor_seconds']} s "
            f"(floor / ours {s['floor_over_score']:.2f}) | |"
        )
    print(
        f"\nload average {result['load_before']} before, {result['load_after']} after "
        f"({os.cpu_count()} cores)"
    )
    if result["load_before"] > (os.cpu_count() or 1):
        print("warning: the machine is busy; timings are pessimistic")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
