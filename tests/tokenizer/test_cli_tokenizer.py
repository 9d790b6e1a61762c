"""``mimo-audio tokenizer encode|decode|roundtrip`` on real TTS speech."""

import logging

import pytest
import soundfile as sf
import torch
from safetensors.torch import load_file

from apps.cli import main


def test_roundtrip_with_random_tiny_weights(flite_wav, tmp_path, capsys, caplog):
    out = tmp_path / "out.wav"
    with caplog.at_level(logging.WARNING):
        assert main(["tokenizer", "roundtrip", str(flite_wav), str(out), "--preset", "tiny"]) == 0
    assert "RANDOM" in caplog.text
    info = sf.info(str(flite_wav))
    codes = load_file(str(tmp_path / "out.safetensors"))["codes"]
    assert codes.dtype == torch.long and codes.shape[0] == 8
    expected_frames = (int(info.frames * 24000 / info.samplerate + 0.999) // 240) // 4 + 1
    assert abs(codes.shape[1] - expected_frames) <= 1
    wav, sr = sf.read(str(out))
    assert sr == 24000 and len(wav) == 960 * codes.shape[1]
    assert str(out) in capsys.readouterr().out


def test_encode_then_decode_with_a_checkpoint(tok, espeak_wav, tmp_path):
    tok.save_pretrained(tmp_path / "model")
    codes_path = tmp_path / "codes.safetensors"
    assert main(["tokenizer", "encode", str(espeak_wav), str(codes_path), "--model", str(tmp_path / "model"),
                 "--n-q", "4"]) == 0
    codes = load_file(str(codes_path))["codes"]
    assert torch.equal(codes, tok.encode(espeak_wav, n_q=4))
    assert main(["tokenizer", "decode", str(codes_path), str(tmp_path / "y.wav"), "--model",
                 str(tmp_path / "model"), "--dtype", "bf16"]) == 0
    assert sf.info(str(tmp_path / "y.wav")).frames == 960 * codes.shape[1]


def test_user_errors_are_one_line(tmp_path, caplog):
    assert main(["tokenizer", "encode", str(tmp_path / "missing.wav"), str(tmp_path / "c.safetensors"),
                 "--model", str(tmp_path / "nodir")]) == 1
    assert "checkpoint directory not found" in caplog.text
    (tmp_path / "x.wav").write_text("not audio")
    assert main(["tokenizer", "roundtrip", str(tmp_path / "x.wav"), str(tmp_path / "o.wav"), "--preset", "tiny"]) == 1
    assert "could not read" in caplog.text
    assert main(["tokenizer", "decode", str(tmp_path / "x.wav"), str(tmp_path / "o.wav"), "--preset", "tiny"]) == 1
    assert "safetensors" in caplog.text


@pytest.mark.parametrize("action", ["encode", "decode", "roundtrip"])
def test_help(action, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["tokenizer", action, "--help"])
    assert exc.value.code == 0
    text = capsys.readouterr().out
    assert "--model" in text and "--preset" in text and "--dtype" in text
