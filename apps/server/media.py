"""Audio in and out of the server: upload decoding with limits, response encoding, streamed wav/pcm."""

from __future__ import annotations

import base64
import binascii
import io
import struct

import numpy as np
import torch

from .errors import ApiError

# response_format -> (soundfile format, subtype, media type); "wav" and "pcm" stream, the others are whole-file.
ENCODED = {
    "flac": ("FLAC", None, "audio/flac"),
    "mp3": ("MP3", None, "audio/mpeg"),
    "opus": ("OGG", "OPUS", "audio/ogg"),
}
STREAMED = {"wav": "audio/wav", "pcm": "audio/pcm"}
FORMATS = tuple(STREAMED) + tuple(ENCODED)


def media_type(fmt: str) -> str:
    return STREAMED.get(fmt) or ENCODED[fmt][2]


def check_format(fmt: str, allowed: tuple[str, ...] = FORMATS) -> str:
    fmt = (fmt or "wav").lower()
    if fmt == "pcm16":
        fmt = "pcm"
    if fmt not in allowed:
        raise ApiError(400, f"unsupported audio format {fmt!r}; supported: {', '.join(allowed)}",
                       param="response_format")
    return fmt


def pcm16(audio: torch.Tensor | np.ndarray) -> bytes:
    """Float waveform in [-1, 1] -> little-endian signed 16-bit PCM bytes."""
    a = audio.numpy() if isinstance(audio, torch.Tensor) else np.asarray(audio)
    return (np.clip(a, -1.0, 1.0) * 32767.0).astype("<i2").tobytes()


def wav_header(sample_rate: int, data_bytes: int | None = None) -> bytes:
    """A mono 16-bit PCM RIFF header; ``data_bytes=None`` (streaming) writes the 'unknown size' value."""
    size = 0xFFFFFFFF if data_bytes is None else data_bytes
    riff = 0xFFFFFFFF if data_bytes is None else 36 + data_bytes
    return (b"RIFF" + struct.pack("<I", riff) + b"WAVE" + b"fmt " + struct.pack("<IHHIIHH", 16, 1, 1, sample_rate,
            sample_rate * 2, 2, 16) + b"data" + struct.pack("<I", size))


def encode_whole(audio: torch.Tensor, sample_rate: int, fmt: str) -> bytes:
    """A complete file of the whole waveform in ``fmt``."""
    if fmt == "pcm":
        return pcm16(audio)
    if fmt == "wav":
        data = pcm16(audio)
        return wav_header(sample_rate, len(data)) + data
    import soundfile as sf

    sf_fmt, subtype, _ = ENCODED[fmt]
    buf = io.BytesIO()
    rate = sample_rate
    if fmt == "opus" and sample_rate not in (8000, 12000, 16000, 24000, 48000):
        raise ApiError(400, f"opus needs a sample rate of 8/12/16/24/48 kHz, the model writes {sample_rate} Hz")
    sf.write(buf, audio.float().numpy(), rate, format=sf_fmt, subtype=subtype)
    return buf.getvalue()


def decode_upload(data: bytes, max_bytes: int, max_seconds: float, what: str = "audio") -> tuple[np.ndarray, int]:
    """Uploaded file bytes -> ``(mono float32 waveform, sample_rate)``; 400 if unreadable, 413 if too large."""
    if len(data) > max_bytes:
        raise ApiError(413, f"{what} is {len(data) / 2**20:.1f} MiB; the limit is {max_bytes / 2**20:.1f} MiB",
                       code="input_too_large")
    if not data:
        raise ApiError(400, f"{what} is empty")
    import soundfile as sf

    try:
        info = sf.info(io.BytesIO(data))
        if info.frames <= 0 or info.samplerate <= 0:
            raise ValueError("no samples")
        seconds = info.frames / info.samplerate
        if seconds > max_seconds:
            raise ApiError(413, f"{what} lasts {seconds:.1f} s; the limit is {max_seconds:.0f} s",
                           code="input_too_large")
        wav, sr = sf.read(io.BytesIO(data), dtype="float32", always_2d=True)
    except ApiError:
        raise
    except Exception as exc:  # libsndfile's message names the problem; never a traceback to the client
        raise ApiError(400, f"could not decode {what} (wav, flac, mp3 or ogg expected): {exc}") from None
    mono = wav.mean(axis=1)
    if not np.isfinite(mono).all():
        raise ApiError(400, f"{what} contains NaN or inf samples")
    return mono, int(sr)


def decode_base64_audio(data: str, max_bytes: int, max_seconds: float, what: str) -> tuple[np.ndarray, int]:
    """An ``input_audio.data`` field (base64) -> waveform, with the same limits as uploads."""
    if not isinstance(data, str) or not data:
        raise ApiError(400, f"{what}: 'data' must be a non-empty base64 string")
    if len(data) * 3 // 4 > max_bytes:
        raise ApiError(413, f"{what} is larger than the limit of {max_bytes / 2**20:.1f} MiB",
                       code="input_too_large")
    try:
        raw = base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        raise ApiError(400, f"{what}: 'data' is not valid base64") from None
    return decode_upload(raw, max_bytes, max_seconds, what)
