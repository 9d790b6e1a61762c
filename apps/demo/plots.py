"""Pictures for the demo, drawn with numpy + Pillow (no plotting library needed).

* :func:`wave_image`: the waveform (min/max envelope per pixel column) over a log-magnitude spectrogram
  (mel-spaced rows).
* :func:`codes_image`: the RVQ codes ``[codebooks, frames]`` as a heat map, one band per codebook.
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw, ImageFont

WIDTH = 720
BACKGROUND = (250, 250, 252)
INK = (40, 40, 60)
WAVE = (52, 101, 164)

# Anchor colours of a perceptually ordered dark-to-bright map (magma-like), and a hue ramp for code ids.
_MAGMA = [(0, 0, 4), (40, 11, 84), (101, 21, 110), (159, 42, 99), (212, 72, 66), (245, 125, 21), (252, 255, 164)]
_HUES = [(68, 1, 84), (59, 82, 139), (33, 145, 140), (94, 201, 98), (253, 231, 37), (237, 121, 83), (180, 30, 60)]


def _lut(anchors: list[tuple[int, int, int]]) -> np.ndarray:
    a = np.asarray(anchors, dtype=np.float32)
    x = np.linspace(0, len(a) - 1, 256)
    lo = np.floor(x).astype(int).clip(0, len(a) - 2)
    frac = (x - lo)[:, None]
    return (a[lo] * (1 - frac) + a[lo + 1] * frac).astype(np.uint8)


MAGMA = _lut(_MAGMA)
HUES = _lut(_HUES)


def _font(size: int = 13):
    try:
        return ImageFont.load_default(size=size)  # Pillow >= 10.1: a scalable built-in font
    except TypeError:
        return ImageFont.load_default()


def _title(img: Image.Image, text: str) -> None:
    ImageDraw.Draw(img).text((6, 2), text, fill=INK, font=_font())


def _envelope(wav: np.ndarray, width: int, height: int) -> np.ndarray:
    """RGB rows x width: the min/max envelope of ``wav`` per column, centred, full scale = +-1."""
    out = np.empty((height, width, 3), dtype=np.uint8)
    out[:] = BACKGROUND
    out[height // 2, :] = (200, 200, 210)
    if wav.size == 0:
        return out
    edges = np.linspace(0, wav.size, width + 1).astype(int)
    mid = (height - 1) / 2.0
    for x in range(width):
        seg = wav[edges[x]: max(edges[x + 1], edges[x] + 1)]
        lo, hi = float(seg.min()), float(seg.max())
        top = int(round(mid - np.clip(hi, -1, 1) * mid))
        bot = int(round(mid - np.clip(lo, -1, 1) * mid))
        out[min(top, bot): max(top, bot) + 1, x] = WAVE
    return out


def _spectrogram(wav: np.ndarray, sample_rate: int, width: int, height: int) -> np.ndarray:
    """RGB rows x width: log-magnitude STFT on a mel-spaced frequency axis (0 Hz at the bottom), 60 dB range."""
    n_fft = 512 if sample_rate > 16000 else 256
    hop = max(1, (wav.size - n_fft) // max(width - 1, 1)) if wav.size > n_fft else 1
    padded = np.pad(wav, (0, max(0, n_fft - wav.size)))
    starts = np.arange(0, max(padded.size - n_fft, 0) + 1, hop)[: width * 4]
    frames = np.stack([padded[s: s + n_fft] for s in starts]) * np.hanning(n_fft)[None, :]
    mag = np.abs(np.fft.rfft(frames, axis=1)).T  # [freq, time]
    db = 20 * np.log10(mag + 1e-7)
    db = np.clip((db - (db.max() - 60.0)) / 60.0, 0, 1)
    # resample to the picture: columns by nearest frame, rows by averaging frequency bins
    cols = np.linspace(0, db.shape[1] - 1, width).round().astype(int)
    db = db[:, cols]
    # rows evenly spaced in mel, so speech (mostly below 4 kHz) gets most of the picture
    nyquist_mel = 2595.0 * np.log10(1.0 + (sample_rate / 2) / 700.0)
    hz = 700.0 * (10 ** (np.linspace(0, nyquist_mel, height + 1) / 2595.0) - 1.0)
    edges = np.minimum((hz / (sample_rate / 2) * (db.shape[0] - 1)).round().astype(int), db.shape[0] - 1)
    rows = np.stack([db[edges[i]: max(edges[i + 1], edges[i] + 1)].mean(axis=0) for i in range(height)])
    return MAGMA[(rows[::-1] * 255).astype(np.uint8)]


def wave_image(wav: np.ndarray | None, sample_rate: int, title: str, width: int = WIDTH) -> Image.Image:
    """Waveform above spectrogram, with a title line giving the duration and peak level."""
    wav = np.zeros(0, np.float32) if wav is None else np.asarray(wav, dtype=np.float32).reshape(-1)
    head, wave_h, spec_h = 20, 80, 130
    img = Image.new("RGB", (width, head + wave_h + spec_h + 2), BACKGROUND)
    img.paste(Image.fromarray(_envelope(wav, width, wave_h)), (0, head))
    if wav.size > 64:
        img.paste(Image.fromarray(_spectrogram(wav, sample_rate, width, spec_h)), (0, head + wave_h + 2))
    peak = float(np.abs(wav).max()) if wav.size else 0.0
    khz = sample_rate / 2000
    _title(img, f"{title} - {wav.size / sample_rate:.2f} s, peak {peak:.2f}, mel spectrogram 0-{khz:g} kHz")
    return img


def codes_image(codes, title: str, codebook_sizes: list[int] | None = None, width: int = WIDTH) -> Image.Image:
    """``codes`` [codebooks, frames] (tensor or array) as bands of colour; each id scaled by its codebook size."""
    c = np.asarray(codes.cpu() if hasattr(codes, "cpu") else codes, dtype=np.int64)
    if c.ndim != 2:
        raise ValueError(f"codes must be [codebooks, frames], got shape {c.shape}")
    n_cb, frames = c.shape
    sizes = np.asarray(codebook_sizes[:n_cb] if codebook_sizes else [max(int(c.max()) + 1, 1)] * n_cb)
    head, label_w, band = 20, 34, 16
    plot_w = width - label_w
    img = Image.new("RGB", (width, head + n_cb * band + 2), BACKGROUND)
    if frames:
        cols = np.minimum((np.arange(plot_w) * frames / plot_w).astype(int), frames - 1)
        scaled = (c[:, cols] / np.maximum(sizes[:, None] - 1, 1) * 255).clip(0, 255).astype(np.uint8)
        rgb = np.repeat(HUES[scaled], band, axis=0)  # [n_cb * band, plot_w, 3]
        img.paste(Image.fromarray(rgb), (label_w, head))
    draw = ImageDraw.Draw(img)
    for i in range(n_cb):
        draw.text((4, head + i * band + 1), f"cb{i}", fill=INK, font=_font(12))
    _title(img, f"{title} - {n_cb} codebooks x {frames} frames ({frames / 25.0:.2f} s at 25 Hz)")
    return img
