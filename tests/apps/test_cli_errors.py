"""The CLI's first hour: every user error is one line and a non-zero exit, checked before the work, with no
stray output file; real bugs are one "internal error" line unless --debug; outputs that cannot exist fail.

Runs in-process (``apps.cli.main``) on the embedded default model.
"""

from __future__ import annotations

import json
import logging
import shutil

import numpy as np
import pytest
import soundfile as sf
import torch

from apps.cli import main
from mimo_audio.defaults import default_model_dir
from tokenizer.defaults import default_tokenizer_dir


def _errors(caplog) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.levelno >= logging.ERROR]


def _one_line_error(caplog, rc: int, expect: str, code: int = 1) -> str:
    """rc is ``code``, exactly one ERROR record, on one line, containing ``expect``, without a traceback."""
    errs = _errors(caplog)
    assert rc == code, [r.getMessage() for r in errs]
    assert len(errs) == 1, [r.getMessage() for r in errs]
    msg = errs[0].getMessage()
    assert expect in msg and "\n" not in msg and errs[0].exc_info is None, msg
    return msg


@pytest.fixture()
def workdir(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    return tmp_path


BAD_OUTPUTS = [
    ("/proc/x.wav", "cannot write"),  # root: no new files can be created; others: permission denied
    ("{tmp}/missing/x.wav", "does not exist"),
    ("{tmp}", "is a directory"),
    ("{tmp}/out.txt", "'.txt' is not supported"),
]


@pytest.mark.parametrize("out,expect", BAD_OUTPUTS)
@pytest.mark.parametrize("command", ["tts", "decode", "roundtrip", "continue"])
def test_bad_output_paths_fail_before_work(workdir, flite_wav, caplog, command, out, expect):
    out = out.format(tmp=workdir)
    codes = workdir / "c.safetensors"
    if command == "decode":
        from safetensors.torch import save_file

        save_file({"codes": torch.zeros(8, 4, dtype=torch.long)}, str(codes))
    argv = {
        "tts": ["tts", "hello", "-o", out],
        "decode": ["tokenizer", "decode", str(codes), out],
        "roundtrip": ["tokenizer", "roundtrip", str(flite_wav), out],
        "continue": ["continue", str(flite_wav), "-o", out],
    }[command]
    before = sorted(p.name for p in workdir.iterdir())
    _one_line_error(caplog, main(argv), expect)
    assert sorted(p.name for p in workdir.iterdir()) == before  # no stray file (no DIR.safetensors either)
    assert not any(r.name.startswith(("mimo_audio.", "tokenizer.")) for r in caplog.records)  # nothing loaded


def test_output_equal_to_input_and_json_checked(workdir, flite_wav, caplog):
    copy = workdir / "in.wav"
    shutil.copy(flite_wav, copy)
    _one_line_error(caplog, main(["tokenizer", "roundtrip", str(copy), str(copy)]), "is the input file")
    caplog.clear()
    _one_line_error(caplog, main(["tts", "hi", "--json", str(workdir / "s.txt")]), "'.txt' is not supported")
    caplog.clear()
    _one_line_error(caplog, main(["asr", str(copy), "-o", str(workdir / "t.wav")]), "use .txt")
    assert sorted(p.name for p in workdir.iterdir()) == ["in.wav"]


@pytest.mark.parametrize("argv", [["tts", "hi"], ["tokenizer", "encode", "IN", "c.safetensors"],
                                  ["voice", "add", "x", "IN"]])
def test_bad_device_is_one_line(workdir, flite_wav, caplog, argv):
    argv = [str(flite_wav) if a == "IN" else a for a in argv] + ["--voices-dir", str(workdir)] * (argv[0] == "voice")
    _one_line_error(caplog, main([*argv, "--device", "foo"]), "unknown device 'foo'")
    if not torch.cuda.is_available():
        caplog.clear()
        _one_line_error(caplog, main([*argv, "--device", "cuda"]), "no usable CUDA")


def _copy_default(dst):
    shutil.copytree(default_model_dir(), dst)
    return dst


def test_truncated_lm_and_mtp_weights_are_clear_errors(workdir, flite_wav, caplog):
    lm = _copy_default(workdir / "lm")
    tok = str(default_tokenizer_dir())
    weights = lm / "model.safetensors"
    full = weights.read_bytes()
    weights.write_bytes(full[: len(full) // 2])
    _one_line_error(caplog, main(["tts", "hi", "--lm-path", str(lm), "--tokenizer-path", tok]), "truncated or corrupt")
    weights.write_bytes(full)
    mtp = lm / "mtp.safetensors"
    mtp.write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{garbage")  # a corrupt header
    caplog.clear()
    rc = main(["asr", str(flite_wav), "--speculative", "3", "--max-new-patches", "4", "--lm-path", str(lm),
               "--tokenizer-path", tok])
    _one_line_error(caplog, rc, "MTP heads")


def test_quantize_refuses_pickles_and_other_models(workdir, caplog):
    pickled = workdir / "pickled"
    pickled.mkdir()
    (pickled / "config.json").write_text(json.dumps({"model_type": "llama", "architectures": ["LlamaForCausalLM"]}))
    (pickled / "pytorch_model.bin").write_bytes(b"not loaded: pickles are refused before anything reads them")
    argv = ["quantize", "--scheme", "w4g64", "--out", str(workdir / "q"), "--model"]
    _one_line_error(caplog, main([*argv, str(pickled)]), "pickle weights (pytorch_model.bin), which are refused")
    caplog.clear()
    _one_line_error(caplog, main([*argv, str(default_model_dir())]), "is not a transformers causal LM")
    caplog.clear()
    _one_line_error(caplog, main([*argv, str(default_tokenizer_dir())]), "is not a transformers causal LM")
    caplog.clear()
    rc = main(["sparsify", "--layout", "full", "--out", str(workdir / "s"), "--model", str(pickled)])
    _one_line_error(caplog, rc, "pickle weights")
    assert not (workdir / "q").exists() and not (workdir / "s").exists()


def test_zero_length_is_rejected(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["tts", "hi", "--max-new-patches", "0"])
    assert exc.value.code == 2 and "--max-new-patches: must be >= 1, got 0" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        main(["tts", "hi", "--min-speech-patches", "-1"])
    assert exc.value.code == 2 and "--min-speech-patches: must be >= 0, got -1" in capsys.readouterr().err


def _long_wav(path, seconds: float, sr: int = 16000) -> None:
    t = np.arange(int(seconds * sr)) / sr
    sf.write(str(path), (0.3 * np.sin(2 * np.pi * 220 * t)).astype(np.float32), sr)


def test_voice_add_replace_too_long_and_remove(workdir, flite_wav, caplog, capsys):
    reg = ["--voices-dir", str(workdir / "voices")]
    assert main(["voice", "add", "slt", str(flite_wav), *reg]) == 0
    caplog.clear()
    _one_line_error(caplog, main(["voice", "add", "slt", str(flite_wav), *reg]), "already exists")
    assert main(["voice", "add", "slt", str(flite_wav), "--force", *reg]) == 0
    long_wav = workdir / "long.wav"
    _long_wav(long_wav, 600.0)  # 10 minutes: more than the embedded LM's whole context
    caplog.clear()
    _one_line_error(caplog, main(["voice", "add", "long", str(long_wav), *reg]), "too long")
    assert main(["voice", "remove", "slt", *reg]) == 0
    caplog.clear()
    _one_line_error(caplog, main(["voice", "remove", "slt", *reg]), "unknown voice 'slt'")
    assert not list((workdir / "voices").iterdir())


def test_chat_without_speech_fails_and_writes_nothing(workdir, caplog, capsys):
    out = workdir / "reply.wav"
    rc = main(["chat", "--text", "Hello", "--reply", "both", "-o", str(out), "--max-new-patches", "2",
               "--preset", "greedy"])
    _one_line_error(caplog, rc, "no speech was generated")
    assert not out.exists()
    assert "text" in json.loads(capsys.readouterr().out)  # the text reply is still reported
    caplog.clear()
    _one_line_error(caplog, main(["chat", "--text", "Hi", "-o", str(out)]), "--reply audio")


def test_asr_output_writes_transcripts_and_silence_is_empty(workdir, flite_wav, caplog, capsys):
    silent = workdir / "silent.wav"
    sf.write(str(silent), np.zeros(16000, dtype=np.float32), 16000)
    out = workdir / "t.txt"
    rc = main(["asr", str(flite_wav), str(silent), str(flite_wav), "-o", str(out), "--preset", "greedy",
               "--max-new-patches", "6"])
    assert rc == 0
    lines = out.read_text(encoding="utf-8").split("\n")
    summary = json.loads(capsys.readouterr().out)
    assert lines == [t["text"] for t in summary["transcripts"]] + [""]
    assert lines[1] == "" and lines[0] == lines[2] and lines[0]
    notes = [r for r in caplog.records if "not yet meaningful" in r.getMessage()]
    assert len(notes) == 1  # said once per run, not per clip


def test_internal_errors_are_one_line_unless_debug(monkeypatch, caplog):
    from apps.commands import speech

    def broken(args):
        raise RuntimeError("a bug")

    monkeypatch.setattr(speech, "_tts", broken)
    msg = _one_line_error(caplog, main(["tts", "hi"]), "internal error: RuntimeError: a bug", code=3)
    assert "--debug" in msg
    with pytest.raises(RuntimeError, match="a bug"):
        main(["--debug", "tts", "hi"])


def test_speculative_asr_is_adaptive_by_default(workdir, flite_wav, capsys):
    base = ["asr", str(flite_wav), "--preset", "greedy", "--speculative", "3"]
    assert main(base) == 0
    adaptive = json.loads(capsys.readouterr().out)
    assert main([*base, "--fixed-draft"]) == 0
    fixed = json.loads(capsys.readouterr().out)
    assert adaptive["transcripts"] == fixed["transcripts"]  # greedy: drafting never changes the output
    assert fixed["speculative"][0]["plain_steps"] == 0
    assert adaptive["speculative"][0]["plain_steps"] > 0  # it measured a plain step (and turned drafting off)


def test_help_states_the_default_lengths(capsys):
    for argv, expect in ((["vc"], "2 x the query's length + 25 patches"), (["continue"], "125 patches (20 s)"),
                         (["tts"], "default: 0.1 per non-space character of the text")):
        with pytest.raises(SystemExit):
            main([*argv, "--help"])
        assert expect in " ".join(capsys.readouterr().out.split())


def test_folder_outputs_are_checked(workdir, caplog):
    (workdir / "file").write_text("x")
    _one_line_error(caplog, main(["corpus", "build", "--out", str(workdir / "file")]), "is not a directory")
    caplog.clear()
    _one_line_error(caplog, main(["corpus", "build", "--out", "/proc/corpus"]), "not writable")


@pytest.mark.parametrize("command", ["serve", "demo"])
def test_port_out_of_range_is_a_usage_error(command, capsys):
    from apps.cli import main

    with pytest.raises(SystemExit) as exc:
        main([command, "--port", "99999"])
    assert exc.value.code == 2
    assert "a port is 0-65535, got 99999" in capsys.readouterr().err
