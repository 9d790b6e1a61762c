"""The corpus plan: which sentence is spoken by which voice in which style, fixed by the seed.

Splits hold out both sentences and voices:

- a sentence belongs to exactly one split (chosen by a seeded hash of its text, so the ``small``
  corpus's splits are subsets of the ``full`` corpus's);
- held-out voice groups (:data:`~apps.corpus.voices.HELD_OUT_GROUPS`) speak only in their split;
  validation and test sentences are also read by a panel of trained voices, so every utterance of
  a held-out voice has parallel partners in trained voices.

Parallel data for the few-shot tasks comes from rows that share ``text_id``: several voices
(voice conversion), ``speed`` 0.8/1.25 copies (speed change), noisy copies at a set SNR
(denoising; ``source_id`` names the clean original), whispered copies (espeak-ng only).
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

from apps.corpus.augment import NOISE_TYPES
from apps.corpus.text import Sentence
from apps.corpus.voices import EVAL_PANEL, HELD_OUT_GROUPS, Voice

SPLITS = ("train", "valid", "test")


@dataclass(frozen=True)
class CorpusConfig:
    """What to generate. ``sentences`` = number of sentences per split."""

    train_sentences: int
    valid_sentences: int
    test_sentences: int
    voices_per_train_sentence: int = 3
    speed_fraction: float = 0.15  # of clean utterances that get a slow and a fast copy
    speeds: tuple[float, ...] = (0.8, 1.25)
    noise_fraction: float = 0.2  # of clean utterances that get one noisy copy
    noise_types: tuple[str, ...] = NOISE_TYPES
    snrs_db: tuple[float, ...] = (5.0, 10.0, 20.0)
    babble_talkers: int = 4
    whisper_fraction: float = 0.25  # of clean espeak-ng utterances that get a whispered copy
    engine_weights: dict[str, float] = field(default_factory=lambda: {"flite": 0.4, "festival": 0.3, "espeak": 0.3})
    engines: tuple[str, ...] | None = None  # restrict to these engines (None = all installed)
    seed: int = 0
    # More training sentences, each read once, plain: text variety for ASR/TTS at a low synthesis cost. They come
    # after the first `train_sentences` in the seeded order, so a corpus with extras is a superset of one without.
    extra_train_sentences: int = 0

    def to_dict(self) -> dict:
        return asdict(self)


SIZES: dict[str, CorpusConfig] = {
    # seconds to build: for tests and smoke runs
    "small": CorpusConfig(train_sentences=16, valid_sentences=3, test_sentences=6, voices_per_train_sentence=2),
    # about 14 hours of audio (docs/corpus.md has the measured numbers)
    "full": CorpusConfig(train_sentences=2400, valid_sentences=60, test_sentences=120),
    # `full` plus 13,000 more training sentences read once (same validation and test rows as `full`)
    "wide": CorpusConfig(train_sentences=2400, valid_sentences=60, test_sentences=120, extra_train_sentences=13000),
}


@dataclass(frozen=True)
class Utterance:
    """One row of the manifest (and one wav file)."""

    id: str
    split: str
    text_id: str
    text: str
    text_source: str
    speaker_id: str
    voice_group: str
    engine: str
    voice: str
    pitch: int
    rate: int
    gender: str
    voice_seen_in_train: bool
    style: str  # "plain", "slow", "fast", "whisper" or "noisy"
    speed: float = 1.0
    whisper: bool = False
    noise: str | None = None  # noise type for "noisy" rows
    snr_db: float | None = None
    source_id: str | None = None  # the clean utterance a derived row was made from
    babble_ids: tuple[str, ...] = ()

    @property
    def path(self) -> str:
        return f"wav/{self.id}.wav"


def stable_hash(*parts: object) -> int:
    """A hash that is the same in every process and Python version (unlike ``hash``)."""
    digest = hashlib.sha256("\x1f".join(str(p) for p in parts).encode()).digest()
    return int.from_bytes(digest[:8], "big")


def text_id(sentence: Sentence) -> str:
    return "t" + hashlib.sha256(sentence.key.encode()).hexdigest()[:10]


def split_sentences(sentences: Sequence[Sentence], config: CorpusConfig) -> dict[str, list[Sentence]]:
    """Assign sentences to splits by a seeded hash (5% test, 5% validation), take the first N of each."""
    wanted = {"train": config.train_sentences + config.extra_train_sentences, "valid": config.valid_sentences,
              "test": config.test_sentences}
    buckets: dict[str, list[tuple[int, Sentence]]] = {s: [] for s in SPLITS}
    for sentence in sentences:
        h = stable_hash(config.seed, "split", sentence.key)
        bucket = h % 100
        split = "test" if bucket < 5 else "valid" if bucket < 10 else "train"
        buckets[split].append((stable_hash(config.seed, "order", sentence.key), sentence))
    out: dict[str, list[Sentence]] = {}
    for split in SPLITS:
        ranked = [s for _, s in sorted(buckets[split], key=lambda t: t[0])]
        if len(ranked) < wanted[split]:
            raise ValueError(f"the {split} split needs {wanted[split]} sentences but the sources give {len(ranked)}")
        out[split] = ranked[: wanted[split]]
    return out


def split_voices(voices: list[Voice]) -> dict[str, list[Voice]]:
    """Trained voices (``train``) and the voices held out for validation and test."""
    held = {g: split for split, groups in HELD_OUT_GROUPS.items() for g in groups}
    out: dict[str, list[Voice]] = {"train": [], "valid": [], "test": []}
    for v in voices:
        out[held.get(v.group, "train")].append(v)
    return out


def _weighted_choice(rng: random.Random, voices: list[Voice], k: int, weights: dict[str, float]) -> list[Voice]:
    """k distinct voices, each engine weighted by its share spread over that engine's voices."""
    per_engine: dict[str, int] = {}
    for v in voices:
        per_engine[v.engine] = per_engine.get(v.engine, 0) + 1
    pool = list(voices)
    chosen: list[Voice] = []
    for _ in range(min(k, len(pool))):
        w = [weights.get(v.engine, 0.0) / per_engine[v.engine] for v in pool]
        if sum(w) <= 0:
            w = [1.0] * len(pool)
        pick = rng.choices(range(len(pool)), weights=w)[0]
        chosen.append(pool.pop(pick))
    return chosen


