"""Seed-TTS-eval: ``<lang>/meta.lst`` with lines ``utt|prompt_text|prompt_wav|target_text`` (wavs relative to it)."""

from __future__ import annotations

from collections.abc import Iterator

from eval.data.base import DatasetReader, Sample


class SeedTTS(DatasetReader):
    name = "seedtts"
    description = "Seed-TTS-eval zero-shot TTS (en, zh, zh-hard)"
    layout = "DIR/<lang>/meta.lst: utt|prompt_text|prompt_wav|target_text[|target_wav], wav paths relative to the list"

    def samples(self) -> Iterator[Sample]:
        lang = self.split or "en"
        lst = self.root / lang / "meta.lst"
        if not lst.is_file():
            raise FileNotFoundError(f"Seed-TTS-eval list {lst} not found (layout: {self.layout})")
        seen: set[str] = set()
        with open(lst, encoding="utf-8") as f:
            for n, line in enumerate(f, 1):
                if not line.strip():
                    continue
                parts = line.rstrip("\n").split("|")
                if len(parts) not in (4, 5) or not parts[0] or not parts[3].strip():
                    raise ValueError(f"{lst}:{n}: malformed line: expected utt|prompt_text|prompt_wav|target_text "
                                     f"(got {len(parts)} fields)")
                utt, prompt_text, prompt_wav, target = parts[:4]
                if utt in seen:
                    raise ValueError(f"{lst}:{n}: duplicate utterance id {utt!r}")
                seen.add(utt)
                prompt, err = self.audio_path(prompt_wav, lst.parent, f"{lst}:{n}")
                yield Sample(id=utt, text=target.strip(), reference=target.strip(), prompt_audio=prompt,
                             prompt_text=prompt_text, speaker_ref=prompt, meta={"lang": lang}, error=err)
