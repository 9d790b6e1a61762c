"""LibriSpeech: ``<split>/<speaker>/<chapter>/<speaker>-<chapter>-<utt>.flac`` + ``<speaker>-<chapter>.trans.txt``."""

from __future__ import annotations

from collections.abc import Iterator

from eval.data.base import DatasetReader, Sample


class LibriSpeech(DatasetReader):
    name = "librispeech"
    description = "LibriSpeech ASR (test-clean, test-other, dev-*)"
    layout = "DIR/<split>/<spk>/<chapter>/<spk>-<chapter>-<utt>.flac and <spk>-<chapter>.trans.txt (ID TRANSCRIPT)"

    def samples(self) -> Iterator[Sample]:
        split = self.split or "test-clean"
        base = self.root / split
        if not base.is_dir():
            raise FileNotFoundError(f"LibriSpeech split folder {base} not found (layout: {self.layout})")
        for trans in sorted(base.glob("*/*/*.trans.txt")):
            with open(trans, encoding="utf-8") as f:
                for n, line in enumerate(f, 1):
                    if not line.strip():
                        continue
                    utt, _, text = line.strip().partition(" ")
                    if not text or utt.count("-") != 2:
                        raise ValueError(f"{trans}:{n}: malformed transcript line (expected 'SPK-CHAPTER-UTT TEXT')")
                    where = f"{trans}:{n}"
                    ext = ".wav" if not (trans.parent / f"{utt}.flac").exists() and (
                        trans.parent / f"{utt}.wav").is_file() else ".flac"  # converted copies are accepted
                    audio, err = self.audio_path(utt + ext, trans.parent, where)
                    yield Sample(id=utt, audio=audio, reference=text, meta={"speaker": utt.split("-")[0]}, error=err)
