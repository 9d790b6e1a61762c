"""bench_realtime.spoken_prompt: the fast prompt prefill (batched patch encoder, FastLayer.rows_, text head only
after the last piece) leaves the same logits and patch-decoder input as the earlier path (tiny real models)."""

from __future__ import annotations

import argparse

import pytest
import torch

from bench.bench_realtime import EMPTY_TEXT_ID, speech_like, spoken_prompt, text_patch
from mimo_audio import SpeechLM, SpeechLMConfig
from mimo_audio.fast_decoder import FastSpeechLM
from tokenizer import AudioTokenizer, TokenizerConfig


@pytest.fixture(autouse=True)
def _lut_arithmetic(monkeypatch) -> None:
    monkeypatch.setenv("MIMO_QUANT_INT8", "off")  # exact fp32 activations: the paths agree to fp32 rounding


def test_fast_prompt_prefill_matches_the_earlier_path() -> None:
    cfg = SpeechLMConfig.preset("tiny")
    lm = SpeechLM(cfg, EMPTY_TEXT_ID).init_weights(std=0.2, seed=0).eval()  # the id the bench marks speech with
    tok = AudioTokenizer.from_config(TokenizerConfig.preset("tiny"), seed=0)
    wav = speech_like(1.3, tok.sample_rate)  # 0.5 s pieces: 0.5, 0.5, 0.3 (the last one with a partial patch)
    G, C = cfg.group_size, cfg.audio_channels
    empty = torch.tensor(cfg.speech_zeroemb_idx)
    out = {}
    for path in ("before", "fast"):
        fast = FastSpeechLM.from_speech_lm(lm, max_len=64)
        fast.forward(torch.cat([text_patch(10 + i, empty, G) for i in range(4)], dim=2))
        args = argparse.Namespace(prompt_chunk=0.5, prompt_path=path)
        # a clock that never moves: every piece is exactly --prompt-chunk, so both paths cut the same pieces
        text, local, lag, times, enc, audio = spoken_prompt(fast, tok, wav, G, C, args, lambda: 0.0)
        assert fast.fast_prefill  # restored for the generation that follows
        out[path] = (text, local, fast.n, audio)
    (t1, l1, n1, a1), (t2, l2, n2, a2) = out["before"], out["fast"]
    assert a1 == a2 and len(a2) == 3 and n1 == n2 > 4
    assert t2 is not None and t2.shape == t1.shape
    # measured: <= 1e-6 relative (fp32 rounding order)
    assert float((t2 - t1).abs().max() / t1.abs().max()) < 1e-5
    assert float((l2 - l1).abs().max() / l1.abs().max()) < 1e-5
