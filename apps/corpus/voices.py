"""The corpus voices: engine, voice, pitch and rate; each combination is one speaker id.

- flite: its built-in voices (``flite -lv``) kal16, awb, rms, slt and the 8 kHz kal (awb_time only
  speaks clock times); rate through flite's own ``duration_stretch``, pitch through sox.
- festival: the Debian voices kal_diphone (festvox-kallpc16k), ked_diphone (festvox-kdlpc16k) and
  cmu_us_slt_arctic_hts (festvox-us-slt-hts); rate and pitch through sox (the HTS voice ignores
  festival's Duration_Stretch).
- espeak-ng: English accents with its voice variants (``+m3``, ``+f2``...), pitch ``-p`` and rate
  ``-s`` natively; espeak-ng also whispers (variants ``whisper`` / ``whisperf``).

``pitch`` is in semitones for flite/festival and espeak-ng's 0-99 ``-p`` value for espeak;
``rate`` is the speaker's habitual speed in percent of the engine default. Speed-changed copies
for the few-shot speed task keep the speaker id and carry a ``speed`` style label instead.

A voice's ``group`` is the underlying voice (all pitch/rate variants of flite's rms share it);
held-out voices are held out by group, so no variant of a held-out voice is ever trained on.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

FESTIVAL_VOICE_DIRS = (Path("/usr/share/festival/voices"),)
ENGINES = ("flite", "festival", "espeak")


@dataclass(frozen=True)
class Voice:
    engine: str  # "flite", "festival" or "espeak"
    name: str  # engine voice name; espeak: "accent+variant"
    pitch: int
    rate: int  # percent of the engine's default speaking rate
    gender: str  # "female" or "male"

    @property
    def group(self) -> str:
        return f"{self.engine}-{self.name}"

    @property
    def speaker_id(self) -> str:
        sign = "+" if self.pitch > 0 else ""
        pitch = f"p{sign}{self.pitch}" if self.engine != "espeak" else f"p{self.pitch}"
        return f"{self.engine}-{self.name}-{pitch}-r{self.rate}"

    @property
    def can_whisper(self) -> bool:
        return self.engine == "espeak"

    @property
    def needs_sox(self) -> bool:
        return self.engine == "festival" or (self.engine == "flite" and self.pitch != 0)


def _flite(name: str, gender: str) -> list[Voice]:
    return [Voice("flite", name, 0, 100, gender), Voice("flite", name, 2, 110, gender),
            Voice("flite", name, -2, 92, gender)]


def _festival(name: str, gender: str) -> list[Voice]:
    return [Voice("festival", name, 0, 100, gender), Voice("festival", name, 2, 108, gender),
            Voice("festival", name, -2, 94, gender)]


_ESPEAK = (  # accent+variant, pitch, rate
    ("en-us+m1", 45, 100), ("en-us+f3", 60, 95), ("en-us+m3", 38, 105), ("en-us+f1", 55, 110),
    ("en-gb+m2", 50, 100), ("en-gb+f2", 66, 92), ("en-gb-x-rp+m4", 44, 96), ("en-gb-x-rp+f4", 58, 104),
    ("en-gb-scotland+m5", 48, 98), ("en-gb-scotland+f5", 62, 100), ("en-029+m6", 42, 108),
    ("en-029+f1", 57, 97), ("en-us-nyc+m7", 40, 112), ("en-us-nyc+f2", 64, 102),
    ("en-gb-x-gbclan+m2", 52, 94), ("en-gb-x-gbcwmd+f3", 59, 106),
)


def voice_inventory() -> list[Voice]:
    """Every voice the corpus can use, in a fixed order (availability is checked separately)."""
    voices: list[Voice] = []
    for name, gender in (("kal16", "male"), ("awb", "male"), ("rms", "male"), ("slt", "female"), ("kal", "male")):
        voices += _flite(name, gender)
    for name, gender in (("kal_diphone", "male"), ("ked_diphone", "male"), ("cmu_us_slt_arctic_hts", "female")):
        voices += _festival(name, gender)
    for name, pitch, rate in _ESPEAK:
        voices.append(Voice("espeak", name, pitch, rate, "female" if "+f" in name else "male"))
    return voices


# Held out by group: test voices are never in train or validation, validation voices never in train.
HELD_OUT_GROUPS = {
    "test": ("flite-rms", "festival-ked_diphone", "espeak-en-gb-scotland+f5", "espeak-en-us-nyc+m7"),
    "valid": ("espeak-en-029+f1", "espeak-en-gb-x-gbclan+m2"),
}
# Seen voices that also read every validation/test sentence, so each held-out voice has parallel
# partners among the trained voices (few-shot conversion from a trained to an unseen voice).
EVAL_PANEL = ("flite-slt-p0-r100", "flite-awb-p0-r100", "festival-kal_diphone-p0-r100", "espeak-en-us+m1-p45-r100")


@lru_cache(maxsize=1)
def _festival_voices() -> frozenset[str]:
    names = set()
    for root in FESTIVAL_VOICE_DIRS:
        if root.is_dir():
            names.update(p.name for p in root.glob("*/*") if p.is_dir())
    return frozenset(names)


@lru_cache(maxsize=1)
def _flite_voices() -> frozenset[str]:
    import subprocess

    if shutil.which("flite") is None:
        return frozenset()
    out = subprocess.run(["flite", "-lv"], capture_output=True, text=True).stdout
    return frozenset(out.split(":", 1)[-1].split())


def engine_available(engine: str) -> bool:
    exe = {"flite": "flite", "festival": "text2wave", "espeak": "espeak-ng"}[engine]
    return shutil.which(exe) is not None


def voice_available(voice: Voice) -> bool:
    if not engine_available(voice.engine):
        return False
    if voice.needs_sox and shutil.which("sox") is None:
        return False
    if voice.engine == "flite":
        return voice.name in _flite_voices()
    if voice.engine == "festival":
        return voice.name in _festival_voices()
    return True


def available_voices(engines: tuple[str, ...] | None = None) -> list[Voice]:
    """The inventory filtered to the installed engines/voices (and to ``engines`` when given)."""
    return [v for v in voice_inventory() if (engines is None or v.engine in engines) and voice_available(v)]
