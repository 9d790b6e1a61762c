"""The few-shot task library: JSON task files (instruction, example pairs, modality, sampler preset).

Built-in tasks ship in ``mimo_audio/fewshot_tasks/``; a user folder (``$MIMO_AUDIO_HOME/tasks`` by default)
adds tasks or overrides built-in ones of the same name. A task file::

    {
      "name": "voice_conversion",
      "description": "Say the query in the voice of the example outputs.",
      "modality": "speech_to_speech",            # or "speech_to_text" (few-shot audio QA)
      "instruction": "",                         # goes after "[Int]:" (may be empty)
      "preset": "in_context_learning_s2s",       # sampler preset (mimo_audio.sampling.PRESETS)
      "max_new_patches": 1000,                   # optional
      "examples": [                              # optional; paths relative to the task file
        {"input": "in1.wav", "output": "out1.wav", "output_text": "hello"}
      ]
    }

For ``speech_to_text`` tasks an example is ``{"audio": ..., "question": ..., "answer": ...}``. Files are
validated on load; a problem is a ``ValueError`` naming the file and the field.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from .sampling import PRESETS
from .voices import default_home

MODALITIES = ("speech_to_speech", "speech_to_text")
_EXAMPLE_KEYS = {
    "speech_to_speech": {"input": str, "output": str, "output_text": str},
    "speech_to_text": {"audio": str, "question": str, "answer": str},
}
_OPTIONAL_EXAMPLE_KEYS = {"output_text"}


@dataclass(frozen=True)
class FewShotTask:
    name: str
    modality: str
    instruction: str = ""
    description: str = ""
    preset: str = "in_context_learning_s2s"
    max_new_patches: int | None = None
    examples: tuple[dict[str, str], ...] = field(default_factory=tuple)  # audio paths resolved to absolute
    source: str = ""


def _fail(src: str, msg: str) -> ValueError:
    return ValueError(f"few-shot task file {src}: {msg}")


def parse_task(data: Any, src: str, base_dir: Path | None) -> FewShotTask:
    if not isinstance(data, dict):
        raise _fail(src, "top level must be a JSON object")
    allowed = {"name", "modality", "instruction", "description", "preset", "max_new_patches", "examples"}
    unknown = set(data) - allowed
    if unknown:
        raise _fail(src, f"unknown field(s) {sorted(unknown)}; allowed: {sorted(allowed)}")
    for key in ("name", "modality"):
        if not isinstance(data.get(key), str) or not data[key]:
            raise _fail(src, f"field {key!r} is required and must be a non-empty string")
    modality = data["modality"]
    if modality not in MODALITIES:
        raise _fail(src, f"modality {modality!r} must be one of {MODALITIES}")
    for key in ("instruction", "description", "preset"):
        if key in data and not isinstance(data[key], str):
            raise _fail(src, f"field {key!r} must be a string")
    preset = data.get("preset", "in_context_learning_s2s" if modality == "speech_to_speech" else "qa")
    if preset not in PRESETS:
        raise _fail(src, f"unknown sampler preset {preset!r}; known: {sorted(PRESETS)}")
    mnp = data.get("max_new_patches")
    if mnp is not None and (not isinstance(mnp, int) or mnp < 1):
        raise _fail(src, "max_new_patches must be a positive integer")
    examples = data.get("examples", [])
    if not isinstance(examples, list):
        raise _fail(src, "'examples' must be a list")
    spec = _EXAMPLE_KEYS[modality]
    resolved = []
    for i, ex in enumerate(examples):
        if not isinstance(ex, dict):
            raise _fail(src, f"example {i} must be an object")
        missing = [k for k in spec if k not in ex and k not in _OPTIONAL_EXAMPLE_KEYS]
        extra = set(ex) - set(spec)
        if missing or extra:
            raise _fail(src, f"example {i}: missing {missing}, unknown {sorted(extra)} (expected keys {list(spec)})")
        out = {}
        for k, v in ex.items():
            if not isinstance(v, str):
                raise _fail(src, f"example {i}: field {k!r} must be a string")
            if k in ("input", "output", "audio"):
                p = Path(v)
                if not p.is_absolute() and base_dir is not None:
                    p = base_dir / p
                if not p.is_file():
                    raise _fail(src, f"example {i}: audio file {v!r} not found (looked at {p})")
                v = str(p)
            out[k] = v
        resolved.append(out)
    return FewShotTask(
        name=data["name"],
        modality=modality,
        instruction=data.get("instruction", ""),
        description=data.get("description", ""),
        preset=preset,
        max_new_patches=mnp,
        examples=tuple(resolved),
        source=src,
    )


def load_task_file(path: str | Path) -> FewShotTask:
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise _fail(str(path), f"invalid JSON: {exc}") from exc
    task = parse_task(data, str(path), path.parent)
    if task.name != path.stem:
        raise _fail(str(path), f"name {task.name!r} must equal the file name {path.stem!r}")
    return task


class TaskLibrary:
    """Built-in tasks plus a user folder (user tasks win on name clashes)."""

    def __init__(self, user_dir: str | Path | None = None):
        self.user_dir = Path(user_dir) if user_dir is not None else default_home() / "tasks"

    def _files(self) -> dict[str, Path]:
        files: dict[str, Path] = {}
        builtin = resources.files("mimo_audio") / "fewshot_tasks"
        for entry in builtin.iterdir():
            if entry.name.endswith(".json"):
                files[entry.name[:-5]] = Path(str(entry))
        if self.user_dir.is_dir():
            for p in self.user_dir.glob("*.json"):
                files[p.stem] = p
        return files

    def names(self) -> list[str]:
        return sorted(self._files())

    def get(self, name: str) -> FewShotTask:
        files = self._files()
        if name not in files:
            raise ValueError(f"unknown few-shot task {name!r}; known: {', '.join(sorted(files))}")
        return load_task_file(files[name])
