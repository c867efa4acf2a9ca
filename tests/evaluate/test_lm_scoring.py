"""The batched LM scorer (`evaluate.lm`) against a straightforward reference: every window of
every document run alone through the model, log-softmax over the vocabulary, the target's entry.
Documents shorter and longer than the model's context, several batch sizes."""

import math

import numpy as np
import pytest
import torch

from modelworks.evaluate.lm import LMScorer, document_scores
from modelworks.models.gpt import GPT, GPTConfig

EOT = 0


@pytest.fixture(autouse=True)
def _one_thread():
    # tiny matmuls: on shared cores a second OpenMP thread only waits (conftest restores it)
    torch.set_num_threads(1)


class _Ids:
    """The scorer decodes documents only to count their bytes: one byte per token id digit."""

    def decode(self, ids, skip_special_tokens=True):
        return "".join(str(i % 10) for i in ids)


def _model(context_len: int = 16) -> GPT:
    torch.manual_seed(0)
    # init_std 0.3: a peaked, far-from-uniform distribution, so a wrong target would show
    cfg = GPTConfig(
        vocab_size=50,
        context_len=context_len,
        n_layer=2,
        n_head=2,
        n_kv_head=1,
        d_model=32,
        init_std=0.3,
    )
    return GPT(cfg).eval()


def _reference(model: GPT, seq: list[int]) -> tuple[np.ndarray, np.ndarray]:
    """Per-token log-probabilities and argmax hits, one window at a time, batch of one."""
    L, lps, hits = model.cfg.context_len, [], []
    with torch.no_grad():
        for a in range(0, len(seq) - 1, L):
            x, y = seq[a : a + L], torch.tensor(seq[a + 1 : a + L + 1])
            logp = torch.log_softmax(model(torch.tensor([x]))[0, : len(y)].double(), -1)
            lps.append(logp.gather(1, y[:, None])[:, 0].numpy())
            hits.append((logp.argmax(1) == y).numpy())
    return np.concatenate(lps), np.concatenate(hits)


@pytest.fixture(scope="module")
def docs():
    rng = np.random.default_rng(0)
    # lengths around and across the window (16): 1 token, short, exactly one window, several
    lengths = [1, 3, 15, 16, 17, 31, 32, 33, 47, 70, 5, 2, 9, 40]
    return [np.append(rng.integers(1, 50, n), EOT) for n in lengths]


@pytest.mark.parametrize("batch_size", [1, 3, 64])
def test_document_scores_equal_the_window_by_window_reference(docs, batch_size):
    model = _model()
    scorer = LMScorer(model, _Ids(), EOT, batch_size=batch_size)
    nats, n_tok, n_bytes, targets = document_scores(scorer, docs, EOT)
    want = [-_reference(model, [EOT, *d[:-1].tolist()])[0].sum() for d in docs]
    assert n_tok.tolist() == [len(d) - 1 for d in docs]
    assert n_bytes.tolist() == n_tok.tolist()
    assert np.allclose(nats, want, rtol=1e-5, atol=1e-6)
    assert targets.tolist() == [t for d in docs for t in d[:-1].tolist()]
    ppl, ppl_ref = math.exp(nats.sum() / n_tok.sum()), math.exp(sum(want) / n_tok.sum())
    assert ppl == pytest.approx(ppl_ref, rel=1e-5)
    # the untrained model is far from uniform, so a wrong target or window would show
    assert abs(nats.sum() / n_tok.sum() - math.log(50)) > 0.05


def test_token_logprobs_and_greedy_hits_match_per_token(docs):
    model = _model()
    seqs = [[EOT, *d[:-1].tolist()] for d in docs]
    got = LMScorer(model, _Ids(), EOT, batch_size=2).token_logprobs(seqs)
    for seq, (lp, hit) in zip(seqs, got, strict=True):
        ref_lp, ref_hit = _reference(model, seq)
        assert np.allclose(lp, ref_lp, rtol=1e-5, atol=1e-5)
        assert (hit == ref_hit).all()
    assert any(h.any() for _, h in got)  # some argmax hits exist, so the comparison can fail


def test_max_tokens_cuts_across_documents(docs):
    scorer = LMScorer(_model(), _Ids(), EOT, batch_size=4)
    nats, n_tok, _, targets = document_scores(scorer, docs, EOT, max_tokens=30)
    assert n_tok.sum() == 30 == len(targets)
    full, _, _, _ = document_scores(scorer, docs, EOT)
    assert np.allclose(nats[:-1], full[: len(nats) - 1], rtol=1e-5)
