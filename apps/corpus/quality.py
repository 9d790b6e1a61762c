"""Baseline quality of a corpus split with the offline scorers: pocketsphinx WER and DNSMOS.

These are the numbers that tokenizer resynthesis and TTS are later measured against: score the
original TTS audio here, then the same rows after resynthesis (``audio_root`` pointing at a tree
with the same relative paths).
"""

from __future__ import annotations

import json
import logging
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mimo_audio.corpus import load_manifest

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class GroupScore:
    group: str
    utterances: int
    wer_corpus: float
    wer_mean_utterance: float
    dnsmos_ovrl: float
    dnsmos_sig: float
    dnsmos_bak: float
    dnsmos_p808: float


def score_corpus(
    corpus_dir: str | Path,
    split: str = "test",
    styles: Iterable[str] = ("plain",),
    audio_root: str | Path | None = None,
    limit: int | None = None,
    progress: bool = True,
    save: str | Path | None = None,
) -> list[GroupScore]:
    """WER and DNSMOS of one split's rows: overall, by seen/held-out voice, by engine and by voice.

    ``save`` writes one JSON line per utterance (id, hypothesis, DNSMOS) for later regrouping.
    """
    from eval.scorers import DNSMOS, PocketsphinxASR, word_error_rate

    root = Path(audio_root) if audio_root is not None else Path(corpus_dir)
    wanted = set(styles)
    rows = [r for r in load_manifest(corpus_dir) if r["split"] == split and r["style"] in wanted]
    if limit is not None:
        rows = rows[:limit]
    if not rows:
        raise ValueError(f"no rows in split {split!r} with styles {sorted(wanted)}")
    asr, mos = PocketsphinxASR(), DNSMOS()
    scored = []
    items = rows
    if progress:
        from tqdm import tqdm

        items = tqdm(rows, desc=f"scoring {split}", unit="utt")
    for r in items:
        path = root / r["path"]
        scored.append((r, asr.transcribe(path), mos.score(path)))
    if save is not None:
        with open(save, "w", encoding="utf-8") as f:
            for r, hyp, m in scored:
                f.write(json.dumps({"id": r["id"], "text": r["text"], "hypothesis": hyp, "dnsmos": m.__dict__}) + "\n")
    groups: dict[str, list] = defaultdict(list)
    for item in scored:
        r = item[0]
        groups[r["engine"]].append(item)
        groups[r["voice_group"]].append(item)
        groups["seen voices" if r["voice_seen_in_train"] else "held-out voices"].append(item)
        groups["all"].append(item)
    out = []
    for name, items in groups.items():
        wer = word_error_rate([r["text"] for r, _, _ in items], [h for _, h, _ in items])
        out.append(GroupScore(
            group=name, utterances=len(items), wer_corpus=wer.corpus, wer_mean_utterance=wer.mean_utterance,
            dnsmos_ovrl=float(np.mean([m.ovrl for _, _, m in items])),
            dnsmos_sig=float(np.mean([m.sig for _, _, m in items])),
            dnsmos_bak=float(np.mean([m.bak for _, _, m in items])),
            dnsmos_p808=float(np.mean([m.p808 for _, _, m in items])),
        ))
    order = {"all": 0, "seen voices": 1, "held-out voices": 2}
    engines = {r["engine"] for r in rows}
    return sorted(out, key=lambda g: (order.get(g.group, 3 if g.group in engines else 4), g.group))


def format_scores(scores: list[GroupScore]) -> str:
    lines = ["| group | utterances | WER (corpus) | WER (mean utt.) | DNSMOS OVRL | SIG | BAK | P.808 |",
             "|---|---|---|---|---|---|---|---|"]
    for g in scores:
        lines.append(f"| {g.group} | {g.utterances} | {g.wer_corpus:.3f} | {g.wer_mean_utterance:.3f} | "
                     f"{g.dnsmos_ovrl:.2f} | {g.dnsmos_sig:.2f} | {g.dnsmos_bak:.2f} | {g.dnsmos_p808:.2f} |")
    return "\n".join(lines)


@dataclass(frozen=True)
class ConversionCheck:
    """How often the speaker scorer puts an utterance closer to its own voice than to a source voice."""

    items: int
    closer_to_target: float  # fraction of items where sim(x, target reference) > sim(x, source)
    mean_sim_target: float
    mean_sim_source: float


def conversion_oracle(corpus_dir: str | Path, split: str = "test", progress: bool = True) -> ConversionCheck:
    """The few-shot voice-conversion criterion applied to the real target audio (a perfect conversion).

    For each held-out-voice utterance x of sentence s, with a trained panel voice's reading of s as
    the source and the held-out voice's reading of another sentence as the target reference, count
    sim(x, target) > sim(x, source). This is the ceiling a conversion system can reach under the
    Resemblyzer criterion of issue 7 §4 on this split.
    """
    from eval.scorers import ResemblyzerSimilarity

    rows = [r for r in load_manifest(corpus_dir) if r["split"] == split and r["style"] == "plain"]
    unseen = [r for r in rows if not r["voice_seen_in_train"]]
    seen_by_text: dict[str, list[dict]] = defaultdict(list)
    by_speaker: dict[str, list[dict]] = defaultdict(list)
    for r in rows:
        if r["voice_seen_in_train"]:
            seen_by_text[r["text_id"]].append(r)
        else:
            by_speaker[r["speaker_id"]].append(r)
    sim = ResemblyzerSimilarity()
    cache: dict[str, np.ndarray] = {}

    def emb(r: dict) -> np.ndarray:
        if r["id"] not in cache:
            cache[r["id"]] = sim.embed(Path(corpus_dir) / r["path"])
        return cache[r["id"]]

    wins, st, ss = [], [], []
    items = unseen
    if progress:
        from tqdm import tqdm

        items = tqdm(unseen, desc="speaker check", unit="utt")
    for x in items:
        refs = [r for r in by_speaker[x["speaker_id"]] if r["text_id"] != x["text_id"]]
        if not refs:
            continue
        ref = refs[0]
        for src in seen_by_text[x["text_id"]]:
            s_t, s_s = float(emb(x) @ emb(ref)), float(emb(x) @ emb(src))
            wins.append(s_t > s_s)
            st.append(s_t)
            ss.append(s_s)
    if not wins:
        raise ValueError(f"split {split!r} has no held-out voice with two sentences and a parallel trained voice")
    return ConversionCheck(items=len(wins), closer_to_target=float(np.mean(wins)),
                           mean_sim_target=float(np.mean(st)), mean_sim_source=float(np.mean(ss)))
