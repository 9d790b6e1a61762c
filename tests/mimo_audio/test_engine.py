"""The serving engine on the embedded default model: batching equality, join/leave, cancel, limits."""

from __future__ import annotations

import time

import pytest
import torch

from mimo_audio import MimoAudio
from mimo_audio.engine import Cancelled, Engine, EngineConfig, EngineStopped, QueueFull, RequestTimeout

G = {"preset": "greedy"}


@pytest.fixture(scope="module")
def served():
    torch.set_num_threads(1)
    return MimoAudio.from_pretrained()


@pytest.fixture(scope="module")
def speech_codes(served):
    return served.tts("Good morning to you.", max_new_patches=40, **G).codes


def _jobs(m: MimoAudio, codes: torch.Tensor) -> list:
    return [
        m.prepare_tts("Hello there, how are you?", max_new_patches=40, **G),
        m.prepare_chat([{"role": "user", "content": "Hi, who are you?"}], max_new_patches=30, **G),
        m.prepare_asr(codes, max_new_patches=20, **G),
        m.prepare_tts("The quick brown fox jumps over the lazy dog.", max_new_patches=60, **G),
        m.prepare_chat([{"role": "user", "content": "Tell me a story."}], max_new_patches=12, **G),
        m.prepare_understand(codes, "What is said?", max_new_patches=16, **G),
    ]


def _same(a, b) -> bool:
    return a.text == b.text and torch.equal(a.codes, b.codes) and a.stop_reason == b.stop_reason


def test_greedy_batched_equals_alone_with_joins_and_leaves(served, speech_codes):
    jobs = _jobs(served, speech_codes)
    alone = [served.run_job(j) for j in jobs]
    with Engine(served, EngineConfig(max_batch=4)) as eng:
        together = [h.result(timeout=60) for h in [eng.submit(j) for j in jobs]]  # 6 jobs through 4 slots
        staggered = []
        for j in jobs:  # rows join while others run and leave at their own lengths
            staggered.append(eng.submit(j))
            time.sleep(0.02)
        staggered = [h.result(timeout=60) for h in staggered]
        stats = eng.stats()
    for a, b, c in zip(alone, together, staggered):
        assert _same(a, b) and _same(a, c)
        assert (a.audio is None) == (b.audio is None)
    assert stats["mean_batch"] > 1.5 and stats["completed"] == 12 and stats["failed"] == 0
    assert stats["merge_ms"] > 0  # membership changes happened and were timed


def test_seeded_sampling_matches_alone(served):
    job = served.prepare_tts("A seeded sample.", max_new_patches=30, seed=7)
    alone = served.run_job(job)
    with Engine(served) as eng:
        others = [eng.submit(served.prepare_tts("Other text here.", max_new_patches=30, seed=s)) for s in (1, 2)]
        mine = eng.submit(job).result(timeout=60)
        for h in others:
            h.result(timeout=60)
    assert _same(alone, mine)


def test_stream_events_add_up_to_the_result(served):
    job = served.prepare_tts("Streaming speech, chunk by chunk.", max_new_patches=50, **G)
    with Engine(served) as eng:
        events = list(eng.submit(job))
    result = events[-1].result
    assert result is not None and all(e.result is None for e in events[:-1])
    assert "".join(e.text for e in events).strip() == result.text
    chunks = [e.audio for e in events if e.audio is not None]
    assert result.audio is not None and result.audio.numel() > 0
    assert torch.equal(torch.cat(chunks), result.audio)
    assert sum(e.codes.shape[1] for e in events if e.codes is not None) == result.codes.shape[1]


def test_cancel_frees_the_slot(served):
    long = served.prepare_tts("Keep talking for a long time.", max_new_patches=400, min_new_patches=400, **G)
    with Engine(served, EngineConfig(max_batch=1)) as eng:
        h = eng.submit(long)
        it = iter(h)
        next(it)
        h.cancel()
        with pytest.raises(Cancelled):
            for _ in it:
                pass
        quick = eng.submit(served.prepare_chat([{"role": "user", "content": "hi"}], max_new_patches=5, **G))
        assert quick.result(timeout=30).num_patches == 5
        stats = eng.stats()
    assert stats["cancelled"] == 1 and stats["active"] == 0


def test_closing_the_iterator_cancels(served):
    long = served.prepare_tts("Keep talking.", max_new_patches=400, min_new_patches=400, **G)
    with Engine(served, EngineConfig(max_batch=1)) as eng:
        h = eng.submit(long)
        it = iter(h)
        next(it)
        it.close()  # the consumer went away
        deadline = time.monotonic() + 10
        while eng.stats()["active"] and time.monotonic() < deadline:
            time.sleep(0.01)
        assert eng.stats()["cancelled"] == 1 and h.done


