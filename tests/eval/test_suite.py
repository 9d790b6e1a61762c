"""The offline suite on the embedded model (two of its tasks, two items): MTP acceptance really runs."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def test_offline_suite_mtp_and_resynthesis(tmp_path):
    if shutil.which("flite") is None:
        pytest.skip("flite is not installed (make sysdeps)")
    pytest.importorskip("pocketsphinx")
    pytest.importorskip("speechmos")
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=os.pathsep.join(
        [str(ROOT)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]))
    out = tmp_path / "suite"
    r = subprocess.run([sys.executable, "-m", "apps", "eval", "run", "--suite", "offline", "--out", str(out),
                        "--tasks", "offline_mtp,offline_resynth", "--items", "2", "--threads", "1", "--no-progress"],
                       capture_output=True, text=True, env=env, cwd=ROOT, timeout=600)
    assert r.returncode == 0, r.stderr
    mtp = json.loads((out / "embedded-default" / "offline_mtp" / "report.json").read_text())
    m = mtp["metrics"]
    assert m["draft_rounds"] > 0 and 1.0 <= m["acceptance_length"] <= 4.0
    assert len(m["acceptance_per_position"]) == 3 and mtp["primary_value"] == m["acceptance_length"]
    res = json.loads((out / "embedded-default" / "offline_resynth" / "report.json").read_text())
    assert res["metrics"]["input_wer"] is not None and res["metrics"]["dnsmos_ovrl"] is not None
    assert {g["metric"] for g in res["goals"]} == {"wer_delta_points", "dnsmos_ovrl"}
    assert "offline_mtp" in r.stdout and "acceptance_length" in r.stdout


def test_suite_split_reaches_the_corpus_tasks(tmp_path):
    """``--split valid`` with ``--corpus`` reads the validation split in every corpus task (it was silently the
    test split); without a corpus it is refused, since the flite set has only a test split."""
    from eval.runner import load_samples
    from eval.suites import suite_tasks

    corpus = tmp_path / "corpus"
    (corpus / "wav").mkdir(parents=True)
    rows = []
    for split in ("test", "valid"):
        for t in range(2):
            rows.append({"id": f"{split}/flite-slt/t{t}_plain", "split": split, "text_id": f"{split}{t}",
                         "text": f"{split} sentence {t}.", "speaker_id": "flite-slt", "voice_group": "flite-slt",
                         "engine": "flite", "voice": "slt", "voice_seen_in_train": True, "style": "plain",
                         "source_id": None, "path": f"wav/{split}{t}.wav", "duration_s": 1.0, "sample_rate": 24000})
    (corpus / "manifest.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    tasks, roots = suite_tasks("offline", tmp_path / "out", corpus, 2, "valid")
    asr = next(t for t in tasks if t.name == "offline_asr_trained")
    assert asr.split == "valid"
    refs = {s.reference for s in load_samples(asr, roots[asr.name], None)}
    assert refs and all(r.startswith("valid") for r in refs)
    tts = next(t for t in tasks if t.name == "offline_tts")
    assert {s.reference for s in load_samples(tts, roots[tts.name], None)} <= {"valid sentence 0.", "valid sentence 1."}
    with pytest.raises(ValueError, match="needs --corpus"):
        suite_tasks("offline", tmp_path / "out", None, 2, "valid")
