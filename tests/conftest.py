"""Shared fixtures: real speech from Debian's TTS engines, made once per session."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

SENTENCE = "The quick brown fox jumps over the lazy dog."


def _tts(tmp_dir: Path, name: str, cmd: list[str]) -> Path:
    out = tmp_dir / f"{name}.wav"
    if not out.exists():
        subprocess.run(cmd + [str(out)], check=True, capture_output=True)
    return out


@pytest.fixture(scope="session")
def flite_wav(tmp_path_factory) -> Path:
    """A short English utterance spoken by flite's slt voice (16 kHz mono int16)."""
    if shutil.which("flite") is None:
        pytest.skip("flite is not installed (make sysdeps)")
    d = tmp_path_factory.mktemp("speech")
    return _tts(d, "flite_slt", ["flite", "-voice", "slt", "-t", SENTENCE, "-o"])


@pytest.fixture(scope="session")
def espeak_wav(tmp_path_factory) -> Path:
    """A short English utterance spoken by espeak-ng (22.05 kHz mono int16)."""
    if shutil.which("espeak-ng") is None:
        pytest.skip("espeak-ng is not installed (make sysdeps)")
    d = tmp_path_factory.mktemp("speech")
    return _tts(d, "espeak", ["espeak-ng", SENTENCE, "-w"])
