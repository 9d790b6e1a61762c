"""Read a corpus manifest, check its split invariants, and summarise it."""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from pathlib import Path


def load_manifest(corpus_dir: str | Path) -> list[dict]:
    """The manifest rows of a built corpus (each with ``path`` relative to ``corpus_dir``)."""
    path = Path(corpus_dir) / "manifest.jsonl"
    if not path.is_file():
        raise FileNotFoundError(f"no corpus manifest at {path}: build one with `mimo-audio corpus build --out DIR`")
    rows = []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as exc:
                    raise ValueError(f"{path}:{n}: malformed manifest line: {exc}") from exc
    return rows


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


def corpus_stats(corpus_dir: str | Path) -> dict:
    """Counts and hours by split, engine and style, plus the split checks."""
    rows = load_manifest(corpus_dir)
    out: dict = {"utterances": len(rows), "hours": sum(r["duration_s"] for r in rows) / 3600, "splits": {}}
    for split in ("train", "valid", "test"):
        sr = [r for r in rows if r["split"] == split]
        out["splits"][split] = {
            "utterances": len(sr),
            "hours": sum(r["duration_s"] for r in sr) / 3600,
            "sentences": len({r["text_id"] for r in sr}),
            "speakers": len({r["speaker_id"] for r in sr}),
            "unseen_speakers": len({r["speaker_id"] for r in sr if not r["voice_seen_in_train"]}),
        }
    out["engines"] = {e: round(sum(r["duration_s"] for r in rows if r["engine"] == e) / 3600, 4)
                      for e in sorted({r["engine"] for r in rows})}
    out["styles"] = dict(sorted(Counter(r["style"] for r in rows).items()))
    out["noise"] = dict(sorted(Counter(f"{r['noise']}@{r['snr_db']:g}dB" for r in rows if r["noise"]).items()))
    out["problems"] = check_splits(rows)
    return out


def format_stats(stats: dict) -> str:
    lines = [f"{stats['utterances']} utterances, {stats['hours']:.2f} h of audio", "",
             "| split | utterances | hours | sentences | speakers | unseen speakers |", "|---|---|---|---|---|---|"]
    for split, s in stats["splits"].items():
        lines.append(f"| {split} | {s['utterances']} | {s['hours']:.2f} | {s['sentences']} | {s['speakers']} "
                     f"| {s['unseen_speakers']} |")
    lines += ["", "hours by engine: " + ", ".join(f"{e} {h:.2f}" for e, h in stats["engines"].items()),
              "utterances by style: " + ", ".join(f"{k} {v}" for k, v in stats["styles"].items()),
              "noisy copies: " + (", ".join(f"{k} {v}" for k, v in stats["noise"].items()) or "none"),
              "split checks: " + ("; ".join(stats["problems"]) or "ok (no sentence or held-out voice leaks)")]
    return "\n".join(lines)


PAIR_TASKS = ("voice", "speed", "denoise", "whisper")


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
        src = by_id.get(r["source_id"]) if r["source_id"] else None
        if src is None:
            continue
        if task == "speed" and r["style"] in ("slow", "fast"):
            pairs.append((src, r))
        elif task == "denoise" and r["style"] == "noisy":
            pairs.append((r, src))
        elif task == "whisper" and r["style"] == "whisper":
            pairs.append((src, r))
    return pairs
