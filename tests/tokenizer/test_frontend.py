"""Mel front-end against a direct NumPy computation; resampling and input handling."""

import numpy as np
import pytest
import soundfile as sf
import torch

from tokenizer.audio import load_audio, resample
from tokenizer.mel import LogMel


def numpy_logmel(x, sr=24000, n_fft=960, hop=240, n_mels=128):
    """The official recipe written out: reflect-padded centred frames, periodic Hann, |rfft|, HTK mel, ln."""
    pad = n_fft // 2
    xp = np.pad(x.astype(np.float64), pad, mode="reflect")
    n_frames = 1 + (len(xp) - n_fft) // hop
    window = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(n_fft) / n_fft)
    frames = np.stack([xp[i * hop : i * hop + n_fft] * window for i in range(n_frames)])
    mag = np.abs(np.fft.rfft(frames, axis=1))

    def hz2mel(f):
        return 2595.0 * np.log10(1.0 + f / 700.0)

    def mel2hz(m):
        return 700.0 * (10 ** (m / 2595.0) - 1.0)

    freqs = np.linspace(0, sr / 2, n_fft // 2 + 1)
    pts = mel2hz(np.linspace(hz2mel(0.0), hz2mel(sr / 2), n_mels + 2))
    fb = np.zeros((n_fft // 2 + 1, n_mels))
    for m in range(n_mels):
        rise = (freqs - pts[m]) / (pts[m + 1] - pts[m])
        fall = (pts[m + 2] - freqs) / (pts[m + 2] - pts[m + 1])
        fb[:, m] = np.maximum(0.0, np.minimum(rise, fall))
    return np.log(np.maximum(mag @ fb, 1e-7)).T


@pytest.mark.parametrize("n", [481, 24000, 24000 + 123])
def test_logmel_equals_numpy_definition(n, signal):
    x = signal(n / 24000 + 0.01)[:n]
    ours = LogMel()(torch.from_numpy(x)).numpy()
    ref = numpy_logmel(x)
    assert ours.shape == ref.shape == (128, n // 240 + 1)
    np.testing.assert_allclose(ours, ref, atol=2e-3, rtol=0)
    assert np.abs(ours - ref).mean() < 1e-4


def test_logmel_of_silence_is_the_floor():
    mel = LogMel()(torch.zeros(4800))
    assert torch.allclose(mel, torch.full_like(mel, float(np.log(1e-7))))


def test_logmel_too_short_is_a_clear_error():
    with pytest.raises(ValueError, match="too short"):
        LogMel()(torch.zeros(480))


@pytest.mark.parametrize("sr", [8000, 16000, 22050, 44100, 48000])
def test_resample_length_and_accuracy(sr):
    n = sr  # 1 s
    t = np.arange(n) / sr
    x = torch.from_numpy(np.sin(2 * np.pi * 440 * t).astype(np.float32))
    y = resample(x, sr, 24000)
    assert y.shape[0] == -(-n * 24000 // sr)
    ref = np.sin(2 * np.pi * 440 * np.arange(y.shape[0]) / 24000)
    core = slice(200, y.shape[0] - 200)  # edges see zero padding
    assert np.abs(y.numpy()[core] - ref[core]).max() < 2e-3


def test_resample_removes_content_above_the_new_nyquist():
    sr = 48000
    t = np.arange(sr) / sr
    x = torch.from_numpy(np.sin(2 * np.pi * 15000 * t).astype(np.float32))  # above 12 kHz
    y = resample(x, sr, 24000)
    assert y[500:-500].abs().max() < 0.02


def test_layouts_dtypes_and_downmix():
    mono = (np.sin(np.arange(2400) / 10) * 0.5).astype(np.float32)
    stereo_cn = np.stack([mono, -mono * 0 + mono])  # [2, N]
    for arr in (stereo_cn, stereo_cn.T, stereo_cn.T.copy()):
        wav, sr = load_audio(arr, 16000)
        assert sr == 16000 and wav.shape == (2400,) and torch.allclose(wav, torch.from_numpy(mono))
    left_right = np.stack([mono, np.zeros_like(mono)])
    assert torch.allclose(load_audio(left_right, 8000)[0], torch.from_numpy(mono) / 2)
    pcm = (mono * 32767).astype(np.int16)
    assert torch.allclose(load_audio(pcm, 8000)[0], torch.from_numpy(mono), atol=1e-4)
    assert torch.allclose(load_audio(torch.from_numpy(pcm), 8000)[0], torch.from_numpy(mono), atol=1e-4)
    assert load_audio(torch.from_numpy(mono).to(torch.bfloat16), 8000)[0].dtype == torch.float32
    assert load_audio(mono.astype(np.float64), 8000)[0].dtype == torch.float32


def test_files_are_read_and_downmixed(tmp_path):
    x = (np.random.RandomState(0).randn(3, 8000) * 0.1).astype(np.float32)
    sf.write(tmp_path / "a.wav", x.T, 16000, subtype="FLOAT")
    wav, sr = load_audio(tmp_path / "a.wav")
    assert sr == 16000 and torch.allclose(wav, torch.from_numpy(x.mean(0)), atol=1e-6)
    with pytest.raises(ValueError, match="sampled at 16000"):
        load_audio(tmp_path / "a.wav", 24000)


@pytest.mark.parametrize(
    "arr, message",
    [
        (np.zeros(0, np.float32), "empty"),
        (np.array([0.1, np.nan, 0.2], np.float32), "NaN or inf"),
        (np.array([0.1, np.inf], np.float32), "NaN or inf"),
        (np.zeros(100, np.int64), "unsupported audio dtype"),
        (np.zeros(100, np.complex64), "unsupported audio dtype"),
        (np.zeros(100, bool), "unsupported audio dtype"),
        (np.zeros((2, 3, 100), np.float32), "1-D"),
        (np.zeros((100, 200), np.float32), "channel axis"),
    ],
)
def test_bad_arrays_give_clear_errors(arr, message):
    with pytest.raises(ValueError, match=message):
        load_audio(arr, 16000)


def test_bad_sources(tmp_path):
    with pytest.raises(FileNotFoundError, match="not found"):
        load_audio(tmp_path / "missing.wav")
    (tmp_path / "notes.txt").write_text("this is not audio\n" * 50)
    with pytest.raises(ValueError, match="could not read"):
        load_audio(tmp_path / "notes.txt")
    with pytest.raises(ValueError, match="sample_rate is required"):
        load_audio(np.zeros(10, np.float32))
    with pytest.raises(ValueError, match="positive integer"):
        load_audio(np.zeros(10, np.float32), -5)
    with pytest.raises(ValueError, match="file path, numpy array or torch tensor"):
        load_audio([0.1, 0.2], 16000)
