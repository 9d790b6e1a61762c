"""Summarise a corpus. Reading the format (manifest, splits, parallel pairs) lives in :mod:`mimo_audio.corpus`."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from mimo_audio.corpus import PAIR_TASKS, check_splits, load_manifest, parallel_pairs

__all__ = ["PAIR_TASKS", "check_splits", "corpus_stats", "format_stats", "load_manifest", "parallel_pairs"]


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
