"""DPO and GRPO on SmolLM2-135M-Instruct: our code against TRL and transformers on the same weights.

    modelworks pull smollm2-135m-instruct
    pip install trl==1.16.0                       # the peer (in the dev extra)
    python benchmarks/preference.py               # both parts, both sides, alternating
    python benchmarks/preference.py --part grpo --rounds 2

DPO step: the GGUF dequantized to float32 into our GPT, exported as a Hugging Face folder (the very
same weights) for TRL. Full fine-tune, AdamW, the same 4 pairs (8 rows) of built-in word problems
rendered with the model's chat template, reference log-probs precomputed on both sides (ours:
tasks/dpo.py's cache; TRL: precompute_ref_log_probs=True), so a step is the policy's forward and
backward on 8 rows, the loss and the optimizer step. Ours: a loop over the same functions
tasks/dpo.py uses; TRL: DPOTrainer.train(), its steps timed by a callback. Median step seconds.

GRPO sampling: G samples of each of P prompts, `--new` tokens each (the end token ignored on both
sides so the lengths match), temperature 1: ours through the serving engine (tasks/rollout.py:
continuous batching over a preallocated KV cache), transformers `generate(num_return_sequences=G)`
on the same weights. Median generated tokens/s.

The sides take turns `--rounds` times in one process; the load average is recorded with each
figure. Writes benchmarks/results/preference.json.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from _common import cpu_model, write_json

PAIRS, SEQ = 4, 160


def _load(tmp: Path, size: str = "smollm2"):
    from modelworks.models.catalogue import resolve_target
    from modelworks.models.gguf import chat_tokens, load_gguf, open_gguf
    from modelworks.models.gguf_tokenizer import tokenizer_from_gguf
    from modelworks.models.hf import export_hf
    from modelworks.tasks.chat import ChatFormat

    path = resolve_target("smollm2-135m-instruct")
    reader = open_gguf(path)
    tok = tokenizer_from_gguf(reader, path)
    bos, eos, template, _ = chat_tokens(reader)
    model = load_gguf(path, 512, reader)
    if size == "small":  # a random 4-layer Llama with SmolLM2's tokenizer: the same code paths
        from modelworks.models.gpt import GPTConfig
        from modelworks.models.registry import build_model

        torch.manual_seed(0)
        model = build_model(GPTConfig(vocab_size=model.cfg.vocab_size, context_len=512,
                                      n_layer=4, n_head=4, n_kv_head=2, d_model=256,
                                      rope_theta=model.cfg.rope_theta))  # fmt: skip
    tok.save(str(tmp / "tokenizer.json"))
    eos_token = tok.id_to_token(min(eos))
    export_hf(model, tmp / "hf", tmp / "tokenizer.json", eos_token, template)
    fmt = ChatFormat(tok, template, bos if bos is not None else min(eos), eos)
    return model, fmt, tmp / "hf"


def _records(n: int):
    from modelworks.collect.preference import word_problems

    out = []
    for r in word_problems(n):
        out.append(
            {"prompt": json.loads(r["prompt"]), "chosen": r["chosen"], "rejected": r["rejected"],
             "answer": r["answer"]}
        )  # fmt: skip
    return out


def dpo_ours(model, fmt, records, steps: int) -> list[float]:
    from modelworks.tasks import preference_data as data
    from modelworks.train.preference import dpo_loss

    pairs, _ = data.encode_pairs(fmt, records[:PAIRS], SEQ)
    ref = data.reference_logps(model, pairs, fmt.bos, "cpu", False)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-6)
    model.train()
    times = []
    idx = list(range(PAIRS))
    for _ in range(steps):
        t0 = time.perf_counter()
        x, y = data.pair_batch(pairs, idx, fmt.bos)
        c, r = data.pair_logps(model, x, y, False)
        losses, _, _ = dpo_loss(c, r, ref[:, 0], ref[:, 1], 0.1)
        losses.mean().backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - t0)
    return times


def dpo_trl(hf_dir: Path, records, steps: int, tmp: Path) -> list[float]:
    import transformers
    from datasets import Dataset
    from trl import DPOConfig, DPOTrainer

    tok = transformers.AutoTokenizer.from_pretrained(hf_dir)
    model = transformers.AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32)
    rows = [
        {"prompt": r["prompt"], "chosen": [{"role": "assistant", "content": r["chosen"]}],
         "rejected": [{"role": "assistant", "content": r["rejected"]}]}
        for r in records[:PAIRS]
    ] * (steps + 1)  # fmt: skip
    times: list[float] = []

    class Timer(transformers.TrainerCallback):
        def on_step_begin(self, *a, **k):
            self.t0 = time.perf_counter()

        def on_step_end(self, *a, **k):
            times.append(time.perf_counter() - self.t0)

    args = DPOConfig(
        output_dir=str(tmp / "trl"), per_device_train_batch_size=PAIRS, max_steps=steps,
        learning_rate=1e-6, beta=0.1, report_to=[], use_cpu=True, bf16=False,
        precompute_ref_log_probs=True, max_length=SEQ, logging_steps=10**6, save_strategy="no",
        dataloader_num_workers=0, seed=0,
    )  # fmt: skip
    trainer = DPOTrainer(
        model=model, ref_model=None if args.precompute_ref_log_probs else copy.deepcopy(model),
        args=args, train_dataset=Dataset.from_list(rows), processing_class=tok,
        callbacks=[Timer()],
    )  # fmt: skip
    trainer.train()
    return times


def sample_ours(model, fmt, prompts, group: int, new: int) -> float:
    from modelworks.tasks.rollout import policy_engine, sample

    engine = policy_engine(model, fmt, max_batch=len(prompts) * group)
    t0 = time.perf_counter()
    outs = sample(engine, prompts, group, new, 1.0, 0, ignore_eos=True)
    dt = time.perf_counter() - t0
    return sum(len(o) for o, _ in outs) / dt


def sample_hf(hf_model, prompts, group: int, new: int, pad: int) -> float:
    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), pad, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, p in enumerate(prompts):  # left padding, as generate expects
        ids[i, width - len(p) :] = torch.tensor(p)
        mask[i, width - len(p) :] = 1
    t0 = time.perf_counter()
    with torch.no_grad():
        out = hf_model.generate(
            input_ids=ids, attention_mask=mask, do_sample=True, temperature=1.0, top_k=0,
            max_new_tokens=new, min_new_tokens=new, num_return_sequences=group,
            pad_token_id=pad,
        )  # fmt: skip
    dt = time.perf_counter() - t0
    return (out.shape[1] - width) * out.shape[0] / dt


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--part", choices=["dpo", "grpo", "both"], default="both")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--steps", type=int, default=4, help="DPO steps per side per round")
    ap.add_argument("--prompts", type=int, default=2)
    ap.add_argument("--group", type=int, default=8)
    ap.add_argument("--new", type=int, default=32)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument(
        "--model", choices=["smollm2", "small"], default="smollm2",
        help="smollm2: the real 135M weights; small: a random 4-layer d256 Llama, same tokenizer",
    )  # fmt: skip
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    tmp = Path(tempfile.mkdtemp(prefix="bench_pref_"))
    model, fmt, hf_dir = _load(tmp, args.model)
    records = _records(40)
    result = {"cpu": cpu_model(), "threads": args.threads, "python": sys.version.split()[0],
              "torch": torch.__version__, "date": time.strftime("%Y-%m-%d"),
              "model": args.model,
              "parameters": sum(p.numel() for p in model.parameters())}  # fmt: skip
    if args.part in ("dpo", "both"):
        import trl

        ours, theirs, loads = [], [], []
        for _ in range(args.rounds):
            loads.append(os.getloadavg()[0])
            ours += dpo_ours(copy.deepcopy(model), fmt, records, args.steps)[1:]  # 1st: warm-up
            loads.append(os.getloadavg()[0])
            theirs += dpo_trl(hf_dir, records, args.steps, tmp)[1:]
        o, t = statistics.median(ours), statistics.median(theirs)
        result["dpo"] = {"pairs": PAIRS, "rows": 2 * PAIRS, "max_len": SEQ, "ours_s": o,
                         "trl_s": t, "speedup": t / o, "trl": trl.__version__,
                         "load_avg": loads}  # fmt: skip
        print(f"DPO step ({PAIRS} pairs, full fine-tune): ours {o:.2f} s, TRL {t:.2f} s, "
              f"ratio TRL/ours {t / o:.2f}x (load {loads})")  # fmt: skip
    if args.part in ("grpo", "both"):
        import transformers

        from modelworks.tasks.rollout import prompt_ids

        hf_model = transformers.AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32)
        hf_model.eval()
        prompts = [prompt_ids(fmt, r["prompt"]) for r in records[: args.prompts]]
        sample_ours(model, fmt, prompts[:1], 2, 2)  # warm-up: first-call costs on both sides
        sample_hf(hf_model, prompts[:1], 2, 2, min(fmt.eos))
        ours, theirs, loads = [], [], []
        for _ in range(args.rounds):
            loads.append(os.getloadavg()[0])
            ours.append(sample_ours(model, fmt, prompts, args.group, args.new))
            loads.append(os.getloadavg()[0])
            theirs.append(sample_hf(hf_model, prompts, args.group, args.new, min(fmt.eos)))
        o, t = statistics.median(ours), statistics.median(theirs)
        result["grpo_sampling"] = {"prompts": args.prompts, "group": args.group,
                                   "new_tokens": args.new, "ours_tok_s": o,
                                   "transformers_tok_s": t, "speedup": o / t,
                                   "transformers": transformers.__version__,
                                   "load_avg": loads}  # fmt: skip
        print(
            f"GRPO sampling ({args.prompts} prompts x G={args.group}, {args.new} tokens): "
            f"ours {o:.1f} tok/s, transformers {t:.1f} tok/s, ratio {o / t:.2f}x (load {loads})"
        )
    name = "preference.json" if args.model == "smollm2" else f"preference_{args.model}.json"
    path = Path(__file__).parent / "results" / name
    earlier = json.loads(path.read_text()) if path.is_file() else {}
    write_json(path, {**earlier, **result})  # a --part run keeps the other part's figures


if __name__ == "__main__":
    main()
