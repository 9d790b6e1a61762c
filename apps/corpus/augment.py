"""Noise made offline for the denoising pairs: coloured noise and babble, mixed at a set SNR."""

from __future__ import annotations

import numpy as np

NOISE_TYPES = ("white", "pink", "brown", "babble")


def coloured_noise(kind: str, n: int, rng: np.random.Generator) -> np.ndarray:
    """Unit-RMS noise whose power spectrum falls as 1/f^0 (white), 1/f (pink) or 1/f^2 (brown)."""
    exponent = {"white": 0.0, "pink": 1.0, "brown": 2.0}.get(kind)
    if exponent is None:
        raise ValueError(f"unknown noise colour {kind!r}; expected white, pink or brown")
    spectrum = np.fft.rfft(rng.standard_normal(n))
    freqs = np.fft.rfftfreq(n)
    freqs[0] = freqs[1] if n > 1 else 1.0
    spectrum = spectrum / freqs ** (exponent / 2)
    noise = np.fft.irfft(spectrum, n)
    return (noise / (np.sqrt(np.mean(noise**2)) + 1e-12)).astype(np.float32)


def babble(others: list[np.ndarray], n: int, rng: np.random.Generator) -> np.ndarray:
    """Unit-RMS babble: other utterances, each looped from a random offset to length ``n``, summed."""
    if not others:
        raise ValueError("babble needs at least one other utterance")
    mix = np.zeros(n, dtype=np.float64)
    for other in others:
        other = other / (np.sqrt(np.mean(other**2)) + 1e-12)
        start = int(rng.integers(0, len(other)))
        reps = int(np.ceil((n + start) / len(other)))
        mix += np.tile(other, reps)[start: start + n]
    return (mix / (np.sqrt(np.mean(mix**2)) + 1e-12)).astype(np.float32)


def mix_at_snr(speech: np.ndarray, noise: np.ndarray, snr_db: float, peak_limit: float = 0.95) -> np.ndarray:
    """speech + noise scaled so that 10 log10(P_speech / P_noise) = ``snr_db``; peak-limited."""
    if noise.shape != speech.shape:
        raise ValueError(f"noise shape {noise.shape} differs from speech shape {speech.shape}")
    p_speech = float(np.mean(speech.astype(np.float64) ** 2))
    p_noise = float(np.mean(noise.astype(np.float64) ** 2)) + 1e-12
    gain = np.sqrt(p_speech / (p_noise * 10 ** (snr_db / 10)))
    out = speech + gain * noise
    peak = float(np.abs(out).max())
    if peak > peak_limit:
        out = out * (peak_limit / peak)
    return out.astype(np.float32)


def measured_snr_db(speech: np.ndarray, noisy: np.ndarray) -> float:
    """SNR of ``noisy`` against the clean ``speech`` it was made from (scale-invariant)."""
    scale = float(np.dot(noisy, speech) / (np.dot(speech, speech) + 1e-12))
    target = scale * speech
    residual = noisy - target
    return float(10 * np.log10(np.sum(target**2) / (np.sum(residual**2) + 1e-12)))
