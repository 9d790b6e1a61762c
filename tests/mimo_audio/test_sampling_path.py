"""One sampling path: the model computes logits, generation's Sampler chooses, and the speculative target
filters with the same function (efficient.sampling.filter_logits) and the same "off" values."""

from __future__ import annotations

import pytest
import torch

from efficient.sampling import filter_logits
from efficient.spec import SamplingParams, probs
from mimo_audio.generation import GenerationConfig
from mimo_audio.sampling import Sampler, code_chooser
from mimo_audio.speculative import sampling_params

KNOBS = [(1.0, None, None), (0.6, None, 0.95), (0.9, 50, 0.95), (0.7, 3, None), (1.3, 1, 0.5)]


@pytest.mark.parametrize("temperature, top_k, top_p", KNOBS)
def test_sampler_and_speculative_target_share_one_distribution(temperature, top_k, top_p):
    logits = torch.randn(4, 300, generator=torch.Generator().manual_seed(0)) * 3
    sampler = Sampler(True, temperature, top_k, top_p)
    scores = sampler.filter_logits(logits)
    assert torch.equal(scores, filter_logits(logits, temperature, top_k, top_p))
    params = sampling_params(GenerationConfig(text_sampler=sampler))
    assert (params.temperature, params.top_k, params.top_p) == (temperature, top_k, top_p)
    assert torch.allclose(probs(logits, params), scores.softmax(-1), atol=1e-7)


def test_off_values_mean_the_same_everywhere():
    logits = torch.randn(2, 50, generator=torch.Generator().manual_seed(1))
    off = filter_logits(logits, 0.8)
    assert torch.equal(off, filter_logits(logits, 0.8, top_k=0, top_p=1.0))
    assert torch.equal(probs(logits, SamplingParams(0.8)), probs(logits, SamplingParams(0.8, top_k=0, top_p=1.0)))
    assert sampling_params(GenerationConfig(text_sampler=Sampler.greedy())).greedy


def test_overrides_replace_only_the_given_knobs():
    base = Sampler(True, 0.6, None, 0.95)
    assert base.with_overrides() is base
    assert base.with_overrides(top_k=5) == Sampler(True, 0.6, 5, 0.95)
    assert base.with_overrides(temperature=0) == Sampler(False, 0.6, None, 0.95)
    assert Sampler.greedy().with_overrides(temperature=0.7, top_p=1) == Sampler(True, 0.7, None, None)


def test_decode_patch_only_computes_logits_and_asks_the_chooser(tiny_lm):
    cfg = tiny_lm.config
    h = torch.randn(3, cfg.local_dim, generator=torch.Generator().manual_seed(2))
    seen = []

    def argmax_but_empty(logits: torch.Tensor, c: int) -> torch.Tensor:
        seen.append((c, tuple(logits.shape)))
        logits = logits.clone()
        logits[:, cfg.speech_zeroemb_idx[c]] = float("-inf")
        return logits.argmax(-1)

    codes = tiny_lm.decode_patch(h, argmax_but_empty)
    assert codes.shape == (3, cfg.group_size, cfg.audio_channels)
    assert len(seen) == cfg.group_size * cfg.audio_channels
    assert all(shape == (3, cfg.speech_vocab_size[c]) for c, shape in seen)
    # the generation path (code_chooser over a greedy Sampler) and the older Sampler argument agree with it
    assert torch.equal(codes, tiny_lm.decode_patch(h, code_chooser(Sampler.greedy(), cfg.speech_zeroemb_idx)))
    assert torch.equal(codes, tiny_lm.decode_patch(h, Sampler.greedy()))


def test_generation_config_takes_the_knobs_for_the_text_channel(mimo):
    cfg = mimo.generation_config("tts", "audio", temperature=0.8, top_k=7, top_p=1)
    assert cfg.text_sampler == Sampler(True, 0.8, 7, None)
    assert cfg.audio_sampler == mimo.generation_config("tts", "audio").audio_sampler
