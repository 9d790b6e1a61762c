"""Evaluation: the suite runner (``eval.run``, ``eval.score``, ``eval.report``), task and dataset registries,
model adapters, and the offline scorers (:mod:`eval.scorers`).

>>> from eval import get_task, make_adapter, run
>>> run([get_task("librispeech_asr")], make_adapter(), {"librispeech_asr": Path("LibriSpeech")}, Path("out"))
... # doctest: +SKIP
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "run": "eval.runner", "run_task": "eval.runner", "score_task": "eval.scoring", "Scorers": "eval.scoring",
    "report": "eval.report", "get_task": "eval.tasks", "load_tasks": "eval.tasks", "TaskSpec": "eval.tasks",
    "make_adapter": "eval.models", "get_reader": "eval.data", "readers": "eval.data",
}


def score(task_dir, task=None, **scorer_options: Any) -> dict:
    """Re-score one task folder from its cached records (the task spec is read from its ``task.json``)."""
    import json
    from pathlib import Path

    from eval.scoring import Scorers, score_task
    from eval.tasks import TaskSpec

    task_dir = Path(task_dir)
    if task is None:
        meta = json.loads((task_dir / "task.json").read_text(encoding="utf-8"))["task"]
        meta["metrics"] = tuple(meta["metrics"])
        task = TaskSpec(**meta)
    return score_task(task_dir, task, Scorers(**scorer_options))


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'eval' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)


__all__ = sorted([*_EXPORTS, "score"])
