"""bench/default_model_quality.py end to end on tiny models and a mini corpus of real flite speech."""

from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
import sys
from pathlib import Path

import librosa
import numpy as np
import pytest
import soundfile as sf
import torch

ROOT = Path(__file__).resolve().parents[2]
SENTENCES = ("The cat sat on the warm mat.", "Please bring me a cup of tea.")
VOICES = (("slt", True), ("awb", True), ("rms", False))  # (flite voice, seen in training)


def _load_bench():
    spec = importlib.util.spec_from_file_location("default_model_quality", ROOT / "bench" / "default_model_quality.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def bench():
    pytest.importorskip("pocketsphinx")
    pytest.importorskip("speechmos")
    pytest.importorskip("resemblyzer")
    return _load_bench()


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    """Two sentences read by two trained and one held-out flite voice: the test split of a corpus."""
    if shutil.which("flite") is None:
        pytest.skip("flite is not installed (make sysdeps)")
    root = tmp_path_factory.mktemp("quality_corpus")
    rows = []
    for t, text in enumerate(SENTENCES):
        for voice, seen in VOICES:
            raw = root / "raw.wav"
            subprocess.run(["flite", "-voice", voice, "-t", text, "-o", str(raw)], check=True, capture_output=True)
            wav, sr = sf.read(raw, dtype="float32")
            wav = librosa.resample(wav, orig_sr=sr, target_sr=24000).astype(np.float32)
            rel = f"wav/test/flite-{voice}/t{t}_plain.wav"
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
            sf.write(root / rel, wav, 24000)
            rows.append({"id": f"test/flite-{voice}/t{t}_plain", "split": "test", "text_id": f"t{t}", "text": text,
                         "speaker_id": f"flite-{voice}", "voice_group": f"flite-{voice}", "engine": "flite",
                         "voice": voice, "voice_seen_in_train": seen, "style": "plain", "path": rel,
                         "duration_s": len(wav) / 24000, "sample_rate": 24000})
    (root / "manifest.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return root


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> tuple[Path, Path]:
    """A random tiny audio tokenizer and a tiny random LM (official layouts, matching code vocabularies)."""
    from helpers.tiny_lm import make_tiny_checkpoint

    from apps.train.tokenizer import TRAIN_PRESETS
    from tokenizer import AudioTokenizer
    from tokenizer.config import TokenizerConfig

    root = tmp_path_factory.mktemp("quality_models")
    AudioTokenizer.from_config(TokenizerConfig.from_dict(dict(TRAIN_PRESETS["tiny"])), seed=0).save_pretrained(
        root / "tok")
    return root / "tok", make_tiny_checkpoint(root / "lm", seed=0)


def test_every_section_runs_and_calls_the_scorers(bench, corpus, models, tmp_path):
    torch.set_num_threads(1)
    tok, lm = models
    out = tmp_path / "results.json"
    args = bench.parse_args(["--tokenizer", str(tok), "--lm", str(lm), "--corpus", str(corpus), "--items", "1",
                             "--out", str(out), "--no-progress", "--threads", "1"])
    results = bench.run(args)
    assert json.loads(out.read_text()) == json.loads(json.dumps(results, default=float))
    sec = results["sections"]
    assert [sec[s]["status"] for s in bench.SECTIONS] == ["ok", "ok", "ok", "ok", "skipped"]
    assert "mtp.safetensors" in sec["mtp"]["note"]
    assert all(sec[s]["seconds"] >= 0 for s in bench.SECTIONS)

    calls = results["scorer_calls"]
    assert calls["pocketsphinx"] >= 4 and calls["dnsmos"] >= 2 and calls["resemblyzer"] >= 3

    # Resynthesis: the original flite audio is recognised (real pocketsphinx), the random tokenizer scored too.
    r = sec["resynth"]
    item = r["per_item"][0]
    assert item["original"]["hyp"].strip()
    assert r["reference"]["original"]["wer"] < 0.6
    assert 1.0 <= item["original"]["dnsmos"]["ovrl"] <= 5.0
    assert set(r["models"]) == {"trained"} and "wer_delta_points" in r["models"]["trained"]
    assert item["trained"]["dnsmos"] is not None

    # TTS / ASR / VC produced one scored item each, with the reference figures alongside.
    assert sec["tts"]["models"]["trained"]["utterances"] == 1
    assert sec["tts"]["reference"]["corpus_trained_voices"]["utterances"] == 1  # as many readings as items
    asr = sec["asr"]
    assert set(asr["models"]["trained"]) == {"trained voices", "held-out voices"}
    assert asr["reference"]["pocketsphinx, held-out voices"]["utterances"] == 1
    assert all("trained" in i for i in asr["per_item"])
    vc = sec["vc"]
    ceiling = vc["reference"]["real target audio (ceiling)"]
    assert ceiling["scored"] == 1 and ceiling["mean_sim_target"] > ceiling["mean_sim_source"]  # rms vs slt/awb
    assert vc["per_item"][0]["target_ref"].startswith("test/flite-rms/")
    assert vc["per_item"][0]["query"].split("/")[1] in ("flite-slt", "flite-awb")

    measures = {(g["section"], g["measure"]) for g in results["goals"]}
    assert {s for s, _ in measures} == {"resynth", "tts", "asr", "vc"}
    report = bench.format_report(results)
    assert "| resynth | DNSMOS OVRL | trained |" in report and "time per section" in report


def test_only_one_section_and_the_mtp_hook(bench, corpus, models):
    tok, lm = models
    (lm / "mtp.safetensors").write_bytes(b"")  # presence is what the section checks; the hook reads it
    try:
        seen = {}

        def hook(**kwargs):
            seen.update(kwargs)
            return {"acceptance_length": 1.5}

        args = bench.parse_args(["--tokenizer", str(tok), "--lm", str(lm), "--corpus", str(corpus), "--only", "mtp",
                                 "--items", "2", "--no-progress"])
        results = bench.run(args, mtp_fn=hook)
    finally:
        (lm / "mtp.safetensors").unlink()
    assert list(results["sections"]) == ["mtp"]
    assert results["sections"]["mtp"]["result"] == {"acceptance_length": 1.5}
    assert seen["lm_dir"] == lm and seen["items"] == 2 and seen["split"] == "test"
    assert results["goals"] == [{"section": "mtp", "measure": "acceptance length", "model": "trained",
                                 "value": 1.5, "goal": "(report)", "met": None}]


def test_bad_arguments_are_clear(bench, corpus, tmp_path):
    with pytest.raises(SystemExit):
        bench.parse_args(["--corpus", str(corpus), "--only", "tts,bogus"])
    args = bench.parse_args(["--corpus", str(corpus), "--tokenizer", str(tmp_path), "--only", "resynth"])
    with pytest.raises(FileNotFoundError, match="tokenizer directory"):
        bench.run(args)
    args = bench.parse_args(["--corpus", str(tmp_path), "--only", "resynth"])
    with pytest.raises(FileNotFoundError, match="corpus manifest"):
        bench.run(args)
