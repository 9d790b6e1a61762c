"""Quality of the embedded default model (issue 7 §4) on the corpus TEST split, with the offline scorers.

Sections (each runnable alone with ``--only``; time per section is printed):

- ``resynth``: tokenizer encode -> decode of flite speech (plain style): pocketsphinx WER of the original
  and of the resynthesis, the difference in points, DNSMOS OVRL/SIG/BAK of both.
  Goals: WER at most 10 points above the original's; DNSMOS OVRL >= 2.3.
- ``tts``: the LM's TTS (``formats.tts(text)``, the only TTS prompt the training recipe uses) on held-out
  sentences: pocketsphinx WER of the output, DNSMOS, and which trained voice it sounds like. Goal: WER <= 35%.
- ``asr``: the LM's ASR on held-out sentences read by trained voices and by held-out voices (pocketsphinx
  on the same audio as a reference). Goal: WER <= 25% on trained voices.
- ``vc``: few-shot voice conversion into a held-out voice (``formats.in_context_s2s``, one example pair from
  the corpus' parallel readings): Resemblyzer similarity of the output to the target voice vs to the source
  voice. Goal: target > source on >= 80% of items. The real target audio scored the same way is the ceiling.
- ``mtp``: if ``mtp.safetensors`` lies beside the LM, the speculative-acceptance hook (``--mtp-hook``).

    PYTHONPATH=. python bench/default_model_quality.py --corpus CORPUS [--tokenizer DIR] [--lm DIR]
        [--items 8] [--only resynth,tts,asr,vc,mtp] [--baseline-random] [--out results.json]

WER is pocketsphinx (or the LM's transcript) against the exact transcript after the pinned normaliser;
both aggregations are reported, goals are judged on the corpus-level WER. Seeds are fixed, so a rerun on
the same models and corpus gives the same numbers. The CPU of the development machine is shared:
the printed times are wall times of a loaded machine.
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import math
import platform
import sys
import time
import warnings
from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from apps.corpus.manifest import load_manifest  # noqa: E402

log = logging.getLogger("mimo-audio.quality")

SECTIONS = ("resynth", "tts", "asr", "vc", "mtp")
DEFAULT_TOKENIZER = ROOT / "tokenizer" / "assets" / "default"
DEFAULT_LM = ROOT / "mimo_audio" / "assets" / "default"
# The function the speech-LM MTP work provides: (lm_dir, tokenizer_dir, corpus, split, items, seed) -> dict.
MTP_HOOK = "mimo_audio.speculative:heldout_acceptance"

GOAL_RESYNTH_WER_POINTS = 10.0  # resynthesis WER at most this many points above the original's
GOAL_RESYNTH_OVRL = 2.3
GOAL_TTS_WER = 0.35
GOAL_ASR_WER = 0.25
GOAL_VC_SHARE = 0.80
SAME_VOICE_SIM = 0.75  # Resemblyzer: same voice above, different voices below (ecosystem spec §3.4)

# Generation caps (patches): speech is 6.25 patches/s; the corpus reads ~0.06 s per character, so twice
# that is a generous ceiling that still stops a model that never emits its end token.
PATCHES_PER_SECOND = 6.25
SECONDS_PER_CHAR = 0.07


# ---------------------------------------------------------------- scorers, counted
class Scorers:
    """The offline scorers, loaded once, with call counts (the JSON shows that they really ran)."""

    def __init__(self) -> None:
        from eval.scorers import DNSMOS, PocketsphinxASR, ResemblyzerSimilarity

        self._asr, self._mos, self._spk = PocketsphinxASR(), DNSMOS(), ResemblyzerSimilarity()
        self.calls: Counter = Counter()
        self._cache: dict[tuple[str, str], Any] = {}

    def _cached(self, kind: str, key: str | None, fn: Callable[[], Any]) -> Any:
        if key is not None and (kind, key) in self._cache:
            return self._cache[(kind, key)]
        self.calls[kind] += 1
        if key is None:  # generated audio: a bad output (NaN, nothing left after trimming) scores as a failure
            try:
                return fn()
            except ValueError as exc:
                log.warning("%s could not score a generated clip: %s", kind, exc)
                self.calls[f"{kind} failed"] += 1
                return None
        value = fn()
        if key is not None:
            self._cache[(kind, key)] = value
        return value

    def transcribe(self, audio, sample_rate: int | None = None, key: str | None = None) -> str:
        """Pocketsphinx transcript; ``""`` for missing audio. ``key`` caches results of corpus files."""
        if audio is None:
            return ""
        return self._cached("pocketsphinx", key, lambda: self._asr.transcribe(audio, sample_rate)) or ""

    def dnsmos(self, audio, sample_rate: int | None = None, key: str | None = None) -> dict | None:
        if audio is None:
            return None
        score = self._cached("dnsmos", key, lambda: self._mos.score(audio, sample_rate))
        if score is None:
            return None
        return {"ovrl": score.ovrl, "sig": score.sig, "bak": score.bak, "p808": score.p808}

    def embed(self, audio, sample_rate: int | None = None, key: str | None = None) -> np.ndarray | None:
        """Resemblyzer embedding, or None when the audio holds too little speech for one."""
        if audio is None:
            return None
        return self._cached("resemblyzer", key, lambda: self._spk.embed(audio, sample_rate))


def wer_summary(refs: Sequence[str], hyps: Sequence[str]) -> dict:
    from eval.scorers import word_error_rate

    w = word_error_rate(list(refs), list(hyps))
    return {"wer": round(w.corpus, 4), "wer_mean_utt": round(w.mean_utterance, 4), "utterances": len(refs),
            "ref_words": w.reference_words, "sub": w.substitutions, "del": w.deletions, "ins": w.insertions,
            "per_utt": [round(x, 4) for x in w.per_utterance]}


def mean_mos(scores: Sequence[dict | None]) -> dict:
    got = [s for s in scores if s is not None]
    out = {k: (round(float(np.mean([s[k] for s in got])), 3) if got else None) for k in ("ovrl", "sig", "bak", "p808")}
    out["scored"] = len(got)
    return out


# ---------------------------------------------------------------- models: the given ones and random-init twins
@dataclass
class Variant:
    """One set of models under test: ``trained`` (the given directories) or ``random`` (same configs)."""

    name: str
    tokenizer_dir: Path
    lm_dir: Path
    seed: int
    device: str
    _tokenizer: Any = None
    _mimo: Any = None

    @property
    def tokenizer(self):
        if self._tokenizer is None:
            from tokenizer import AudioTokenizer
            from tokenizer.config import TokenizerConfig

            if self.name == "random":
                cfg = TokenizerConfig.from_json(self.tokenizer_dir / "config.json")
                self._tokenizer = AudioTokenizer.from_config(cfg, seed=self.seed, device=self.device)
            else:
                self._tokenizer = AudioTokenizer.from_pretrained(self.tokenizer_dir, device=self.device)
            self._tokenizer.model.eval()
        return self._tokenizer

    @property
    def mimo(self):
        if self._mimo is None:
            from mimo_audio import MimoAudio
            from mimo_audio.config import SpeechLMConfig
            from mimo_audio.modeling import SpeechLM
            from mimo_audio.text_tokenizer import SpecialTokens, load_text_tokenizer

            text_tok = load_text_tokenizer(self.lm_dir)
            empty = SpecialTokens.from_tokenizer(text_tok).empty
            if self.name == "random":
                lm = SpeechLM(SpeechLMConfig.from_json_file(self.lm_dir / "config.json"), empty)
                lm.init_weights(seed=self.seed)
                lm.to(self.device).eval()
            else:
                lm = SpeechLM.from_pretrained(self.lm_dir, device=self.device, empty_token_id=empty)
            self._mimo = MimoAudio(lm, text_tok, self.tokenizer)
        return self._mimo


def _check_dir(path: Path, what: str, files: Sequence[str]) -> None:
    missing = [f for f in files if not (path / f).is_file()]
    if missing:
        raise FileNotFoundError(f"{what} directory {path} lacks {', '.join(missing)} (pass --{what} DIR)")


# ---------------------------------------------------------------- item selection (seeded, spread over voices)
def spread(rows: Sequence[dict], n: int, rng: np.random.Generator, key: str = "speaker_id") -> list[dict]:
    """Up to ``n`` rows, round-robin over the values of ``key`` in a seeded order (so few items still cover
    several voices), each group's rows in a seeded order."""
    groups: dict[str, list[dict]] = defaultdict(list)
    for r in sorted(rows, key=lambda r: r["id"]):
        groups[r[key]].append(r)
    order = sorted(groups)
    order = [order[i] for i in rng.permutation(len(order))]
    queues = [[groups[g][i] for i in rng.permutation(len(groups[g]))] for g in order]
    out: list[dict] = []
    while len(out) < n and any(queues):
        for q in queues:
            if q and len(out) < n:
                out.append(q.pop(0))
    return out