def _row(split: str, sentence: Sentence, voice: Voice, seen: bool, style: str, **extra) -> Utterance:
    tid = text_id(sentence)
    tag = style if style != "noisy" else f"noisy-{extra['noise']}-{extra['snr_db']:g}db"
    return Utterance(
        id=f"{split}/{voice.speaker_id}/{tid}_{tag}", split=split, text_id=tid, text=sentence.text,
        text_source=sentence.source, speaker_id=voice.speaker_id, voice_group=voice.group, engine=voice.engine,
        voice=voice.name, pitch=voice.pitch, rate=voice.rate, gender=voice.gender, voice_seen_in_train=seen,
        style=style, **extra,
    )


def plan_corpus(sentences: Sequence[Sentence], voices: list[Voice], config: CorpusConfig) -> list[Utterance]:
    """Every utterance to generate, in a deterministic order (clean and re-synthesised rows first)."""
    by_split = split_sentences(sentences, config)
    voice_split = split_voices(voices)
    trained = voice_split["train"]
    if not trained:
        raise ValueError("no trained voice is available: install flite, festival or espeak-ng")
    panel = [v for v in trained if v.speaker_id in EVAL_PANEL] or trained[:2]
    rows: list[Utterance] = []
    for split in SPLITS:
        for index, sentence in enumerate(by_split[split]):
            rng = random.Random(stable_hash(config.seed, "voices", split, sentence.key))
            extra = split == "train" and index >= config.train_sentences
            if split == "train":
                k = 1 if extra else config.voices_per_train_sentence
                speakers = [(v, True) for v in _weighted_choice(rng, trained, k, config.engine_weights)]
            else:
                speakers = [(v, True) for v in panel] + [(v, False) for v in voice_split[split]]
            for voice, seen in speakers:
                clean = _row(split, sentence, voice, seen, "plain")
                rows.append(clean)
                if extra:
                    continue
                r = random.Random(stable_hash(config.seed, "styles", clean.id))
                if r.random() < config.speed_fraction:
                    for speed in config.speeds:
                        style = "slow" if speed < 1 else "fast"
                        rows.append(_row(split, sentence, voice, seen, style, speed=speed, source_id=clean.id))
                if voice.can_whisper and r.random() < config.whisper_fraction:
                    rows.append(_row(split, sentence, voice, seen, "whisper", whisper=True, source_id=clean.id))
                if r.random() < config.noise_fraction and config.noise_types:
                    rows.append(_row(
                        split, sentence, voice, seen, "noisy", noise=r.choice(config.noise_types),
                        snr_db=float(r.choice(config.snrs_db)), source_id=clean.id,
                    ))
    return _assign_babble(rows, config)


def _assign_babble(rows: list[Utterance], config: CorpusConfig) -> list[Utterance]:
    """Babble rows get their talkers: clean rows of the same split, other sentences, other speakers."""
    from dataclasses import replace

    clean_by_split: dict[str, list[Utterance]] = {s: [] for s in SPLITS}
    for row in rows:
        if row.style == "plain":
            clean_by_split[row.split].append(row)
    out = []
    for row in rows:
        if row.noise == "babble":
            rng = random.Random(stable_hash(config.seed, "babble", row.id))
            candidates = [c for c in clean_by_split[row.split]
                          if c.text_id != row.text_id and c.speaker_id != row.speaker_id]
            if not candidates:
                row = replace(row, noise="pink", id=row.id.replace("babble", "pink"))
            else:
                talkers = rng.sample(candidates, min(config.babble_talkers, len(candidates)))
                row = replace(row, babble_ids=tuple(t.id for t in talkers))
        out.append(row)
    return out
