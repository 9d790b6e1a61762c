"""The task API on the embedded default model: typed user errors, silence, unclosed thinking, bounded outputs.

Fixtures are local (no conftest here) so this file does not depend on the layout of the other test folders.
"""

from __future__ import annotations

import logging
import math

import numpy as np
import pytest
import torch

from mimo_audio import MimoAudio, formats, iter_patches
from mimo_audio.api import VC_LENGTH_FACTOR, VC_MARGIN_PATCHES
from mimo_audio.errors import UserError

G = {"preset": "greedy", "max_new_patches": 8}


@pytest.fixture(scope="module")
def m(tmp_path_factory) -> MimoAudio:
    torch.set_num_threads(1)
    return MimoAudio.from_pretrained(voices_dir=tmp_path_factory.mktemp("voices"))


def codes(frames: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    top = torch.tensor([1024, 1024, 128, 128, 128, 128, 128, 128])[:, None]
    return (torch.rand(8, frames, generator=g) * top).long()


def test_zero_length_is_rejected_not_replaced_by_the_default(m):
    with pytest.raises(UserError, match="max_new_patches must be >= 1, got 0"):
        m.tts("hello", max_new_patches=0)
    with pytest.raises(UserError, match="max_new_patches"):
        m.asr(codes(20), max_new_patches=0)


def test_tts_of_none_is_a_clear_error(m):
    with pytest.raises(UserError, match="TTS text 0 must be a string, got NoneType"):
        m.tts(None)
    with pytest.raises(UserError, match="list of texts"):
        m.tts_batch("hello")


def test_asr_of_silence_is_empty_and_does_not_fail_the_batch(m, flite_wav):
    silence = np.zeros(24000, dtype=np.float32)
    speech = m.asr(flite_wav, **G)
    assert m.asr(silence, **G) == ""
    assert m.asr_batch([silence, flite_wav, silence], **G) == ["", speech, ""]
    with pytest.raises(UserError, match="silent"):  # other tasks still refuse silent input
        m.understand(silence, "What is said?", **G)


def test_unclosed_thinking_is_returned_marked(m):
    msgs = [{"role": "user", "content": "What is two plus two?"}]
    r = m.chat(msgs, thinking=True, preset="greedy", max_new_patches=6)
    assert r.stop_reason == "max_length" and r.thinking_unclosed
    assert r.text and r.text == r.thinking  # what was produced, not ""
    closed = m.chat(msgs, thinking=False, **G)
    assert not closed.thinking_unclosed and closed.thinking is None


def test_few_shot_length_is_bounded_by_the_query(m, monkeypatch):
    seen = []
    run_jobs = m.run_jobs

    def spy(jobs):  # the real run; records the config it was given
        seen.append(jobs[0].config)
        return run_jobs(jobs)

    monkeypatch.setattr(m, "run_jobs", spy)
    query = codes(40, seed=3)  # 10 patches = 1.6 s
    pair = (codes(24, seed=1), codes(28, seed=2))
    r = m.few_shot([pair], query, preset="greedy")
    bound = math.ceil(10 * VC_LENGTH_FACTOR) + VC_MARGIN_PATCHES
    assert seen[-1].max_new_patches == bound and r.num_patches <= bound
    m.few_shot([pair], query, preset="greedy", max_new_patches=3)  # an explicit length wins
    assert seen[-1].max_new_patches == 3


def test_default_length_capped_silently_explicit_length_warned(m, caplog):
    prompt = m.render(formats.tts("hello"))
    default = m.generation_config("tts", "audio")
    assert default.length_is_default and default.max_new_patches > m.lm.max_patches - prompt.shape[1] // 4
    explicit = m.generation_config("tts", "audio", max_new_patches=m.lm.max_patches)
    assert not explicit.length_is_default
    with caplog.at_level(logging.WARNING, logger="mimo_audio"):
        next(iter_patches(m.lm, [prompt], default))
        assert "exceeds the remaining context" not in caplog.text
        next(iter_patches(m.lm, [prompt], explicit))
        assert "exceeds the remaining context" in caplog.text


def test_voice_replacement_needs_overwrite_and_long_prompts_are_refused(m):
    m.register_voice("alice", codes(50))
    with pytest.raises(UserError, match="already exists.*--force"):
        m.register_voice("alice", codes(60))
    assert m.voices.load("alice")[0].shape[1] == 50
    m.register_voice("alice", codes(60), overwrite=True)
    assert m.voices.load("alice")[0].shape[1] == 60
    too_long = m.lm.max_patches // 2 * 4 + 1  # frames: more than half the context
    with pytest.raises(UserError, match="too long"):
        m.register_voice("long", codes(too_long))
    assert "long" not in m.voices.names()
    with pytest.raises(UserError, match="too long"):
        m.tts("hi", voice=codes(too_long), **G)
    m.voices.remove("alice")
    with pytest.raises(UserError, match="unknown voice 'alice'"):
        m.voices.remove("alice")


def test_bad_device_is_a_clear_error():
    with pytest.raises(UserError, match="unknown device 'foo'"):
        MimoAudio.from_pretrained(device="foo")
    if not torch.cuda.is_available():
        with pytest.raises(UserError, match="no usable CUDA"):
            MimoAudio.from_pretrained(device="cuda")