def split_rows(corpus: Path, split: str) -> list[dict]:
    rows = [r for r in load_manifest(corpus) if r["split"] == split and r["style"] == "plain"]
    if not rows:
        raise ValueError(f"corpus {corpus} has no plain rows in split {split!r}")
    return rows


def _bar(items, desc: str, enabled: bool):
    from tqdm import tqdm

    return tqdm(items, desc=desc, unit="item", disable=not enabled, leave=False)


def _batches(items: Sequence, size: int) -> list[Sequence]:
    return [items[i : i + size] for i in range(0, len(items), size)]


def _audio(result) -> tuple[np.ndarray | None, int]:
    """(waveform, rate) of a generation result; None when it produced no speech."""
    if result.audio is None or result.audio.numel() < 160:
        return None, result.sample_rate
    return result.audio.float().numpy(), result.sample_rate


def _save(ctx: Context, section: str, variant: str, name: str, audio: np.ndarray | None, rate: int) -> None:
    if ctx.save_audio is None or audio is None:
        return
    import soundfile as sf

    path = ctx.save_audio / section / variant / (name.replace("/", "_") + ".wav")
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(str(path), audio, rate)


@dataclass
class Context:
    corpus: Path
    split: str
    items: int
    seed: int
    batch: int
    variants: list[Variant]
    scorers: Scorers
    progress: bool = True
    save_audio: Path | None = None
    mtp_hook: str = MTP_HOOK
    mtp_fn: Callable | None = None  # a callable overrides --mtp-hook (tests, notebooks)
    goals: list[dict] = field(default_factory=list)

    def rng(self, section: str) -> np.random.Generator:
        return np.random.default_rng([self.seed, SECTIONS.index(section)])

    def goal(self, section: str, measure: str, variant: str, value: float | None, goal: str, met: bool | None):
        self.goals.append({"section": section, "measure": measure, "model": variant, "value": value, "goal": goal,
                           "met": met})


