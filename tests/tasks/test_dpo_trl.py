"""Our DPO loss against TRL's DPOTrainer on the same tiny Llama and batch (no hub: the model is
random, built here; the tokenizer is trained here). TRL tokenizes and batches; we score its very
token ids with our GPT (the same weights, imported with models/hf.py) and our loss."""

from __future__ import annotations

import copy
import os

import pytest
import torch

trl = pytest.importorskip("trl", reason="trl is not installed (pip install trl==1.16.0)")

from modelworks.models.hf import import_hf  # noqa: E402
from modelworks.preprocess.tokenizer import EOT, train_bpe  # noqa: E402
from modelworks.train.preference import IGNORE, dpo_loss, sequence_logps  # noqa: E402

WORDS = ["the", "cat", "dog", "sat", "ran", "on", "a", "mat", "log", "red", "blue", "big", "small"]


def _tiny(tmp_path):
    import random

    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    rng = random.Random(0)
    texts = [" ".join(rng.choice(WORDS) for _ in range(8)) for _ in range(300)]
    tok = train_bpe(texts, 120)
    hf_tok = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=EOT, pad_token=EOT)
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=tok.get_vocab_size(), hidden_size=32, intermediate_size=64,
        num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
        max_position_embeddings=64, tie_word_embeddings=True, rms_norm_eps=1e-5,
    )  # fmt: skip
    ref = LlamaForCausalLM(config).eval()
    policy = copy.deepcopy(ref)
    with torch.no_grad():  # the policy has moved away from the reference
        for p in policy.parameters():
            p.add_(0.05 * torch.randn_like(p))
    ours = {}
    for name, m in (("policy", policy), ("ref", ref)):
        m.save_pretrained(tmp_path / name)
        ours[name] = import_hf(tmp_path / name).double().eval()
    pairs = [
        {"prompt": " ".join(rng.choice(WORDS) for _ in range(rng.randint(2, 6))),
         "chosen": " " + " ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 5))),
         "rejected": " " + " ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 5)))}
        for _ in range(4)
    ]  # fmt: skip
    return hf_tok, policy, ref, ours, pairs


@pytest.mark.parametrize("loss_type", ["sigmoid", "ipo"])
def test_dpo_loss_equals_trl_dpotrainer_on_the_same_batch(tmp_path, loss_type):
    from datasets import Dataset
    from trl import DPOConfig, DPOTrainer

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    hf_tok, policy, ref, ours, pairs = _tiny(tmp_path)
    args = DPOConfig(
        output_dir=str(tmp_path / "trl"), per_device_train_batch_size=4, beta=0.1,
        loss_type=[loss_type], report_to=[], use_cpu=True, bf16=False, fp16=False,
        max_length=None, dataset_num_proc=None, logging_steps=1, seed=0,
    )  # fmt: skip
    trainer = DPOTrainer(
        model=policy.double(), ref_model=ref.double(), args=args,
        train_dataset=Dataset.from_list(pairs), processing_class=hf_tok,
    )  # fmt: skip
    batch = next(iter(trainer.get_train_dataloader()))
    trainer.model.train()
    theirs = trainer.compute_loss(trainer.model, batch)
    # the same rows, scored by us: inputs = ids[:-1], targets = ids[1:] on completion tokens
    ids, keep, comp = batch["input_ids"], batch["attention_mask"], batch["completion_mask"]
    rows = []
    for i in range(len(ids)):
        real = keep[i].bool()
        seq, mask = ids[i][real], comp[i][real]
        y = torch.where(mask[1:].bool(), seq[1:], torch.full_like(seq[1:], IGNORE))
        rows.append((seq[:-1], y))
    width = max(len(x) for x, _ in rows)
    x = torch.zeros(len(rows), width, dtype=torch.long)
    y = torch.full((len(rows), width), IGNORE, dtype=torch.long)
    for i, (a, b) in enumerate(rows):
        x[i, : len(a)], y[i, : len(b)] = a, b
    s, n = sequence_logps(ours["policy"], x, y)
    with torch.no_grad():
        r, _ = sequence_logps(ours["ref"], x, y)
    if loss_type == "ipo":
        s, r = s / n, r / n
    b = len(rows) // 2
    losses, _, _ = dpo_loss(s[:b], s[b:], r[:b], r[b:], 0.1, 0.0, loss_type)
    assert abs(losses.mean().item() - theirs.item()) < 1e-5, (losses.mean(), theirs)
    assert abs(theirs.item() - 0.6931) > 1e-3 if loss_type == "sigmoid" else True
