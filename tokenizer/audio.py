"""Audio input: read files, accept arrays of common dtypes/layouts, downmix to mono, resample.

Resampling implements the band-limited sinc interpolation with a Hann window (width 6, roll-off 0.99)
that the official front-end gets from ``torchaudio.functional.resample``, written in plain torch.
"""

from __future__ import annotations

import logging
import math
import struct
from functools import lru_cache
from pathlib import Path
from typing import Union

import numpy as np
import torch
import torch.nn.functional as F

AudioInput = Union[str, Path, np.ndarray, torch.Tensor]

_MAX_CHANNELS = 16

log = logging.getLogger(__name__)


def _wav_shortfall(path: Path) -> tuple[int, int] | None:
    """(bytes the WAV header declares for its audio, bytes present) when the file is cut short, else None.

    libsndfile reads a truncated WAV without complaint (it just returns fewer frames), so the header's
    ``data`` chunk size is compared with the file size here.
    """
    try:
        with open(path, "rb") as f:
            head = f.read(12)
            if len(head) < 12 or head[:4] not in (b"RIFF", b"RF64") or head[8:12] != b"WAVE":
                return None
            size = path.stat().st_size
            pos = 12
            while pos + 8 <= size:
                f.seek(pos)
                chunk_id, chunk_size = struct.unpack("<4sI", f.read(8))
                if chunk_id == b"data":
                    if head[:4] == b"RF64" or chunk_size in (0, 0xFFFFFFFF):
                        return None  # sizes live elsewhere (RF64) or are left open by a streaming writer
                    present = size - (pos + 8)
                    return (chunk_size, present) if present < chunk_size else None
                pos += 8 + chunk_size + (chunk_size & 1)
    except OSError:
        return None
    return None


def _to_float(array: np.ndarray) -> np.ndarray:
    """Integer PCM is scaled to [-1, 1); floats are kept; anything else is refused."""
    kind, dtype = array.dtype.kind, array.dtype
    if kind == "f":
        return array.astype(np.float32, copy=False)
    if dtype == np.int16:
        return array.astype(np.float32) / 32768.0
    if dtype == np.int32:
        return (array.astype(np.float64) / 2147483648.0).astype(np.float32)
    if dtype == np.uint8:
        return (array.astype(np.float32) - 128.0) / 128.0
    raise ValueError(
        f"unsupported audio dtype {dtype}: pass float (any width), int16, int32 or uint8 samples"
    )


def _downmix(array: np.ndarray) -> np.ndarray:
    """Mono [N]; [channels, N] and [N, channels] are averaged over the (short) channel axis."""
    if array.ndim == 1:
        return array
    if array.ndim != 2:
        raise ValueError(f"audio must be 1-D [samples] or 2-D [channels, samples], got shape {tuple(array.shape)}")
    rows, cols = array.shape
    if rows <= _MAX_CHANNELS and (rows <= cols or cols > _MAX_CHANNELS):
        return array.mean(axis=0)
    if cols <= _MAX_CHANNELS:
        return array.mean(axis=1)
    raise ValueError(
        f"cannot tell the channel axis of audio with shape {tuple(array.shape)}: expected at most "
        f"{_MAX_CHANNELS} channels on one axis"
    )


def _read_file(path: Path) -> tuple[np.ndarray, int]:
    import soundfile as sf

    if not path.exists():
        raise FileNotFoundError(f"audio file not found: {path}")
    if path.is_dir():
        raise ValueError(f"expected an audio file, got a directory: {path}")
    try:
        data, sr = sf.read(str(path), dtype="float32", always_2d=True)
    except Exception as exc:  # soundfile raises LibsndfileError / RuntimeError with a terse message
        raise ValueError(f"could not read {path} as audio ({exc})") from None
    short = _wav_shortfall(path) if path.suffix.lower() in (".wav", ".wave") else None
    if short is not None:
        declared, present = short
        log.warning("%s is truncated: its header declares %.2f s of audio but only %.2f s are present; "
                    "reading what is there", path, len(data) * declared / max(present, 1) / sr, len(data) / sr)
    return data.T, int(sr)


