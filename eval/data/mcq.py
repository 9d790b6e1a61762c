"""Multiple-choice audio understanding: MMAU, MMAR, MMSU style JSON (audio path, question, choices, answer).

``DIR/<split>.json`` (a list) or ``DIR/<split>.jsonl``. Keys accepted per item (first present wins):
id: ``id``, ``question_id``, ``index``; audio: ``audio_path``, ``audio_id``, ``audio``, ``wav``, ``path``;
question; choices: ``choices`` (list, or a dict A..D) / ``options``, or ``choice_a``..``choice_d`` (MMSU);
answer: ``answer`` / ``answer_gt`` (letter or choice text); category: ``task``, ``category``, ``modality``,
``sub-category``. Audio paths are relative to the JSON file.
"""

from __future__ import annotations

from collections.abc import Iterator

from eval.data.base import DatasetReader, Sample, first, read_json_items

LETTERS = "ABCDEFGHIJ"


def parse_choices(obj: dict) -> list[str] | None:
    raw = first(obj, "choices", "options")
    if raw is None:
        keyed = [obj[k] for k in (f"choice_{c}" for c in "abcdefghij") if k in obj]
        return [str(c) for c in keyed] or None
    if isinstance(raw, dict):
        return [str(raw[k]) for k in sorted(raw)]
    if isinstance(raw, list):
        return [str(c) for c in raw]
    return None


class MCQ(DatasetReader):
    name = "mcq"
    description = "multiple-choice audio QA in the MMAU / MMAR / MMSU JSON style"
    layout = "DIR/<split>.json or .jsonl: items with audio path, question, choices, answer"
    default_split = "test"

    def samples(self) -> Iterator[Sample]:
        split = self.split or self.default_split
        path = next((p for p in (self.root / f"{split}.json", self.root / f"{split}.jsonl") if p.is_file()), None)
        if path is None:
            raise FileNotFoundError(f"{self.name}: no {split}.json or {split}.jsonl in {self.root} ({self.layout})")
        for n, obj in read_json_items(path):
            where = f"{path}:{n}" if path.suffix == ".jsonl" else f"{path} item {n}"
            question, choices = first(obj, "question", "query"), parse_choices(obj)
            answer = first(obj, "answer", "answer_gt", "gt")
            rel = first(obj, "audio_path", "audio_id", "audio", "wav", "path")
            if not question or not choices or answer is None or not rel:
                raise ValueError(f"{where}: an MCQ item needs audio path, question, choices and answer")
            audio, err = self.audio_path(str(rel), path.parent, where)
            category = first(obj, "task", "category", "modality", "sub-category", default="all")
            sid = str(first(obj, "id", "question_id", "index", default=n))
            yield Sample(id=sid, audio=audio, question=str(question), choices=choices, answer=str(answer),
                         meta={"category": str(category)}, error=err)


class MMAU(MCQ):
    name = "mmau"
    description = "MMAU (test-mini) multiple choice: sound, music, speech"
    default_split = "mmau-test-mini"


class MMAR(MCQ):
    name = "mmar"
    description = "MMAR multiple choice (audio reasoning)"
    default_split = "MMAR-meta"


class MMSU(MCQ):
    name = "mmsu"
    description = "MMSU multiple choice (speech understanding and reasoning)"
    default_split = "mmsu"
