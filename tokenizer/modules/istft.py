"""Vocos-style iSTFT head with "same" padding, offline and streaming.

Frames are ``irfft(n_fft) * window``, overlap-added with ``hop``, trimmed by ``(win - hop) / 2`` samples
at both ends and divided by the overlap-added squared window: ``hop`` output samples per frame.
Computed in fp32 with an fp32 window whatever the model dtype.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


class ISTFT(nn.Module):
    def __init__(self, n_fft: int, hop_length: int, win_length: int) -> None:
        super().__init__()
        self.n_fft, self.hop_length, self.win_length = n_fft, hop_length, win_length
        self.pad = (win_length - hop_length) // 2
        # Built on the CPU explicitly: a meta-device hann_window would pull in sympy (slow import).
        self.register_buffer("window", torch.hann_window(win_length, device="cpu"))

    def frames(self, spec: torch.Tensor) -> torch.Tensor:
        """Complex [F, T] -> windowed time frames [win, T] (fp32)."""
        return torch.fft.irfft(spec, self.n_fft, dim=0, norm="backward") * self.window.float()[:, None]

    def forward(self, spec: torch.Tensor) -> torch.Tensor:
        """Complex spectrogram [F, T] -> waveform [hop * T]."""
        t = spec.shape[-1]
        frames = self.frames(spec)
        size = (t - 1) * self.hop_length + self.win_length
        fold = dict(output_size=(1, size), kernel_size=(1, self.win_length), stride=(1, self.hop_length))
        y = F.fold(frames[None], **fold)[0, 0, 0]
        env = F.fold(self.window.float().square()[None, :, None].expand(1, -1, t), **fold)[0, 0, 0]
        y, env = y[self.pad : size - self.pad], env[self.pad : size - self.pad]
        return y / env


class ISTFTHead(nn.Module):
    def __init__(self, dim: int, n_fft: int, hop_length: int) -> None:
        super().__init__()
        self.out = nn.Linear(dim, n_fft + 2)
        self.istft = ISTFT(n_fft, hop_length, n_fft)

    def spectrum(self, x: torch.Tensor) -> torch.Tensor:
        """Rows [T, dim] -> complex spectrogram [n_fft/2 + 1, T] (fp32)."""
        h = self.out(x).transpose(0, 1)
        mag, phase = h.chunk(2, dim=0)
        mag = torch.clip(torch.exp(mag), max=1e2)
        return mag.float() * (torch.cos(phase).float() + 1j * torch.sin(phase).float())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.istft(self.spectrum(x))


class StreamingISTFT:
    """Overlap-add state: emits samples as soon as no later frame can touch them."""

    def __init__(self, istft: ISTFT) -> None:
        self.m = istft
        self.frames_in = 0
        self.emitted = 0  # output samples already returned (after the left trim)
        self.buf = torch.zeros(0)
        self.env = torch.zeros(0)
        self.buf_start = 0  # absolute overlap-add position of buf[0]

    def _add(self, frames: torch.Tensor) -> None:
        m, t = self.m, frames.shape[1]
        hop, win = m.hop_length, m.win_length
        start = self.frames_in * hop
        end = (self.frames_in + t - 1) * hop + win
        need = end - self.buf_start
        if self.buf.numel() < need:
            grow = need - self.buf.numel()
            self.buf = torch.cat([self.buf.to(frames.device), frames.new_zeros(grow)])
            self.env = torch.cat([self.env.to(frames.device), frames.new_zeros(grow)])
        fold = dict(output_size=(1, end - start), kernel_size=(1, win), stride=(1, hop))
        w2 = m.window.float().square()
        off = start - self.buf_start
        self.buf[off : off + end - start] += F.fold(frames[None], **fold)[0, 0, 0]
        self.env[off : off + end - start] += F.fold(w2[None, :, None].expand(1, -1, t), **fold)[0, 0, 0]
        self.frames_in += t

    def _emit(self, upto: int) -> torch.Tensor:
        """Return output samples [emitted, upto) and drop consumed buffer."""
        if upto <= self.emitted:
            return self.buf.new_zeros(0)
        a = self.emitted + self.m.pad - self.buf_start
        b = upto + self.m.pad - self.buf_start
        out = self.buf[a:b] / self.env[a:b]
        self.emitted = upto
        self.buf, self.env = self.buf[b:].clone(), self.env[b:].clone()
        self.buf_start += b
        return out

    def step(self, spec: torch.Tensor) -> torch.Tensor:
        if spec.shape[-1]:
            self._add(self.m.frames(spec))
        # Position p is final once the next frame (starting at frames_in * hop) cannot reach it.
        final = self.frames_in * self.m.hop_length - self.m.pad
        return self._emit(max(0, min(final, self.frames_in * self.m.hop_length)))

    def flush(self) -> torch.Tensor:
        return self._emit(self.frames_in * self.m.hop_length)
