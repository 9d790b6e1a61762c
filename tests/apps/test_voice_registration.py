"""`mimo-audio voice add` and MimoAudio.register_voice are one path: same validation, same stored codes."""

from __future__ import annotations

import pytest
import torch

from apps.cli import main
from mimo_audio import MimoAudio
from mimo_audio.voices import VoiceRegistry


def test_cli_and_api_store_the_same_voice(flite_wav, tmp_path, monkeypatch):
    monkeypatch.delenv("MIMO_AUDIO_LM_PATH", raising=False)
    monkeypatch.delenv("MIMO_AUDIO_TOKENIZER_PATH", raising=False)
    assert main(["voice", "add", "cli", str(flite_wav), "--voices-dir", str(tmp_path)]) == 0
    m = MimoAudio.from_pretrained(device="cpu", voices_dir=tmp_path)
    m.register_voice("api", str(flite_wav))
    reg = VoiceRegistry(tmp_path)
    (cli, cli_info), (api, api_info) = reg.load("cli"), reg.load("api")
    assert cli.shape[0] == m.lm.config.audio_channels and torch.equal(cli, api)
    assert cli_info.frame_rate == api_info.frame_rate and cli_info.source == api_info.source


def test_silent_audio_is_refused_the_same_way(tmp_path, monkeypatch, caplog):
    import soundfile as sf

    monkeypatch.delenv("MIMO_AUDIO_LM_PATH", raising=False)
    monkeypatch.delenv("MIMO_AUDIO_TOKENIZER_PATH", raising=False)
    silent = tmp_path / "silent.wav"
    sf.write(str(silent), [0.0] * 24000, 24000)
    assert main(["voice", "add", "s", str(silent), "--voices-dir", str(tmp_path)]) == 1
    assert "silent" in caplog.text and not (tmp_path / "s.safetensors").exists()
    with pytest.raises(ValueError, match="silent"):
        MimoAudio.from_pretrained(device="cpu", voices_dir=tmp_path).register_voice("s", str(silent))
