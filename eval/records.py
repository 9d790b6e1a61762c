"""Append-only JSONL sample records: one line per finished sample, resumable after ``kill -9``.

Each line is written with one ``write`` of the whole line, then flushed and fsynced, so a killed run
leaves at most one partial last line; :func:`repair` cuts it off before appending again. Later lines
win over earlier ones with the same id (``--retry-errors`` appends a new attempt).
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

SAMPLES = "samples.jsonl"


def fingerprint_hash(fingerprint: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(fingerprint, sort_keys=True, default=str).encode()).hexdigest()[:12]


def shard_file(task_dir: Path, rank: int, world: int) -> Path:
    return task_dir / (SAMPLES if world == 1 else f"samples.rank{rank}.jsonl")


def repair(path: Path) -> None:
    """Cut a trailing partial line (a write interrupted by a kill) off ``path``."""
    if not path.is_file() or path.stat().st_size == 0:
        return
    data = path.read_bytes()
    if data.endswith(b"\n"):
        return
    keep = data.rfind(b"\n") + 1
    with open(path, "r+b") as f:
        f.truncate(keep)


def read_records(path: Path) -> list[dict[str, Any]]:
    """Records of one file; an unparsable *last* line (interrupted write) is ignored, any other raises."""
    if not path.is_file():
        return []
    lines = path.read_text(encoding="utf-8").split("\n")
    out = []
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError as exc:
            if n == len(lines):  # the partial last line of a killed run
                break
            raise ValueError(f"{path}:{n}: malformed sample record: {exc.msg}") from None
    return out


def task_records(task_dir: Path) -> dict[str, dict[str, Any]]:
    """Every record of a task folder (merged file and per-rank files), last one per id."""
    records: dict[str, dict[str, Any]] = {}
    files = [task_dir / SAMPLES] + sorted(task_dir.glob("samples.rank*.jsonl"))
    for f in files:
        for r in read_records(f):
            records[r["id"]] = r
    return records


def append(path: Path, record: dict[str, Any]) -> None:
    line = json.dumps(record, ensure_ascii=False, default=_default) + "\n"
    with open(path, "a", encoding="utf-8") as f:
        f.write(line)
        f.flush()
        os.fsync(f.fileno())


def _default(x: Any) -> Any:
    if hasattr(x, "tolist"):
        return x.tolist()
    return str(x)


def merge(task_dir: Path, order: list[str]) -> Path:
    """Combine the per-rank files into ``samples.jsonl`` in dataset order (atomic replace), remove them."""
    records = task_records(task_dir)
    rank_files = sorted(task_dir.glob("samples.rank*.jsonl"))
    pos = {sid: i for i, sid in enumerate(order)}
    rows = sorted(records.values(), key=lambda r: pos.get(r["id"], len(pos)))
    tmp = task_dir / (SAMPLES + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(r, ensure_ascii=False, default=_default) + "\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, task_dir / SAMPLES)
    for p in rank_files:
        p.unlink()
    return task_dir / SAMPLES
