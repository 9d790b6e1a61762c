"""``eval.run``: run tasks on a model, one JSONL record per finished sample, resumable, sharded by rank."""

from __future__ import annotations

import logging
import math
import os
import re
import time
from pathlib import Path
from typing import Any

import numpy as np

from eval import records
from eval.data import Sample, get_reader
from eval.distributed import Barrier, rank_world
from eval.mcq import format_question
from eval.models.base import ModelAdapter, Output
from eval.tasks import AUTO_CAP_RULE, TaskSpec  # noqa: F401 (AUTO_CAP_RULE: re-exported)

log = logging.getLogger(__name__)

# Generation caps (patches at 6.25/s) that still stop a model that never emits its end token: about twice
# the expected length, from the input only (never the reference). The rule's version is part of the cache key.
PATCHES_PER_SECOND = 6.25
CHARS_PER_SECOND = 16  # speech -> text length estimate for outputs that stream text before speech


def auto_cap(task: TaskSpec, sample: Sample) -> int | None:
    """A max_new_patches for this sample from its text length (speech out) or audio length (text out)."""
    if task.kind in ("tts", "instruct_tts") and sample.text:
        n = len(sample.text.encode("utf-8"))
        return n + 12 + math.ceil(2 * 0.07 * n * PATCHES_PER_SECOND)
    if task.kind in ("asr",) and sample.meta.get("duration_s"):
        return 16 + math.ceil(30 * float(sample.meta["duration_s"]))  # ~2x the bytes of speech at 15 chars/s
    if task.kind in ("few_shot_s2s", "continuation") and sample.meta.get("duration_s"):
        # the speech-out formats stream the text first, then the speech
        seconds = float(sample.meta["duration_s"])
        return 12 + math.ceil(CHARS_PER_SECOND * seconds) + math.ceil(2 * seconds * PATCHES_PER_SECOND)
    return None


def call_model(task: TaskSpec, sample: Sample, model: ModelAdapter) -> Output:
    gen = dict(task.generation)
    if gen.pop("auto_cap", False) and "max_new_patches" not in gen:
        cap = auto_cap(task, sample)
        if cap:
            gen["max_new_patches"] = cap
    k = task.kind
    if k == "asr":
        return model.asr(sample.audio, task.language, gen)
    if k in ("tts", "instruct_tts"):
        voice = sample.prompt_audio if task.voice_prompt else None
        return model.tts(sample.text, voice, sample.instruction, gen)
    if k == "few_shot_s2s":
        return model.few_shot(sample.examples or [], sample.audio, sample.instruction or task.options.get(
            "instruction"), gen)
    if k == "mcq":
        return model.understand(sample.audio, format_question(sample.question, sample.choices), task.thinking, gen)
    if k in ("text_mcq", "spoken_mcq"):
        msg = {"role": "user", "content": format_question(sample.question, sample.choices)}
        if sample.audio:  # spoken question: the audio carries question and choices, the text the instruction
            msg = {"role": "user", "audio": sample.audio, "content": "Answer with the letter of the correct option."}
        return model.chat([msg], "audio" if k == "spoken_mcq" else "text", task.thinking, gen)
    if k == "spoken_qa":
        return model.chat([{"role": "user", "audio": sample.audio, "content": sample.question or ""}], task.output,
                          task.thinking, gen)
    if k == "continuation":
        return model.continue_speech(sample.audio, gen)
    if k == "resynth":
        return model.resynthesize(sample.audio)
    raise ValueError(f"task {task.name}: unknown kind {k!r}")


def _safe_name(sid: str) -> str:
    name = re.sub(r"[^A-Za-z0-9._-]+", "_", sid).strip("._") or "sample"
    return name[:150]


def _write_wav(path: Path, audio: np.ndarray, rate: int) -> None:
    import soundfile as sf

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    # float32 keeps what the model produced (NaN included) for the scorers to judge
    sf.write(str(tmp), np.asarray(audio, dtype=np.float32).reshape(-1), int(rate), subtype="FLOAT", format="WAV")
    os.replace(tmp, path)


