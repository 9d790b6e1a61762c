"""Fixtures of the embedded-default tests: tiny checkpoints exported as default assets into a temp folder.

``use_defaults`` points ``tokenizer.defaults.DEFAULT_DIR`` / ``mimo_audio.defaults.DEFAULT_DIR`` at them, so the
tests exercise the real lookup, export and loading code without the (large, separately committed) package assets.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from helpers.tiny_lm import make_tiny_checkpoint

import mimo_audio.defaults
import tokenizer.defaults
from apps.scripts.export_default_model import export_default_model
from tokenizer import AudioTokenizer, TokenizerConfig

TOK_STEPS, LM_STEPS = 7, 11


@pytest.fixture(scope="session")
def tiny_runs(tmp_path_factory) -> tuple[Path, Path]:
    """Two recipe run folders (RUN/model + RUN/summary.json) holding tiny random checkpoints."""
    torch.set_num_threads(2)
    root = tmp_path_factory.mktemp("runs")
    tok_model, lm_model = root / "tok" / "model", root / "lm" / "model"
    AudioTokenizer.from_config(TokenizerConfig.preset("tiny"), seed=0, device="cpu").save_pretrained(tok_model)
    make_tiny_checkpoint(lm_model, seed=0)
    corpus = root / "corpus"
    corpus.mkdir()
    (corpus / "manifest.jsonl").write_text('{"id": "a"}\n{"id": "b"}\n')
    for model, steps, extra in ((tok_model, TOK_STEPS, {}), (lm_model, LM_STEPS, {"tokenizer": str(tok_model)})):
        summary = {"step": steps, "seconds_per_step": 0.5,
                   "config": {"corpus": str(corpus), "preset": "tiny", "steps": steps, "seed": 0, **extra}}
        (model.parent / "summary.json").write_text(json.dumps(summary))
    return tok_model, lm_model


@pytest.fixture(scope="session")
def default_assets(tiny_runs, tmp_path_factory) -> tuple[Path, Path]:
    """The tiny runs exported (fp32) as a default-asset pair: (tokenizer dir, LM dir)."""
    out = tmp_path_factory.mktemp("assets")
    tok_dir, lm_dir = out / "tokenizer" / "default", out / "lm" / "default"
    export_default_model(*tiny_runs, tokenizer_out=tok_dir, lm_out=lm_dir)
    return tok_dir, lm_dir


@pytest.fixture()
def use_defaults(default_assets, monkeypatch) -> tuple[Path, Path]:
    tok_dir, lm_dir = default_assets
    monkeypatch.setattr(tokenizer.defaults, "DEFAULT_DIR", tok_dir)
    monkeypatch.setattr(mimo_audio.defaults, "DEFAULT_DIR", lm_dir)
    monkeypatch.delenv("MIMO_AUDIO_LM_PATH", raising=False)
    monkeypatch.delenv("MIMO_AUDIO_TOKENIZER_PATH", raising=False)
    return default_assets


@pytest.fixture()
def no_defaults(tmp_path, monkeypatch) -> Path:
    """Both default locations point at an empty folder (a source checkout before the export)."""
    empty = tmp_path / "no-assets"
    monkeypatch.setattr(tokenizer.defaults, "DEFAULT_DIR", empty / "tokenizer")
    monkeypatch.setattr(mimo_audio.defaults, "DEFAULT_DIR", empty / "lm")
    monkeypatch.delenv("MIMO_AUDIO_LM_PATH", raising=False)
    monkeypatch.delenv("MIMO_AUDIO_TOKENIZER_PATH", raising=False)
    return empty


TTS_TEXT, TTS_PATCHES = "hello", 8


@pytest.fixture(scope="session")
def speaking_seed(default_assets) -> int:
    """A sampling seed with which the tiny random LM speaks ``TTS_TEXT`` (it mixes text and speech patches)."""
    from mimo_audio import MimoAudio

    m = MimoAudio.from_pretrained(default_assets[1], default_assets[0], device="cpu")
    for seed in range(40):
        if m.tts(TTS_TEXT, max_new_patches=TTS_PATCHES, seed=seed).codes.shape[1]:
            return seed
    raise AssertionError("the tiny model never produced speech")