# ---------------------------------------------------------------- 1. tokenizer resynthesis
def section_resynth(ctx: Context) -> dict:
    rows = [r for r in split_rows(ctx.corpus, ctx.split) if r["engine"] == "flite"]
    if not rows:
        raise ValueError(f"no flite rows in the {ctx.split} split")
    items = spread(rows, ctx.items, ctx.rng("resynth"))
    sc = ctx.scorers
    per_item = []
    for r in _bar(items, "resynth: original audio", ctx.progress):
        path = ctx.corpus / r["path"]
        per_item.append({"id": r["id"], "speaker": r["speaker_id"], "seen_voice": r["voice_seen_in_train"],
                         "text": r["text"], "original": {"hyp": sc.transcribe(path, key=str(path)),
                                                          "dnsmos": sc.dnsmos(path, key=str(path))}})
    refs = [r["text"] for r in items]
    original = {**wer_summary(refs, [p["original"]["hyp"] for p in per_item]),
                "dnsmos": mean_mos([p["original"]["dnsmos"] for p in per_item])}
    out = {"items": len(items), "reference": {"original": original}, "models": {}, "per_item": per_item}
    from tokenizer.audio import load_audio

    for v in ctx.variants:
        tok = v.tokenizer
        hyps, moses, frames = [], [], 0
        for p, r in zip(per_item, _bar(items, f"resynth: {v.name} tokenizer", ctx.progress)):
            wav, sr = load_audio(str(ctx.corpus / r["path"]))
            if sr != tok.sample_rate:
                raise ValueError(f"{r['path']}: {sr} Hz, the tokenizer needs {tok.sample_rate} Hz")
            codes = tok.encode(wav, sr, progress=False)
            y = tok.decode(codes, progress=False)[: wav.shape[-1]].float().numpy()
            frames += int(codes.shape[1])
            _save(ctx, "resynth", v.name, r["id"], y, tok.sample_rate)
            hyp, mos = sc.transcribe(y, tok.sample_rate), sc.dnsmos(y, tok.sample_rate)
            p[v.name] = {"hyp": hyp, "dnsmos": mos}
            hyps.append(hyp)
            moses.append(mos)
        res = {**wer_summary(refs, hyps), "dnsmos": mean_mos(moses), "code_frames": frames}
        res["wer_delta_points"] = round(100 * (res["wer"] - original["wer"]), 2)
        out["models"][v.name] = res
        ctx.goal("resynth", "WER - original WER (points)", v.name, res["wer_delta_points"],
                 f"<= {GOAL_RESYNTH_WER_POINTS:g}", res["wer_delta_points"] <= GOAL_RESYNTH_WER_POINTS)
        ctx.goal("resynth", "DNSMOS OVRL", v.name, res["dnsmos"]["ovrl"], f">= {GOAL_RESYNTH_OVRL}",
                 res["dnsmos"]["ovrl"] is not None and res["dnsmos"]["ovrl"] >= GOAL_RESYNTH_OVRL)
    return out


# ---------------------------------------------------------------- 2. TTS
def _panel_embeddings(ctx: Context, rows: Sequence[dict], per_voice: int = 2) -> dict[str, np.ndarray]:
    """Mean Resemblyzer embedding of each trained voice of the split (from its first readings)."""
    by_voice: dict[str, list[dict]] = defaultdict(list)
    for r in sorted(rows, key=lambda r: r["id"]):
        if r["voice_seen_in_train"]:
            by_voice[r["speaker_id"]].append(r)
    out = {}
    for voice, rs in sorted(by_voice.items()):
        embs = [e for r in rs[:per_voice] if (e := ctx.scorers.embed(ctx.corpus / r["path"],
                                                                      key=str(ctx.corpus / r["path"]))) is not None]
        if embs:
            m = np.mean(embs, axis=0)
            out[voice] = m / max(float(np.linalg.norm(m)), 1e-12)
    return out


