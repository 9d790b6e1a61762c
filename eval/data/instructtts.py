"""InstructTTSEval: text plus three style-instruction variants per item (APS, DSD, RP).

``DIR/<split>.jsonl`` or ``.json`` (split = language, default ``en``); items hold ``id``, ``text`` and the
instructions ``APS`` (acoustic-parameter specification), ``DSD`` (descriptive style directive) and ``RP``
(role-play). Option ``variant``: one of them, or ``all`` (default) for one sample per variant.
"""

from __future__ import annotations

from collections.abc import Iterator

from eval.data.base import DatasetReader, Sample, first, read_json_items

VARIANTS = ("APS", "DSD", "RP")


class InstructTTSEval(DatasetReader):
    name = "instructtts"
    description = "InstructTTSEval: instruction-following TTS (APS / DSD / RP instructions)"
    layout = "DIR/<lang>.jsonl or .json: id, text, APS, DSD, RP"

    def samples(self) -> Iterator[Sample]:
        lang = self.split or "en"
        path = next((p for p in (self.root / f"{lang}.jsonl", self.root / f"{lang}.json") if p.is_file()), None)
        if path is None:
            raise FileNotFoundError(f"InstructTTSEval: no {lang}.jsonl or {lang}.json in {self.root}")
        variant = self.options.get("variant", "all")
        wanted = VARIANTS if variant == "all" else (variant,)
        if any(v not in VARIANTS for v in wanted):
            raise ValueError(f"instructtts: variant {variant!r} must be one of {VARIANTS} or 'all'")
        for n, obj in read_json_items(path):
            text = first(obj, "text", "content")
            if not text:
                raise ValueError(f"{path}:{n}: an InstructTTSEval item needs 'text'")
            for v in wanted:
                if obj.get(v):
                    yield Sample(id=f"{first(obj, 'id', default=n)}#{v}", text=str(text), reference=str(text),
                                 instruction=str(obj[v]), meta={"category": v, "lang": lang})
