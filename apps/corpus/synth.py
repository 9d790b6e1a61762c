"""Run one TTS engine for one sentence and return 24 kHz mono float32 audio, levelled and trimmed."""

from __future__ import annotations

import subprocess
import tempfile
from pathlib import Path

import numpy as np
import soundfile as sf

from apps.corpus.voices import Voice

SAMPLE_RATE = 24000
TARGET_RMS_DBFS = -24.0
PEAK_LIMIT = 0.95
ESPEAK_DEFAULT_WPM = 175
EDGE_PAD_S = 0.15


def _run(cmd: list[str], stdin: str | None = None) -> None:
    proc = subprocess.run(cmd, input=stdin, capture_output=True, text=True, timeout=120)
    if proc.returncode != 0:
        raise RuntimeError(f"{cmd[0]} failed ({proc.returncode}): {proc.stderr.strip()[:300]}")


def _engine_wav(voice: Voice, text: str, speed: float, whisper: bool, out: Path) -> tuple[float, float]:
    """Write the engine's raw output to ``out``; returns (pitch semitones, tempo factor) left for sox."""
    if voice.engine == "flite":
        stretch = 100.0 / (voice.rate * speed)
        _run(["flite", "-voice", voice.name, "--setf", f"duration_stretch={stretch:.4f}", "-t", text, "-o", str(out)])
        return float(voice.pitch), 1.0
    if voice.engine == "festival":
        _run(["text2wave", "-o", str(out), "-eval", f"(voice_{voice.name})"], stdin=text + "\n")
        return float(voice.pitch), voice.rate / 100.0 * speed
    if voice.engine == "espeak":
        name = voice.name
        if whisper:
            accent = name.split("+", 1)[0]
            name = f"{accent}+{'whisperf' if voice.gender == 'female' else 'whisper'}"
        wpm = round(ESPEAK_DEFAULT_WPM * voice.rate / 100.0 * speed)
        _run(["espeak-ng", "-v", name, "-p", str(voice.pitch), "-s", str(wpm), "-w", str(out), "--", text])
        return 0.0, 1.0
    raise ValueError(f"unknown TTS engine {voice.engine!r}")


def _sox(src: Path, dst: Path, pitch: float, tempo: float) -> None:
    effects: list[str] = []
    if pitch:
        effects += ["pitch", f"{pitch * 100:.0f}"]
    if abs(tempo - 1.0) > 1e-6:
        effects += ["tempo", "-s", f"{tempo:.4f}"]
    # -D: no dither (sox dithers randomly by default, which would make builds differ run to run)
    _run(["sox", "-D", str(src), "-e", "floating-point", "-b", "32", str(dst), *effects])


def level_and_trim(samples: np.ndarray, rate: int = SAMPLE_RATE) -> np.ndarray:
    """Trim silence at the ends (keeping a short pad), set RMS to -24 dBFS, limit the peak."""
    x = samples.astype(np.float32)
    frame = int(0.01 * rate)
    n = len(x) // frame
    if n > 0:
        energy = np.sqrt(np.mean(x[: n * frame].reshape(n, frame) ** 2, axis=1) + 1e-12)
        active = np.flatnonzero(energy > max(energy.max() * 0.02, 1e-4))
        if active.size:
            pad = int(EDGE_PAD_S * rate)
            x = x[max(0, active[0] * frame - pad): min(len(x), (active[-1] + 1) * frame + pad)]
    rms = float(np.sqrt(np.mean(x**2))) if x.size else 0.0
    if rms < 1e-6:
        raise RuntimeError("the engine produced silence")
    x = x * (10 ** (TARGET_RMS_DBFS / 20) / rms)
    peak = float(np.abs(x).max())
    if peak > PEAK_LIMIT:
        x = x * (PEAK_LIMIT / peak)
    return x


def synthesize(voice: Voice, text: str, speed: float = 1.0, whisper: bool = False) -> np.ndarray:
    """24 kHz mono float32 speech of ``text`` in ``voice`` at ``speed`` x its habitual rate."""
    import soxr

    if whisper and not voice.can_whisper:
        raise ValueError(f"{voice.engine} cannot whisper")
    with tempfile.TemporaryDirectory(prefix="mimo-corpus-") as tmp:
        raw = Path(tmp) / "raw.wav"
        pitch, tempo = _engine_wav(voice, text, speed, whisper, raw)
        if pitch or abs(tempo - 1.0) > 1e-6:
            shifted = Path(tmp) / "shifted.wav"
            _sox(raw, shifted, pitch, tempo)
            raw = shifted
        data, rate = sf.read(str(raw), dtype="float32", always_2d=True)
    samples = data.mean(axis=1)
    if rate != SAMPLE_RATE:
        samples = soxr.resample(samples, rate, SAMPLE_RATE, quality="HQ").astype(np.float32)
    return level_and_trim(samples)


def write_wav(path: Path, samples: np.ndarray) -> None:
    """Write int16 24 kHz mono atomically (a partial file never has the final name: resumable builds)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".part")
    pcm = np.round(np.clip(samples, -1.0, 1.0) * 32767.0).astype(np.int16)
    sf.write(str(tmp), pcm, SAMPLE_RATE, subtype="PCM_16", format="WAV")
    tmp.replace(path)
