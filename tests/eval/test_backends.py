"""The MimoAudio adapter's backend flags: LUT weights + sparse attention + MTP drafting, one flag each."""

from __future__ import annotations

import json

import pytest
import torch


def test_quant_sparse_speculative_flags_reach_the_records(librispeech, tmp_path):
    from eval.models.mimo import MimoAdapter
    from eval.runner import run
    from eval.tasks import get_task

    torch.set_num_threads(1)
    try:
        model = MimoAdapter(quant="w4g64", sparse="hysparse-1:3", speculative=2)
    except (ImportError, OSError, RuntimeError) as exc:  # LUT kernels not built on this machine
        pytest.skip(f"efficient backends unavailable: {exc}")
    assert model.label() == "embedded-default+w4g64+hysparse-1:3+mtp2"
    task = get_task("librispeech_asr")
    (d,) = run([task], model, {task.name: librispeech}, tmp_path, limit=1, progress=False, score=False)
    rec = json.loads((d / "samples.jsonl").read_text().splitlines()[0])
    assert "error" not in rec, rec.get("error")
    spec = rec["extra"]["spec"][0]
    assert spec["max_draft"] == 2 and spec["draft_rounds"] > 0 and sum(spec["proposed"]) > 0
    assert json.loads((d / "task.json").read_text())["model_info"]["quant"] == "w4g64"
