"""The click head (models/behaviour.py, DIN's local activation unit) against deepctr-torch's DIN.

Same data: the shop simulator's click pairs exactly as the user_behaviour task builds them
(configs/behaviour.yaml's collect + preprocess: one (user, candidate item) pair per user and
window, label = the user viewed the candidate in the 14 days after the cutoff; train window for
training, the test window's pairs, later in time, for AUC). Inputs on both sides: the candidate
item and the user's past item ids (the last max_len - 1 events before the cutoff, the items only,
left-aligned, padding removed). Same hyperparameters: embedding size = model.d_model (64),
attention MLP 4d -> d -> 1 and output MLP -> d -> 1 with GELU, no attention softmax, AdamW (lr,
weight decay from the config's pretrain section, on every parameter), batch size, epochs,
constant learning rate, no clipping, no dropout, embeddings initialised N(0, 0.02).

Rows, trained side by side in one process and alternated epoch by epoch (the order rotates):
- ours: `BehaviourModel.click` with a zero user state (DIN gets no user state either), a plain
  loop (shuffled batches, mean BCE, AdamW); each batch cut to its longest history, as the task's
  loss does;
- deepctr-torch 0.3.0 `DIN` trained by its own `fit()` (its loop: DataLoader, summed BCE, its
  regularisation pass; `l2_reg_embedding=0`, so AdamW's decay is the only regulariser, as ours);
- the same deepctr-torch `DIN` module in our plain loop (what is its model, what is its loop);
- with `--full`: our whole behaviour model (the causal transformer's state of the user's event
  tokens beside the click head), trained on the click loss only: what the task's extra inputs buy.

deepctr-torch starts a thread at import that asks PyPI for its latest version; this script
replaces `requests.get` (used by nothing else here) with a function that raises, so no network
call is attempted; the thread then prints "Please check the latest version manually". It
needs no tensorflow. Install it by hand: `pip install --no-deps deepctr-torch==0.3.0` (its
dependencies, torch, scikit-learn, tqdm and the undeclared `requests`, are already here).

    python benchmarks/din.py                       # 20,000 users, 5 epochs: ~5 min on 2 idle cores
    python benchmarks/din.py --users 5000 --epochs 2 --no-full     # smoke run

Prints a table (AUC on the same held-out pairs, log loss, training samples/s, ratio to DIN's fit)
and the load average; writes benchmarks/results/din.json.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from _common import cpu_model, write_json  # benchmarks/ is on sys.path when a script runs

ROOT = Path(__file__).resolve().parents[1]


def load_pairs(run: Path | None, users: int, seed: int):
    """(windows tensors, config): configs/behaviour.yaml's collect + preprocess, or a run's."""
    from modelworks import load_config
    from modelworks.collect import collect
    from modelworks.preprocess import preprocess
    from modelworks.tasks.user_behaviour_data import load_windows

    if run is None:
        run = Path(tempfile.mkdtemp(prefix="din_bench_"))
        over = [f"runs_dir={run}", f"collect.sources.0.users={users}", f"seed={seed}"]
        cfg = load_config(ROOT / "configs" / "behaviour.yaml", over)
        t0 = time.perf_counter()
        collect(cfg)
        preprocess(cfg)
        print(f"data: collect + preprocess of {users:,} users in {time.perf_counter() - t0:.0f} s")
        run_dir = cfg.run_dir
    else:
        cfg = load_config(ROOT / "configs" / "behaviour.yaml", [])
        run_dir = run
    tensors, _, vocab = load_windows(run_dir)
    return tensors, vocab, cfg


def compact(items: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Past item indices (-1 = an event with no item, or padding) -> ids 1.. left-aligned,
    0-padded, and lengths."""
    ids = items + 1
    keep = ids > 0
    lengths = keep.sum(1)
    order = torch.argsort((~keep).to(torch.int8), dim=1, stable=True)
    out = torch.gather(ids, 1, order) * (torch.arange(ids.shape[1]) < lengths[:, None])
    width = int(lengths.max())
    return out[:, :width], lengths


class Ours:
    """BehaviourModel.click with a zero user state, in a plain loop."""

    name = "ours: click head (models/behaviour.py)"

    def __init__(self, n_items: int, d: int, lr: float, wd: float, seed: int) -> None:
        from modelworks.models.behaviour import BehaviourConfig, BehaviourModel

        torch.manual_seed(seed)
        cfg = BehaviourConfig(vocab_size=2, d_model=d, n_head=1, n_layer=0, n_items=n_items)
        self.model = BehaviourModel(cfg)
        params = [
            *self.model.item_emb.parameters(),
            *self.model.activation.parameters(),
            *self.model.click_head.parameters(),
        ]
        self.opt = torch.optim.AdamW(params, lr=lr, weight_decay=wd)
        self.d = d

    def logits(self, hist, cand):
        width = max(1, int((hist > 0).sum(1).max()))
        state = torch.zeros(len(hist), self.d)
        return self.model.click(state, hist[:, :width], cand, ablation=False)[0]

    def epoch(self, data, batch: int, gen) -> None:
        hist, cand, y = data[:3]
        self.model.train()
        for idx in torch.randperm(len(y), generator=gen).split(batch):
            loss = F.binary_cross_entropy_with_logits(self.logits(hist[idx], cand[idx]), y[idx])
            self.opt.zero_grad(set_to_none=True)
            loss.backward()
            self.opt.step()

    @torch.no_grad()
    def predict(self, data) -> np.ndarray:
        hist, cand = data[:2]
        self.model.eval()
        out = [
            torch.sigmoid(self.logits(h, c))
            for h, c in zip(hist.split(512), cand.split(512), strict=True)
        ]
        return torch.cat(out).numpy()