def tts_cap(text: str) -> int:
    n = len(text.encode("utf-8"))
    return n + 12 + math.ceil(2 * SECONDS_PER_CHAR * n * PATCHES_PER_SECOND)


def section_tts(ctx: Context) -> dict:
    rows = split_rows(ctx.corpus, ctx.split)
    sentences = {r["text_id"]: r["text"] for r in rows}
    order = sorted(sentences)
    picked = [order[i] for i in ctx.rng("tts").permutation(len(order))[: ctx.items]]
    texts = [sentences[t] for t in picked]
    sc = ctx.scorers
    # Reference: pocketsphinx on the corpus' own readings of these sentences by the trained voices (as many
    # readings as items, spread over the voices).
    ref_rows = spread([r for r in rows if r["text_id"] in set(picked) and r["voice_seen_in_train"]], ctx.items,
                      ctx.rng("tts"))
    ref_hyps = [sc.transcribe(ctx.corpus / r["path"], key=str(ctx.corpus / r["path"]))
                for r in _bar(ref_rows, "tts: reference audio", ctx.progress)]
    reference = {"corpus_trained_voices": wer_summary([r["text"] for r in ref_rows], ref_hyps) if ref_rows else None}
    by_engine: dict[str, list[int]] = defaultdict(list)
    for i, r in enumerate(ref_rows):
        by_engine[r["engine"]].append(i)
    for engine, idx in sorted(by_engine.items()):
        reference[f"corpus_{engine}"] = wer_summary([ref_rows[i]["text"] for i in idx], [ref_hyps[i] for i in idx])
    panel = _panel_embeddings(ctx, rows)
    out = {"items": len(texts), "prompt": "formats.tts(text) (no voice prompt: the only TTS format lm_data trains)",
           "voice_prompted": "skipped: apps/train/lm_data.py trains no voice-prompted TTS format",
           "reference": reference, "models": {}, "per_item": [{"text_id": t, "text": x} for t, x in zip(picked, texts)]}
    for v in ctx.variants:
        mimo = v.mimo
        results = []
        for chunk in _bar(_batches(texts, ctx.batch), f"tts: {v.name} LM", ctx.progress):
            results += mimo.tts_batch(list(chunk), seed=ctx.seed, max_new_patches=max(tts_cap(t) for t in chunk))
        hyps, moses, sims = [], [], []
        for item, res in zip(out["per_item"], results):
            audio, rate = _audio(res)
            _save(ctx, "tts", v.name, item["text_id"], audio, rate)
            emb = sc.embed(audio, rate)
            sim = {k: round(float(emb @ e), 4) for k, e in panel.items()} if emb is not None else {}
            nearest = max(sim, key=sim.get) if sim else None
            item[v.name] = {"hyp": sc.transcribe(audio, rate), "dnsmos": sc.dnsmos(audio, rate),
                            "seconds": round(res.seconds, 2), "stop": res.stop_reason, "patches": res.num_patches,
                            "stream_text": res.text, "nearest_trained_voice": nearest,
                            "nearest_sim": sim.get(nearest) if nearest else None}
            hyps.append(item[v.name]["hyp"])
            moses.append(item[v.name]["dnsmos"])
            sims.append(item[v.name]["nearest_sim"])
        got = [s for s in sims if s is not None]
        res = {**wer_summary(texts, hyps), "dnsmos": mean_mos(moses),
               "no_speech": sum(1 for r in results if _audio(r)[0] is None),
               "stopped": sum(1 for r in results if r.stop_reason == "stop_token"),
               "mean_seconds": round(float(np.mean([r.seconds for r in results])), 2),
               "nearest_voice_sim": round(float(np.mean(got)), 4) if got else None,
               "sounds_like_trained_voice": sum(1 for s in got if s >= SAME_VOICE_SIM),
               "nearest_voices": dict(Counter(i[v.name]["nearest_trained_voice"] for i in out["per_item"]))}
        out["models"][v.name] = res
        ctx.goal("tts", "pocketsphinx WER of TTS", v.name, res["wer"], f"<= {GOAL_TTS_WER:.0%}",
                 res["wer"] <= GOAL_TTS_WER)
    return out


# ---------------------------------------------------------------- 3. ASR
def asr_cap(text: str) -> int:
    return 2 * len(text.encode("utf-8")) + 16


