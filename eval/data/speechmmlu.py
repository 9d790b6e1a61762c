"""SpeechMMLU (MMLU read aloud) in four modality combinations: t2t, s2t, t2s, s2s.

``DIR/<split>.jsonl`` (default ``test``), one item per line: ``id``, ``subject``, ``question``, ``choices``
(four strings), ``answer`` (letter), and for the speech modes ``question_audio`` (the question and choices
read aloud; path relative to the file). The option ``modality`` is recorded on each sample; the task kind
decides whether the model hears the question (s2*) and whether it answers in speech (*2s). ``shots``
(default 0) prepends that many items of the same subject, with their answers, to a text question.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator

from eval.data.base import DatasetReader, Sample, first, read_jsonl
from eval.data.mcq import parse_choices

MODALITIES = ("t2t", "s2t", "t2s", "s2s")


class SpeechMMLU(DatasetReader):
    name = "speechmmlu"
    description = "SpeechMMLU multiple choice, text or speech question / answer (t2t, s2t, t2s, s2s)"
    layout = "DIR/<split>.jsonl: id, subject, question, choices, answer letter, question_audio (speech modes)"

    def samples(self) -> Iterator[Sample]:
        modality = self.options.get("modality", "t2t")
        if modality not in MODALITIES:
            raise ValueError(f"speechmmlu: modality {modality!r} must be one of {MODALITIES}")
        path = self.root / f"{self.split or 'test'}.jsonl"
        if not path.is_file():
            raise FileNotFoundError(f"SpeechMMLU file {path} not found ({self.layout})")
        items = []
        for n, obj in read_jsonl(path):
            choices = parse_choices(obj)
            if not obj.get("question") or not choices or not obj.get("answer"):
                raise ValueError(f"{path}:{n}: a SpeechMMLU item needs question, choices and answer")
            items.append((n, obj, choices))
        by_subject: dict[str, list] = defaultdict(list)
        for it in items:
            by_subject[str(it[1].get("subject", "all"))].append(it)
        shots = int(self.options.get("shots", 0))
        for n, obj, choices in items:
            subject = str(obj.get("subject", "all"))
            audio, err = None, None
            if modality.startswith("s"):
                rel = first(obj, "question_audio", "audio")
                if not rel:
                    raise ValueError(f"{path}:{n}: the {modality} mode needs question_audio")
                audio, err = self.audio_path(str(rel), path.parent, f"{path}:{n}")
            context = [o for (_, o, _) in by_subject[subject] if o is not obj][:shots]
            prefix = "".join(f"{o['question']}\n" + "".join(f"({chr(65 + i)}) {c}\n" for i, c in
                                                            enumerate(parse_choices(o) or []))
                             + f"Answer: {o['answer']}\n\n" for o in context)
            yield Sample(id=str(obj.get("id", n)), audio=audio, question=prefix + str(obj["question"]),
                         choices=choices, answer=str(obj["answer"]),
                         meta={"category": subject, "modality": modality}, error=err)