class Full(Ours):
    """Our whole behaviour model: the transformer's state of the event tokens + the click head."""

    name = "ours: behaviour model (transformer state + click head)"

    def __init__(self, n_items, vocab_size, model_cfg, lr, wd, seed) -> None:
        from modelworks.models.registry import build_model, model_config_from

        torch.manual_seed(seed)
        cfg = model_config_from(model_cfg)
        cfg.vocab_size, cfg.n_items = vocab_size, n_items
        self.model = build_model(cfg)
        self.opt = torch.optim.AdamW(self.model.parameters(), lr=lr, weight_decay=wd)

    def logits(self, xx, cand):
        x, hist = xx.chunk(2, 1)
        width = int((x > 0).sum(1).max())
        x, hist = x[:, :width], hist[:, :width]
        state = self.model.last(self.model.hidden(x), x)
        return self.model.click(state, hist, cand, ablation=False)[0]


class DeepCTR:
    """deepctr-torch's DIN, trained by its own fit()."""

    name = "deepctr-torch DIN, its fit()"

    def __init__(self, n_items: int, width: int, d: int, lr: float, wd: float, seed: int):
        from deepctr_torch.inputs import SparseFeat, VarLenSparseFeat
        from deepctr_torch.models import DIN

        torch.manual_seed(seed)
        item = SparseFeat("item", vocabulary_size=n_items + 1, embedding_dim=d)
        hist = SparseFeat("hist_item", n_items + 1, embedding_dim=d, embedding_name="item")
        columns = [item, VarLenSparseFeat(hist, maxlen=width, length_name="seq_length")]
        self.model = DIN(
            columns, ["item"], dnn_hidden_units=(d,), dnn_activation=torch.nn.GELU,
            att_hidden_size=(d,), att_activation=torch.nn.GELU, att_weight_normalization=False,
            l2_reg_embedding=0.0, init_std=0.02, seed=seed, device="cpu",
        )  # fmt: skip
        self.model.compile(
            torch.optim.AdamW(self.model.parameters(), lr=lr, weight_decay=wd),
            "binary_crossentropy",
        )

    @staticmethod
    def inputs(data) -> dict:
        hist, cand, lengths = data[0], data[1], data[3]
        return {"item": cand.numpy(), "hist_item": hist.numpy(), "seq_length": lengths.numpy()}

    def epoch(self, data, batch: int, gen) -> None:
        torch.manual_seed(int(torch.randint(1 << 30, (1,), generator=gen)))  # its shuffle
        self.model.fit(self.inputs(data), data[2].numpy(), batch_size=batch, epochs=1, verbose=0)

    def predict(self, data) -> np.ndarray:
        return self.model.predict(self.inputs(data), batch_size=512)[:, 0]