def section_asr(ctx: Context) -> dict:
    rows = split_rows(ctx.corpus, ctx.split)
    rng = ctx.rng("asr")
    groups = {"trained voices": spread([r for r in rows if r["voice_seen_in_train"]], ctx.items, rng),
              "held-out voices": spread([r for r in rows if not r["voice_seen_in_train"]], ctx.items, rng)}
    sc = ctx.scorers
    out: dict = {"items": {g: len(rs) for g, rs in groups.items()}, "reference": {}, "models": {}, "per_item": []}
    for g, rs in groups.items():
        if not rs:
            continue
        hyps = [sc.transcribe(ctx.corpus / r["path"], key=str(ctx.corpus / r["path"]))
                for r in _bar(rs, f"asr: pocketsphinx, {g}", ctx.progress)]
        out["reference"][f"pocketsphinx, {g}"] = wer_summary([r["text"] for r in rs], hyps)
        out["per_item"] += [{"id": r["id"], "group": g, "engine": r["engine"], "text": r["text"], "pocketsphinx": h}
                            for r, h in zip(rs, hyps)]
    for v in ctx.variants:
        mimo = v.mimo
        res: dict = {}
        for g, rs in groups.items():
            if not rs:
                continue
            hyps: list[str] = []
            for chunk in _bar(_batches(rs, ctx.batch), f"asr: {v.name} LM, {g}", ctx.progress):
                hyps += mimo.asr_batch([ctx.corpus / r["path"] for r in chunk], seed=ctx.seed,
                                       max_new_patches=max(asr_cap(r["text"]) for r in chunk))
            res[g] = wer_summary([r["text"] for r in rs], hyps)
            for item in out["per_item"]:
                if item["group"] == g:
                    item[v.name] = hyps[[r["id"] for r in rs].index(item["id"])]
            by_engine: dict[str, list[int]] = defaultdict(list)
            for i, r in enumerate(rs):
                by_engine[r["engine"]].append(i)
            res[g]["by_engine"] = {e: wer_summary([rs[i]["text"] for i in idx], [hyps[i] for i in idx])["wer"]
                                   for e, idx in sorted(by_engine.items())}
        out["models"][v.name] = res
        if "trained voices" in res:
            w = res["trained voices"]["wer"]
            ctx.goal("asr", "LM ASR WER, trained voices", v.name, w, f"<= {GOAL_ASR_WER:.0%}", w <= GOAL_ASR_WER)
        if "held-out voices" in res:
            ctx.goal("asr", "LM ASR WER, held-out voices", v.name, res["held-out voices"]["wer"], "(report)", None)
    return out


# ---------------------------------------------------------------- 4. few-shot voice conversion
@dataclass(frozen=True)
class VCItem:
    query: dict  # source (trained) voice reading sentence s
    example_in: dict  # source voice reading sentence s'
    example_out: dict  # target (held-out) voice reading s'
    target_ref: dict  # target voice reading another sentence (the target voice's reference)
    truth: dict  # target voice reading s: a perfect conversion (for the ceiling)


def vc_items(rows: Sequence[dict], n: int, rng: np.random.Generator) -> list[VCItem]:
    """Conversion items from the parallel readings: a trained source voice, a held-out target voice."""
    at: dict[tuple[str, str], dict] = {(r["speaker_id"], r["text_id"]): r for r in rows}
    texts_of: dict[str, list[str]] = defaultdict(list)
    for spk, tid in sorted(at):
        texts_of[spk].append(tid)
    sources = sorted({r["speaker_id"] for r in rows if r["voice_seen_in_train"]})
    targets = sorted({r["speaker_id"] for r in rows if not r["voice_seen_in_train"]})
    cands = []
    for t in targets:
        for s in texts_of[t]:
            for a in sources:
                shared = [x for x in texts_of[t] if x != s and (a, x) in at]
                if (a, s) in at and shared:
                    cands.append({"speaker_id": t, "id": f"{t}|{s}|{a}", "s": s, "a": a, "shared": shared})
    items = []
    for c in spread(cands, n, rng):
        t, s, a = c["speaker_id"], c["s"], c["a"]
        s1 = c["shared"][int(rng.integers(len(c["shared"])))]
        others = [x for x in texts_of[t] if x not in (s, s1)] or [s1]
        s2 = others[int(rng.integers(len(others)))]
        items.append(VCItem(at[(a, s)], at[(a, s1)], at[(t, s1)], at[(t, s2)], at[(t, s)]))
    return items


def vc_cap(query: dict) -> int:
    return len(query["text"].encode("utf-8")) + 12 + math.ceil(2 * query["duration_s"] * PATCHES_PER_SECOND)


def _sim(a: np.ndarray | None, b: np.ndarray | None) -> float | None:
    return None if a is None or b is None else round(float(a @ b), 4)


def _vc_summary(pairs: Sequence[tuple[float | None, float | None]]) -> dict:
    wins = [t is not None and s is not None and t > s for t, s in pairs]
    scored = [(t, s) for t, s in pairs if t is not None and s is not None]
    # Stricter companion of the criterion: closer to the target AND recognisably the target voice
    # (an output that is not speech can land marginally closer to either reference).
    strict = [t is not None and s is not None and t > s and t >= SAME_VOICE_SIM for t, s in pairs]
    return {"items": len(pairs), "scored": len(scored), "target_wins": int(sum(wins)),
            "share_target_closer": round(float(np.mean(wins)), 4) if wins else None,
            "share_target_voice": round(float(np.mean(strict)), 4) if strict else None,
            "mean_sim_target": round(float(np.mean([t for t, _ in scored])), 4) if scored else None,
            "mean_sim_source": round(float(np.mean([s for _, s in scored])), 4) if scored else None}


