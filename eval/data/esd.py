"""ESD-style parallel speech for few-shot voice / emotion conversion.

Two layouts: the ESD release (``DIR/<spk>/<spk>.txt`` lines ``<spk>_<utt>\\t<text>\\t<emotion>``, audio in
``DIR/<spk>/<Emotion>/<spk>_<utt>.wav``), or any folder of ``[ESD_]<spk>_<utt>.wav`` files (such as
``../shared/data/real_speech``). In ESD the same utterance number is the same sentence for every speaker
(voice conversion pairs), and number ``k`` of the neutral block (1-350) is the same sentence as ``k + 350 * i``
in the other emotion blocks (Angry, Happy, Sad, Surprise: emotion conversion pairs).

Options: ``mode`` (``voice`` or ``emotion``), ``source`` / ``target`` speakers (default: the first two),
``source_emotion`` / ``target_emotion`` (emotion mode; default Neutral -> Sad), ``shots`` (example pairs per
item, default 1). Each sample: the query is the source reading, the examples are other parallel pairs, the
speaker reference is another target reading, the ground truth is the target's reading of the query.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

from eval.data.base import DatasetReader, Sample

EMOTIONS = ("Neutral", "Angry", "Happy", "Sad", "Surprise")
BLOCK = 350
_NAME = re.compile(r"^(?:ESD_)?(\d{4})_(\d{6})\.wav$")


def _seconds(path: Path) -> float | None:
    import soundfile as sf

    try:
        return round(sf.info(str(path)).duration, 3)
    except RuntimeError:  # unreadable: the model call records the error
        return None


class ESD(DatasetReader):
    name = "esd"
    description = "ESD-style parallel speech: few-shot voice or emotion conversion"
    layout = "DIR/<spk>/<spk>.txt + DIR/<spk>/<Emotion>/<spk>_<utt>.wav, or flat [ESD_]<spk>_<utt>.wav files"

    def _index(self) -> tuple[dict[str, dict[int, Path]], dict[tuple[str, int], str]]:
        audio: dict[str, dict[int, Path]] = {}
        for p in sorted(self.root.rglob("*.wav")):
            m = _NAME.match(p.name)
            if m and p.resolve().is_relative_to(self.root):
                audio.setdefault(m.group(1), {})[int(m.group(2))] = p
        texts: dict[tuple[str, int], str] = {}
        for spk in audio:
            txt = self.root / spk / f"{spk}.txt"
            if txt.is_file():
                for n, line in enumerate(txt.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
                    parts = line.split("\t")
                    if not line.strip():
                        continue
                    if len(parts) < 2 or "_" not in parts[0]:
                        raise ValueError(f"{txt}:{n}: malformed line (expected '<spk>_<utt>\\t<text>\\t<emotion>')")
                    texts[(spk, int(parts[0].split("_")[1]))] = parts[1].strip()
        return audio, texts

    def samples(self) -> Iterator[Sample]:
        audio, texts = self._index()
        speakers = sorted(audio)
        mode = self.options.get("mode", "voice")
        shots = int(self.options.get("shots", 1))
        if mode == "voice":
            if len(speakers) < 2:
                raise ValueError(f"{self.root}: voice conversion needs two ESD speakers, found {speakers}")
            src, tgt = str(self.options.get("source", speakers[0])), str(self.options.get("target", speakers[1]))
            shared = sorted(set(audio.get(src, {})) & set(audio.get(tgt, {})))
            pairs = {u: (audio[src][u], audio[tgt][u]) for u in shared}
            out_utt = {u: u for u in shared}
            label = f"{src}->{tgt}"
        elif mode == "emotion":
            src = tgt = str(self.options.get("source", speakers[0] if speakers else ""))
            e_in = EMOTIONS.index(self.options.get("source_emotion", "Neutral"))
            e_out = EMOTIONS.index(self.options.get("target_emotion", "Sad"))
            utts = audio.get(src, {})
            pairs = {k: (utts[k + BLOCK * e_in], utts[k + BLOCK * e_out]) for k in range(1, BLOCK + 1)
                     if k + BLOCK * e_in in utts and k + BLOCK * e_out in utts}
            out_utt = {k: k + BLOCK * e_out for k in pairs}
            label = f"{src} {EMOTIONS[e_in]}->{EMOTIONS[e_out]}"
        else:
            raise ValueError(f"esd: unknown mode {mode!r} (voice or emotion)")
        keys = sorted(pairs)
        if len(keys) < 2:
            raise ValueError(f"{self.root}: fewer than two parallel pairs for {label}")
        for i, u in enumerate(keys):
            others = [keys[(i + j) % len(keys)] for j in range(1, len(keys))]
            ex_keys, rest = others[:shots], others[shots:] or others
            examples = [{"input": str(pairs[k][0]), "output": str(pairs[k][1]),
                         "output_text": texts.get((tgt, out_utt[k]), "")} for k in ex_keys]
            query, truth = pairs[u]
            yield Sample(id=f"{src}_{u:06d}", audio=str(query), reference=texts.get((src, u)), examples=examples,
                         speaker_ref=str(pairs[rest[0]][1]), source_ref=str(query),
                         meta={"pair": label, "truth": str(truth), "duration_s": _seconds(query)})
