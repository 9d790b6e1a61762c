"""Every model-taking subcommand runs on the embedded default when no model path is given."""

from __future__ import annotations

import json

import pytest
import soundfile as sf

from apps.cli import main

from .conftest import TTS_PATCHES, TTS_TEXT


def _help(capsys, argv: list[str]) -> str:
    with pytest.raises(SystemExit):
        main([*argv, "--help"])
    return " ".join(capsys.readouterr().out.split())


@pytest.mark.parametrize("command", [["tts"], ["asr"], ["chat"], ["vc"], ["continue"], ["voice"],
                                     ["tokenizer", "encode"], ["tokenizer", "decode"], ["tokenizer", "roundtrip"]])
def test_help_names_the_embedded_default(capsys, command):
    assert "embedded default" in _help(capsys, command)


def test_tts_without_model_paths_writes_speech(use_defaults, tmp_path, speaking_seed):
    out, summary = tmp_path / "x.wav", tmp_path / "x.json"
    assert main(["tts", TTS_TEXT, "--seed", str(speaking_seed), "--max-new-patches", str(TTS_PATCHES),
                 "-o", str(out), "--json", str(summary)]) == 0
    wav, sr = sf.read(str(out))
    assert sr == 24000 and len(wav) == 960 * json.loads(summary.read_text())["audio_frames"] > 0


def test_asr_voice_and_tokenizer_without_model_paths(use_defaults, flite_wav, tmp_path, capsys):
    assert main(["asr", str(flite_wav), "--preset", "greedy", "--max-new-patches", "4",
                 "--json", str(tmp_path / "a.json")]) == 0
    assert json.loads((tmp_path / "a.json").read_text())["transcripts"][0]["audio"] == str(flite_wav)
    assert main(["voice", "add", "slt", str(flite_wav), "--voices-dir", str(tmp_path / "voices")]) == 0
    assert (tmp_path / "voices" / "slt.safetensors").is_file()
    out = tmp_path / "rt.wav"
    assert main(["tokenizer", "roundtrip", str(flite_wav), str(out)]) == 0
    assert sf.info(str(out)).samplerate == 24000 and (tmp_path / "rt.safetensors").is_file()


def test_explicit_lm_without_its_tokenizer_is_an_error(use_defaults, caplog, monkeypatch, flite_wav, tmp_path):
    assert main(["tts", "hi", "--lm-path", str(use_defaults[1])]) == 1
    assert "--tokenizer-path" in caplog.text
    caplog.clear()
    monkeypatch.setenv("MIMO_AUDIO_LM_PATH", str(use_defaults[1]))
    assert main(["voice", "add", "x", str(flite_wav), "--voices-dir", str(tmp_path)]) == 1
    assert "$MIMO_AUDIO_LM_PATH names a speech LM" in caplog.text


def test_missing_assets_end_in_one_clear_line(no_defaults, flite_wav, tmp_path, caplog):
    assert main(["tts", "hi", "-o", str(tmp_path / "x.wav")]) == 1
    assert "embedded default speech LM is not installed" in caplog.text and "export_default_model" in caplog.text
    assert main(["tokenizer", "encode", str(flite_wav), str(tmp_path / "c.safetensors")]) == 1
    assert "embedded default audio tokenizer is not installed" in caplog.text


def test_default_model_command_reports_the_installed_pair(use_defaults, capsys):
    assert main(["default-model"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["speech_lm"]["installed"] and report["speech_lm"]["training_steps"] == 11
    assert report["audio_tokenizer"]["dir"] == str(use_defaults[0]) and report["paired"] is True
    assert "model.safetensors" in report["audio_tokenizer"]["files"] and not report["speech_lm"]["placeholder"]


def test_default_model_verify_finds_a_changed_file(default_assets, tmp_path, monkeypatch, capsys):
    import shutil

    import mimo_audio.defaults
    import tokenizer.defaults

    tok_dir, lm_dir = tmp_path / "tok", tmp_path / "lm"
    shutil.copytree(default_assets[0], tok_dir)
    shutil.copytree(default_assets[1], lm_dir)
    monkeypatch.setattr(tokenizer.defaults, "DEFAULT_DIR", tok_dir)
    monkeypatch.setattr(mimo_audio.defaults, "DEFAULT_DIR", lm_dir)
    assert main(["default-model", "--verify"]) == 0
    assert json.loads(capsys.readouterr().out)["speech_lm"]["mismatches"] == []
    with open(lm_dir / "config.json", "a") as f:
        f.write(" ")
    assert main(["default-model", "--verify"]) == 1
    assert json.loads(capsys.readouterr().out)["speech_lm"]["mismatches"][0].startswith("config.json")


def test_default_model_command_without_assets(no_defaults, capsys):
    assert main(["default-model"]) == 1
    report = json.loads(capsys.readouterr().out)
    assert not report["speech_lm"]["installed"] and "export_default_model" in report["speech_lm"]["problem"]