def test_queue_full_is_immediate(served):
    long = served.prepare_tts("Long.", max_new_patches=400, min_new_patches=400, **G)
    with Engine(served, EngineConfig(max_batch=1, max_queue=2)) as eng:
        handles = []
        t0 = time.monotonic()
        with pytest.raises(QueueFull, match="queue is full"):
            for _ in range(5):
                handles.append(eng.submit(long))
        assert time.monotonic() - t0 < 1.0
        assert eng.stats()["rejected"] == 1
        for h in handles:
            h.cancel()


def test_timeout_then_keeps_serving(served):
    long = served.prepare_tts("Long.", max_new_patches=400, min_new_patches=400, **G)
    with Engine(served, EngineConfig(request_timeout_s=0.3)) as eng:
        with pytest.raises(RequestTimeout):
            eng.submit(long).result(timeout=30)
        ok = eng.submit(served.prepare_chat([{"role": "user", "content": "hi"}], max_new_patches=4, **G))
        assert ok.result(timeout=30).num_patches == 4
        assert eng.stats()["timed_out"] == 1


def test_limits_and_stopped_engine(served, speech_codes):
    cfg = EngineConfig(max_prompt_patches=60, max_new_patches=3)
    with Engine(served, cfg) as eng:
        with pytest.raises(ValueError, match="exceeds the limit of 60 patches"):
            eng.submit(served.prepare_asr(speech_codes.repeat(1, 40), **G))
        r = eng.submit(served.prepare_chat([{"role": "user", "content": "hi"}], max_new_patches=50, **G))
        assert r.result(timeout=30).num_patches == 3  # capped by the engine
    with pytest.raises(EngineStopped):
        eng.submit(served.prepare_chat([{"role": "user", "content": "hi"}], **G))


def test_speculative_job_runs_alone(served, speech_codes):
    job = served.prepare_asr(speech_codes, max_new_patches=20, speculative=2, **G)
    try:
        alone = served.run_job(job)
    except FileNotFoundError:
        pytest.skip("no MTP heads beside the default model")
    with Engine(served) as eng:
        other = eng.submit(served.prepare_tts("Batched meanwhile.", max_new_patches=20, **G))
        assert _same(eng.submit(job).result(timeout=60), alone)
        other.result(timeout=60)


@pytest.mark.parametrize("quant,attention,batch", [("w4g64", None, 4), (None, "hysparse-1:3", 1)])
def test_composed_backbones(quant, attention, batch, monkeypatch):
    """--quant batches like the float model; --sparse (hybrid cache) is served one request at a time.

    On the LUT kernels: the int8-activation kernel (AVX512-VNNI CPUs) rounds each row's activations, so the last-bit
    differences between a padded batch and a lone request can flip a rounding and a greedy token (docs/realtime.md).
    """
    from mimo_audio.compose import compose_backbone

    monkeypatch.setenv("MIMO_QUANT_INT8", "off")
    if quant:
        from efficient.quant import native

        if native.library() is None:
            pytest.skip("native LUT kernels not built (the torch fallback takes ~30 s here)")
    m = MimoAudio.from_pretrained()
    compose_backbone(m.lm, quant=quant, attention=attention)
    jobs = [m.prepare_tts("Hello there.", max_new_patches=16, **G),
            m.prepare_chat([{"role": "user", "content": "Hi"}], max_new_patches=12, **G)]
    alone = [m.run_job(j) for j in jobs]
    with Engine(m, EngineConfig(max_batch=4)) as eng:
        assert eng.max_batch == batch
        results = [h.result(timeout=60) for h in [eng.submit(j) for j in jobs]]
    assert all(_same(a, b) for a, b in zip(alone, results))


def test_a_failing_request_does_not_stop_the_engine(served, speech_codes):
    from mimo_audio.engine import EngineError

    bad = served.prepare_asr(speech_codes, max_new_patches=5, **G)
    speech_cols = (bad.prompt[0] == served.lm.empty_token_id).nonzero().squeeze(-1)
    bad.prompt[1, speech_cols[0]] = 10**6  # a code no codebook has: the model refuses it at prefill
    with Engine(served) as eng:
        with pytest.raises(EngineError, match="generation failed"):
            eng.submit(bad).result(timeout=30)
        ok = eng.submit(served.prepare_chat([{"role": "user", "content": "hi"}], max_new_patches=3, **G))
        assert ok.result(timeout=30).num_patches == 3
        assert eng.stats()["failed"] == 1