class DeepCTRPlain(DeepCTR):
    """The same DIN module, in our plain loop (mean BCE on its probabilities)."""

    name = "deepctr-torch DIN module, plain loop"

    def tensor(self, data) -> torch.Tensor:
        x = self.inputs(data)
        cols = [x[f].reshape(len(x[f]), -1) for f in self.model.feature_index]
        return torch.from_numpy(np.concatenate(cols, axis=1)).float()

    def epoch(self, data, batch: int, gen) -> None:
        x, y = self.tensor(data), data[2]
        m, opt = self.model.train(), self.model.optim
        for idx in torch.randperm(len(y), generator=gen).split(batch):
            loss = F.binary_cross_entropy(m(x[idx]).squeeze(-1), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()


def import_deepctr():
    """deepctr_torch, with its import-time PyPI version check kept off the network."""
    import requests

    def offline(*a, **k):
        raise ConnectionError("benchmarks/din.py: no network")

    requests.get = offline
    import deepctr_torch

    return deepctr_torch.__version__


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--users", type=int, default=20000)
    ap.add_argument("--run", type=Path, default=None, help="a preprocessed user_behaviour run")
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seed", type=int, default=1337)
    ap.add_argument("--full", action=argparse.BooleanOptionalAction, default=True)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "din.json"))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    version = import_deepctr()
    load0 = os.getloadavg()
    tensors, vocab, cfg = load_pairs(args.run, args.users, args.seed)
    p, d = cfg.pretrain, cfg.model.d_model
    hp = {"d": d, "lr": p.lr, "weight_decay": p.weight_decay, "batch": p.batch_size}
    n_items = int(max(tensors["train_cand"].max(), tensors["test_cand"].max())) + 1
    n_items = max(n_items, int(tensors["train_items"].max()) + 1)
    data = {}
    for w in ("train", "test"):
        hist, lengths = compact(tensors[f"{w}_items"])
        data[w] = (hist, tensors[f"{w}_cand"] + 1, tensors[f"{w}_click"].float(), lengths)
    width = max(data["train"][0].shape[1], data["test"][0].shape[1])
    for w in data:  # one width for deepctr's fixed-length input
        h = data[w][0]
        data[w] = (F.pad(h, (0, width - h.shape[1])), *data[w][1:])
    sides = [
        Ours(n_items, d, p.lr, p.weight_decay, args.seed),
        DeepCTR(n_items, width, d, p.lr, p.weight_decay, args.seed),
        DeepCTRPlain(n_items, width, d, p.lr, p.weight_decay, args.seed),
    ]
    full_data = {}
    if args.full:
        sides.append(Full(n_items, vocab.size, cfg.model, p.lr, p.weight_decay, args.seed))
        for w in ("train", "test"):
            xx = torch.cat([tensors[f"{w}_x"], tensors[f"{w}_items"] + 1], 1)
            full_data[w] = (xx, *data[w][1:])
    n = len(data["train"][2])
    print(
        f"{n:,} training pairs ({int(data['train'][2].sum()):,} clicked), "
        f"{len(data['test'][2]):,} held-out pairs; {n_items:,} items, history <= {width}; "
        f"d={d}, lr={p.lr}, AdamW wd={p.weight_decay}, batch {p.batch_size}, "
        f"{args.epochs} epochs, {args.threads} thread(s); deepctr-torch {version}"
    )
    times = {s.name: [] for s in sides}
    gens = {s.name: torch.Generator().manual_seed(args.seed) for s in sides}
    for e in range(args.epochs):
        order = sides[e % len(sides) :] + sides[: e % len(sides)]
        for s in order:
            train = full_data["train"] if isinstance(s, Full) else data["train"]
            t0 = time.perf_counter()
            s.epoch(train, p.batch_size, gens[s.name])
            times[s.name].append(time.perf_counter() - t0)
        print(f"epoch {e + 1}: " + ", ".join(f"{k} {v[-1]:.1f} s" for k, v in times.items()))
    from modelworks.evaluate.propensity import metrics

    y = data["test"][2].numpy().astype(np.float64)
    rows = {}
    for s in sides:
        probs = s.predict(full_data["test"] if isinstance(s, Full) else data["test"])
        m = metrics(y, probs.astype(np.float64))
        rows[s.name] = {
            "auc": m["auc"],
            "log_loss": m["log_loss"],
            "samples_per_s": n * args.epochs / sum(times[s.name]),
            "median_epoch_s": statistics.median(times[s.name]),
            "epoch_s": times[s.name],
        }
    ref = rows[DeepCTR.name]
    print("\n| method | test AUC | log loss | train samples/s | vs DIN fit() |")
    print("|---|---|---|---|---|")
    for name, r in rows.items():
        ratio = r["samples_per_s"] / ref["samples_per_s"]
        r["speed_ratio_vs_deepctr_fit"] = ratio
        print(
            f"| {name} | {r['auc']:.4f} | {r['log_loss']:.4f} | {r['samples_per_s']:,.0f} | "
            f"{ratio:.2f}x |"
        )
    ours = rows[Ours.name]
    gap, speed = ours["auc"] - ref["auc"], ours["speed_ratio_vs_deepctr_fit"]
    load1 = os.getloadavg()
    print(
        f"\nAUC ours - DIN: {gap:+.4f} (target within 0.01: "
        f"{'met' if abs(gap) <= 0.01 else 'NOT met'}); "
        f"samples/s ratio {speed:.2f}x (target >= 1.5x: {'met' if speed >= 1.5 else 'NOT met'})"
    )
    print(f"load average before {load0[0]:.2f}, after {load1[0]:.2f}")
    write_json(
        args.out,
        {
            "benchmark": "din",
            "command": "python benchmarks/din.py " + " ".join(sys.argv[1:]),
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            "machine": cpu_model(),
            "threads": args.threads,
            "torch": torch.__version__,
            "deepctr_torch": version,
            "load_before": load0,
            "load_after": load1,
            "users": args.users if args.run is None else None,
            "train_pairs": n,
            "test_pairs": len(y),
            "n_items": n_items,
            "history_width": width,
            "epochs": args.epochs,
            "hyperparameters": hp,
            "rows": rows,
            "auc_ours_minus_deepctr": gap,
            "speed_ratio_ours_vs_deepctr_fit": speed,
        },
    )


if __name__ == "__main__":
    main()
