"""Generate the corpus: parallel synthesis with a progress bar, resumable, then the manifest.

Output layout (``OUT``)::

    corpus.json            config, seed, sources, voices and their split, engine versions, totals
    manifest.jsonl         one JSON object per utterance (see :class:`apps.corpus.plan.Utterance`)
    wav/<split>/<speaker_id>/<text_id>_<style>.wav   24 kHz mono int16

A file that already exists is not made again, so an interrupted build resumes where it stopped
(files are written under a temporary name and renamed when complete).
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import subprocess
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import soundfile as sf

from apps.corpus.augment import babble, coloured_noise, mix_at_snr
from apps.corpus.plan import CorpusConfig, Utterance, plan_corpus, split_voices, stable_hash
from apps.corpus.synth import SAMPLE_RATE, synthesize, write_wav
from apps.corpus.text import load_sentences
from apps.corpus.voices import ENGINES, Voice, available_voices

log = logging.getLogger(__name__)

CORPUS_FORMAT = 1
MAX_FAILED_FRACTION = 0.01


@dataclass(frozen=True)
class BuildReport:
    utterances: int
    made: int
    skipped: int
    failed: int
    hours: float
    seconds: float


def _progress(items: Iterable, total: int, desc: str, enabled: bool):
    if not enabled:
        return items
    from tqdm import tqdm

    return tqdm(items, total=total, desc=desc, unit="utt", smoothing=0.05)


def _read(path: Path) -> np.ndarray:
    data, rate = sf.read(str(path), dtype="float32")
    if rate != SAMPLE_RATE:
        raise ValueError(f"{path} is {rate} Hz, expected {SAMPLE_RATE}")
    return data


def _make_clean(row: Utterance, voice: Voice, out: Path) -> None:
    write_wav(out / row.path, synthesize(voice, row.text, speed=row.speed, whisper=row.whisper))


def _make_noisy(row: Utterance, out: Path, seed: int) -> None:
    speech = _read(out / "wav" / f"{row.source_id}.wav")
    rng = np.random.default_rng(stable_hash(seed, "noise", row.id))
    if row.noise == "babble":
        noise = babble([_read(out / "wav" / f"{i}.wav") for i in row.babble_ids], len(speech), rng)
    else:
        noise = coloured_noise(row.noise, len(speech), rng)
    write_wav(out / row.path, mix_at_snr(speech, noise, row.snr_db))


def _run_jobs(jobs: list[tuple[Utterance, Callable[[], None]]], workers: int, desc: str, progress: bool) -> list[str]:
    failed: list[str] = []
    if not jobs:
        return failed
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        futures = {pool.submit(fn): row for row, fn in jobs}
        for fut in _progress(as_completed(futures), len(futures), desc, progress):
            row = futures[fut]
            try:
                fut.result()
            except (RuntimeError, ValueError, OSError, subprocess.TimeoutExpired) as exc:
                log.warning("could not make %s: %s", row.id, exc)
                failed.append(row.id)
    return failed


def _engine_versions() -> dict[str, str]:
    versions = {}
    for name, cmd in (("flite", ["flite", "--version"]), ("espeak-ng", ["espeak-ng", "--version"]),
                      ("festival", ["festival", "--version"]), ("sox", ["sox", "--version"])):
        if shutil.which(cmd[0]):
            proc = subprocess.run(cmd, capture_output=True, text=True)
            text = (proc.stdout or proc.stderr).strip()
            lines = text.splitlines() or [""]
            versions[name] = next((ln.strip() for ln in lines if "version" in ln.lower()), lines[0].strip())
    return versions


def _check_same_config(out: Path, config: CorpusConfig) -> None:
    """Resuming is only sound with the same config: otherwise existing files would be stale."""
    wanted = json.loads(json.dumps({"format": CORPUS_FORMAT, "config": config.to_dict()}))
    marker = out / "build.json"
    if marker.is_file():
        found = json.loads(marker.read_text(encoding="utf-8"))
        if found != wanted:
            raise ValueError(f"{out} holds a corpus built with a different config or seed; use a new --out directory")
    else:
        marker.write_text(json.dumps(wanted, indent=1) + "\n", encoding="utf-8")


def build_corpus(out_dir: str | Path, config: CorpusConfig, jobs: int = 2, progress: bool = True) -> BuildReport:
    """Generate (or resume) the corpus described by ``config`` under ``out_dir``."""
    start = time.perf_counter()
    unknown = set(config.engines or ()) - set(ENGINES)
    if unknown:
        raise ValueError(f"unknown TTS engine(s) {sorted(unknown)}; expected some of {list(ENGINES)}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    _check_same_config(out, config)
    voices = available_voices(config.engines)
    if not voices:
        raise FileNotFoundError("no TTS engine is installed: apt-get install flite espeak-ng festival sox")
    sentences = load_sentences()
    rows = plan_corpus(sentences, voices, config)
    by_speaker = {v.speaker_id: v for v in voices}
    log.info("corpus plan: %d utterances, %d voices, %d candidate sentences", len(rows), len(voices), len(sentences))

    existing = {r.id for r in rows if (out / r.path).is_file()}
    first = [(r, lambda r=r: _make_clean(r, by_speaker[r.speaker_id], out))
             for r in rows if r.style != "noisy" and r.id not in existing]
    failed = _run_jobs(first, jobs, "synthesis", progress)
    bad = set(failed)
    second = [(r, lambda r=r: _make_noisy(r, out, config.seed)) for r in rows
              if r.style == "noisy" and r.id not in existing
              and r.source_id not in bad and not bad.intersection(r.babble_ids)]
    failed += _run_jobs(second, jobs, "noise", progress)
    made_rows = [r for r in rows if (out / r.path).is_file()]
    missing = len(rows) - len(made_rows)
    if missing > MAX_FAILED_FRACTION * len(rows):
        raise RuntimeError(f"{missing} of {len(rows)} utterances could not be made (see the warnings above)")

    total_s = 0.0
    with open(out / "manifest.jsonl.part", "w", encoding="utf-8") as f:
        for row in made_rows:
            duration = sf.info(str(out / row.path)).frames / SAMPLE_RATE
            total_s += duration
            record = asdict(row) | {"path": row.path, "duration_s": round(duration, 3), "sample_rate": SAMPLE_RATE}
            f.write(json.dumps(record, ensure_ascii=False) + "\n")
    (out / "manifest.jsonl.part").replace(out / "manifest.jsonl")
    voice_split = split_voices(voices)
    meta = {
        "format": CORPUS_FORMAT,
        "config": config.to_dict(),
        "sample_rate": SAMPLE_RATE,
        "text_sources": sorted({r.text_source for r in made_rows}),
        # the plan depends on the installed text packages: these tell whether two machines agree
        "candidate_sentences": len(sentences),
        "candidate_sentences_sha256": hashlib.sha256("\n".join(s.text for s in sentences).encode()).hexdigest(),
        "voices": {split: [v.speaker_id for v in vs] for split, vs in voice_split.items()},
        "engines": _engine_versions(),
        "utterances": len(made_rows),
        "hours": round(total_s / 3600, 4),
    }
    (out / "corpus.json").write_text(json.dumps(meta, indent=1) + "\n", encoding="utf-8")
    report = BuildReport(
        utterances=len(made_rows), made=len(made_rows) - len(existing & {r.id for r in made_rows}),
        skipped=len(existing), failed=missing, hours=total_s / 3600, seconds=time.perf_counter() - start,
    )
    log.info("corpus: %d utterances (%d made, %d already there, %d failed), %.2f h of audio, in %.0f s",
             report.utterances, report.made, report.skipped, report.failed, report.hours, report.seconds)
    return report
