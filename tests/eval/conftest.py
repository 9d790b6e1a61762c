"""Fixtures in the benchmarks' real layouts, with real flite speech written by the tests."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

SENTENCES = ("PLEASE BRING ME A CUP OF TEA", "THE CAT SAT ON THE WARM MAT", "WE WILL MEET AT THE STATION",
             "SHE PAINTED THE FENCE GREEN", "A COLD WIND BLEW ALL NIGHT", "HE READ THE OLD MAP")


def flite(text: str, out: Path, voice: str = "slt") -> Path:
    out.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run(["flite", "-voice", voice, "-t", text, "-o", str(out)], check=True, capture_output=True)
    return out


@pytest.fixture(scope="session")
def needs_flite() -> None:
    if shutil.which("flite") is None:
        pytest.skip("flite is not installed (make sysdeps)")


@pytest.fixture(scope="session")
def librispeech(tmp_path_factory, needs_flite) -> Path:
    """DIR/test-clean/<spk>/<chapter>/<spk>-<chapter>-<utt>.flac + .trans.txt"""
    import soundfile as sf

    root = tmp_path_factory.mktemp("LibriSpeech")
    chap = root / "test-clean" / "1089" / "134686"
    lines = []
    for i, text in enumerate(SENTENCES):
        wav = flite(text.lower(), tmp_path_factory.mktemp("raw") / "x.wav", ("slt", "awb")[i % 2])
        data, sr = sf.read(wav, dtype="float32")
        chap.mkdir(parents=True, exist_ok=True)
        sf.write(chap / f"1089-134686-{i:04d}.flac", data, sr)
        lines.append(f"1089-134686-{i:04d} {text}")
    (chap / "1089-134686.trans.txt").write_text("\n".join(lines) + "\n")
    return root


@pytest.fixture(scope="session")
def seedtts(tmp_path_factory, needs_flite) -> Path:
    """DIR/en/meta.lst: utt|prompt_text|prompt_wav|target_text, prompt wavs relative to the list."""
    root = tmp_path_factory.mktemp("seedtts")
    rows = []
    for i in range(3):
        prompt = flite(SENTENCES[i].lower(), root / "en" / "prompt-wavs" / f"p{i}.wav", "awb")
        rows.append(f"u{i}|{SENTENCES[i].lower()}|prompt-wavs/{prompt.name}|{SENTENCES[i + 3].lower()}")
    (root / "en" / "meta.lst").write_text("\n".join(rows) + "\n")
    return root


@pytest.fixture(scope="session")
def mmau(tmp_path_factory, needs_flite) -> Path:
    root = tmp_path_factory.mktemp("mmau")
    flite("the dog is barking", root / "audios" / "a.wav")
    items = [{"id": "q1", "audio_id": "./audios/a.wav", "question": "What is said?", "task": "speech",
              "choices": ["a dog is barking", "a cat", "music", "rain"], "answer": "a dog is barking"},
             {"id": "q2", "audio_id": "./audios/a.wav", "question": "Which animal?", "task": "sound",
              "choices": ["cat", "dog"], "answer": "B"}]
    (root / "mmau-test-mini.json").write_text(json.dumps(items))
    return root
