"""TTS cannot end before it has spoken: the default speech floor (``min_speech_patches``) of TTS requests.

The embedded default model, sampled with the TTS preset, ended some calls before any speech: with seed 4 it
writes ``.`` then ``<|im_end|>``, with seed 19 ``<|eot|><|eostm|>`` (measured on "Hello there, how are you?";
bench/bench_tts_speech_floor.py counts it over 30 seeds). Under the floor a sampled stop token becomes a speech
patch, in the one generation path of ``MimoAudio.tts`` and in the serving engine.
"""

from __future__ import annotations

import pytest
import torch

from mimo_audio import MimoAudio, generate
from mimo_audio.engine import Engine, EngineConfig
from mimo_audio.errors import UserError
from mimo_audio.generation import GenerationConfig, SpeechTally, speak_instead_of_stopping
from mimo_audio.tasks import tts_min_speech_patches

TEXT = "Hello there, how are you?"
FAILED_SEEDS = (4, 19)  # no speech at all without the floor (two different stop paths)
CAP = 120  # patches: bounds the test's run time (a floored run of these seeds speaks within ~40 patches)
LOUD = 0.01  # a waveform peak above this is not silence


@pytest.fixture(scope="module")
def m() -> MimoAudio:
    torch.set_num_threads(1)
    return MimoAudio.from_pretrained()


def _speech_patches(m: MimoAudio, result) -> int:
    return result.codes.shape[1] // m.lm.config.group_size


def test_the_default_floor_follows_the_text():
    assert tts_min_speech_patches(TEXT) == 3  # 21 non-space characters x 0.1, rounded up
    assert tts_min_speech_patches("Hi") == 1
    assert tts_min_speech_patches("  a  b  ") == 1
    assert tts_min_speech_patches("x" * 95) == 10


def test_tally_counts_speech_as_the_parser_keeps_it():
    empty, sostm, eostm = 1, 2, 3
    open_prompt = torch.tensor([[9, 9, 9, sostm]])
    t = SpeechTally.for_prompt(open_prompt, empty, (sostm, eostm))
    for tok in (empty, 7, empty, sostm, empty):  # a later <|sostm|> does not reset an open stream
        t.push(tok)
    assert t.count == 3
    assert t.toward_floor == 3
    t.push(eostm)
    t.push(empty)  # after <|eostm|>: not kept
    assert t.count == 3 and t.toward_floor > 1000  # an ended stream no longer holds a stop back
    closed = SpeechTally.for_prompt(torch.tensor([[9, 9, 9, 8]]), empty, (sostm, eostm))
    for tok in (empty, empty, sostm, empty):  # speech before the stream start is dropped by the parser
        closed.push(tok)
    assert closed.count == 1


def test_a_stop_under_the_floor_becomes_speech():
    cfg = GenerationConfig(stop_tokens=(5, 6), min_speech_patches=2)
    text = torch.tensor([5, 6, 5, 7])
    got = speak_instead_of_stopping(cfg, text, [0, 1, 2, 0], empty=1)
    assert got.tolist() == [1, 1, 5, 7]  # rows under 2 speech patches speak; the others are untouched
    assert speak_instead_of_stopping(cfg.with_(min_speech_patches=0), text, [0] * 4, empty=1) is text


def test_failed_seeds_now_speak(m):
    for seed in FAILED_SEEDS:
        off = m.tts(TEXT, seed=seed, max_new_patches=CAP, min_speech_patches=0)
        assert off.codes.shape[1] == 0, f"seed {seed} spoke without the floor: the test lost its point"
        on = m.tts(TEXT, seed=seed, max_new_patches=CAP)
        assert on.stop_reason == "stop_token"
        assert _speech_patches(m, on) >= tts_min_speech_patches(TEXT), f"seed {seed}: {on.stop_reason}"
        assert float(on.audio.abs().max()) > LOUD, f"seed {seed}: the speech is silent"


def test_the_floor_changes_a_run_only_where_it_would_end(m):
    """Same draws: the floored run repeats the unfloored one up to its stop, which becomes a speech patch."""
    job = m.prepare_tts(TEXT, seed=FAILED_SEEDS[0], max_new_patches=CAP)
    on = generate(m.lm, [job.prompt], job.config)[0].text_ids
    off = generate(m.lm, [job.prompt], job.config.with_(min_speech_patches=0))[0].text_ids
    assert off[-1] in job.config.stop_tokens
    assert on[: len(off) - 1] == off[:-1] and on[len(off) - 1] == m.special.empty


def test_engine_applies_the_same_floor(m):
    """The server and the demo run jobs through the engine: same floor, same seeded output as m.tts."""
    seed = FAILED_SEEDS[1]
    with Engine(m, EngineConfig(max_batch=2)) as engine:
        served = engine.submit(m.prepare_tts(TEXT, seed=seed, max_new_patches=CAP)).result(timeout=120)
    alone = m.tts(TEXT, seed=seed, max_new_patches=CAP)
    assert _speech_patches(m, served) >= tts_min_speech_patches(TEXT)
    assert torch.equal(served.codes, alone.codes)


def test_floor_only_for_speech_output(m):
    with pytest.raises(UserError, match="min_speech_patches"):
        m.generation_config("asr", "text", min_speech_patches=3)
    with pytest.raises(UserError, match="min_speech_patches"):
        m.prepare_tts(TEXT, min_speech_patches=-1)
