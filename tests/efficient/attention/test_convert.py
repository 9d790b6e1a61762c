"""apply_attention on tiny transformers models: equivalences, rollback, generate, errors."""

from __future__ import annotations

import pytest
import torch
from transformers import (
    DynamicCache,
    LlamaConfig,
    LlamaForCausalLM,
    MistralConfig,
    MistralForCausalLM,
    MixtralConfig,
    MixtralForCausalLM,
    Qwen2Config,
    Qwen2ForCausalLM,
    Qwen2Model,
    Qwen2MoeConfig,
    Qwen2MoeForCausalLM,
)

from efficient._hf import cache_kwargs
from efficient.attention import (
    AttentionConfig,
    EfficientAttention,
    HybridAttentionCache,
    apply_attention,
    build_model,
    heal,
    new_parameters,
)

SMALL = dict(vocab_size=97, hidden_size=32, intermediate_size=64, num_hidden_layers=6, num_attention_heads=4,
             num_key_value_heads=2, max_position_embeddings=1024)
ATTN = dict(window=16, block_size=8, top_k=3, rollback_slack=4)


def _model(kind="llama", **kw):
    torch.manual_seed(0)
    cfg = {**SMALL, **kw}
    if kind == "llama":
        return LlamaForCausalLM(LlamaConfig(**cfg)).eval()
    if kind == "qwen2":
        return Qwen2ForCausalLM(Qwen2Config(**cfg)).eval()
    if kind == "mistral":
        return MistralForCausalLM(MistralConfig(**cfg, sliding_window=None)).eval()
    if kind == "qwen2_moe":
        return Qwen2MoeForCausalLM(Qwen2MoeConfig(**cfg, moe_intermediate_size=16, shared_expert_intermediate_size=16,
                                                  num_experts=4, num_experts_per_tok=2)).eval()
    if kind == "mixtral":
        return MixtralForCausalLM(MixtralConfig(**cfg, num_local_experts=4, num_experts_per_tok=2)).eval()
    raise ValueError(kind)


def _ids(n=90, seed=1):
    return torch.randint(0, 97, (1, n), generator=torch.Generator().manual_seed(seed))


def _decode(model, ids, prefill):
    cache = HybridAttentionCache.for_model(model)
    outs = [model(ids[:, :prefill], **cache_kwargs(model, cache)).logits]
    for t in range(prefill, ids.shape[1]):
        outs.append(model(ids[:, t : t + 1], **cache_kwargs(model, cache)).logits)
    return torch.cat(outs, 1), cache


def test_full_layout_is_the_original_model():
    model, ids = _model(), _ids()
    with torch.no_grad():
        ref = model(ids).logits
        conv = apply_attention(model, "full", inplace=False, **ATTN)
        torch.testing.assert_close(conv(ids).logits, ref, atol=1e-5, rtol=1e-5)
    assert model.model.layers[0].self_attn.__class__.__name__ != "EfficientAttention"  # inplace=False: a copy