def infer_one(task: TaskSpec, sample: Sample, model: ModelAdapter, task_dir: Path, key: dict[str, str]) -> dict:
    """Run one sample and build its record (errors are recorded, never raised)."""
    rec: dict[str, Any] = {"id": sample.id, "task": task.name, **key, "reference": sample.reference,
                           "input": {k: v for k, v in sample.to_dict().items() if k not in ("id", "reference")}}
    if sample.error:
        rec.update(error=sample.error, error_kind="data")
        return rec
    t0 = time.perf_counter()
    try:
        out = call_model(task, sample, model)
    except Exception as exc:  # one bad sample must not end the run: record it
        rec.update(error=f"{type(exc).__name__}: {exc}", error_kind="model",
                   timings={"infer_s": round(time.perf_counter() - t0, 4)})
        log.warning("%s %s: %s", task.name, sample.id, rec["error"])
        return rec
    rec["timings"] = {"infer_s": round(time.perf_counter() - t0, 4)}
    rec["prompt"] = out.prompt
    if out.text is not None:
        rec["hypothesis"] = out.text
    if out.thinking:
        rec["thinking"] = out.thinking
    if out.audio is not None:
        rel = Path("audio") / f"{_safe_name(sample.id)}.wav"
        _write_wav(task_dir / rel, out.audio, out.sample_rate or 24000)
        rec["audio"], rec["audio_rel"] = str((task_dir / rel).resolve()), str(rel)
        rec["audio_seconds"] = round(len(out.audio) / float(out.sample_rate or 24000), 3)
    elif task.kind in ("tts", "instruct_tts", "few_shot_s2s", "continuation", "resynth", "spoken_mcq") or (
            task.kind == "spoken_qa" and task.output != "text"):
        rec["audio"] = None  # speech was asked for and none came: scored as a failure
    if out.extra:
        rec["extra"] = out.extra
    return rec


def load_samples(task: TaskSpec, data_root: Path, limit: int | None = None) -> list[Sample]:
    reader = get_reader(task.dataset)(data_root, task.split, task.options)
    samples = list(reader.samples())
    if limit is not None:
        samples = samples[:limit]
    seen: set[str] = set()
    for s in samples:
        if s.id in seen:
            raise ValueError(f"task {task.name}: duplicate sample id {s.id!r} in {data_root}")
        seen.add(s.id)
    return samples


def run_task(task: TaskSpec, model: ModelAdapter, data_root: Path, out: Path, limit: int | None = None,
             rank: int = 0, world: int = 1, progress: bool = True,
             retry_errors: bool = False) -> tuple[Path, list[str]]:
    """Infer this rank's share of the task's samples; returns (task folder, ids in dataset order)."""
    from tqdm import tqdm

    samples = load_samples(task, data_root, limit)
    task_dir = out / model.label() / task.name
    task_dir.mkdir(parents=True, exist_ok=True)
    fp = model.fingerprint()
    key = {"model": model.label(), "fingerprint": records.fingerprint_hash(fp), "gen_hash": task.generation_hash()}
    mine = samples[rank::world]
    path = records.shard_file(task_dir, rank, world)
    records.repair(path)
    done = records.task_records(task_dir)
    stale = next((r for r in done.values() if (r.get("fingerprint"), r.get("gen_hash")) != (
        key["fingerprint"], key["gen_hash"])), None)
    if stale is not None:
        raise ValueError(f"{task_dir} holds results of another model or generation setting (sample {stale['id']}: "
                         f"fingerprint {stale.get('fingerprint')}, gen {stale.get('gen_hash')}; now "
                         f"{key['fingerprint']}, {key['gen_hash']}): use another --out or delete that folder")
    todo = [s for s in mine if s.id not in done or (retry_errors and done[s.id].get("error"))]
    if rank == 0:
        import json

        (task_dir / "task.json").write_text(json.dumps({"task": task.to_dict(), **key, "model_info": fp,
                                                        "data_root": str(data_root)}, indent=1, default=str))
    log.info("%s: %d samples, this rank %d, already done %d, to run %d", task.name, len(samples), len(mine),
             len(mine) - len(todo), len(todo))
    bar = tqdm(todo, desc=f"{task.name}" + (f" [rank {rank}]" if world > 1 else ""), unit="sample",
               disable=not progress, dynamic_ncols=True)
    for s in bar:
        records.append(path, infer_one(task, s, model, task_dir, key))
    return task_dir, [s.id for s in samples]


def run(tasks: list[TaskSpec], model: ModelAdapter, data_roots: dict[str, Path], out: Path, limit: int | None = None,
        progress: bool = True, score: bool = True, scorer_options: dict[str, Any] | None = None,
        retry_errors: bool = False) -> list[Path]:
    """Run (and unless ``score=False`` score) every task; sharded when RANK / WORLD_SIZE are set.

    ``data_roots`` maps task name to its data folder. Returns the task folders (rank 0: merged and scored).
    """
    rank, world = rank_world()
    barrier = Barrier(rank, world)
    done = []
    try:
        for task in tasks:
            done.append(run_task(task, model, data_roots[task.name], out, limit, rank, world, progress,
                                 retry_errors))
        barrier.wait()
        if rank == 0:
            for task_dir, order in done:
                if world > 1 or any(task_dir.glob("samples.rank*.jsonl")):
                    records.merge(task_dir, order)
            if score:
                from eval.scoring import Scorers, score_task

                scorers = Scorers(**(scorer_options or {}))
                for task, (task_dir, _) in zip(tasks, done):
                    score_task(task_dir, task, scorers, progress=progress)
        barrier.wait()
    finally:
        barrier.close()
    return [d for d, _ in done]
