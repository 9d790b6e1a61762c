"""The embedded default model is what the API loads when no path is given."""

from __future__ import annotations

import json
import logging

import pytest
import torch

from mimo_audio import MimoAudio, default_model_dir
from mimo_audio.defaults import check_pairing
from tokenizer import AudioTokenizer, default_tokenizer_dir

from .conftest import TTS_PATCHES, TTS_TEXT

G = {"preset": "greedy", "max_new_patches": 4}


def test_default_dirs_are_the_installed_assets(use_defaults):
    tok_dir, lm_dir = use_defaults
    assert default_tokenizer_dir() == tok_dir and default_model_dir() == lm_dir


def test_tokenizer_without_a_path_loads_the_default(use_defaults, caplog):
    with caplog.at_level(logging.INFO):
        tok = AudioTokenizer.from_pretrained()
    assert "embedded default audio tokenizer" in caplog.text and str(use_defaults[0]) in caplog.text
    ref = AudioTokenizer.from_pretrained(use_defaults[0])
    for (k, a), b in zip(tok.model.state_dict().items(), ref.model.state_dict().values()):
        assert torch.equal(a, b), k


def test_mimo_audio_without_paths_loads_the_pair(use_defaults, caplog, flite_wav, speaking_seed):
    tok_dir, lm_dir = use_defaults
    with caplog.at_level(logging.INFO):
        m = MimoAudio.from_pretrained(device="cpu")
    assert "embedded default speech LM" in caplog.text and "embedded default audio tokenizer" in caplog.text
    assert "11 training steps" in caplog.text  # from the run's summary.json, via provenance.json
    assert m.audio_tokenizer is not None
    explicit = MimoAudio.from_pretrained(lm_dir, tok_dir, device="cpu")
    # a short ASR and TTS run on the default and give what the explicitly loaded pair gives
    text = m.asr(flite_wav, **G)
    assert isinstance(text, str) and text == explicit.asr(flite_wav, **G)
    r = m.tts(TTS_TEXT, max_new_patches=TTS_PATCHES, seed=speaking_seed)
    assert r.codes.shape[1] > 0 and r.audio is not None and r.sample_rate == 24000
    assert r.audio.numel() == 960 * r.codes.shape[1] and torch.isfinite(r.audio).all()


def test_an_explicit_lm_is_not_paired_with_the_embedded_tokenizer(use_defaults):
    m = MimoAudio.from_pretrained(use_defaults[1], device="cpu")
    assert m.audio_tokenizer is None
    with pytest.raises(ValueError, match="needs an audio tokenizer"):
        m.encode_audio(torch.full((2400,), 0.1))


def test_missing_assets_give_an_error_that_says_how_to_fix_it(no_defaults):
    for load in (default_tokenizer_dir, default_model_dir, AudioTokenizer.from_pretrained, MimoAudio.from_pretrained):
        with pytest.raises(FileNotFoundError, match="export_default_model") as exc:
            load()
        assert str(no_defaults) in str(exc.value) and "model.safetensors" in str(exc.value)


def test_lm_without_text_tokenizer_is_reported(use_defaults, tmp_path, monkeypatch):
    import shutil

    import mimo_audio.defaults

    broken = tmp_path / "lm"
    shutil.copytree(use_defaults[1], broken)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (broken / name).unlink()
    monkeypatch.setattr(mimo_audio.defaults, "DEFAULT_DIR", broken)
    with pytest.raises(FileNotFoundError, match="text tokenizer"):
        MimoAudio.from_pretrained()


def test_pairing_check_warns_on_a_foreign_tokenizer(use_defaults, tmp_path, caplog):
    tok_dir, lm_dir = use_defaults
    assert check_pairing(lm_dir, tok_dir)
    other = tmp_path / "other_tok"
    other.mkdir()
    (other / "provenance.json").write_text(json.dumps({"files": {"model.safetensors": {"sha256": "0" * 64}}}))
    with caplog.at_level(logging.WARNING):
        assert not check_pairing(lm_dir, other)
    assert "another audio tokenizer" in caplog.text
