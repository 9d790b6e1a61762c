"""Log-mel front-end equal to the official recipe (torchaudio ``MelSpectrogram`` + natural log).

Magnitude STFT (periodic Hann window, centred frames, reflect padding), HTK mel filterbank without
normalisation, then ``log(max(mel, 1e-7))``. Pure torch: no torchaudio.
"""

from __future__ import annotations

import math

import torch


def hz_to_mel_htk(hz: torch.Tensor) -> torch.Tensor:
    return 2595.0 * torch.log10(1.0 + hz / 700.0)


def mel_to_hz_htk(mel: torch.Tensor) -> torch.Tensor:
    return 700.0 * (10.0 ** (mel / 2595.0) - 1.0)


def mel_filterbank(n_freqs: int, sample_rate: int, n_mels: int, f_min: float, f_max: float) -> torch.Tensor:
    """Triangular HTK mel filters [n_freqs, n_mels], no area normalisation (torchaudio's melscale_fbanks)."""
    freqs = torch.linspace(0, sample_rate // 2, n_freqs, dtype=torch.float64)
    m_pts = torch.linspace(
        hz_to_mel_htk(torch.tensor(float(f_min), dtype=torch.float64)).item(),
        hz_to_mel_htk(torch.tensor(float(f_max), dtype=torch.float64)).item(),
        n_mels + 2,
        dtype=torch.float64,
    )
    f_pts = mel_to_hz_htk(m_pts)
    f_diff = f_pts[1:] - f_pts[:-1]
    slopes = f_pts[None, :] - freqs[:, None]  # [n_freqs, n_mels + 2]
    down = -slopes[:, :-2] / f_diff[:-1]
    up = slopes[:, 2:] / f_diff[1:]
    return torch.clamp(torch.minimum(down, up), min=0.0).to(torch.float32)


class LogMel(torch.nn.Module):
    """waveform [N] (24 kHz float) -> log-mel [n_mels, floor(N / hop) + 1]."""

    def __init__(
        self,
        sample_rate: int = 24000,
        n_fft: int = 960,
        win_length: int = 960,
        hop_length: int = 240,
        n_mels: int = 128,
        f_min: float = 0.0,
        f_max: float | None = None,
    ) -> None:
        super().__init__()
        self.sample_rate, self.n_fft, self.win_length, self.hop_length = sample_rate, n_fft, win_length, hop_length
        f_max = float(sample_rate // 2) if f_max is None else float(f_max)
        self.register_buffer("window", torch.hann_window(win_length, periodic=True), persistent=False)
        self.register_buffer(
            "fb", mel_filterbank(n_fft // 2 + 1, sample_rate, n_mels, f_min, f_max), persistent=False
        )

    @property
    def min_samples(self) -> int:
        """Reflect padding of n_fft // 2 needs strictly more input samples than that."""
        return self.n_fft // 2 + 1

    def forward(self, wav: torch.Tensor) -> torch.Tensor:
        if wav.dim() != 1:
            raise ValueError(f"LogMel expects a 1-D waveform, got shape {tuple(wav.shape)}")
        if wav.shape[0] < self.min_samples:
            ms = 1000.0 * self.min_samples / self.sample_rate
            raise ValueError(
                f"audio too short: {wav.shape[0]} samples after resampling; the mel front-end needs at least "
                f"{self.min_samples} (~{math.ceil(ms)} ms)"
            )
        spec = torch.stft(
            wav.float(),
            n_fft=self.n_fft,
            hop_length=self.hop_length,
            win_length=self.win_length,
            window=self.window,
            center=True,
            pad_mode="reflect",
            normalized=False,
            onesided=True,
            return_complex=True,
        ).abs()  # [n_freqs, frames], power 1 = magnitude
        mel = torch.matmul(spec.transpose(0, 1), self.fb).transpose(0, 1)
        return torch.log(torch.clamp(mel, min=1e-7))
