"""Fixtures for the tokenizer tests: one tiny random tokenizer per session, deterministic test signals."""

from __future__ import annotations

import numpy as np
import pytest

from tokenizer import AudioTokenizer, TokenizerConfig


@pytest.fixture(scope="session")
def tok() -> AudioTokenizer:
    return AudioTokenizer.from_config(TokenizerConfig.preset("tiny"), seed=0, device="cpu")


def make_signal(seconds: float, sr: int = 24000, seed: int = 0) -> np.ndarray:
    """A speech-like float32 test signal: harmonics with a moving pitch plus a little noise."""
    t = np.arange(int(seconds * sr)) / sr
    f0 = 140 + 40 * np.sin(2 * np.pi * 0.7 * t)
    phase = 2 * np.pi * np.cumsum(f0) / sr
    x = sum(np.sin(k * phase) / k for k in range(1, 8)) * (0.5 + 0.5 * np.sin(2 * np.pi * 3 * t) ** 2)
    x = 0.2 * x + 0.01 * np.random.RandomState(seed).randn(t.size)
    return x.astype(np.float32)


@pytest.fixture(scope="session")
def signal():
    return make_signal
