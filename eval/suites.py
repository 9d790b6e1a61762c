"""Built-in suites. ``offline``: the embedded default model measured in minutes with no downloaded data.

Its data: the test split of a corpus built by ``mimo-audio corpus build`` when one is given (``--corpus``),
otherwise a fixed small set made here with flite - sentences that are not in the training text, read by
three voices the default model was trained on (slt, awb, kal16) and one held-out voice (rms) - plus
``../shared/data/real_speech`` (real ESD recordings) when present.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np

from eval.tasks import TaskSpec, load_tasks

log = logging.getLogger(__name__)

SUITES = ("offline",)
SENTENCES = (
    "The small boat drifted slowly toward the quiet harbor at dawn.",
    "Please remember to close the kitchen window before you leave.",
    "My brother found an old map hidden inside the wooden chest.",
    "The children laughed as the dog chased its own tail.",
    "We will meet at the station when the morning train arrives.",
    "She painted the garden fence a bright shade of green.",
    "A cold wind blew across the empty field all night.",
    "He asked the teacher to explain the lesson one more time.",
)
VOICES = (("slt", True), ("awb", True), ("kal16", True), ("rms", False))  # (flite voice, seen in training)
SAMPLE_RATE = 24000
REAL_SPEECH_ENV = "MIMO_REAL_SPEECH"


def real_speech_dir() -> Path | None:
    """``$MIMO_REAL_SPEECH`` or ``../shared/data/real_speech`` beside the checkout, when it exists."""
    env = os.environ.get(REAL_SPEECH_ENV)
    candidates = [Path(env)] if env else []
    here = Path(__file__).resolve().parents[1]
    candidates += [here.parent / "shared" / "data" / "real_speech", Path("/work/shared/data/real_speech")]
    return next((c for c in candidates if c.is_dir() and any(c.glob("*.wav"))), None)


def build_flite_set(dest: Path) -> Path:
    """The fixed flite test set in the corpus manifest format (kept once built)."""
    manifest = dest / "manifest.jsonl"
    if manifest.is_file():
        return dest
    if shutil.which("flite") is None:
        raise FileNotFoundError("the offline suite needs flite (apt-get install flite) or --corpus DIR")
    import soundfile as sf
    import soxr

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for t, text in enumerate(SENTENCES):
            for voice, seen in VOICES:
                raw = Path(tmp) / "raw.wav"
                subprocess.run(["flite", "-voice", voice, "-t", text, "-o", str(raw)], check=True,
                               capture_output=True)
                wav, sr = sf.read(raw, dtype="float32")
                wav = soxr.resample(wav, sr, SAMPLE_RATE).astype(np.float32)
                wav *= 0.063 / max(float(np.sqrt(np.mean(wav**2))), 1e-6)  # -24 dBFS RMS, as the corpus levels
                wav = np.clip(wav, -0.95, 0.95)
                spk = f"flite-{voice}-p0-r100"
                rel = f"wav/test/{spk}/s{t}_plain.wav"
                (dest / rel).parent.mkdir(parents=True, exist_ok=True)
                sf.write(dest / rel, wav, SAMPLE_RATE, subtype="PCM_16")
                rows.append({"id": f"test/{spk}/s{t}_plain", "split": "test", "text_id": f"s{t}", "text": text,
                             "speaker_id": spk, "voice_group": f"flite-{voice}", "engine": "flite", "voice": voice,
                             "voice_seen_in_train": seen, "style": "plain", "source_id": None, "path": rel,
                             "duration_s": round(len(wav) / SAMPLE_RATE, 3), "sample_rate": SAMPLE_RATE})
    tmp_manifest = manifest.with_suffix(".tmp")
    tmp_manifest.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    os.replace(tmp_manifest, manifest)
    log.info("offline suite: built the flite set (%d utterances) in %s", len(rows), dest)
    return dest


def suite_tasks(name: str, out: Path, corpus: Path | None = None, items: int | None = None,
                split: str | None = None) -> tuple[list[TaskSpec], dict[str, Path]]:
    """The suite's tasks and the data folder of each (tasks whose data is missing are left out, with a log).

    ``split`` (e.g. ``valid``) reads another split of ``corpus`` in the corpus tasks; the flite set has only a
    test split."""
    from dataclasses import replace

    if name not in SUITES:
        raise ValueError(f"unknown suite {name!r}; known: {', '.join(SUITES)}")
    if split and split != "test" and not corpus:
        raise ValueError(f"--split {split} needs --corpus DIR: the built-in flite set has only a test split")
    tasks = [t for t in load_tasks().values() if t.suite == name]
    corpus_dir = Path(corpus) if corpus else build_flite_set(Path(out) / "_data" / "flite_set")
    real = real_speech_dir()
    chosen, roots = [], {}
    for t in tasks:
        if items is not None and "items" in t.options:
            t = replace(t, options={**t.options, "items": items})
        if t.dataset == "esd":
            if real is None:
                log.info("offline suite: no real speech folder (../shared/data/real_speech): %s skipped", t.name)
                continue
            roots[t.name] = real
        else:
            roots[t.name] = corpus_dir
            if split:
                t = t.with_split(split)
        chosen.append(t)
    return chosen, roots
