"""Offline noise: colour, babble, and mixing at a set SNR."""

from __future__ import annotations

import numpy as np
import pytest

from apps.corpus.augment import babble, coloured_noise, measured_snr_db, mix_at_snr


def _slope(noise: np.ndarray) -> float:
    """Log-log slope of the power spectrum (0 white, -1 pink, -2 brown)."""
    power = np.abs(np.fft.rfft(noise)) ** 2
    freqs = np.fft.rfftfreq(len(noise))
    keep = (freqs > 0.001) & (freqs < 0.4)
    return float(np.polyfit(np.log(freqs[keep]), np.log(power[keep] + 1e-20), 1)[0])


@pytest.mark.parametrize("kind, slope", [("white", 0.0), ("pink", -1.0), ("brown", -2.0)])
def test_coloured_noise_has_its_spectral_slope(kind: str, slope: float) -> None:
    noise = coloured_noise(kind, 48000, np.random.default_rng(0))
    assert np.sqrt(np.mean(noise**2)) == pytest.approx(1.0, rel=1e-3)
    assert _slope(noise) == pytest.approx(slope, abs=0.15)


def test_noise_is_deterministic_given_the_generator_seed() -> None:
    a = coloured_noise("pink", 1000, np.random.default_rng(5))
    b = coloured_noise("pink", 1000, np.random.default_rng(5))
    assert np.array_equal(a, b)
    with pytest.raises(ValueError, match="colour"):
        coloured_noise("purple", 10, np.random.default_rng(0))


@pytest.mark.parametrize("snr", [0.0, 5.0, 20.0])
def test_mix_at_snr_hits_the_target(snr: float) -> None:
    rng = np.random.default_rng(1)
    t = np.arange(24000) / 24000
    speech = (0.3 * np.sin(2 * np.pi * 220 * t) * (1 + np.sin(2 * np.pi * 3 * t))).astype(np.float32)
    noisy = mix_at_snr(speech, coloured_noise("white", len(speech), rng), snr)
    assert np.abs(noisy).max() <= 0.95 + 1e-6
    assert measured_snr_db(speech, noisy) == pytest.approx(snr, abs=0.3)


def test_babble_mixes_other_talkers() -> None:
    rng = np.random.default_rng(2)
    talkers = [np.sin(np.arange(n) * f).astype(np.float32) for n, f in ((5000, 0.1), (7000, 0.2), (3000, 0.3))]
    mix = babble(talkers, 12000, rng)
    assert mix.shape == (12000,) and np.sqrt(np.mean(mix**2)) == pytest.approx(1.0, rel=1e-3)
    spectrum = np.abs(np.fft.rfft(mix))
    peaks = sorted(np.argsort(spectrum)[-3:])
    assert len(peaks) == 3  # three talkers' tones are all present
    with pytest.raises(ValueError):
        babble([], 10, rng)
