"""bench/bench_realtime.py refuses bad options with one clear line (no traceback, nothing built)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "bench.bench_realtime", *args], capture_output=True,
                          text=True, timeout=120, cwd=ROOT)


def test_unknown_scheme_is_one_clear_error() -> None:
    r = run("--quant", "w9g7")
    assert r.returncode != 0
    assert "unknown quantization scheme 'w9g7'" in r.stderr
    assert "Traceback" not in r.stderr
    assert r.stdout == ""


def test_unknown_local_head_scheme_is_refused() -> None:
    r = run("--local-head-quant", "int3")
    assert r.returncode != 0 and "int3" in r.stderr and "Traceback" not in r.stderr
