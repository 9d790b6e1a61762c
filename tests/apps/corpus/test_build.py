"""Build a tiny corpus with the real engines: files, manifest, resume, determinism, CLI."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from apps.corpus import CorpusConfig, build_corpus, corpus_stats, load_manifest
from apps.corpus.augment import measured_snr_db

TINY = CorpusConfig(train_sentences=3, valid_sentences=1, test_sentences=2, voices_per_train_sentence=2,
                    speed_fraction=0.5, noise_fraction=0.5, whisper_fraction=0.6, engines=("flite", "espeak"))


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    if shutil.which("flite") is None or shutil.which("espeak-ng") is None:
        pytest.skip("flite and espeak-ng are needed (make sysdeps)")
    pytest.importorskip("pocketsphinx")
    out = tmp_path_factory.mktemp("corpus")
    try:
        report = build_corpus(out, TINY, jobs=2, progress=False)
    except FileNotFoundError as exc:  # no text source installed
        pytest.skip(str(exc))
    assert report.failed == 0 and report.made == report.utterances > 0
    return out


def test_files_are_24khz_mono_int16_and_match_the_manifest(corpus: Path) -> None:
    rows = load_manifest(corpus)
    meta = json.loads((corpus / "corpus.json").read_text())
    assert meta["utterances"] == len(rows) and meta["sample_rate"] == 24000
    assert {r["engine"] for r in rows} == {"flite", "espeak"}
    for r in rows:
        info = sf.info(str(corpus / r["path"]))
        assert (info.samplerate, info.channels, info.subtype) == (24000, 1, "PCM_16")
        assert info.frames / 24000 == pytest.approx(r["duration_s"], abs=1e-3)
        assert 0.5 < r["duration_s"] < 20
    assert not list(corpus.rglob("*.part"))
    styles = {r["style"] for r in rows}
    assert {"plain", "slow", "fast", "noisy", "whisper"} <= styles


def test_derived_rows_are_parallel_to_their_source(corpus: Path) -> None:
    rows = load_manifest(corpus)
    by_id = {r["id"]: r for r in rows}
    for r in rows:
        if r["source_id"] is None:
            continue
        src = by_id[r["source_id"]]
        assert (src["text"], src["speaker_id"]) == (r["text"], r["speaker_id"])
        if r["style"] == "slow":
            assert r["duration_s"] > src["duration_s"] * 1.1
        if r["style"] == "fast":
            assert r["duration_s"] < src["duration_s"] * 0.95
        if r["style"] == "noisy":
            clean, _ = sf.read(str(corpus / src["path"]), dtype="float32")
            noisy, _ = sf.read(str(corpus / r["path"]), dtype="float32")
            assert measured_snr_db(clean, noisy) == pytest.approx(r["snr_db"], abs=1.0)


def test_transcripts_are_what_is_spoken(corpus: Path) -> None:
    from eval.scorers import PocketsphinxASR, word_error_rate

    rows = [r for r in load_manifest(corpus) if r["speaker_id"] == "flite-slt-p0-r100" and r["style"] == "plain"]
    assert rows
    asr = PocketsphinxASR()
    hyps = [asr.transcribe(corpus / r["path"]) for r in rows[:3]]
    # pocketsphinx scores ~0.3 on clean flite speech of this text; a wrong transcript scores ~1
    assert word_error_rate([r["text"] for r in rows[:3]], hyps).corpus < 0.6, hyps


def test_resume_skips_existing_files_and_rebuilds_identically(corpus: Path) -> None:
    rows = load_manifest(corpus)
    noisy = next(r for r in rows if r["style"] == "noisy")
    flite = [r for r in rows if r["style"] == "plain" and r["engine"] == "flite"]
    plain = sorted(flite, key=lambda r: r["pitch"] == 0)[0]  # prefer a pitch-shifted one (made with sox)
    before = {r["path"]: (corpus / r["path"]).read_bytes() for r in (noisy, plain)}
    for path in before:
        (corpus / path).unlink()
    report = build_corpus(corpus, TINY, jobs=2, progress=False)
    assert (report.made, report.skipped) == (2, len(rows) - 2)
    for path, data in before.items():
        assert (corpus / path).read_bytes() == data  # same seed, same engines: same samples
    assert load_manifest(corpus) == rows
    with pytest.raises(ValueError, match="different config"):
        build_corpus(corpus, replace(TINY, seed=7), jobs=1, progress=False)


def test_stats_and_cli(corpus: Path, capsys) -> None:
    from apps.cli import main

    stats = corpus_stats(corpus)
    assert stats["problems"] == []
    assert stats["splits"]["test"]["unseen_speakers"] > 0 and stats["splits"]["train"]["unseen_speakers"] == 0
    assert main(["corpus", "stats", str(corpus)]) == 0
    assert "| test |" in capsys.readouterr().out
    assert main(["corpus", "stats", str(corpus / "nowhere")]) == 1
    assert main(["corpus", "build", "--out", str(corpus), "--engines", "flite,sam"]) == 1  # unknown engine
    with pytest.raises(ValueError, match="unknown TTS engine"):
        build_corpus(corpus / "other", replace(TINY, engines=("sam",)), progress=False)


def test_parallel_pairs_for_few_shot_tasks(corpus: Path) -> None:
    from apps.corpus import parallel_pairs

    rows = load_manifest(corpus)
    for task in ("voice", "speed", "denoise", "whisper"):
        pairs = parallel_pairs(rows, task)
        assert pairs, task
        for a, b in pairs:
            assert a["text"] == b["text"] and a["split"] == b["split"]
            assert (a["speaker_id"] != b["speaker_id"]) == (task == "voice")
    assert all(a["style"] == "noisy" and b["style"] == "plain" for a, b in parallel_pairs(rows, "denoise"))
    test_vc = parallel_pairs(rows, "voice", split="test")
    assert any(a["voice_seen_in_train"] and not b["voice_seen_in_train"] for a, b in test_vc)  # to unseen voices
    with pytest.raises(ValueError, match="unknown pair task"):
        parallel_pairs(rows, "translate")


def test_levelled_audio(corpus: Path) -> None:
    row = next(r for r in load_manifest(corpus) if r["style"] == "plain")
    x, _ = sf.read(str(corpus / row["path"]), dtype="float32")
    rms_db = 20 * np.log10(np.sqrt(np.mean(x**2)))
    assert -27 < rms_db < -20 and np.abs(x).max() <= 0.951


@pytest.mark.parametrize("speaker_id", ["flite-awb-p+2-r110", "festival-cmu_us_slt_arctic_hts-p-2-r94",
                                        "festival-kal_diphone-p0-r100", "espeak-en-gb+f2-p66-r92"])
def test_each_engine_speaks_at_24khz(speaker_id: str) -> None:
    from apps.corpus.synth import synthesize
    from apps.corpus.voices import voice_available, voice_inventory

    voice = next(v for v in voice_inventory() if v.speaker_id == speaker_id)
    if not voice_available(voice):
        pytest.skip(f"{speaker_id} needs an engine/voice that is not installed")
    normal = synthesize(voice, "The cat sat on the mat.")
    slow = synthesize(voice, "The cat sat on the mat.", speed=0.8)
    assert normal.dtype == np.float32 and 0.5 * 24000 < len(normal) < 4 * 24000
    assert len(slow) > 1.1 * len(normal)
    if voice.can_whisper:
        assert len(synthesize(voice, "The cat sat on the mat.", whisper=True)) > 0
    else:
        with pytest.raises(ValueError, match="whisper"):
            synthesize(voice, "The cat sat on the mat.", whisper=True)


def test_quality_scores_and_conversion_oracle(corpus: Path) -> None:
    pytest.importorskip("speechmos")
    pytest.importorskip("resemblyzer")
    from apps.corpus.quality import conversion_oracle, format_scores, score_corpus

    scores = score_corpus(corpus, split="test", limit=2, progress=False)
    overall = scores[0]
    assert overall.group == "all" and overall.utterances == 2
    assert 0.0 <= overall.wer_corpus <= 1.5 and 1.0 < overall.dnsmos_ovrl < 5.0
    assert "| all | 2 |" in format_scores(scores)
    check = conversion_oracle(corpus, split="test", progress=False)
    assert check.items > 0 and check.closer_to_target >= 0.8  # the real target voice passes the §4 criterion
    assert check.mean_sim_target > check.mean_sim_source


def test_pitch_and_rate_variants_change_f0_and_duration() -> None:
    import librosa

    from apps.corpus.synth import synthesize
    from apps.corpus.voices import voice_available, voice_inventory

    voices = {v.speaker_id: v for v in voice_inventory()}
    base, high = voices["flite-slt-p0-r100"], voices["flite-slt-p+2-r110"]
    if not (voice_available(base) and voice_available(high)):
        pytest.skip("flite and sox are needed")
    text = "The cat sat quietly on the warm mat all day."
    a, b = synthesize(base, text), synthesize(high, text)

    def median_f0(x: np.ndarray) -> float:
        f0, _, _ = librosa.pyin(x[: 2 * 24000], fmin=60, fmax=400, sr=24000, frame_length=2048)
        return float(np.nanmedian(f0))

    assert median_f0(b) / median_f0(a) == pytest.approx(2 ** (2 / 12), rel=0.04)  # +2 semitones
    assert len(b) / len(a) == pytest.approx(100 / 110, rel=0.06)  # 110% rate