def load_audio(source: AudioInput, sample_rate: int | None = None) -> tuple[torch.Tensor, int]:
    """Return ``(float32 mono waveform [N], sample_rate)`` from a file path or an array.

    Arrays (numpy or torch) need ``sample_rate``; files carry their own (a given ``sample_rate`` must agree).
    Raises ``ValueError`` for empty audio, NaN/inf samples, unsupported dtypes or layouts, and
    ``FileNotFoundError`` for a missing file.
    """
    if isinstance(source, (str, Path)):
        array, file_sr = _read_file(Path(source))
        if sample_rate is not None and int(sample_rate) != file_sr:
            raise ValueError(f"{source} is sampled at {file_sr} Hz but sample_rate={sample_rate} was given")
        sample_rate = file_sr
    elif isinstance(source, torch.Tensor):
        if source.dtype == torch.bfloat16:
            source = source.float()
        array = source.detach().cpu().numpy()
    elif isinstance(source, np.ndarray):
        array = source
    else:
        raise ValueError(f"audio must be a file path, numpy array or torch tensor, got {type(source).__name__}")
    if sample_rate is None:
        raise ValueError("sample_rate is required when audio is given as an array")
    if not isinstance(sample_rate, (int, np.integer)) or isinstance(sample_rate, bool) or sample_rate <= 0:
        raise ValueError(f"sample_rate must be a positive integer, got {sample_rate!r}")
    mono = _downmix(_to_float(np.asarray(array)))
    if mono.size == 0:
        raise ValueError("audio is empty (0 samples)")
    finite = np.isfinite(mono)
    if not finite.all():
        first = int(np.argmin(finite))
        raise ValueError(f"audio contains NaN or inf (first at sample {first})")
    return torch.from_numpy(np.ascontiguousarray(mono, dtype=np.float32)), int(sample_rate)


@lru_cache(maxsize=16)
def _sinc_kernel(orig: int, new: int, width_zeros: int = 6, rolloff: float = 0.99) -> tuple[torch.Tensor, int]:
    """Polyphase filter bank [new, 1, taps] for reduced rates orig -> new (float64).

    Output phase p of frame f is sample f * new + p; tap j of its filter multiplies input sample f * orig + j - half.
    """
    cutoff = min(orig, new) * rolloff
    half = math.ceil(width_zeros * orig / cutoff)
    taps = torch.arange(-half, half + orig, dtype=torch.float64) / orig
    phase = -torch.arange(new, dtype=torch.float64)[:, None] / new
    t = ((phase + taps[None, :]) * cutoff).clamp(-width_zeros, width_zeros)
    window = torch.cos(t * math.pi / width_zeros / 2) ** 2
    arg = t * math.pi
    sinc = torch.where(arg == 0, torch.ones_like(arg), torch.sin(arg) / torch.where(arg == 0, 1.0, arg))
    kernel = sinc * window * (cutoff / orig)
    return kernel[:, None, :], half


def resample(wav: torch.Tensor, orig_sr: int, new_sr: int) -> torch.Tensor:
    """Resample a 1-D float waveform from ``orig_sr`` to ``new_sr`` (output length ceil(N * new / orig))."""
    if orig_sr == new_sr:
        return wav
    g = math.gcd(int(orig_sr), int(new_sr))
    orig, new = orig_sr // g, new_sr // g
    kernel, half = _sinc_kernel(orig, new)
    n = wav.shape[-1]
    # Kernel computed in float64, applied in float32 (as torchaudio does for float32 audio).
    x = F.pad(wav.to(torch.float32)[None, None], (half, half + orig))
    y = F.conv1d(x, kernel.to(torch.float32), stride=orig)  # [1, new, frames]
    y = y[0].transpose(0, 1).reshape(-1)
    out_len = math.ceil(new * n / orig)
    return y[:out_len].to(torch.float32)


def prepare_waveform(source: AudioInput, sample_rate: int | None, target_sr: int) -> torch.Tensor:
    """load_audio + resample to ``target_sr``: the tokenizer's input path."""
    wav, sr = load_audio(source, sample_rate)
    return resample(wav, sr, target_sr)
