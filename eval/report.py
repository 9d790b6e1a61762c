"""``eval.report``: tables across models and tasks (Markdown + CSV) and plots, from the ``report.json`` files."""

from __future__ import annotations

import csv
import json
import logging
from collections import defaultdict
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

# Metrics shown in the table, in this order, when a task has them (the primary metric always comes first).
SHOWN = ("wer", "wer_mean_utt", "input_wer", "wer_delta_points", "sim", "sim_source", "target_closer_share",
         "ceiling_closer_share", "dnsmos_ovrl", "input_dnsmos_ovrl", "nearest_voice_sim", "sounds_like_panel_voice",
         "no_speech", "stopped_share", "output_seconds_mean", "accuracy", "judge", "acceptance_length",
         "acceptance_rate", "tokens_per_forward")
PERCENT = ("wer", "wer_mean_utt", "input_wer", "accuracy", "target_closer_share", "ceiling_closer_share",
           "acceptance_rate", "stopped_share")


def collect(out: Path) -> list[dict[str, Any]]:
    """Every task report under ``out`` (``OUT/<model>/<task>/report.json``)."""
    reports = []
    for p in sorted(Path(out).glob("**/report.json")):
        try:
            reports.append(json.loads(p.read_text(encoding="utf-8")) | {"path": str(p)})
        except json.JSONDecodeError as exc:
            raise ValueError(f"{p}:{exc.lineno}: malformed report: {exc.msg}") from None
    return reports


def fmt(name: str, v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.1%}" if name in PERCENT else f"{v:.3f}"
    return str(v)


def metric_names(r: dict) -> list[str]:
    names = [r["primary"]] + [k for k in SHOWN if k in r["metrics"] and k != r["primary"]]
    return [n for n in names if n in r["metrics"]]


def markdown(reports: list[dict]) -> str:
    """Two tables: primary metric per task x model, then every shown metric per task and model."""
    models = sorted({r["model"] for r in reports})
    tasks = sorted({r["task"] for r in reports})
    by = {(r["task"], r["model"]): r for r in reports}
    lines = ["| task | metric | " + " | ".join(models) + " | official (7B) |",
             "|---|---|" + "---|" * len(models) + "---|"]
    for t in tasks:
        any_r = next(by[(t, m)] for m in models if (t, m) in by)
        p = any_r["primary"]
        arrow = "↑" if any_r.get("higher_is_better", {}).get(p, True) else "↓"
        cells = [fmt(p, by[(t, m)]["metrics"].get(p)) if (t, m) in by else "" for m in models]
        lines.append(f"| {t} | {p} {arrow} | " + " | ".join(cells) + f" | {any_r.get('official') or '-'} |")
    lines += ["", "| task | model | samples | errors (data/model) | " + "measures |", "|---|---|---|---|---|"]
    for r in sorted(reports, key=lambda r: (r["task"], r["model"])):
        ms = ", ".join(f"{k} {fmt(k, r['metrics'][k])}" for k in metric_names(r))
        lines.append(f"| {r['task']} | {r['model']} | {r['scored']}/{r['samples']} | {r['errors']['data']}/"
                     f"{r['errors']['model']} | {ms} |")
    goals = [(r, g) for r in sorted(reports, key=lambda r: (r["task"], r["model"])) for g in r.get("goals") or []]
    if goals:
        lines += ["", "| task | model | measure | value | goal | met |", "|---|---|---|---|---|---|"]
        for r, g in goals:
            met = {True: "yes", False: "NO", None: "-"}[g["met"]]
            lines.append(f"| {r['task']} | {r['model']} | {g['metric']} | {fmt(g['metric'], g['value'])} "
                         f"| {g['goal']} | {met} |")
    norm = sorted({r.get("scorers", {}).get("normalizer", "?") for r in reports})
    asr = sorted({r.get("scorers", {}).get("asr", "?") for r in reports})
    sim = sorted({r.get("scorers", {}).get("sim", "?") for r in reports})
    lines += ["", f"WER: corpus-level (errors / reference words) and mean per utterance; text normaliser "
                  f"{', '.join(norm)}; ASR scorer {', '.join(asr)}; speaker similarity {', '.join(sim)}."]
    return "\n".join(lines)


def write_csv(reports: list[dict], path: Path) -> None:
    """Long format: one row per (model, task, metric)."""
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["model", "task", "metric", "value", "primary", "samples", "scored", "data_errors",
                    "model_errors", "normalizer", "asr_scorer", "sim_scorer"])
        for r in sorted(reports, key=lambda r: (r["model"], r["task"])):
            sc = r.get("scorers", {})
            for k, v in r["metrics"].items():
                if isinstance(v, (int, float)) or v is None:
                    w.writerow([r["model"], r["task"], k, "" if v is None else v, k == r["primary"], r["samples"],
                                r["scored"], r["errors"]["data"], r["errors"]["model"], sc.get("normalizer"),
                                sc.get("asr"), sc.get("sim")])


def plot_task(task_dir: Path, task, rows: list[dict]) -> Path | None:
    """WER by reference length (words), one point per utterance and bucket means: ``wer_by_length.png``."""
    pts = [(r["ref_len"], r["wer"]) for r in rows if "wer" in r and r.get("ref_len")]
    if len(pts) < 2:
        return None
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log.info("matplotlib is not installed: no plot (pip install 'mimo-audio[eval]')")
        return None
    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=100)
    xs, ys = zip(*pts)
    ax.scatter(xs, [100 * y for y in ys], s=12, alpha=0.5, label="utterance")
    width = 5 if max(xs) - min(xs) >= 15 else 1  # narrow sets: one bucket per length
    buckets: dict[int, list[float]] = defaultdict(list)
    for x, y in pts:
        buckets[(x // width) * width].append(y)
    bx = sorted(buckets)
    ax.plot([b + (width - 1) / 2 for b in bx], [100 * sum(buckets[b]) / len(buckets[b]) for b in bx], "o-",
            color="C3", label=f"mean per {width}-word bucket" if width > 1 else "mean per length")
    ax.set_xlabel("reference length (words)")
    ax.set_ylabel("WER (%)")
    ax.set_title(f"{task.name}: WER by utterance length")
    ax.legend(fontsize=8)
    fig.tight_layout()
    path = Path(task_dir) / "wer_by_length.png"
    fig.savefig(path)
    plt.close(fig)
    return path


def report(out: Path, dest: Path | None = None) -> dict[str, Path]:
    """Write ``summary.md`` and ``summary.csv`` for every report under ``out``; returns their paths."""
    reports = collect(out)
    if not reports:
        raise ValueError(f"no report.json under {out}: run `mimo-audio eval run` (or `score`) first")
    dest = Path(dest or out)
    dest.mkdir(parents=True, exist_ok=True)
    md = dest / "summary.md"
    md.write_text(markdown(reports) + "\n", encoding="utf-8")
    write_csv(reports, dest / "summary.csv")
    return {"markdown": md, "csv": dest / "summary.csv"}
