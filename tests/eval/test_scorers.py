"""The offline scorers on real TTS speech: ASR/WER, speaker similarity, DNSMOS, VAD."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from eval.scorers import MissingScorerDependency, load_audio
from eval.scorers._deps import require

SENTENCE = "The quick brown fox jumps over the lazy dog."  # what the flite_wav fixture says
OTHER = "She sells sea shells by the sea shore every summer morning."


def _flite(tmp: Path, voice: str, text: str) -> Path:
    if shutil.which("flite") is None:
        pytest.skip("flite is not installed (make sysdeps)")
    out = tmp / f"{voice}_{abs(hash(text)) % 10**6}.wav"
    subprocess.run(["flite", "-voice", voice, "-t", text, "-o", str(out)], check=True, capture_output=True)
    return out


@pytest.fixture(scope="module")
def speech_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("scorer-speech")


def test_missing_package_error_names_the_package() -> None:
    with pytest.raises(MissingScorerDependency, match=r"'no-such-pkg'.*mimo-audio\[eval\]"):
        require("no_such_module_xyz", "no-such-pkg", "test")


def test_load_audio_errors_and_resampling(tmp_path: Path, flite_wav: Path) -> None:
    x = load_audio(flite_wav, 24000)
    info = sf.info(str(flite_wav))
    assert abs(len(x) - info.frames * 24000 / info.samplerate) <= 2
    with pytest.raises(FileNotFoundError):
        load_audio(tmp_path / "missing.wav", 16000)
    bad = tmp_path / "bad.wav"
    bad.write_bytes(b"RIFF not really a wav file")
    with pytest.raises(ValueError, match="cannot read"):
        load_audio(bad, 16000)
    with pytest.raises(ValueError, match="sample rate"):
        load_audio(np.zeros(100, np.float32), 16000)
    with pytest.raises(ValueError, match="mono"):
        load_audio(np.zeros((2, 100), np.float32), 16000, 16000)
    pcm = (np.ones(160) * 16384).astype(np.int16)
    assert load_audio(pcm, 16000, 16000)[0] == pytest.approx(0.5)


def test_pocketsphinx_wer_on_clean_flite_speech(flite_wav: Path, speech_dir: Path) -> None:
    pytest.importorskip("pocketsphinx")
    from eval.scorers import PocketsphinxASR, word_error_rate

    asr = PocketsphinxASR()
    other = _flite(speech_dir, "slt", OTHER)
    hyps = [asr.transcribe(flite_wav), asr.transcribe(other)]
    result = word_error_rate([SENTENCE, OTHER], hyps)
    assert result.corpus <= 0.35, hyps
    # silence decodes to (almost) nothing, so the WER of silence is (almost) all deletions
    silent = asr.transcribe(np.zeros(32000, np.float32), 16000)
    assert len(silent.split()) <= 1


def test_resemblyzer_same_voice_beats_different_voice(flite_wav: Path, speech_dir: Path) -> None:
    pytest.importorskip("resemblyzer")
    from eval.scorers import ResemblyzerSimilarity

    sim = ResemblyzerSimilarity()
    slt_other = _flite(speech_dir, "slt", OTHER)
    awb_other = _flite(speech_dir, "awb", OTHER)
    same = sim.similarity(flite_wav, slt_other)  # same voice, different sentences
    different = sim.similarity(slt_other, awb_other)  # same sentence, different voices
    assert same > 0.75
    assert same > different + 0.15
    assert sim.similarity(flite_wav, flite_wav) == pytest.approx(1.0, abs=1e-4)


def test_dnsmos_clean_speech_beats_noisy_speech(flite_wav: Path) -> None:
    pytest.importorskip("speechmos")
    from eval.scorers import DNSMOS

    clean = load_audio(flite_wav, 16000)
    rng = np.random.default_rng(0)
    noisy = clean + rng.standard_normal(clean.shape).astype(np.float32) * 0.3 * float(np.abs(clean).max())
    noisy = noisy / np.abs(noisy).max() * 0.9
    mos = DNSMOS()
    a, b = mos.score(clean, 16000), mos.score(noisy, 16000)
    assert 1.0 <= b.ovrl < a.ovrl <= 5.0
    assert a.bak > b.bak + 0.5  # DNSMOS BAK is the background-noise axis


def test_silero_vad_finds_speech_only_in_speech(espeak_wav: Path) -> None:
    pytest.importorskip("silero_vad")
    from eval.scorers import SileroVAD

    vad = SileroVAD()
    duration = sf.info(str(espeak_wav)).duration
    segments = vad.speech_segments(espeak_wav)
    assert segments and all(0.0 <= s < e <= duration + 0.05 for s, e in segments)
    assert vad.speech_seconds(espeak_wav) > 0.5 * duration
    assert vad.speech_segments(np.zeros(3 * 16000, np.float32), 16000) == []
    rng = np.random.default_rng(1)
    assert vad.speech_seconds(rng.standard_normal(3 * 16000).astype(np.float32) * 0.05, 16000) < 0.5
