"""The demo's backend adapter without a browser: settings reach the model, every task streams, errors are clear."""

from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf

from apps.demo.audio_io import InputError, read_audio
from apps.demo.backend import Backend, BackendSettings


@pytest.fixture(scope="module")
def clip(flite_wav):
    return read_audio(flite_wav, "the test speech", 60)


def test_backend_settings_reach_the_model_and_the_engine(tmp_path, clip):
    from efficient.quant.linear import QuantLinear

    b = Backend.load(BackendSettings(quant="w4g64", speculative=2, voices_dir=str(tmp_path), max_batch=2))
    try:
        assert any(isinstance(m, QuantLinear) for m in b.model.lm.modules())
        line = b.settings_line()
        assert "quant w4g64" in line and "speculative 2" in line and "engine (max batch 2" in line
        events = list(b.stream("asr", (clip.wav, clip.sample_rate), gen={"max_new_patches": 30}))
        assert events[-1].result is not None and events[-1].result.text.strip()
        tts = list(b.stream("tts", "Hello there.", gen={"seed": 0, "max_new_patches": 40}))
        assert tts[-1].result.num_patches <= 40
        assert b.describe()["engine_stats"]["completed"] >= 2
    finally:
        b.close()


def test_direct_mode_streams_and_appends_chat_replies(tmp_path, clip):
    from mimo_audio import Conversation

    b = Backend.load(BackendSettings(voices_dir=str(tmp_path), use_engine=False))
    assert b.engine is None and b.concurrency == 1
    conv = Conversation()
    conv.add_user(text="Hello, how are you today?")
    events = list(b.stream("chat", conv, output="both", gen={"seed": 0, "max_new_patches": 60}))
    assert events[-1].result is not None
    assert [m.role for m in conv.messages] == ["user", "assistant"]  # as MimoAudio.chat does
    with pytest.raises(ValueError, match="unknown task"):
        b.stream("sing", "la la")


def test_read_audio_names_each_problem(tmp_path, flite_wav):
    silent = tmp_path / "silent.wav"
    sf.write(silent, np.zeros(16000, np.float32), 16000)
    with pytest.raises(InputError, match="is silent"):
        read_audio(silent, "the prompt", 60)
    with pytest.raises(InputError, match="at most 1 s"):
        read_audio(flite_wav, "the prompt", 1)
    junk = tmp_path / "junk.mp3"
    junk.write_bytes(b"\x00garbage" * 100)
    with pytest.raises(InputError, match="could not read 'junk.mp3' as audio"):
        read_audio(junk, "the prompt", 60)
    with pytest.raises(InputError, match="no audio given"):
        read_audio(None, "the prompt", 60)


def test_pictures_of_audio_and_codes(clip):
    from apps.demo.plots import codes_image, wave_image

    img = wave_image(clip.wav, clip.sample_rate, "input")
    arr = np.asarray(img)
    assert img.size[0] == 720 and arr[40:100].std() > 10 and arr[120:].std() > 10  # waveform and spectrogram drawn
    codes = np.stack([np.arange(50) % 1024, np.arange(50) % 1024] + [np.arange(50) % 128] * 6)
    cimg = codes_image(codes, "codes", [1024, 1024] + [128] * 6)
    assert cimg.size == (720, 20 + 8 * 16 + 2)
    with pytest.raises(ValueError, match="codebooks, frames"):
        codes_image(np.zeros(5), "bad")


@pytest.mark.parametrize("extra,message", [
    (["--lm-path", "somewhere"], "needs the audio tokenizer"),
    (["--lm-path", "nowhere", "--tokenizer-path", "nowhere"], "nowhere"),
    (["--port", "BUSY"], "cannot serve on 127.0.0.1"),
])
def test_demo_command_bad_setup_is_one_clear_line(extra, message, caplog, capsys):
    import socket

    from apps.cli import main

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        extra = [str(busy.getsockname()[1]) if a == "BUSY" else a for a in extra]
        assert main(["demo", *extra]) == 1
    errors = [r for r in caplog.records if r.levelname == "ERROR"]
    assert len(errors) == 1 and message in errors[0].getMessage()
    assert "running at" not in capsys.readouterr().out