@pytest.mark.parametrize(
    "kind, layout",
    [("llama", "FSRSSF"), ("llama", "FWWFWF"), ("qwen2", "FSRFWF"), ("mistral", "FSRFWF"), ("qwen2_moe", "FSRFWF"),
     ("mixtral", "FSRFWF")],
)
def test_prefill_then_decode_equals_full_recompute(kind, layout):
    n, prefill = (90, 41) if kind == "llama" else (60, 48)
    model, ids = _model(kind), _ids(n)
    conv = apply_attention(model, layout, **ATTN)
    with torch.no_grad():
        whole = conv(ids).logits
        inc, cache = _decode(conv, ids, prefill)
        chunked = torch.cat([conv(ids[:, a:b], **cache_kwargs(conv, c)).logits
                             for c in [HybridAttentionCache.for_model(conv)]
                             for a, b in ((0, 30), (30, 37), (37, n))], 1)
    torch.testing.assert_close(inc, whole, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(chunked, whole, atol=1e-5, rtol=1e-4)
    assert cache.get_seq_length() == n


def test_decode_from_the_first_token_equals_the_whole_forward():
    """The decode path alone (empty rings, partial first block, shared gathers) from position 0."""
    model, ids = _model(), _ids(40)
    conv = apply_attention(model, "FSRSWF", **ATTN)
    with torch.no_grad():
        whole = conv(ids).logits
        inc, cache = _decode(conv, ids, 1)
    torch.testing.assert_close(inc, whole, atol=1e-5, rtol=1e-4)
    assert set(cache.gathered) == {0, 2}  # one gather per selection (F layer 0 and R layer 2), shared by the S layers


def test_topk_covering_all_blocks_gives_dense_attention_over_full_layer_kv():
    """An S layer with every block selected, sparse gate 1 and window gate 0 is attention over the F layer's KV."""
    model, ids = _model(), _ids(40)
    conv = apply_attention(model, "FSFFFF", init="random", window=16, block_size=8, top_k=64)
    attn = conv.model.layers[1].self_attn
    captured = {}
    conv.model.layers[0].self_attn.register_forward_hook(lambda m, a, kw, out: None, with_kwargs=True)
    with torch.no_grad():
        attn.gate_sparse.weight.zero_()
        attn.gate_sparse.bias.fill_(1e4)
        attn.gate_swa.weight.zero_()
        attn.gate_swa.bias.fill_(-1e4)
        attn.sink_sparse.fill_(-1e4)
        cache = HybridAttentionCache.for_model(conv)
        attn.register_forward_hook(lambda m, a, kw, out: captured.update(x=kw["hidden_states"], out=out[0],
                                                                          pe=kw["position_embeddings"]),
                                   with_kwargs=True)
        conv(ids, **cache_kwargs(conv, cache))
        k_full = cache.layers[0].keys[:, :, :40]
        v_full = cache.layers[0].values[:, :, :40]
        q, _, _ = attn._project(captured["x"], captured["pe"])
        dense = torch.nn.functional.scaled_dot_product_attention(q, k_full, v_full, is_causal=True, enable_gqa=True)
        expected = attn.o_proj(dense.transpose(1, 2).reshape(1, 40, -1))
    torch.testing.assert_close(captured["out"], expected, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("layout", ["FSRSSF", "FWWFWF"])
def test_crop_rolls_back_as_if_never_decoded(layout):
    model, ids = _model(), _ids(70)
    conv = apply_attention(model, layout, **ATTN)
    draft = torch.randint(0, 97, (1, 4), generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        ref, _ = _decode(conv, ids, 60)
        cache = HybridAttentionCache.for_model(conv)
        outs = [conv(ids[:, :60], **cache_kwargs(conv, cache)).logits]
        conv(draft, **cache_kwargs(conv, cache))  # a rejected 4-token draft, verified in one forward
        assert cache.max_rollback == ATTN["rollback_slack"] + 1
        cache.crop(60)
        for t in range(60, 65):
            outs.append(conv(ids[:, t : t + 1], **cache_kwargs(conv, cache)).logits)
        for t in draft[0, :3]:  # drafts decoded one by one, then rejected
            conv(t.view(1, 1), **cache_kwargs(conv, cache))
        cache.crop(-3)
        assert cache.get_seq_length() == 65
        for t in range(65, 70):
            outs.append(conv(ids[:, t : t + 1], **cache_kwargs(conv, cache)).logits)
        torch.testing.assert_close(torch.cat(outs, 1), ref, atol=1e-5, rtol=1e-4)
        with pytest.raises(ValueError, match="rollback"):
            cache.crop(50)
        assert cache.get_seq_length() == 70  # a refused crop changes nothing


def test_generate_and_bare_backbone():
    model = _model("qwen2")
    conv = apply_attention(model, "swa-2:1", inplace=False, **ATTN)
    prompt = _ids(30)
    out = conv.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=6, do_sample=False,
                        pad_token_id=0)
    # generate's tokens equal a hand-written greedy loop
    with torch.no_grad():
        cache, seq = HybridAttentionCache.for_model(conv), prompt
        logits = conv(seq, **cache_kwargs(conv, cache)).logits
        for _ in range(6):
            nxt = logits[:, -1:].argmax(-1)
            seq = torch.cat([seq, nxt], 1)
            logits = conv(nxt, **cache_kwargs(conv, cache)).logits
    assert torch.equal(out, seq)
    # the speech LM's backbone is a bare Qwen2Model fed with embeddings
    torch.manual_seed(0)
    backbone = Qwen2Model(Qwen2Config(**SMALL)).eval()
    emb = torch.randn(1, 50, 32)
    with torch.no_grad():
        ref = backbone(inputs_embeds=emb).last_hidden_state
        apply_attention(backbone, "full", **ATTN)
        got = backbone(inputs_embeds=emb).last_hidden_state
        apply_attention(Qwen2Model(Qwen2Config(**SMALL)), "hysparse-1:2", **ATTN)
    torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-5)


def test_calibration_fits_sinks_and_gates():
    model, ids = _model(), _ids(120)
    conv = apply_attention(model, "FSSWWF", inplace=False, calibration_ids=ids, **ATTN)
    layers = conv.model.layers
    assert torch.isfinite(layers[3].self_attn.sink).all()
    gate = layers[1].self_attn.gate_swa
    assert gate.weight.abs().max() == 0 and torch.isfinite(gate.bias).all()
    with torch.no_grad():
        assert torch.isfinite(conv(ids).logits).all()


def test_heal_trains_only_new_parameters():
    model = _model()
    conv = apply_attention(model, "FSSWWF", inplace=False, **ATTN)
    before = {n: p.detach().clone() for n, p in conv.named_parameters()}
    text = _ids(42)[0]  # a single 40-token window: the loss must go down
    with torch.no_grad():  # start from a poor fit so there is something to recover
        for layer in conv.model.layers:
            for name in ("sink", "sink_swa"):
                if hasattr(layer.self_attn, name):
                    getattr(layer.self_attn, name).fill_(3.0)
    before = {n: p.detach().clone() for n, p in conv.named_parameters()}
    losses = heal(conv, text, teacher=model, steps=8, seq_len=40, lr=5e-2, progress=False)
    assert losses[-1] < losses[0]
    trained = {n for n, _ in new_parameters(conv)}
    for name, p in conv.named_parameters():
        if name not in trained:
            assert torch.equal(p, before[name]), name
    assert any(not torch.equal(p, before[n]) for n, p in conv.named_parameters() if n in trained)


def test_build_from_config_for_native_training():
    model = build_model(Qwen2Config(**SMALL), "hysparse-1:2", **ATTN)
    kinds = [layer.self_attn.kind for layer in model.model.layers]
    assert kinds[0] == "F" and kinds[-1] == "F" and "S" in kinds
    assert all(isinstance(layer.self_attn, EfficientAttention) for layer in model.model.layers)
    with torch.no_grad():
        assert torch.isfinite(model(_ids(20)).logits).all()
    assert model.config.efficient_attention["layout"] == "".join(kinds)


@pytest.mark.parametrize(
    "layout, match",
    [("FSF", "6 layers"), ("FSSSXF", "unknown layer kinds"), ("SFFFFF", "start with a full"),
     ("FSSSSS", "last layer"), ("hysparse-2:3", "1:M"), ("swa-5:2", "N:1")],
)
def test_bad_layouts_raise_clear_errors(layout, match):
    with pytest.raises(ValueError, match=match):
        apply_attention(_model(), layout)


def test_bad_configs_and_inputs_raise_clear_errors():
    with pytest.raises(ValueError, match="window"):
        AttentionConfig(layout="FF", window=0)
    with pytest.raises(ValueError, match="rollback_slack"):
        AttentionConfig(layout="FF", rollback_slack=-1)
    with pytest.raises(ValueError, match="init"):
        apply_attention(_model(), "full", init="magic")
    with pytest.raises(ValueError, match="not a supported"):
        apply_attention(torch.nn.Linear(2, 2), "full")
    conv = apply_attention(_model(), "FWWFWF", **ATTN)
    with pytest.raises(ValueError, match="already converted"):
        apply_attention(conv, "full")
    ids = _ids(10)
    with pytest.raises(ValueError, match="padded"):
        conv(ids, attention_mask=torch.tensor([[0] * 3 + [1] * 7]))
    stale = DynamicCache()
    stale.update(torch.zeros(1, 2, 3, 8), torch.zeros(1, 2, 3, 8), 0)
    with pytest.raises(TypeError, match="HybridAttentionCache"):
        conv(ids, **cache_kwargs(conv, stale))
    with pytest.raises(ValueError, match="calibration_ids"):
        apply_attention(_model(), "FWWFWF", calibration_ids=ids[0], **ATTN)
