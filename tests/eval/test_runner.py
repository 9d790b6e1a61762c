"""The runner end to end on the embedded model: contract paths, resume after SIGKILL, two ranks, reports."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _env() -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=os.pathsep.join(
        [str(ROOT)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]))
    env.pop("RANK", None)
    env.pop("WORLD_SIZE", None)
    return env


def _cli(*args: str, env: dict | None = None, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "apps", "eval", *args], capture_output=True, text=True,
                          env=env or _env(), cwd=ROOT, timeout=600, **kw)


def _lines(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()]


def test_librispeech_contract_and_resume_after_sigkill(librispeech, tmp_path):
    out = tmp_path / "out"
    args = ["run", "--tasks", "librispeech_asr", "--data-root", str(librispeech), "--out", str(out),
            "--split", "test-clean", "--limit", "5", "--threads", "1", "--no-progress"]
    proc = subprocess.Popen([sys.executable, "-m", "apps", "eval", *args], env=_env(), cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    samples = out / "embedded-default" / "librispeech_asr" / "samples.jsonl"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and (not samples.is_file() or len(_lines(samples)) < 2):
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    before = _lines(samples)
    assert 2 <= len(before) < 5, "the kill must land mid-run"
    r = _cli(*args)
    assert r.returncode == 0, r.stderr
    after = _lines(samples)
    ids = [x["id"] for x in after]
    assert len(ids) == 5 and len(set(ids)) == 5  # none lost, none repeated
    assert after[: len(before)] == before  # finished samples were not rerun
    for rec in after:
        assert {"id", "reference", "hypothesis", "prompt", "fingerprint", "gen_hash", "timings"} <= set(rec)
    report = json.loads((samples.parent / "report.json").read_text())
    assert report["samples"] == 5 and isinstance(report["wer"], float) and report["wer"] == report["metrics"]["wer"]
    assert report["metrics"]["wer_mean_utt"] is not None and report["scorers"]["normalizer"] == "mimo-en-1"
    assert (out / "summary.md").read_text().count("librispeech_asr") >= 2
    assert (out / "summary.csv").read_text().startswith("model,task,metric")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_ranks_equal_one_process(librispeech, tmp_path):
    args = ["--tasks", "librispeech_asr", "--data-root", str(librispeech), "--limit", "4", "--threads", "1",
            "--no-progress", "--no-score"]
    one = _cli("run", *args, "--out", str(tmp_path / "one"))
    assert one.returncode == 0, one.stderr
    port = str(_free_port())
    procs = []
    for rank in range(2):
        env = dict(_env(), RANK=str(rank), WORLD_SIZE="2", MASTER_ADDR="127.0.0.1", MASTER_PORT=port)
        procs.append(subprocess.Popen([sys.executable, "-m", "eval", "run", *args, "--out", str(tmp_path / "two")],
                                      env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    for p in procs:
        _, err = p.communicate(timeout=600)
        assert p.returncode == 0, err
    task = Path("embedded-default") / "librispeech_asr"
    a, b = _lines(tmp_path / "one" / task / "samples.jsonl"), _lines(tmp_path / "two" / task / "samples.jsonl")
    assert [x["id"] for x in a] == [x["id"] for x in b]
    assert [x["hypothesis"] for x in a] == [x["hypothesis"] for x in b]
    assert not list((tmp_path / "two" / task).glob("samples.rank*"))


def test_seedtts_tts_writes_audio_and_scores_wer_and_sim(seedtts, tmp_path):
    pytest.importorskip("pocketsphinx")
    pytest.importorskip("resemblyzer")
    out = tmp_path / "out"
    r = _cli("run", "--tasks", "seedtts_en_tts", "--data-root", str(seedtts), "--out", str(out), "--limit", "2",
             "--threads", "1", "--no-progress")
    assert r.returncode == 0, r.stderr
    d = out / "embedded-default" / "seedtts_en_tts"
    recs = _lines(d / "samples.jsonl")
    assert len(recs) == 2 and all(Path(x["audio"]).is_file() for x in recs)
    report = json.loads((d / "report.json").read_text())
    assert "wer" in report and "sim" in report and "wer" in report["metrics"]
    rescored = _cli("score", str(out))
    assert rescored.returncode == 0 and "seedtts_en_tts" in rescored.stdout
    assert (d / "wer_by_length.png").is_file() or "matplotlib" in r.stderr


def test_bad_task_file_names_file_and_line(librispeech, tmp_path):
    tasks = tmp_path / "tasks"
    tasks.mkdir()
    (tasks / "broken.yaml").write_text("dataset: librispeech\nkind: asr\nmetrics: [wer]\nspeed: fast\n")
    r = _cli("list", "--tasks-dir", str(tasks))
    assert r.returncode == 1
    assert "broken.yaml:4" in r.stderr and "Traceback" not in r.stderr


def test_malformed_manifest_line_and_missing_audio(librispeech, tmp_path):
    root = tmp_path / "data"
    root.mkdir()
    (root / "a.wav").write_bytes((librispeech / "test-clean/1089/134686/1089-134686-0000.flac").read_bytes())
    (root / "test.jsonl").write_text('{"id": "ok", "audio": "a.wav", "reference": "please"}\n{"id": "bad",\n')
    r = _cli("run", "--tasks", "jsonl_asr", "--data-root", str(root), "--out", str(tmp_path / "o"), "--no-progress")
    assert r.returncode == 1 and "test.jsonl:2" in r.stderr and "Traceback" not in r.stderr
    (root / "test.jsonl").write_text('{"id": "gone", "audio": "missing.wav", "reference": "x"}\n'
                                     '{"id": "escape", "audio": "../../etc/passwd", "reference": "x"}\n'
                                     '{"id": "ok", "audio": "a.wav", "reference": "please bring me a cup of tea"}\n')
    r = _cli("run", "--tasks", "jsonl_asr", "--data-root", str(root), "--out", str(tmp_path / "o"), "--no-progress",
             "--threads", "1")
    assert r.returncode == 0, r.stderr
    recs = {x["id"]: x for x in _lines(tmp_path / "o" / "embedded-default" / "jsonl_asr" / "samples.jsonl")}
    assert "not found" in recs["gone"]["error"] and "escapes the data root" in recs["escape"]["error"]
    assert "hypothesis" in recs["ok"]
    report = json.loads((tmp_path / "o" / "embedded-default" / "jsonl_asr" / "report.json").read_text())
    assert report["errors"]["data"] == 2 and report["scored"] == 1
