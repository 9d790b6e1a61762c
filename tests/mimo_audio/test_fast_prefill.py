"""Prefill of the fast path (``FastLayer.rows_``: one kernel call per matrix, native glue per row) against single
steps and the PyTorch-ops path, and the prompt pieces that skip the text head."""

from __future__ import annotations

import pytest
import torch

from efficient.quant import quantize
from mimo_audio import SpeechLM, SpeechLMConfig
from mimo_audio.fast_decoder import FastSpeechLM

EMPTY = 300
PARTS = ["model", "local_transformer", "input_local_transformer", "speech_group_downcast", "hidden_states_downcast"]


@pytest.fixture(autouse=True)
def _lut_arithmetic(monkeypatch) -> None:
    """LUT kernels (exact fp32 activations): the int8 kernel's activation rounding would turn fp32 ulps into
    ~1e-2 differences, far above what these tests assert."""
    monkeypatch.setenv("MIMO_QUANT_INT8", "off")


def tiny_fast(scheme: str | None = "w4g32", max_len: int = 40) -> tuple[SpeechLM, FastSpeechLM]:
    lm = SpeechLM(SpeechLMConfig.preset("tiny"), EMPTY).init_weights(std=0.2, seed=0).eval()
    if scheme is not None:
        quantize(lm, scheme, include=PARTS)
    return lm, FastSpeechLM.from_speech_lm(lm, max_len=max_len)


def speech_ids(lm: SpeechLM, patches: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    ids = torch.full((1, 9, 4 * patches), EMPTY, dtype=torch.long)
    ids[0, 1:] = (torch.rand(8, 4 * patches, generator=g) * lm.empty_ids[:, None]).long()
    return ids


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max())


@pytest.mark.parametrize("int8", ["off", "auto"])
@pytest.mark.parametrize("scheme", [None, "w4g32", "w2g128"])
def test_rows_prefill_equals_single_steps_and_the_pytorch_path(scheme: str | None, int8: str, monkeypatch) -> None:
    monkeypatch.setenv("MIMO_QUANT_INT8", int8)  # auto: the int8 kernel where the CPU has it
    _, fast = tiny_fast(scheme)
    x = torch.randn(7, fast.layers[0].dim, generator=torch.Generator().manual_seed(1))
    outs = {}
    for mode in ("rows", "steps", "torch"):
        h = x.clone()
        for layer in fast.layers:
            layer.reset(3)  # a cache with earlier positions in it
            cos, sin = fast.cos[3:10], fast.sin[3:10]
            if mode == "rows":
                assert layer.rows_(h, cos, sin) is h  # in place
            elif mode == "steps":
                for i in range(7):
                    layer.step_(h[i : i + 1], cos[i : i + 1], sin[i : i + 1])
            else:
                h = layer(h, cos, sin)
            assert layer.n == 10
        outs[mode] = h
    if scheme is None:  # dense fp32 (torch.mm): rounding order differs, measured 1.1e-6 relative
        assert rel(outs["rows"], outs["steps"]) < 1e-5
    else:  # the low-bit kernels' GEMM rows equal their GEMV: the prefill is exactly M steps
        assert torch.equal(outs["rows"], outs["steps"])
    if int8 == "off":  # the int8 kernel rounds activations: ulps of the glue vs PyTorch ops move it ~1e-2
        assert rel(outs["rows"], outs["torch"]) < 1e-5  # measured <= 6.7e-7


def test_rows_refuses_a_full_cache_and_falls_back_without_glue() -> None:
    _, fast = tiny_fast(None, max_len=8)
    layer = fast.layers[0]
    x = torch.randn(4, layer.dim)
    layer.reset(6)
    with pytest.raises(ValueError, match="cache"):
        layer.rows_(x.clone(), fast.cos[:4], fast.sin[:4])
    layer.reset(0)
    ref = layer(x, fast.cos[:4], fast.sin[:4])
    layer.reset(0)
    layer._glue = None
    assert torch.equal(layer.rows_(x.clone(), fast.cos[:4], fast.sin[:4]), ref)


def test_prompt_pieces_without_the_text_head_keep_the_same_state() -> None:
    lm, with_head = tiny_fast()
    without = FastSpeechLM.from_speech_lm(lm, max_len=40)
    ids = speech_ids(lm, 6)
    for a, b in ((0, 8), (8, 20), (20, 24)):
        text, local = with_head.forward(ids[..., a:b])
        skipped, local2 = without.forward(ids[..., a:b], text_logits=False)
        assert skipped is None and text.shape == (lm.config.vocab_size,)
        assert torch.equal(local, local2)
    assert with_head.n == without.n == 6
    assert torch.equal(without.text_logits(), text)  # computed later, for the last position appended
    t1, _ = with_head.forward(ids[..., :4])  # generation continues identically
    t2, _ = without.forward(ids[..., :4])
    assert torch.equal(t1, t2)
    without.reset()
    with pytest.raises(ValueError, match="nothing"):
        without.text_logits()


@pytest.mark.parametrize("scheme", [None, "w4g32"])
def test_patch_encoder_over_all_patches_at_once_equals_one_at_a_time(scheme: str | None) -> None:
    lm, fast = tiny_fast(scheme)
    ids = speech_ids(lm, 5, seed=2)
    ids[0, 3, 4:8] = lm.empty_ids[2]  # an empty channel in patch 1: masked out of its embedding
    G = lm.config.group_size
    codes = ids[0, 1:].reshape(8, -1, G).transpose(0, 1)  # [N, C, G]
    fast.fast_prefill = False
    one = fast.encode_speech(codes)
    text1, local1 = fast.forward(ids)
    fast.reset()
    fast.fast_prefill = True
    batched = fast.encode_speech(codes)
    text2, local2 = fast.forward(ids)
    assert batched.shape == (5, lm.config.hidden_size)
    # measured: <= 7.5e-7 relative
    assert rel(batched, one) < 1e-5
    assert rel(local2, local1) < 1e-5 and rel(text2, text1) < 1e-5


def test_causal_patch_encoder_blocks_equal_one_at_a_time() -> None:
    lm, fast = tiny_fast(None)
    for layer in fast.encoder:
        layer.causal = not layer.causal  # the other attention kind of the patch encoder (input_full_attention)
    codes = speech_ids(lm, 3, seed=4)[0, 1:].reshape(8, -1, lm.config.group_size).transpose(0, 1)
    fast.fast_prefill = False
    one = fast.encode_speech(codes)
    fast.fast_prefill = True
    assert rel(fast.encode_speech(codes), one) < 1e-5
