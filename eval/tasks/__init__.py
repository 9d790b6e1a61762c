"""Tasks are data: one YAML file per task in this folder (or in a user folder), discovered automatically.

A task file::

    name: librispeech_asr               # defaults to the file name
    description: ASR on LibriSpeech
    dataset: librispeech                 # a reader of eval.data
    split: test-clean                    # reader split (overridable with --split)
    options: {}                          # reader options
    kind: asr                            # what the model is asked to do (KINDS)
    language: en
    generation: {seed: 0}                # passed to the model adapter (max_new_patches, preset, speculative...)
    thinking: false                      # MCQ / dialogue: open a thinking block
    voice_prompt: false                  # TTS: clone the sample's prompt audio
    metrics: [wer]                       # eval.scoring.METRICS
    primary: wer
    higher_is_better: {wer: false}
    official: "MiMo-Audio-7B-Instruct 3.76"   # the figure the technical report gives (shown in reports)
    goals: {wer: "<= 0.25"}              # optional: checked in report.json and the summary

Unknown keys, a wrong type or an unknown kind/metric are errors that name the file and the line.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

KINDS = {
    "asr": "audio in, transcript out",
    "tts": "text in, speech out (voice_prompt: clone the prompt audio)",
    "instruct_tts": "text + style instruction in, speech out",
    "few_shot_s2s": "in-context speech-to-speech: example pairs + query audio in, speech out",
    "mcq": "audio + question + choices in, text answer out (answer extracted, thinking stripped)",
    "text_mcq": "text question + choices in, text answer out",
    "spoken_mcq": "question (text or audio) in, spoken answer out (transcribed, then extracted)",
    "spoken_qa": "audio question in, text (or speech with output: audio) answer out",
    "continuation": "speech prompt in, continued speech out",
    "resynth": "audio in, the audio tokenizer's reconstruction out (no LM)",
}
USER_DIR_ENV = "MIMO_EVAL_TASKS"  # extra task folders (os.pathsep separated); they override built-ins
_FIELDS = {"name", "description", "dataset", "split", "options", "kind", "language", "generation", "thinking",
           "voice_prompt", "output", "metrics", "primary", "higher_is_better", "official", "needs", "suite", "goals"}
_GOAL = re.compile(r"^\s*(<=|>=|<|>)\s*(-?\d+(?:\.\d+)?)\s*$")


# The metrics a task may name (implemented in eval.scoring.METRICS, which checks it has exactly these) and the
# version of each kind's automatic length-cap rule (part of the resume key: a new rule re-runs the samples).
METRIC_NAMES = ("wer", "input_wer", "sim", "dnsmos", "input_dnsmos", "accuracy", "judge", "acceptance",
                "nearest_voice")
AUTO_CAP_RULE = {"tts": "v1", "instruct_tts": "v1", "asr": "v2", "few_shot_s2s": "v3", "continuation": "v3"}


@dataclass(frozen=True)
class TaskSpec:
    name: str
    dataset: str
    kind: str
    metrics: tuple[str, ...]
    description: str = ""
    split: str | None = None
    options: dict[str, Any] = field(default_factory=dict)
    language: str = "en"
    generation: dict[str, Any] = field(default_factory=dict)
    thinking: bool = False
    voice_prompt: bool = False
    output: str = "text"  # spoken_qa: "text" or "audio"
    primary: str = ""
    higher_is_better: dict[str, bool] = field(default_factory=dict)
    official: str = ""
    needs: str = ""  # extra note on the data (shown by `eval list`)
    suite: str = ""  # "offline": data comes from the offline suite's builder
    goals: dict[str, str] = field(default_factory=dict)  # metric -> "<= 0.25" / ">= 0.8"
    source: str = ""

    def check_goals(self, metrics: dict[str, Any]) -> list[dict[str, Any]]:
        """Each goal with the measured value and whether it is met (None when the value is missing)."""
        import operator

        ops = {"<=": operator.le, ">=": operator.ge, "<": operator.lt, ">": operator.gt}
        out = []
        for metric, goal in self.goals.items():
            op, bound = _GOAL.match(goal).groups()
            value = metrics.get(metric)
            met = None if not isinstance(value, (int, float)) else bool(ops[op](value, float(bound)))
            out.append({"metric": metric, "goal": goal.strip(), "value": value, "met": met})
        return out

    def with_split(self, split: str | None) -> TaskSpec:
        from dataclasses import replace

        return self if split is None else replace(self, split=split)

    def generation_hash(self, extra: dict[str, Any] | None = None) -> str:
        """Hash of everything that changes the model's output for a sample (cache / resume key)."""
        payload = {"kind": self.kind, "generation": self.generation, "language": self.language,
                   "thinking": self.thinking, "voice_prompt": self.voice_prompt, "output": self.output,
                   "options": self.options, "split": self.split, **(extra or {})}
        if self.generation.get("auto_cap"):
            payload["auto_cap_rule"] = AUTO_CAP_RULE.get(self.kind)
        return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:12]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _line_of(text: str, key: str) -> int:
    """Line of a top-level key in a YAML mapping (1-based; 1 if not found)."""
    try:
        node = yaml.compose(text)
    except yaml.YAMLError:
        return 1
    if isinstance(node, yaml.MappingNode):
        for k, _ in node.value:
            if getattr(k, "value", None) == key:
                return k.start_mark.line + 1
    return 1


