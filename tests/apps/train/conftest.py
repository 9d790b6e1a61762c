"""A mini corpus in the corpus manifest format: real flite speech, two voices, three sentences, 24 kHz."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import librosa
import numpy as np
import pytest
import soundfile as sf

SENTENCES = ("The cat sat on the warm mat.", "Please bring me a cup of tea.", "It is raining in the city today.")
VOICES = ("slt", "kal")


@pytest.fixture(scope="session")
def mini_corpus(tmp_path_factory) -> Path:
    if shutil.which("flite") is None:
        pytest.skip("flite is not installed (make sysdeps)")
    root = tmp_path_factory.mktemp("mini_corpus")
    rows = []
    for t, text in enumerate(SENTENCES):
        for voice in VOICES:
            raw = root / f"{voice}_{t}_raw.wav"
            subprocess.run(["flite", "-voice", voice, "-t", text, "-o", str(raw)], check=True, capture_output=True)
            wav, sr = sf.read(raw, dtype="float32")
            wav = librosa.resample(wav, orig_sr=sr, target_sr=24000).astype(np.float32)
            rel = f"wav/{voice}_{t}.wav"
            (root / "wav").mkdir(exist_ok=True)
            sf.write(root / rel, wav, 24000)
            raw.unlink()
            rows.append({"id": f"train/flite-{voice}/t{t}_plain", "split": "train", "text_id": f"t{t}", "text": text,
                         "speaker_id": f"flite-{voice}", "voice_group": f"flite-{voice}", "engine": "flite",
                         "voice": voice, "voice_seen_in_train": True, "style": "plain", "speed": 1.0,
                         "whisper": False, "noise": None, "snr_db": None, "source_id": None, "babble_ids": [],
                         "path": rel, "duration_s": len(wav) / 24000, "sample_rate": 24000})
    for r in rows[:2]:  # the first sentence also serves as a held-out test utterance for the resynthesis check
        rows.append(dict(r, id=r["id"].replace("train/", "test/"), split="test", text_id="t_test"))
    (root / "manifest.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return root