def section_vc(ctx: Context) -> dict:
    from mimo_audio import formats

    rows = split_rows(ctx.corpus, ctx.split)
    items = vc_items(rows, ctx.items, ctx.rng("vc"))
    if not items:
        raise ValueError(f"the {ctx.split} split has no held-out voice with two sentences read by a trained voice")
    sc = ctx.scorers

    def emb(r: dict) -> np.ndarray | None:
        return sc.embed(ctx.corpus / r["path"], key=str(ctx.corpus / r["path"]))

    ceiling = [(_sim(emb(it.truth), emb(it.target_ref)), _sim(emb(it.truth), emb(it.query))) for it in items]
    out = {"items": len(items), "prompt": "formats.in_context_s2s, one example pair, no instruction (as lm_data)",
           "reference": {"real target audio (ceiling)": _vc_summary(ceiling)}, "models": {},
           "per_item": [{"query": it.query["id"], "example_in": it.example_in["id"],
                         "example_out": it.example_out["id"], "target_ref": it.target_ref["id"],
                         "text": it.query["text"], "ceiling": {"sim_target": t, "sim_source": s}}
                        for it, (t, s) in zip(items, ceiling)]}
    for v in ctx.variants:
        mimo = v.mimo

        def enc(r: dict, mimo=mimo) -> torch.Tensor:
            return mimo.encode_audio(ctx.corpus / r["path"])

        results = []
        for chunk in _bar(_batches(items, ctx.batch), f"vc: {v.name} LM", ctx.progress):
            prompts = []
            for it in chunk:
                pair = formats.SpeechPair(enc(it.example_in), enc(it.example_out), it.example_out["text"])
                prompts.append(formats.in_context_s2s([pair], enc(it.query)))
            cfg = mimo.generation_config("in_context_learning_s2s", "audio", seed=ctx.seed,
                                         max_new_patches=max(vc_cap(it.query) for it in chunk))
            results += mimo.run(prompts, cfg)
        pairs, hyps = [], []
        for it, item, res in zip(items, out["per_item"], results):
            audio, rate = _audio(res)
            _save(ctx, "vc", v.name, it.query["id"], audio, rate)
            e = sc.embed(audio, rate)
            t, s = _sim(e, emb(it.target_ref)), _sim(e, emb(it.query))
            hyp = sc.transcribe(audio, rate)
            item[v.name] = {"sim_target": t, "sim_source": s, "hyp": hyp, "seconds": round(res.seconds, 2),
                            "stop": res.stop_reason}
            pairs.append((t, s))
            hyps.append(hyp)
        res = _vc_summary(pairs)
        res["content_wer"] = wer_summary([it.query["text"] for it in items], hyps)["wer"]
        res["no_speech"] = sum(1 for r in results if _audio(r)[0] is None)
        out["models"][v.name] = res
        ctx.goal("vc", "share of items closer to target voice", v.name, res["share_target_closer"],
                 f">= {GOAL_VC_SHARE:.0%}", (res["share_target_closer"] or 0.0) >= GOAL_VC_SHARE)
        ctx.goal("vc", f"share closer to target and sim >= {SAME_VOICE_SIM}", v.name, res["share_target_voice"],
                 "(report)", None)
    return out


# ---------------------------------------------------------------- 5. MTP acceptance (hook)
def section_mtp(ctx: Context) -> dict:
    trained = next((v for v in ctx.variants if v.name == "trained"), ctx.variants[0])
    heads = trained.lm_dir / "mtp.safetensors"
    if not heads.is_file():
        return {"status": "skipped", "note": f"no mtp.safetensors beside the LM ({trained.lm_dir})"}
    fn = ctx.mtp_fn
    if fn is None:
        module, _, name = ctx.mtp_hook.partition(":")
        try:
            fn = getattr(importlib.import_module(module), name)
        except (ImportError, AttributeError) as exc:
            return {"status": "skipped", "note": f"MTP heads present but the hook {ctx.mtp_hook} is unavailable: {exc}"}
    result = fn(lm_dir=trained.lm_dir, tokenizer_dir=trained.tokenizer_dir, corpus=ctx.corpus, split=ctx.split,
                items=ctx.items, seed=ctx.seed)
    out = {"status": "ok", "hook": getattr(fn, "__qualname__", str(fn)), "result": result}
    if isinstance(result, dict) and isinstance(result.get("acceptance_length"), (int, float)):
        ctx.goal("mtp", "acceptance length", trained.name, result["acceptance_length"], "(report)", None)
    return out


RUNNERS: dict[str, Callable[[Context], dict]] = {
    "resynth": section_resynth, "tts": section_tts, "asr": section_asr, "vc": section_vc, "mtp": section_mtp,
}


