"""Activation-aware channel scaling (exact in float, lowers the quantization error where inputs have outlier
channels) and GPTQ act-order with static groups (same packed format, dequantizes to what GPTQ computed)."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from efficient.quant import formats, load_quantized_causal_lm, parse_scheme, quantize, save_quantized
from efficient.quant.gptq import gptq_quantize
from efficient.quant.transforms import awq_transform, scale_points


def _tiny_llama_with_outliers() -> LlamaForCausalLM:
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=96, hidden_size=64, intermediate_size=160, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                      tie_word_embeddings=True)
    m = LlamaForCausalLM(cfg).eval()
    with torch.no_grad():  # SmolLM2-like: a few input channels far above the others
        for layer in m.model.layers:
            layer.input_layernorm.weight[[3, 17]] = 25.0
            layer.post_attention_layernorm.weight[40] = 15.0
    return m


IDS = torch.randint(0, 96, (4, 32), generator=torch.Generator().manual_seed(1))


def _calib(m):
    m(input_ids=IDS)


def test_awq_transform_is_exact_in_float_and_lowers_the_output_error():
    m = _tiny_llama_with_outliers()
    scaled = copy.deepcopy(m)
    points = awq_transform(scaled, "w4g32", _calib)
    assert len(points) == len(scale_points(m)) == 8  # norm->qkv, v->o (GQA), norm->gate/up, up->down per layer
    with torch.no_grad():
        ref, out = m(input_ids=IDS).logits, scaled(input_ids=IDS).logits
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-4)
    assert all(ratio <= 1.0 for *_, ratio in points)  # alpha 0 (no scaling) is a candidate
    first = dict((n, (a, r)) for n, a, r in points)["model.layers.0.input_layernorm"]
    assert first[0] > 0 and first[1] < 0.7  # the outlier channels are worth scaling


def _ppl_proxy(m) -> float:
    with torch.no_grad():
        return float(torch.nn.functional.kl_div(
            m(input_ids=IDS).logits.log_softmax(-1), REF.log_softmax(-1), log_target=True, reduction="batchmean"))


REF = _tiny_llama_with_outliers()(input_ids=IDS).logits.detach()


def test_awq_then_act_order_gptq_packs_loads_and_beats_plain_gptq(tmp_path):
    plain, best = _tiny_llama_with_outliers(), _tiny_llama_with_outliers()
    quantize(plain, "w4g32", method="gptq", calib_fn=_calib)
    quantize(best, "w4g32", method="gptq", calib_fn=_calib, transform="awq", act_order=True)
    assert _ppl_proxy(best) < _ppl_proxy(plain)
    save_quantized(best, tmp_path)
    cfg = json.loads((tmp_path / "quant_config.json").read_text())
    assert cfg["transform"] == "awq" and cfg["act_order"] is True
    loaded = load_quantized_causal_lm(tmp_path)
    with torch.no_grad():
        torch.testing.assert_close(loaded(input_ids=IDS).logits, best(input_ids=IDS).logits)


@pytest.mark.parametrize("name", ["w4g32", "w2g64", "afpq4g64"])
def test_act_order_keeps_the_packed_format_and_dequantizes_to_what_gptq_computed(name):
    torch.manual_seed(0)
    sch = parse_scheme(name)
    w = torch.randn(24, 200)  # K not a multiple of the group: padded columns
    x = torch.randn(400, 200) * torch.rand(200).pow(3).mul(8).add(0.1)
    H = x.T @ x
    plain = gptq_quantize(sch, w, H)
    ao = gptq_quantize(sch, w, H, act_order=True)
    assert ao.codes.shape == plain.codes.shape and ao.codes.dtype == plain.codes.dtype
    assert all(a.shape == b.shape for a, b in zip(ao.params, plain.params))
    packed = formats.pack(sch, ao, 24, 200)
    assert {k: tuple(v.shape) for k, v in packed.items()} == formats.expected_shapes(sch, 24, 200)
    torch.testing.assert_close(formats.dequantize(sch, packed, 24, 200), ao.dequant, rtol=0, atol=1e-6)

    def out_err(res):
        dw = res.dequant - w
        return float(((dw @ H) * dw).sum())

    rtn = formats.rtn_quantize(sch, w, col_weight=H.diagonal())
    assert out_err(ao) < out_err(rtn)


def test_awq_needs_a_uniform_scheme_and_llama_layers():
    m = _tiny_llama_with_outliers()
    with pytest.raises(ValueError, match="uniform"):
        awq_transform(m, "afpq4g64", _calib)
    with pytest.raises(ValueError, match="Llama-style"):
        awq_transform(torch.nn.Sequential(torch.nn.Linear(8, 8)), "w4g32", lambda mod: None)
    with pytest.raises(ValueError, match="unknown transform"):
        quantize(m, "w4g32", transform="smooth", calib_fn=_calib)
