"""Audio in and out of the demo: checked reading of uploads and recordings, wav files and stream chunks.

Every problem with an input becomes an :class:`InputError` whose message is shown to the user as is
(silence, an over-long or unreadable file, no audio at all); nothing here raises a traceback at the user.
"""

from __future__ import annotations

import io
import logging
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

SILENCE_PEAK = 1e-3  # stricter than the library's 1e-4: a "silent" recording still carries a little noise
MAX_TEXT_CHARS = 2000


class InputError(ValueError):
    """A problem with what the user gave; the message is meant for the UI."""


@dataclass
class AudioClip:
    """A mono float waveform read from a user input, with where it came from."""

    wav: np.ndarray
    sample_rate: int
    path: str

    @property
    def seconds(self) -> float:
        return self.wav.shape[0] / float(self.sample_rate)


def _probe_seconds(path: Path) -> float | None:
    """Duration from the header alone (no decoding), so a 10-minute upload is refused before it is read."""
    import soundfile as sf

    try:
        info = sf.info(str(path))
    except Exception:  # not a libsndfile format: decoded below through ffmpeg, measured then
        return None
    return info.frames / float(info.samplerate) if info.samplerate else None


def _decode_any(path: Path) -> tuple[np.ndarray, int]:
    """libsndfile first (wav, flac, ogg, mp3); other containers (webm/m4a from browsers) through ffmpeg."""
    import soundfile as sf

    try:
        data, sr = sf.read(str(path), dtype="float32", always_2d=True)
        return data.mean(axis=1), int(sr)
    except Exception as first:
        try:
            from pydub import AudioSegment

            seg = AudioSegment.from_file(str(path))
            samples = np.array(seg.get_array_of_samples(), dtype=np.float32) / float(1 << (8 * seg.sample_width - 1))
            if seg.channels > 1:
                samples = samples.reshape(-1, seg.channels).mean(axis=1)
            return samples, int(seg.frame_rate)
        except Exception:
            reason = str(first).rsplit("': ", 1)[-1].strip().rstrip(".")  # drop libsndfile's copy of the temp path
            raise InputError(f"could not read '{path.name}' as audio ({reason}); upload a wav, flac, ogg or mp3 "
                             "file") from None


def read_audio(path: str | Path | None, what: str, max_seconds: float) -> AudioClip:
    """Read and check one audio input; ``what`` names it in messages ("the audio to transcribe")."""
    if path is None or path == "":
        raise InputError(f"no audio given for {what}: upload a file or record one")
    p = Path(path)
    if not p.is_file():
        raise InputError(f"the audio for {what} could not be found on the server (upload it again)")
    if p.stat().st_size == 0:
        raise InputError(f"the audio for {what} is an empty file")
    seconds = _probe_seconds(p)
    if seconds is not None and seconds > max_seconds:
        raise InputError(f"the audio for {what} is {seconds:.1f} s long; this demo takes at most {max_seconds:.0f} s "
                         "(trim it, or start the demo with a larger --max-input-seconds)")
    wav, sr = _decode_any(p)
    if wav.size == 0:
        raise InputError(f"the audio for {what} holds no samples")
    if not np.isfinite(wav).all():
        raise InputError(f"the audio for {what} contains NaN or infinite samples")
    clip = AudioClip(np.ascontiguousarray(wav, dtype=np.float32), sr, str(p))
    if clip.seconds > max_seconds:
        raise InputError(f"the audio for {what} is {clip.seconds:.1f} s long; this demo takes at most "
                         f"{max_seconds:.0f} s")
    peak = float(np.abs(wav).max())
    if peak < SILENCE_PEAK:
        raise InputError(f"the audio for {what} is silent (peak level {peak:.1e}); record or upload speech")
    return clip


def check_text(text: str | None, what: str, required: bool = True) -> str:
    text = (text or "").strip()
    if required and not text:
        raise InputError(f"{what} is empty: type some text")
    if len(text) > MAX_TEXT_CHARS:
        raise InputError(f"{what} is {len(text)} characters long; this demo takes at most {MAX_TEXT_CHARS}")
    return text


class OutputDir:
    """Where the demo writes its result wavs (inside the system temp dir, which Gradio may serve)."""

    def __init__(self, root: str | Path | None = None):
        self.root = Path(root) if root is not None else Path(tempfile.mkdtemp(prefix="mimo-audio-demo-"))
        self.root.mkdir(parents=True, exist_ok=True)

    def wav(self, wav: np.ndarray, sample_rate: int, stem: str) -> str:
        """Write 16-bit PCM at the model's own level (a file, so Gradio does not peak-normalize it)."""
        import soundfile as sf

        path = self.root / f"{stem}-{uuid.uuid4().hex[:8]}.wav"
        sf.write(str(path), np.clip(np.asarray(wav, dtype=np.float32), -1.0, 1.0), sample_rate, subtype="PCM_16")
        return str(path)


def wav_bytes(wav: np.ndarray, sample_rate: int) -> bytes:
    """One streamed chunk as 16-bit wav bytes (bytes reach the stream encoder without any normalization)."""
    import soundfile as sf

    buf = io.BytesIO()
    sf.write(buf, np.clip(np.asarray(wav, dtype=np.float32), -1.0, 1.0), sample_rate, format="WAV", subtype="PCM_16")
    return buf.getvalue()