# ---------------------------------------------------------------- report
def _fmt(x: Any, pct: bool = False) -> str:
    if x is None:
        return "-"
    if isinstance(x, float):
        return f"{x:.1%}" if pct else f"{x:.3f}"
    return str(x)


def format_report(results: dict) -> str:
    lines = ["| section | measure | model | value | goal | met |", "|---|---|---|---|---|---|"]
    for g in results["goals"]:
        met = {True: "yes", False: "NO", None: "-"}[g["met"]]
        if "points" in g["measure"] and g["value"] is not None:
            value = f"{g['value']:+.1f}"
        else:
            value = _fmt(g["value"], "WER" in g["measure"] or "share" in g["measure"])
        lines.append(f"| {g['section']} | {g['measure']} | {g['model']} | {value} | {g['goal']} | {met} |")
    sec = results["sections"]
    if "resynth" in sec and "models" in sec["resynth"]:
        r = sec["resynth"]
        lines += ["", f"resynthesis, {r['items']} flite utterances: pocketsphinx WER (corpus / mean utt.), DNSMOS",
                  "| audio | WER | WER mean utt. | OVRL | SIG | BAK |", "|---|---|---|---|---|---|"]
        for name, m in [("original", r["reference"]["original"])] + [(f"{k} tokenizer", v)
                                                                       for k, v in r["models"].items()]:
            d = m["dnsmos"]
            lines.append(f"| {name} | {_fmt(m['wer'], True)} | {_fmt(m['wer_mean_utt'], True)} | {_fmt(d['ovrl'])} "
                         f"| {_fmt(d['sig'])} | {_fmt(d['bak'])} |")
    if "tts" in sec and "models" in sec["tts"]:
        t = sec["tts"]
        lines += ["", f"TTS, {t['items']} held-out sentences",
                  "| audio | WER | WER mean utt. | OVRL | stopped | no speech | mean s | nearest-voice sim | "
                  "like a trained voice |", "|---|---|---|---|---|---|---|---|---|"]
        for name, m in t["reference"].items():
            if m:
                lines.append(f"| reference: {name} | {_fmt(m['wer'], True)} | {_fmt(m['wer_mean_utt'], True)} "
                             "| - | - | - | - | - | - |")
        for name, m in t["models"].items():
            lines.append(f"| {name} LM | {_fmt(m['wer'], True)} | {_fmt(m['wer_mean_utt'], True)} "
                         f"| {_fmt(m['dnsmos']['ovrl'])} | {m['stopped']}/{m['utterances']} | {m['no_speech']} "
                         f"| {m['mean_seconds']} | {_fmt(m['nearest_voice_sim'])} | "
                         f"{m['sounds_like_trained_voice']}/{m['utterances']} |")
    if "asr" in sec and "models" in sec["asr"]:
        a = sec["asr"]
        lines += ["", "ASR on held-out sentences",
                  "| recogniser | voices | utterances | WER | WER mean utt. | by engine |", "|---|---|---|---|---|---|"]
        for name, m in a["reference"].items():
            rec, group = name.split(", ")
            lines.append(f"| {rec} | {group} | {m['utterances']} | {_fmt(m['wer'], True)} "
                         f"| {_fmt(m['wer_mean_utt'], True)} | - |")
        for name, groups in a["models"].items():
            for g, m in groups.items():
                eng = ", ".join(f"{e} {w:.0%}" for e, w in m["by_engine"].items())
                lines.append(f"| {name} LM | {g} | {m['utterances']} | {_fmt(m['wer'], True)} "
                             f"| {_fmt(m['wer_mean_utt'], True)} | {eng} |")
    if "vc" in sec and "models" in sec["vc"]:
        c = sec["vc"]
        lines += ["", f"few-shot voice conversion into held-out voices, {c['items']} items",
                  "| output | closer to target | ... and sim >= 0.75 | mean sim target | mean sim source | content WER "
                  "| no speech |", "|---|---|---|---|---|---|---|"]
        for name, m in [(k, v) for k, v in c["reference"].items()] + [(f"{k} LM", v) for k, v in c["models"].items()]:
            lines.append(f"| {name} | {m['target_wins']}/{m['items']} ({_fmt(m['share_target_closer'], True)}) "
                         f"| {_fmt(m['share_target_voice'], True)} | {_fmt(m['mean_sim_target'])} "
                         f"| {_fmt(m['mean_sim_source'])} "
                         f"| {_fmt(m.get('content_wer'), True)} | {m.get('no_speech', '-')} |")
    for name, s in sec.items():
        if s.get("status") in ("skipped", "error"):
            lines.append(f"\n{name}: {s['status']}: {s['note']}")
    lines += ["", "time per section (wall s / CPU s; wall is inflated on a shared machine): "
              + ", ".join(f"{k} {v['seconds']:.0f}/{v.get('cpu_seconds', 0):.0f}" for k, v in sec.items())]
    lines.append("scorer calls: " + ", ".join(f"{k} {v}" for k, v in sorted(results["scorer_calls"].items())))
    return "\n".join(lines)