def parse_task(text: str, source: str) -> TaskSpec:
    """Validate one task file's text; errors name ``source`` and the line."""
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 1 if mark is not None else 1
        raise ValueError(f"{source}:{line}: malformed task file: {getattr(exc, 'problem', exc)}") from None
    if not isinstance(data, dict):
        raise ValueError(f"{source}:1: a task file must be a mapping of fields")

    def fail(key: str, msg: str) -> ValueError:
        return ValueError(f"{source}:{_line_of(text, key)}: {msg}")

    unknown = sorted(set(data) - _FIELDS)
    if unknown:
        raise fail(unknown[0], f"unknown field {unknown[0]!r}; allowed: {', '.join(sorted(_FIELDS))}")
    for key in ("dataset", "kind", "metrics"):
        if key not in data:
            raise ValueError(f"{source}:1: missing required field {key!r}")
    if data["kind"] not in KINDS:
        raise fail("kind", f"unknown kind {data['kind']!r}; known: {', '.join(KINDS)}")
    metrics = data["metrics"]
    if not isinstance(metrics, list) or not metrics or not all(isinstance(m, str) for m in metrics):
        raise fail("metrics", "metrics must be a non-empty list of names")
    bad = [m for m in metrics if m not in METRIC_NAMES]
    if bad:
        raise fail("metrics", f"unknown metric {bad[0]!r}; known: {', '.join(sorted(METRIC_NAMES))}")
    for key, typ in (("options", dict), ("generation", dict), ("higher_is_better", dict), ("thinking", bool),
                     ("voice_prompt", bool), ("split", str), ("language", str), ("description", str),
                     ("official", str), ("dataset", str), ("output", str), ("needs", str), ("suite", str)):
        if key in data and data[key] is not None and not isinstance(data[key], typ):
            raise fail(key, f"field {key!r} must be a {typ.__name__}")
    goals = data.get("goals") or {}
    if not isinstance(goals, dict) or not all(isinstance(v, str) and _GOAL.match(v) for v in goals.values()):
        raise fail("goals", "goals must map metric names to strings such as '<= 0.25' or '>= 0.8'")
    name = data.get("name") or Path(source).stem
    return TaskSpec(name=name, dataset=data["dataset"], kind=data["kind"], metrics=tuple(metrics),
                    description=data.get("description", ""), split=data.get("split"),
                    options=data.get("options") or {}, language=data.get("language", "en"),
                    generation=data.get("generation") or {}, thinking=data.get("thinking", False),
                    voice_prompt=data.get("voice_prompt", False), output=data.get("output", "text"),
                    primary=data.get("primary") or metrics[0], higher_is_better=data.get("higher_is_better") or {},
                    official=data.get("official", ""), needs=data.get("needs", ""), suite=data.get("suite", ""),
                    goals=goals, source=source)


def task_dirs() -> list[Path]:
    dirs = [Path(__file__).parent]
    dirs += [Path(p) for p in os.environ.get(USER_DIR_ENV, "").split(os.pathsep) if p]
    return dirs


def load_tasks(extra_dirs: list[Path] | None = None) -> dict[str, TaskSpec]:
    """Every task file of the built-in folder, then ``$MIMO_EVAL_TASKS`` and ``extra_dirs`` (later wins)."""
    tasks: dict[str, TaskSpec] = {}
    for d in task_dirs() + list(extra_dirs or []):
        for path in sorted(Path(d).glob("*.yaml")):
            spec = parse_task(path.read_text(encoding="utf-8"), str(path))
            tasks[spec.name] = spec
    return dict(sorted(tasks.items()))


def get_task(name: str, extra_dirs: list[Path] | None = None) -> TaskSpec:
    tasks = load_tasks(extra_dirs)
    if name not in tasks:
        raise ValueError(f"unknown task {name!r}; `mimo-audio eval list` shows the {len(tasks)} tasks")
    return tasks[name]
