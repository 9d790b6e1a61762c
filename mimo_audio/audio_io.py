"""Audio in: any audio input -> validated waveform -> the LM's codes. Shared by ``MimoAudio`` and the CLI.

An input is a path, a float waveform (numpy/torch, at the tokenizer's rate), ``(waveform, rate)``, or integer
codes ``[channels, T]`` (taken as codes already).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from .errors import SilentAudioError

AudioInput = Any
SILENCE_PEAK = 1e-4  # a waveform whose peak is below this is silent: rejected, except by ASR (empty transcript)
NO_TOKENIZER = "encoding audio needs an audio tokenizer: pass tokenizer_path to MimoAudio.from_pretrained"


def encode_audio(audio: AudioInput, tokenizer: Any | None, channels: int, sample_rate: int | None = None
                 ) -> torch.Tensor:
    """Codes ``[channels, T]`` of ``audio``; ``sample_rate`` is the rate of bare waveforms (default: the
    tokenizer's). Empty, silent or missing audio is a ValueError / FileNotFoundError naming the problem."""
    if isinstance(audio, torch.Tensor) and not audio.is_floating_point():
        codes = audio.long()
        if codes.dim() != 2 or codes.shape[1] == 0:
            raise ValueError(f"audio codes must be a non-empty [{channels}, frames] tensor, got {tuple(codes.shape)}")
        return codes
    from tokenizer.audio import load_audio

    sr = None
    if isinstance(audio, tuple):
        audio, sr = audio
    if isinstance(audio, (str, Path)):
        if not Path(audio).is_file():
            raise FileNotFoundError(f"audio file not found: {audio}")
        wav, sr = load_audio(str(audio))
    else:
        wav = torch.as_tensor(np.asarray(audio) if not isinstance(audio, torch.Tensor) else audio).float()
        if sr is None:
            sr = sample_rate if sample_rate is not None else getattr(tokenizer, "sample_rate", 24000)
    if wav.numel() == 0:
        raise ValueError("audio input is empty")
    peak = float(wav.abs().max())
    if not peak >= SILENCE_PEAK:
        raise SilentAudioError(f"audio input is silent or invalid (peak {peak:.1e}); nothing to encode")
    if tokenizer is None:
        raise ValueError(NO_TOKENIZER)
    if not isinstance(audio, (str, Path)):
        wav, sr = load_audio(wav, sr)  # down-mixes and validates arrays the same way as files
    return tokenizer.encode(wav, sr, n_q=channels).long()
