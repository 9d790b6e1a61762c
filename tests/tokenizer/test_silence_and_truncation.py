"""Silence round-trips to silence (the decoder's silence gate); a truncated wav is read with a warning."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import soundfile as sf
import torch

from apps.cli import main
from tokenizer import AudioTokenizer
from tokenizer.audio import load_audio
from tokenizer.silence import gate_gain, silent_frames


@pytest.fixture(scope="module")
def tok() -> AudioTokenizer:
    torch.set_num_threads(1)
    return AudioTokenizer.from_pretrained(device="cpu")  # the embedded (trained) tokenizer


@pytest.mark.parametrize("seconds", [0.5, 2.0, 3.02])
def test_round_trip_of_digital_silence_is_silence(tok, seconds):
    codes = tok.encode(torch.zeros(int(seconds * 24000)), 24000)
    out = tok.decode(codes)
    assert out.numel() == 960 * codes.shape[1]
    assert float(out.abs().max()) == 0.0  # was RMS ~0.03 with peaks near 1.0 (the end-padding frame)


def test_gate_leaves_speech_alone_and_silences_a_gap(tok, flite_wav):
    wav, sr = load_audio(flite_wav)
    codes = tok.encode(wav, sr)
    assert torch.equal(tok.decode(codes), tok.decode(codes, gate_silence=False))
    gap = torch.cat([wav, torch.zeros(sr), wav])
    codes = tok.encode(gap, sr)
    out, raw = tok.decode(codes), tok.decode(codes, gate_silence=False)
    silent = silent_frames(codes[0], tok.silence_code())
    assert 20 <= int(silent.sum()) <= 26  # about the 1 s gap (25 frames), not the speech
    start = int(silent.nonzero()[0]) * 960
    assert float(out[start + 240 : start + 960 * 20].abs().max()) == 0.0
    before = slice(0, start)
    assert torch.equal(out[before], raw[before])  # the speech before the gap is untouched


def test_silent_frames_rules():
    code = 7
    row = torch.tensor([1, 7, 2, 7, 7, 7, 3, 7, 7, 9])
    # a single 7 inside speech stays; runs of >= 2 are gated; the last frame borders a run: it is padding
    assert silent_frames(row, code).tolist() == [False, False, False, True, True, True, False, True, True, True]
    assert silent_frames(torch.tensor([7, 7, 7]), code).tolist() == [True] * 3
    gain = gate_gain(torch.tensor([False, True, True, False]), hop=100, fade=20)
    assert gain[:100].eq(1).all() and gain[120:280].eq(0).all() and gain[300:].eq(1).all()
    assert 0 < float(gain[110]) < 1 and 0 < float(gain[290]) < 1  # fades inside the silent run


def test_cli_round_trip_of_silence_writes_silence(tmp_path):
    src, out = tmp_path / "silence.wav", tmp_path / "out.wav"
    sf.write(str(src), np.zeros(32000, dtype=np.int16), 16000)
    assert main(["tokenizer", "roundtrip", str(src), str(out)]) == 0
    data, sr = sf.read(str(out))
    assert sr == 24000 and len(data) > 0 and float(np.abs(data).max()) == 0.0


def test_truncated_wav_is_read_with_a_warning(flite_wav, tmp_path, caplog):
    data = flite_wav.read_bytes()
    cut = tmp_path / "cut.wav"
    cut.write_bytes(data[: len(data) // 2])
    full, sr = load_audio(flite_wav)
    with caplog.at_level(logging.WARNING, logger="tokenizer.audio"):
        wav, sr2 = load_audio(cut)
    assert sr2 == sr and 0 < wav.numel() < full.numel()
    warnings = [r.getMessage() for r in caplog.records if "truncated" in r.getMessage()]
    assert len(warnings) == 1 and "cut.wav" in warnings[0]
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="tokenizer.audio"):
        load_audio(flite_wav)
    assert not caplog.records  # a complete file reads silently
