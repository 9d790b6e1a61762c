"""A generic JSONL manifest: one object per line with any of the :class:`~eval.data.base.Sample` fields.

Audio fields (``audio``, ``prompt_audio``, ``speaker_ref``, ``source_ref``, and ``input``/``output`` of each
entry of ``examples``) are paths relative to the manifest. ``DIR/<split>.jsonl`` (default ``test``).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import fields

from eval.data.base import DatasetReader, Sample, read_jsonl

AUDIO_FIELDS = ("audio", "prompt_audio", "speaker_ref", "source_ref")
FIELDS = {f.name for f in fields(Sample)} - {"error"}


class JSONLManifest(DatasetReader):
    name = "jsonl"
    description = "generic JSONL manifest (id, audio, text, reference, question, choices, answer, ...)"
    layout = "DIR/<split>.jsonl, one JSON object per line; paths relative to the file"

    def samples(self) -> Iterator[Sample]:
        path = self.root / f"{self.split or 'test'}.jsonl"
        if not path.is_file():
            raise FileNotFoundError(f"manifest {path} not found ({self.layout})")
        seen: set[str] = set()
        for n, obj in read_jsonl(path):
            where = f"{path}:{n}"
            unknown = set(obj) - FIELDS
            if unknown:
                raise ValueError(f"{where}: unknown field(s) {sorted(unknown)}; allowed: {sorted(FIELDS)}")
            if "id" not in obj:
                raise ValueError(f"{where}: every line needs an 'id'")
            sid = str(obj["id"])
            if sid in seen:
                raise ValueError(f"{where}: duplicate id {sid!r}")
            seen.add(sid)
            err = None
            for key in AUDIO_FIELDS:
                if obj.get(key):
                    obj[key], e = self.audio_path(str(obj[key]), path.parent, where)
                    err = err or e
            for ex in obj.get("examples") or []:
                for key in ("input", "output"):
                    if key in ex:
                        ex[key], e = self.audio_path(str(ex[key]), path.parent, where)
                        err = err or e
            obj["id"] = sid
            yield Sample(**obj, error=err)