# ---------------------------------------------------------------- main
def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tokenizer", type=Path, default=DEFAULT_TOKENIZER,
                   help=f"audio tokenizer directory (default: the embedded {DEFAULT_TOKENIZER.relative_to(ROOT)})")
    p.add_argument("--lm", type=Path, default=DEFAULT_LM,
                   help=f"speech LM directory (default: the embedded {DEFAULT_LM.relative_to(ROOT)})")
    p.add_argument("--corpus", type=Path, required=True, help="corpus directory (mimo-audio corpus build)")
    p.add_argument("--split", default="test", choices=("test", "valid"), help="held-out split (default test)")
    p.add_argument("--items", type=int, default=8, help="items per section (ASR: per voice group); default 8")
    p.add_argument("--only", default=",".join(SECTIONS), help=f"comma-separated sections of {','.join(SECTIONS)}")
    p.add_argument("--baseline-random", action="store_true",
                   help="also measure random-init models of the same configurations, side by side")
    p.add_argument("--out", type=Path, default=None, help="write the results as JSON here")
    p.add_argument("--save-audio", type=Path, default=None, help="write every generated/resynthesised wav here")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch", type=int, default=4, help="prompts generated together (default 4)")
    p.add_argument("--threads", type=int, default=1,
                   help="torch threads (default 1: on a shared 2-core machine 2 threads ran 7x slower in wall time)")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when present)")
    p.add_argument("--mtp-hook", default=MTP_HOOK, help=f"module:function of the MTP measurement (default {MTP_HOOK})")
    p.add_argument("--no-progress", action="store_true")
    args = p.parse_args(argv)
    args.sections = [s.strip() for s in args.only.split(",") if s.strip()]
    unknown = [s for s in args.sections if s not in SECTIONS]
    if unknown or not args.sections:
        p.error(f"--only: unknown section(s) {unknown}; choose from {','.join(SECTIONS)}")
    if args.items < 1:
        p.error("--items must be >= 1")
    return args


def run(args: argparse.Namespace, mtp_fn: Callable | None = None) -> dict:
    """Measure the chosen sections; returns the results dict (also written to ``args.out``)."""
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    if not (args.corpus / "manifest.jsonl").is_file():
        raise FileNotFoundError(f"no corpus manifest in {args.corpus}: build one with `mimo-audio corpus build`")
    needs_lm = any(s in args.sections for s in ("tts", "asr", "vc", "mtp"))
    _check_dir(args.tokenizer, "tokenizer", ["config.json"])
    if needs_lm:
        _check_dir(args.lm, "lm", ["config.json"])
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    names = ["trained"] + (["random"] if args.baseline_random else [])
    variants = [Variant(n, args.tokenizer, args.lm, args.seed, device) for n in names]
    ctx = Context(args.corpus, args.split, args.items, args.seed, args.batch, variants, Scorers(),
                  progress=not args.no_progress, save_audio=args.save_audio, mtp_hook=args.mtp_hook, mtp_fn=mtp_fn)
    results: dict = {
        "config": {"tokenizer": str(args.tokenizer), "lm": str(args.lm), "corpus": str(args.corpus),
                   "split": args.split, "items": args.items, "seed": args.seed, "sections": args.sections,
                   "baseline_random": args.baseline_random, "device": device, "threads": args.threads},
        "environment": {"python": platform.python_version(), "torch": torch.__version__,
                        "machine": platform.machine(), "started": time.strftime("%Y-%m-%d %H:%M:%S UTC",
                                                                                time.gmtime())},
        "sections": {}, "goals": ctx.goals,
    }
    for name in args.sections:
        t0, c0 = time.perf_counter(), time.process_time()
        log.info("section %s", name)
        try:
            sec = RUNNERS[name](ctx)
            sec.setdefault("status", "ok")
        except (FileNotFoundError, ValueError) as exc:  # a user-level problem: report it, run the other sections
            log.error("section %s failed: %s", name, exc)
            sec = {"status": "error", "note": str(exc)}
        sec["seconds"] = round(time.perf_counter() - t0, 1)
        sec["cpu_seconds"] = round(time.process_time() - c0, 1)  # all threads of this process; the machine is shared
        results["sections"][name] = sec
        print(f"[{name}] {sec['status']} in {sec['seconds']:.0f} s ({sec['cpu_seconds']:.0f} s of CPU)", flush=True)
    results["scorer_calls"] = dict(ctx.scorers.calls)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=1, default=float) + "\n", encoding="utf-8")
    return results


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    warnings.filterwarnings("ignore", message="pkg_resources is deprecated")  # webrtcvad, under resemblyzer
    args = parse_args(argv)
    results = run(args)
    print(format_report(results))
    if args.out is not None:
        print(f"\nresults: {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
