"""Audio input for the scorers: a path or an array, returned as float32 mono at the scorer's rate."""

from __future__ import annotations

from pathlib import Path
from typing import Union

import numpy as np

AudioInput = Union[str, Path, np.ndarray]


def load_audio(audio: AudioInput, sample_rate: int, source_rate: int | None = None) -> np.ndarray:
    """Float32 mono samples in [-1, 1] at ``sample_rate``.

    ``audio`` is a wav/flac path (any rate, mixed down to mono) or a 1-D array whose rate is
    ``source_rate`` (required for arrays; integer arrays are scaled from their full range).
    """
    if isinstance(audio, (str, Path)):
        import soundfile as sf

        path = Path(audio)
        if not path.is_file():
            raise FileNotFoundError(f"audio file not found: {path}")
        try:
            data, rate = sf.read(str(path), dtype="float32", always_2d=True)
        except RuntimeError as exc:  # soundfile raises LibsndfileError (a RuntimeError) on corrupt files
            raise ValueError(f"cannot read audio file {path}: {exc}") from exc
        samples = data.mean(axis=1)
    else:
        arr = np.asarray(audio)
        if source_rate is None:
            raise ValueError("an audio array needs its sample rate (source_rate=...)")
        if arr.ndim != 1:
            raise ValueError(f"expected mono audio of shape (samples,), got shape {arr.shape}")
        if np.issubdtype(arr.dtype, np.integer):
            samples = arr.astype(np.float32) / float(np.iinfo(arr.dtype).max + 1)
        else:
            samples = arr.astype(np.float32)
        rate = source_rate
    if samples.size == 0:
        raise ValueError("audio is empty")
    if not np.all(np.isfinite(samples)):
        raise ValueError("audio contains NaN or infinite samples")
    if rate != sample_rate:
        import soxr

        samples = soxr.resample(samples, rate, sample_rate, quality="HQ").astype(np.float32)
    return np.clip(samples, -1.0, 1.0)
