"""The fast batch-1 path (static caches, fused projections) against the reference SpeechLM modules."""

from __future__ import annotations

import pytest
import torch

from efficient.quant import quantize
from mimo_audio import SpeechLM, SpeechLMConfig
from mimo_audio.fast_decoder import FastPatchDecoder, FastSpeechLM
from mimo_audio.sampling import Sampler

EMPTY = 300
PARTS = ["model", "local_transformer", "input_local_transformer", "speech_group_downcast", "hidden_states_downcast"]


@pytest.fixture(autouse=True)
def _lut_arithmetic(monkeypatch) -> None:
    """The LUT kernels: the int8-activation kernel (AVX512-VNNI) rounds activations, so an fp32 ulp of the glue
    can flip one rounding and move logits by ~1e-2 (measured) where these tests assert 1e-5 (its products
    are bit-identical for equal inputs: tests/efficient/quant/test_int8_kernel.py)."""
    monkeypatch.setenv("MIMO_QUANT_INT8", "off")


def tiny_lm(scheme: str | None) -> SpeechLM:
    lm = SpeechLM(SpeechLMConfig.preset("tiny"), EMPTY).init_weights(std=0.2, seed=0).eval()
    lm.speech_buffer_dtype = None  # sum the speech embeddings in fp32, as the fast path does
    if scheme is not None:
        quantize(lm, scheme, include=PARTS)
    return lm


def prompt(lm: SpeechLM, patches: int = 6) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    ids = torch.empty(1, 9, 4 * patches, dtype=torch.long)
    ids[0, 0] = torch.randint(0, EMPTY - 1, (4 * patches,), generator=g)
    ids[0, 1:] = lm.empty_ids[:, None]
    half = 2 * patches
    ids[0, 0, half:] = EMPTY
    ids[0, 1:, half:] = (torch.rand(8, 4 * patches - half, generator=g) * lm.empty_ids[:, None]).long()
    return ids


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).detach().abs().max() / b.detach().abs().max())


@pytest.mark.parametrize("scheme", [None, "w4g32", "w4g32s", "ternary"])
def test_patch_decoder_greedy_identical_and_logits_close(scheme: str | None) -> None:
    lm = tiny_lm(scheme)
    fast = FastPatchDecoder.from_speech_lm(lm)
    greedy = Sampler.greedy()
    for seed in range(3):
        h = torch.randn(1, lm.config.local_dim, generator=torch.Generator().manual_seed(seed))
        ref = lm.decode_patch(h, greedy)
        trace: list[torch.Tensor] = []
        assert torch.equal(fast.decode_patch(h, greedy, trace=trace), ref)
        ref_logits = lm.patch_decoder_logits(h, ref)
        got = iter(trace)
        for emits in lm.delay.schedule:
            for c, f in emits:
                # measured: <= 1.1e-6 relative (fp32 rounding; the LUT codes are the same)
                assert rel(next(got)[0], ref_logits[c][0, f]) < 1e-5


def test_patch_decoder_sampling_matches_with_the_same_generator() -> None:
    lm = tiny_lm("w4g32")
    fast = FastPatchDecoder.from_speech_lm(lm)
    s = Sampler(do_sample=True, temperature=0.9, top_k=50)
    h = torch.randn(1, lm.config.local_dim, generator=torch.Generator().manual_seed(5))
    ref = lm.decode_patch(h, s, torch.Generator().manual_seed(3))
    assert torch.equal(fast.decode_patch(h, s, torch.Generator().manual_seed(3)), ref)


@pytest.mark.parametrize("scheme", [None, "w4g32"])
def test_whole_lm_prefill_and_step_match_reference(scheme: str | None) -> None:
    lm = tiny_lm(scheme)
    fast = FastSpeechLM.from_speech_lm(lm, max_len=32)
    ids = prompt(lm)
    cache = lm.new_cache()
    lm(ids[..., :-4], use_cache=True, past_key_values=cache)
    ref = lm(ids[..., -4:], use_cache=True, past_key_values=cache, logits_to_keep=1)
    fast.forward(ids[..., :-4])  # prefill (M > 1, causal) then one step over the static cache
    text, local = fast.forward(ids[..., -4:])
    # measured: <= 1.4e-6 (fp32) / 1.7e-7 (w4g32) relative
    assert rel(text, ref.text_logits[0, -1]) < 1e-5
    assert rel(local[0], ref.local_hidden[0, -1]) < 1e-5
    assert fast.n == ids.shape[2] // 4


def test_batch_and_overflow_are_refused() -> None:
    lm = tiny_lm(None)
    fast = FastPatchDecoder.from_speech_lm(lm)
    with pytest.raises(ValueError, match="batch 1"):
        fast.decode_patch(torch.zeros(2, lm.config.local_dim), Sampler.greedy())
    full = FastSpeechLM.from_speech_lm(lm, max_len=4)
    with pytest.raises(ValueError, match="cache"):
        full.forward(prompt(lm, patches=6))
