"""``eval.score``: per-sample metrics and their aggregates, from the cached sample records alone.

Scoring needs only the task folder (``samples.jsonl`` + written audio), so it can run on another machine
than inference. Failures are scored, not dropped: a model error, an empty output or a NaN waveform counts
as an empty transcript (WER 1 for that utterance), no similarity, a wrong answer. Samples whose *data*
was unusable (missing audio) are excluded and counted.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from eval import records
from eval.tasks import METRIC_NAMES, TaskSpec

log = logging.getLogger(__name__)

SPEECH_KINDS = ("tts", "instruct_tts", "few_shot_s2s", "continuation", "resynth", "spoken_mcq")
REPORT = "report.json"
SCORES = "scores.jsonl"


class Scorers:
    """The scoring backends, loaded on first use; file results are cached by path.

    ``asr``: ``pocketsphinx`` (offline default), ``whisper:DIR`` or ``paraformer:DIR`` (local checkpoints);
    ``sim``: ``resemblyzer`` (default) or ``wavlm:DIR``; ``judge_url``: an OpenAI-compatible endpoint for
    the LLM judge (off when None).
    """

    def __init__(self, asr: str = "pocketsphinx", sim: str = "resemblyzer", judge_url: str | None = None,
                 judge_model: str = "gpt-4o-mini", judge_key: str | None = None) -> None:
        import warnings

        from eval import heavy

        warnings.filterwarnings("ignore", message="pkg_resources is deprecated")  # webrtcvad, under resemblyzer
        self.asr_name, self.sim_name = asr, sim
        self._asr = heavy.make_asr(asr)
        self._sim = heavy.make_speaker(sim)
        self._mos = None
        self.judge = None
        if judge_url:
            from eval.judge import Judge

            self.judge = Judge(judge_url, judge_model, judge_key)
        self._cache: dict[tuple[str, str], Any] = {}

    def describe(self) -> dict[str, str]:
        from eval.scorers import NORMALIZER_VERSION

        return {"asr": self.asr_name, "sim": self.sim_name, "mos": "dnsmos (speechmos)",
                "judge": self.judge.describe() if self.judge else "off", "normalizer": NORMALIZER_VERSION}

    def _cached(self, kind: str, path: str, fn: Callable[[], Any]) -> Any:
        key = (kind, path)
        if key not in self._cache:
            self._cache[key] = fn()
        return self._cache[key]

    def transcribe(self, path: str, language: str = "en") -> str:
        return self._cached(f"asr-{language}", path, lambda: self._asr.transcribe(path, language=language) or "")

    def embed(self, path: str) -> np.ndarray:
        return self._cached("spk", path, lambda: self._sim.embed(path))

    def dnsmos(self, path: str) -> dict[str, float]:
        if self._mos is None:
            from eval.scorers import DNSMOS

            self._mos = DNSMOS()

        def run() -> dict[str, float]:
            s = self._mos.score(path)
            return {"ovrl": s.ovrl, "sig": s.sig, "bak": s.bak, "p808": s.p808}

        return self._cached("mos", path, run)


# ---------------------------------------------------------------- text error rates
def _units(text: str, language: str) -> list[str]:
    """Words after the pinned English normaliser; characters (no punctuation/space) for Chinese."""
    if language.startswith("zh"):
        import unicodedata

        return [c for c in text if not c.isspace() and not unicodedata.category(c).startswith("P")]
    from eval.scorers import normalize_text

    return normalize_text(text).split()


def error_counts(reference: str, hypothesis: str, language: str = "en") -> dict[str, int]:
    from eval.scorers.asr import _edit_counts

    ref, hyp = _units(reference, language), _units(hypothesis or "", language)
    s, d, i = _edit_counts(ref, hyp)
    return {"sub": s, "del": d, "ins": i, "ref_words": len(ref)}


# ---------------------------------------------------------------- per-sample metrics
def _output_audio(rec: dict, task_dir: Path) -> str | None:
    if rec.get("audio_rel") and (task_dir / rec["audio_rel"]).is_file():
        return str(task_dir / rec["audio_rel"])
    if rec.get("audio") and Path(rec["audio"]).is_file():
        return rec["audio"]
    return None


def _try(fn: Callable[[], Any], errors: list[str], what: str) -> Any:
    try:
        return fn()
    except (ValueError, FileNotFoundError, RuntimeError) as exc:  # NaN or empty audio, no speech left, ...
        errors.append(f"{what}: {exc}")
        return None


def output_text(rec: dict, task: TaskSpec, task_dir: Path, sc: Scorers, errors: list[str]) -> str:
    """What the model said: its text output, or the ASR transcript of its speech ('' when it failed)."""
    if "transcript" in rec:
        return rec["transcript"]
    if task.kind in SPEECH_KINDS or (task.kind == "spoken_qa" and task.output != "text"):
        audio = _output_audio(rec, task_dir)
        text = "" if audio is None else (_try(lambda: sc.transcribe(audio, task.language), errors, "asr") or "")
        rec["transcript"] = text
        return text
    text = rec.get("hypothesis")
    if not isinstance(text, str):
        return ""
    from eval.mcq import strip_thinking

    return strip_thinking(text)


def m_wer(rec, task, task_dir, sc, errors) -> dict:
    ref = rec.get("reference") or (rec.get("input") or {}).get("text")
    if not ref:
        errors.append("wer: no reference text")
        return {}
    c = error_counts(ref, output_text(rec, task, task_dir, sc, errors), task.language)
    if c["ref_words"] == 0:
        errors.append("wer: reference normalises to no words")
        return {}
    return {"wer": (c["sub"] + c["del"] + c["ins"]) / c["ref_words"], **c}


def m_input_wer(rec, task, task_dir, sc, errors) -> dict:
    audio, ref = (rec.get("input") or {}).get("audio"), rec.get("reference")
    if not audio or not ref:
        return {}
    hyp = _try(lambda: sc.transcribe(audio, task.language), errors, "input asr") or ""
    c = error_counts(ref, hyp, task.language)
    return {"input_wer": (c["sub"] + c["del"] + c["ins"]) / max(c["ref_words"], 1),
            **{f"input_{k}": v for k, v in c.items()}}


def _sim(a: np.ndarray | None, b: np.ndarray | None) -> float | None:
    return None if a is None or b is None else float(np.dot(a, b))


def m_sim(rec, task, task_dir, sc, errors) -> dict:
    inp = rec.get("input") or {}
    ref = inp.get("speaker_ref") or inp.get("prompt_audio")
    if not ref:
        errors.append("sim: no speaker reference audio")
        return {}
    audio = _output_audio(rec, task_dir)
    out = _try(lambda: sc.embed(audio), errors, "sim output") if audio else None
    target = _try(lambda: sc.embed(ref), errors, "sim reference")
    res: dict[str, Any] = {"sim": _sim(out, target)}
    if inp.get("source_ref"):
        source = _try(lambda: sc.embed(inp["source_ref"]), errors, "sim source")
        res["sim_source"] = _sim(out, source)
        res["target_closer"] = bool(res["sim"] is not None and res["sim_source"] is not None
                                    and res["sim"] > res["sim_source"])
        truth = (inp.get("meta") or {}).get("truth")
        if truth:  # the real target reading, scored the same way: the ceiling of a perfect conversion
            t = _try(lambda: sc.embed(truth), errors, "sim truth")
            res["ceiling_sim"], ceiling_source = _sim(t, target), _sim(t, source)
            res["ceiling_closer"] = bool(res["ceiling_sim"] is not None and ceiling_source is not None
                                         and res["ceiling_sim"] > ceiling_source)
    return res


def m_nearest_voice(rec, task, task_dir, sc, errors) -> dict:
    """Which voice of a panel (``input.meta.panel``: voice -> audio) the output sounds most like."""
    panel = ((rec.get("input") or {}).get("meta") or {}).get("panel") or {}
    audio = _output_audio(rec, task_dir)
    out = _try(lambda: sc.embed(audio), errors, "nearest voice") if audio and panel else None
    if out is None:
        return {"nearest_voice": None, "nearest_sim": None}
    sims = {v: _sim(out, _try(lambda p=p: sc.embed(p), errors, "panel voice")) for v, p in panel.items()}
    sims = {v: x for v, x in sims.items() if x is not None}
    best = max(sims, key=sims.get) if sims else None
    return {"nearest_voice": best, "nearest_sim": sims.get(best) if best else None}


def m_dnsmos(rec, task, task_dir, sc, errors) -> dict:
    audio = _output_audio(rec, task_dir)
    if audio is None:
        return {"dnsmos_ovrl": None}
    s = _try(lambda: sc.dnsmos(audio), errors, "dnsmos")
    return {f"dnsmos_{k}": v for k, v in s.items()} if s else {"dnsmos_ovrl": None}


def m_input_dnsmos(rec, task, task_dir, sc, errors) -> dict:
    audio = (rec.get("input") or {}).get("audio")
    s = _try(lambda: sc.dnsmos(audio), errors, "input dnsmos") if audio else None
    return {f"input_dnsmos_{k}": v for k, v in s.items()} if s else {}


def m_accuracy(rec, task, task_dir, sc, errors) -> dict:
    from eval.mcq import LETTERS, answer_index, extract_choice

    inp = rec.get("input") or {}
    choices = inp.get("choices") or []
    gold = answer_index(str(inp.get("answer", "")), choices)
    if gold is None:
        errors.append(f"accuracy: answer {inp.get('answer')!r} is not one of the choices")
        return {}
    raw = rec.get("transcript") if task.kind == "spoken_mcq" else rec.get("hypothesis")
    if task.kind == "spoken_mcq":
        raw = output_text(rec, task, task_dir, sc, errors)
    picked = extract_choice(raw or "", choices)
    return {"correct": picked == gold, "picked": None if picked is None else LETTERS[picked],
            "gold": LETTERS[gold]}


def m_judge(rec, task, task_dir, sc, errors) -> dict:
    if sc.judge is None:
        return {}
    inp = rec.get("input") or {}
    answer = output_text(rec, task, task_dir, sc, errors)
    score = _try(lambda: sc.judge.score(inp.get("question") or "", rec.get("reference") or inp.get("answer") or "",
                                        answer), errors, "judge")
    return {"judge": score}


def m_acceptance(rec, task, task_dir, sc, errors) -> dict:
    spec = (rec.get("extra") or {}).get("spec")
    if not spec:
        errors.append("acceptance: no speculative-decoding counters in the record (run with speculative)")
        return {}
    keys = ("draft_rounds", "draft_round_tokens", "new_tokens", "target_forwards")
    out = {k: sum(int(s[k]) for s in spec) for k in keys}
    width = max(len(s["proposed"]) for s in spec)
    out["proposed"] = [sum(s["proposed"][i] for s in spec if i < len(s["proposed"])) for i in range(width)]
    out["accepted"] = [sum(s["accepted"][i] for s in spec if i < len(s["accepted"])) for i in range(width)]
    return {"spec": out}


METRICS: dict[str, Callable] = {
    "wer": m_wer, "input_wer": m_input_wer, "sim": m_sim, "dnsmos": m_dnsmos, "input_dnsmos": m_input_dnsmos,
    "accuracy": m_accuracy, "judge": m_judge, "acceptance": m_acceptance, "nearest_voice": m_nearest_voice,
}
assert set(METRICS) == set(METRIC_NAMES), "eval.tasks.METRIC_NAMES must list exactly the metrics implemented here"
SAME_VOICE_SIM = 0.75  # Resemblyzer: the same voice scores above, different voices below (ecosystem spec 3.4)


# ---------------------------------------------------------------- aggregation
def _mean(xs: list) -> float | None:
    vals = [float(x) for x in xs if x is not None and not (isinstance(x, float) and math.isnan(x))]
    return round(float(np.mean(vals)), 4) if vals else None


def aggregate(task: TaskSpec, rows: list[dict]) -> dict[str, Any]:
    m: dict[str, Any] = {}
    if "wer" in task.metrics:
        w = [r for r in rows if "wer" in r]
        words = sum(r["ref_words"] for r in w)
        errs = sum(r["sub"] + r["del"] + r["ins"] for r in w)
        m.update(wer=round(errs / words, 4) if words else None, wer_mean_utt=_mean([r["wer"] for r in w]),
                 wer_utterances=len(w), ref_words=words, sub=sum(r["sub"] for r in w),
                 del_=sum(r["del"] for r in w), ins=sum(r["ins"] for r in w))
        m["deletions"] = m.pop("del_")
    if "input_wer" in task.metrics:
        w = [r for r in rows if "input_wer" in r]
        words = sum(r["input_ref_words"] for r in w)
        errs = sum(r["input_sub"] + r["input_del"] + r["input_ins"] for r in w)
        m["input_wer"] = round(errs / words, 4) if words else None
        if m.get("wer") is not None and m["input_wer"] is not None:
            m["wer_delta_points"] = round(100 * (m["wer"] - m["input_wer"]), 2)
    if "sim" in task.metrics:
        m["sim"] = _mean([r.get("sim") for r in rows])
        m["sim_scored"] = sum(r.get("sim") is not None for r in rows)
        if any("sim_source" in r for r in rows):
            m["sim_source"] = _mean([r.get("sim_source") for r in rows])
            closer = [bool(r.get("target_closer")) for r in rows if "sim_source" in r]
            m["target_closer_share"] = round(float(np.mean(closer)), 4) if closer else None
        if any("ceiling_sim" in r for r in rows):
            m["ceiling_sim"] = _mean([r.get("ceiling_sim") for r in rows])
            m["ceiling_closer_share"] = round(float(np.mean([bool(r.get("ceiling_closer")) for r in rows
                                                             if "ceiling_sim" in r])), 4)
    for prefix in ("dnsmos", "input_dnsmos"):
        if prefix in task.metrics:
            for k in ("ovrl", "sig", "bak", "p808"):
                m[f"{prefix}_{k}"] = _mean([r.get(f"{prefix}_{k}") for r in rows])
    if "accuracy" in task.metrics:
        scored = [r for r in rows if "correct" in r]
        m["accuracy"] = round(float(np.mean([r["correct"] for r in scored])), 4) if scored else None
        m["unanswered"] = sum(r.get("picked") is None for r in scored)
        by: dict[str, list[bool]] = defaultdict(list)
        for r in scored:
            by[str(r.get("category", "all"))].append(r["correct"])
        if len(by) > 1:
            m["accuracy_by_category"] = {k: round(float(np.mean(v)), 4) for k, v in sorted(by.items())}
    if "nearest_voice" in task.metrics:
        got = [r["nearest_sim"] for r in rows if r.get("nearest_sim") is not None]
        m["nearest_voice_sim"] = _mean(got)
        m["sounds_like_panel_voice"] = sum(x >= SAME_VOICE_SIM for x in got)
        counts: dict[str, int] = defaultdict(int)
        for r in rows:
            counts[str(r.get("nearest_voice"))] += 1
        m["nearest_voices"] = dict(sorted(counts.items()))
    if any("no_speech" in r for r in rows):  # speech outputs: how many came, how long, how many stopped
        sp = [r for r in rows if "no_speech" in r]
        m["no_speech"] = sum(r["no_speech"] for r in sp)
        m["output_seconds_mean"] = _mean([r.get("audio_seconds") for r in sp])
        m["stopped_share"] = round(float(np.mean([bool(r.get("stopped")) for r in sp])), 4)
    if "judge" in task.metrics:
        m["judge"] = _mean([r.get("judge") for r in rows])
    if "acceptance" in task.metrics:
        sp = [r["spec"] for r in rows if "spec" in r]
        if sp:
            rounds, toks = sum(s["draft_rounds"] for s in sp), sum(s["draft_round_tokens"] for s in sp)
            prop = [sum(s["proposed"][i] for s in sp if i < len(s["proposed"])) for i in range(len(sp[0]["proposed"]))]
            acc = [sum(s["accepted"][i] for s in sp if i < len(s["accepted"])) for i in range(len(sp[0]["accepted"]))]
            fwd, new = sum(s["target_forwards"] for s in sp), sum(s["new_tokens"] for s in sp)
            m.update(acceptance_length=round(toks / rounds, 4) if rounds else None,
                     acceptance_rate=round(sum(acc) / sum(prop), 4) if sum(prop) else None,
                     acceptance_per_position=[round(a / p, 4) if p else None for a, p in zip(acc, prop)],
                     tokens_per_forward=round(new / fwd, 4) if fwd else None, draft_rounds=rounds)
    return m


def _clean(x: Any) -> Any:
    """JSON-safe: NaN/inf become None, numpy scalars become Python numbers."""
    if isinstance(x, dict):
        return {k: _clean(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_clean(v) for v in x]
    if isinstance(x, (np.floating, float)):
        return None if not math.isfinite(float(x)) else float(x)
    if isinstance(x, np.integer):
        return int(x)
    if isinstance(x, np.bool_):
        return bool(x)
    return x


def score_task(task_dir: Path, task: TaskSpec, scorers: Scorers, progress: bool = True) -> dict[str, Any]:
    """Score a task folder's records; writes ``scores.jsonl`` and ``report.json``; returns the report."""
    from tqdm import tqdm

    recs = list(records.task_records(task_dir).values())
    if not recs:
        raise ValueError(f"{task_dir}: no sample records to score (run the task first)")
    rows, n_data, n_model = [], 0, 0
    for rec in tqdm(recs, desc=f"score {task.name}", unit="sample", disable=not progress, dynamic_ncols=True):
        if rec.get("error_kind") == "data":
            n_data += 1
            continue
        n_model += bool(rec.get("error"))
        errors: list[str] = []
        row: dict[str, Any] = {"id": rec["id"], "category": (rec.get("input") or {}).get("meta", {}).get("category")}
        for name in task.metrics:
            row.update(METRICS[name](rec, task, task_dir, scorers, errors))
        if "transcript" in rec:
            row["transcript"] = rec["transcript"]
        if "audio" in rec and task.kind != "asr":
            row.update(no_speech=_output_audio(rec, task_dir) is None, audio_seconds=rec.get("audio_seconds"),
                       stopped=(rec.get("extra") or {}).get("stop") == "stop_token")
        row["ref_len"] = len(_units(rec.get("reference") or "", task.language))
        if errors:
            row["score_errors"] = errors
        rows.append(row)
    with open(task_dir / SCORES, "w", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(_clean(r), ensure_ascii=False) + "\n")
    metrics = aggregate(task, rows)
    infer = [r["timings"]["infer_s"] for r in recs if r.get("timings")]
    meta = json.loads((task_dir / "task.json").read_text()) if (task_dir / "task.json").is_file() else {}
    report = {
        "task": task.name, "model": recs[0].get("model"), "fingerprint": recs[0].get("fingerprint"),
        "model_info": meta.get("model_info"), "gen_hash": recs[0].get("gen_hash"), "kind": task.kind,
        "dataset": task.dataset, "split": task.split, "language": task.language, "samples": len(recs),
        "scored": len(rows), "errors": {"data": n_data, "model": n_model},
        "metrics": metrics, "primary": task.primary, "primary_value": metrics.get(task.primary),
        "goals": task.check_goals(metrics),
        "higher_is_better": {task.primary: task.higher_is_better.get(task.primary, task.primary not in (
            "wer", "input_wer"))}, "official": task.official, "scorers": scorers.describe(),
        "timing": {"infer_s_mean": _mean(infer), "infer_s_total": round(sum(infer), 2)},
        "scored_at": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
    }
    # the aggregates also at the top level (``report["wer"]``), next to the structured ``metrics``
    report.update({k: v for k, v in metrics.items() if k not in report and not isinstance(v, (dict, list))})
    report = _clean(report)
    (task_dir / REPORT).write_text(json.dumps(report, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    from eval.report import plot_task

    plot_task(task_dir, task, rows)
    return report
