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
