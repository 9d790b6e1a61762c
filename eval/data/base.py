"""Samples, dataset readers and their registry; audio paths are confined to the data root.

A reader turns a local data folder in a benchmark's own layout into :class:`Sample` objects. A new reader is
one small subclass of :class:`DatasetReader` with a ``name`` (it registers itself on import); the modules of
:mod:`eval.data` are imported automatically, so a reader dropped there needs no other change.

Problems with the *data description* (a malformed manifest line) raise ``ValueError`` naming the file and
line. Problems with one *sample's audio* (missing, or a path escaping the data root) are kept on the sample
as ``error``: the runner records it and goes on.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, ClassVar

log = logging.getLogger(__name__)


@dataclass
class Sample:
    """One evaluation item. Paths are absolute; fields a task kind does not use stay ``None``."""

    id: str
    text: str | None = None  # input text (TTS target text, a text question)
    audio: str | None = None  # input audio (ASR, understanding, few-shot query, continuation)
    reference: str | None = None  # reference text (transcript, TTS text, spoken answer)
    prompt_audio: str | None = None  # voice prompt (Seed-TTS-eval prompt wav)
    prompt_text: str | None = None
    question: str | None = None
    choices: list[str] | None = None
    answer: str | None = None  # MCQ answer: a letter or the choice text
    instruction: str | None = None
    examples: list[dict] | None = None  # few-shot pairs {"input", "output", "output_text"}
    speaker_ref: str | None = None  # audio of the speaker the output should sound like (SIM)
    source_ref: str | None = None  # audio of the speaker it should not sound like (voice conversion)
    meta: dict[str, Any] = field(default_factory=dict)
    error: str | None = None  # a data problem of this sample (missing audio, path outside the root)

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if v is not None and v != {}}


class DatasetReader:
    """Base class: ``samples()`` yields the split's samples in a fixed order."""

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    layout: ClassVar[str] = ""  # what the data root must hold (shown by ``mimo-audio eval list``)
    registry: ClassVar[dict[str, type[DatasetReader]]] = {}

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if cls.name:
            DatasetReader.registry[cls.name] = cls

    def __init__(self, root: str | Path, split: str | None = None, options: dict[str, Any] | None = None) -> None:
        self.root = Path(root).resolve()
        if not self.root.is_dir():
            raise FileNotFoundError(f"data root {root} is not a directory ({self.name} needs: {self.layout})")
        self.split = split
        self.options = dict(options or {})

    def samples(self) -> Iterator[Sample]:
        raise NotImplementedError

    # ------------------------------------------------------------------ helpers for readers
    def audio_path(self, value: str, base: Path, where: str) -> tuple[str, str | None]:
        """(absolute path, error) for an audio reference relative to ``base``; errors are per-sample."""
        path = (base / value).resolve()
        if not path.is_relative_to(self.root):
            return str(path), f"{where}: refused: audio path {value!r} escapes the data root {self.root}"
        if not path.is_file():
            return str(path), f"{where}: audio file not found: {path}"
        return str(path), None


def read_jsonl(path: Path) -> Iterator[tuple[int, dict]]:
    """(line number, object) of a JSONL file; a malformed line raises naming the file and line."""
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ValueError(f"{path}:{n}: malformed JSON line: {exc.msg}") from None
            if not isinstance(obj, dict):
                raise ValueError(f"{path}:{n}: expected a JSON object, got {type(obj).__name__}")
            yield n, obj


def read_json_items(path: Path) -> Iterator[tuple[int, dict]]:
    """Items of a JSON list file (or JSONL when the name ends in .jsonl), with their position (1-based)."""
    if path.suffix == ".jsonl":
        yield from read_jsonl(path)
        return
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}:{exc.lineno}: malformed JSON: {exc.msg}") from None
    if isinstance(data, dict):  # {"id": {...}} or {"data": [...]}
        data = data.get("data", list(data.values()))
    if not isinstance(data, list):
        raise ValueError(f"{path}: expected a JSON list of items")
    for i, obj in enumerate(data, 1):
        if not isinstance(obj, dict):
            raise ValueError(f"{path}: item {i}: expected a JSON object")
        yield i, obj


def first(obj: dict, *keys: str, default: Any = None) -> Any:
    """The value of the first key present in ``obj``."""
    for k in keys:
        if k in obj and obj[k] is not None:
            return obj[k]
    return default


def get_reader(name: str) -> type[DatasetReader]:
    from eval.data import discover

    discover()
    if name not in DatasetReader.registry:
        raise ValueError(f"unknown dataset reader {name!r}; known: {', '.join(sorted(DatasetReader.registry))}")
    return DatasetReader.registry[name]
