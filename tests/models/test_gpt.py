import pytest
import torch

from modelworks.models.gpt import GPT, GPTConfig
from modelworks.serve.engine import Engine, sample_next


def tiny_gpt(**kw) -> GPT:
    torch.manual_seed(0)
    cfg = dict(vocab_size=97, context_len=64, n_layer=2, n_head=4, n_kv_head=2, d_model=32)
    return GPT(GPTConfig(**{**cfg, **kw})).eval()


@pytest.mark.parametrize("n_kv_head", [1, 2, 4])
def test_forward_shapes(n_kv_head):
    model = tiny_gpt(n_kv_head=n_kv_head)
    idx = torch.randint(0, 97, (3, 17))
    assert model(idx).shape == (3, 17, 97)


def test_future_tokens_cannot_change_past_logits():
    model = tiny_gpt()
    a = torch.randint(0, 97, (1, 20))
    b = a.clone()
    b[0, 12:] = (b[0, 12:] + 5) % 97
    la, lb = model(a), model(b)
    assert torch.allclose(la[0, :12], lb[0, :12], atol=1e-6)
    assert not torch.allclose(la[0, 12:], lb[0, 12:], atol=1e-3)


def test_cached_chunks_equal_full_forward():
    model = tiny_gpt()
    idx = torch.randint(0, 97, (2, 24))
    full = model(idx)
    cache = model.new_cache(2)
    parts = [
        model(idx[:, :10], cache, 0),
        model(idx[:, 10:11], cache, 10),
        model(idx[:, 11:], cache, 11),
    ]
    assert torch.allclose(torch.cat(parts, dim=1), full, atol=1e-5)


def test_last_only_logits_are_the_last_positions():
    model = tiny_gpt()
    idx = torch.randint(0, 97, (2, 9))
    with torch.no_grad():
        last = model(idx, last_only=True)
        assert last.shape == (2, 1, 97)
        assert torch.allclose(last, model(idx)[:, -1:], atol=1e-6)


def test_context_overflow_is_refused():
    model = tiny_gpt(context_len=8)
    with pytest.raises(ValueError, match="exceeds the context of 8"):
        model(torch.zeros(1, 9, dtype=torch.long))


def test_tied_embeddings_share_storage():
    model = tiny_gpt()
    assert model.lm_head.weight.data_ptr() == model.tok_emb.weight.data_ptr()
    assert (
        tiny_gpt(tie_embeddings=False).lm_head.weight.data_ptr()
        != tiny_gpt(tie_embeddings=False).tok_emb.weight.data_ptr()
    )


def _engine(model) -> Engine:
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = {chr(ord("a") + i): i for i in range(26)} | {"<|endoftext|>": 96}
    vocab |= {f"t{i}": i for i in range(26, 96)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<|endoftext|>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return Engine(model, tok)


@pytest.mark.parametrize("temperature", [0.0, 0.9])
def test_kv_cache_generation_equals_full_recompute(temperature):
    engine = _engine(tiny_gpt())
    prompt = [3, 5, 7, 11, 13]
    a = engine.generate(prompt, 30, temperature=temperature, top_p=0.9, seed=7, use_cache=True)
    b = engine.generate(prompt, 30, temperature=temperature, top_p=0.9, seed=7, use_cache=False)
    assert a.token_ids == b.token_ids
    assert len(a.token_ids) > 0


def test_generation_refuses_prompt_beyond_context():
    from modelworks.serve.engine import PromptTooLong

    engine = _engine(tiny_gpt(context_len=16))
    with pytest.raises(PromptTooLong, match="exceeds the model's context of 16"):
        engine.generate(list(range(10)), 8)


def test_top_p_keeps_only_the_nucleus():
    logits = torch.log(torch.tensor([0.6, 0.3, 0.05, 0.05]))
    gen = torch.Generator().manual_seed(0)
    picks = {sample_next(logits, 1.0, 0.8, 0, gen) for _ in range(200)}
    assert picks == {0, 1}
    assert sample_next(logits, 0.0, 1.0, 0, None) == 0


def test_rows_at_their_own_positions_and_slots_equal_each_row_alone():
    """The serving engine's forward (`slots` + `starts`): rows at different positions, in
    non-contiguous cache slots, give each row's logits as if it ran alone."""
    model = tiny_gpt()
    a, b = torch.randint(0, 97, (1, 9)), torch.randint(0, 97, (1, 5))
    alone = [model(a)[0, -1], model(b)[0, -1]]
    cache = model.new_cache(4)
    model(a[:, :8], cache, slots=[3], starts=[0])  # prefill a in slot 3, b in slot 1
    model(b[:, :4], cache, slots=[1], starts=[0])
    step = model(torch.cat([a[:, 8:], b[:, 4:]]), cache, slots=[3, 1], starts=[8, 4])
    torch.testing.assert_close(step[:, -1], torch.stack(alone), atol=1e-5, rtol=1e-5)


def test_hidden_states_are_what_the_head_reads():
    model = tiny_gpt()
    idx = torch.randint(0, 97, (2, 7))
    hidden = model(idx, hidden=True)
    assert hidden.shape == (2, 7, 32)
    torch.testing.assert_close(model.lm_head(hidden), model(idx))


def test_attention_weights_are_causal_distributions_that_reproduce_the_layer():
    model = tiny_gpt()
    idx = torch.randint(0, 97, (1, 6))
    x = model.blocks[0].attn_norm(model.tok_emb(idx))
    cos, sin = model.rope_cos[:6], model.rope_sin[:6]
    attn = model.blocks[0].attn
    w = attn.attention_weights(x, cos, sin)
    assert w.shape == (1, 4, 6, 6) and torch.allclose(w.sum(-1), torch.ones(1, 4, 6))
    assert torch.all(w.triu(1) == 0)
    _, _, v = attn._qkv(x, cos, sin)
    y = w @ v.repeat_interleave(2, dim=1)  # 4 query heads share 2 value heads
    torch.testing.assert_close(
        attn.wo(y.transpose(1, 2).reshape(1, 6, -1)), attn(x, cos, sin, None, 0)
    )
