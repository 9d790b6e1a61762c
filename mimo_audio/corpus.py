"""The offline corpus format: read a manifest, check its split invariants, pair parallel readings.

A corpus (built by ``mimo-audio corpus build``) is a folder with ``manifest.jsonl``: one JSON object per
utterance with ``id``, ``split`` (train/valid/test), ``text_id``, ``text``, ``speaker_id``, ``voice_group``,
``engine``, ``voice``, ``voice_seen_in_train``, ``style`` (plain/slow/fast/noisy/whisper/...), ``source_id``
(the plain row a styled copy was made from), ``path`` (relative to the folder), ``duration_s`` and
``sample_rate``. Training (``apps``) and evaluation (``eval``) both read it through this module.
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

import soundfile as sf
import torch

MANIFEST = "manifest.jsonl"
SPLITS = ("train", "valid", "test")
PAIR_TASKS = ("voice", "speed", "denoise", "whisper")


def load_manifest(corpus_dir: str | Path) -> list[dict]:
    """The manifest rows of a built corpus (each with ``path`` relative to ``corpus_dir``).

    A malformed line raises ``ValueError`` naming the file and the line number.
    """
    path = Path(corpus_dir) / MANIFEST
    if not path.is_file():
        raise FileNotFoundError(f"no corpus manifest at {path}: build one with `mimo-audio corpus build --out DIR`")
    rows = []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if line.strip():
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise ValueError(f"{path}:{n}: malformed manifest line: {exc}") from exc
                if not isinstance(row, dict):
                    raise ValueError(f"{path}:{n}: malformed manifest line: expected a JSON object")
                rows.append(row)
    return rows


def split_rows(corpus_dir: str | Path, split: str, style: str | None = "plain") -> list[dict]:
    """Rows of one split (and one style; ``None`` keeps every style); an empty selection is an error."""
    rows = [r for r in load_manifest(corpus_dir)
            if r.get("split") == split and (style is None or r.get("style") == style)]
    if not rows:
        what = f"{style} rows" if style else "rows"
        raise ValueError(f"corpus {corpus_dir} has no {what} in split {split!r}")
    return rows


def read_wav(corpus_dir: str | Path, row: dict, sample_rate: int) -> torch.Tensor:
    """The mono waveform of one manifest row; a rate other than ``sample_rate`` is an error (corpora are built at
    the tokenizer's rate)."""
    wav, sr = sf.read(str(Path(corpus_dir) / row["path"]), dtype="float32", always_2d=True)
    if sr != sample_rate:
        raise ValueError(f"{row['path']}: sample rate {sr}, the tokenizer needs {sample_rate}")
    return torch.from_numpy(wav.mean(axis=1))


def check_splits(rows: list[dict]) -> list[str]:
    """Violations of the hold-out rules (empty when the corpus is sound)."""
    problems = []
    texts: dict[str, set[str]] = defaultdict(set)
    for r in rows:
        texts[r["text_id"]].add(r["split"])
    leaked = [t for t, splits in texts.items() if len(splits) > 1]
    if leaked:
        problems.append(f"{len(leaked)} sentences appear in more than one split")
    train_groups = {r["voice_group"] for r in rows if r["split"] == "train"}
    unseen = [r["id"] for r in rows if not r["voice_seen_in_train"] and r["voice_group"] in train_groups]
    if unseen:
        problems.append(f"{len(unseen)} rows of held-out voices whose voice group is in train")
    for split in ("valid", "test"):
        groups = {r["voice_group"] for r in rows if r["split"] == split and not r["voice_seen_in_train"]}
        others = {r["voice_group"] for r in rows if r["split"] not in (split, "train") and not r["voice_seen_in_train"]}
        if groups & others:
            problems.append(f"held-out voices of {split} also appear in another evaluation split")
    return problems


def parallel_pairs(rows: list[dict], task: str, split: str | None = None) -> list[tuple[dict, dict]]:
    """(input, output) row pairs for a few-shot speech-to-speech task, in manifest order.

    - ``voice``: the same sentence, plain, in two different speakers (every ordered pair);
    - ``speed``: plain -> slow and plain -> fast copies of the same speaker;
    - ``denoise``: noisy copy -> its clean original;
    - ``whisper``: plain -> whispered copy (espeak-ng voices).
    """
    if task not in PAIR_TASKS:
        raise ValueError(f"unknown pair task {task!r}; expected one of {PAIR_TASKS}")
    rows = [r for r in rows if split is None or r["split"] == split]
    by_id = {r["id"]: r for r in rows}
    if task == "voice":
        by_text: dict[str, list[dict]] = defaultdict(list)
        for r in rows:
            if r["style"] == "plain":
                by_text[r["text_id"]].append(r)
        return [(a, b) for group in by_text.values() for a in group for b in group
                if a["speaker_id"] != b["speaker_id"]]
    pairs = []
    for r in rows:
        src = by_id.get(r.get("source_id")) if r.get("source_id") else None
        if src is None:
            continue
        if task == "speed" and r["style"] in ("slow", "fast"):
            pairs.append((src, r))
        elif task == "denoise" and r["style"] == "noisy":
            pairs.append((r, src))
        elif task == "whisper" and r["style"] == "whisper":
            pairs.append((src, r))
    return pairs
