"""Transposed convolution + GroupNorm(1) of the decoder ("CausalConvTranspose1d"), offline and streaming.

The convolution is causal: output frames ``s*t .. s*t+s-1`` need inputs ``t`` and ``t-1`` only. The
official GroupNorm(1 group) however normalises with the mean/variance of the *whole* sequence (all
channels and frames, including the ``k - s`` trimmed frames), which no streaming decoder can know in
advance. ``causal_norm=True`` replaces those statistics with the running statistics of frames ``0..i``
for output frame ``i``; that variant is what the streaming decoder computes, chunk by chunk, exactly.
"""

from __future__ import annotations

import torch
import torch.nn as nn


class CausalConvTranspose1d(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int) -> None:
        super().__init__()
        if kernel_size > 2 * stride:
            raise ValueError("streaming transposed conv supports kernel_size <= 2 * stride")
        self.conv = nn.ConvTranspose1d(in_channels, out_channels, kernel_size, stride)
        self.norm = nn.GroupNorm(1, out_channels)
        self.kernel_size, self.stride = kernel_size, stride
        self.trim = max(0, kernel_size - stride)

    def forward(self, x: torch.Tensor, causal_norm: bool = False) -> torch.Tensor:
        """x [T, C_in] -> [stride * T, C_out] (one sequence)."""
        z = self.conv(x.transpose(0, 1)[None])  # [1, C_out, (T - 1) * s + k]
        if causal_norm:
            z = z[..., : z.shape[-1] - self.trim]
            stats = RunningStats(z.device)
            z = stats.normalize(z[0], self.norm)[None]
        else:
            z = self.norm(z)
            z = z[..., : z.shape[-1] - self.trim]
        return z[0].transpose(0, 1)


class RunningStats:
    """Cumulative mean/variance over (channels x frames) for a causal GroupNorm(1)."""

    def __init__(self, device: torch.device | str) -> None:
        self.total = torch.zeros((), dtype=torch.float64, device=device)
        self.total_sq = torch.zeros((), dtype=torch.float64, device=device)
        self.count = 0

    def normalize(self, z: torch.Tensor, norm: nn.GroupNorm) -> torch.Tensor:
        """z [C, t] (frames following those already seen) -> normalised [C, t]."""
        channels, t = z.shape
        z64 = z.double()
        csum = torch.cumsum(z64.sum(0), 0) + self.total
        csq = torch.cumsum(z64.pow(2).sum(0), 0) + self.total_sq
        n = (self.count + torch.arange(1, t + 1, device=z.device, dtype=torch.float64)) * channels
        mean = csum / n
        var = (csq / n - mean.pow(2)).clamp_min(0.0)
        self.total, self.total_sq, self.count = csum[-1], csq[-1], self.count + t
        rstd = torch.rsqrt(var + norm.eps)
        y = (z64 - mean[None]) * rstd[None]
        y = y.to(z.dtype)
        return y * norm.weight[:, None] + norm.bias[:, None]


class StreamingConvTranspose:
    """Streaming state for one CausalConvTranspose1d (always with the causal GroupNorm)."""

    def __init__(self, module: CausalConvTranspose1d) -> None:
        self.m = module
        self.prev: torch.Tensor | None = None  # last input frame [1, C_in]
        self.stats: RunningStats | None = None

    def step(self, x: torch.Tensor) -> torch.Tensor:
        """New input frames [t, C_in] -> their output frames [stride * t, C_out]."""
        m = self.m
        if x.shape[0] == 0:
            return x.new_zeros(0, m.conv.out_channels)
        if self.stats is None:
            self.stats = RunningStats(x.device)
        if m.trim == 0:
            z = m.conv(x.transpose(0, 1)[None])[0]
        else:
            prev = self.prev if self.prev is not None else torch.zeros_like(x[:1])
            # The previous frame only adds its overlap; its own outputs and our incomplete tail are dropped.
            z = m.conv(torch.cat([prev, x], 0).transpose(0, 1)[None])[0]
            z = z[:, m.stride : z.shape[-1] - m.trim]
            self.prev = x[-1:]
        return self.stats.normalize(z, m.norm).transpose(0, 1)
