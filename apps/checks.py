"""Checks every subcommand runs before it starts work: output paths, devices, model folders.

A bad ``-o`` must fail in a second with one line, not after minutes of generation with a traceback, and
must leave no stray file. Each check raises :class:`mimo_audio.errors.UserError` (through :func:`fail`,
which imports it only when needed so that building the CLI parser stays light), and ``cli.main`` prints it
as one line.
"""

from __future__ import annotations

import argparse
import errno
import logging
import os
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import NoReturn

log = logging.getLogger("mimo-audio")

AUDIO_OUT = (".wav", ".flac")  # what the commands write with soundfile (16-bit PCM or float)
CODES_OUT = (".safetensors",)
JSON_OUT = (".json",)
TEXT_OUT = (".txt",)

_noted_default = False


def fail(message: str, cause: BaseException | None = None) -> NoReturn:
    """Raise ``mimo_audio.errors.UserError(message)``."""
    from mimo_audio.errors import UserError

    raise UserError(message) from cause


def _same_file(a: Path, b: Path) -> bool:
    try:
        return a.resolve() == b.resolve() or (a.exists() and b.exists() and os.path.samefile(a, b))
    except OSError:
        return False


def check_output_file(
    path: str | Path, suffixes: Iterable[str], inputs: Iterable[str | Path | None] = (), what: str = "output"
) -> Path:
    """``path`` can take the command's output: a supported extension, an existing folder to put it in, not a
    folder itself, not one of ``inputs``, and writable (tried by creating it, then removing what was created).
    """
    p = Path(path)
    allowed = tuple(suffixes)
    if p.is_dir():
        fail(f"{what} {p} is a directory; give a file name such as {p / ('out' + allowed[0])}")
    if p.suffix.lower() not in allowed:
        shown = f"'{p.suffix}'" if p.suffix else "no extension"
        fail(f"{what} {p}: {shown} is not supported here; use {' or '.join(allowed)}")
    parent = p.parent if str(p.parent) else Path(".")
    if not parent.is_dir():
        what_is = "is not a directory" if parent.exists() else "does not exist"
        fail(f"{what} {p}: the folder {parent} {what_is}; create it first")
    for src in inputs:
        if src is not None and _same_file(p, Path(src)):
            fail(f"{what} {p} is the input file; write to another file")
    _check_writable(p, what)
    return p


def _check_writable(p: Path, what: str) -> None:
    existed = p.exists()
    try:
        # O_APPEND on an existing file: nothing is truncated; a new file is removed again at once
        fd = os.open(p, os.O_WRONLY | (os.O_APPEND if existed else os.O_CREAT | os.O_EXCL), 0o644)
        os.close(fd)
    except OSError as exc:
        reason = os.strerror(exc.errno) if exc.errno else str(exc)
        hint = " (read-only file system)" if exc.errno == errno.EROFS else ""
        if exc.errno == errno.ENOENT:  # the folder exists but takes no new files (/proc, /sys)
            reason, hint = "no new files can be created", f" in {p.parent}"
        fail(f"cannot write {what} {p}: {reason}{hint}", exc)
    if not existed:
        try:
            p.unlink()
        except OSError:
            pass


def check_output_dir(path: str | Path, inputs: Iterable[str | Path | None] = (), what: str = "output folder") -> Path:
    """``path`` can be created (or is an existing folder) and is not one of ``inputs``; nothing is created."""
    p = Path(path)
    if p.exists() and not p.is_dir():
        fail(f"{what} {p} exists and is not a directory")
    for src in inputs:
        if src is not None and _same_file(p, Path(src)):
            fail(f"{what} {p} is the input folder; write to another folder")
    existing = p
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        fail(f"{what} {p}: {existing} is not a directory")
    try:  # a real probe (permission bits say little for root, nothing for read-only or virtual file systems)
        os.rmdir(tempfile.mkdtemp(prefix=".mimo-audio-probe-", dir=existing))
    except OSError as exc:
        fail(f"cannot write {what} {p}: {existing} is not writable ({os.strerror(exc.errno or 0)})", exc)
    return p


def check_device(device: str | None) -> str | None:
    """The ``--device`` value, checked against this machine (UserError with the fix otherwise)."""
    if device is None:
        return None
    from mimo_audio.errors import check_device as check

    check(device)
    return device


def check_outputs(args: argparse.Namespace, audio: bool = True, inputs: Iterable[str | None] = ()) -> None:
    """The speech commands' ``-o`` (audio, or text for ASR) and ``--json``, and ``--device``."""
    check_device(getattr(args, "device", None))
    out = getattr(args, "output", None)
    if out:
        check_output_file(out, AUDIO_OUT if audio else TEXT_OUT, inputs, what="-o")
    js = getattr(args, "json_path", None)
    if js:
        check_output_file(js, JSON_OUT, inputs, what="--json")
        if out and _same_file(Path(out), Path(js)):
            fail(f"-o and --json name the same file {out}")


def reset_notes() -> None:
    """A new run (``cli.main``) notes the default model again."""
    global _noted_default
    _noted_default = False


def note_default_model() -> None:
    """One line per run where the embedded default model's output is shown: it is a test bed, not content."""
    global _noted_default
    if _noted_default:
        return
    _noted_default = True
    log.warning("using the embedded default model: a small test bed whose outputs are not yet meaningful "
                "(transcripts, replies and speech content are not to be read as content; see docs/default_model.md)")


PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")


def check_causal_lm_dir(path: str | Path, command: str) -> Path:
    """A transformers causal-LM folder with safetensors weights, before anything is loaded.

    Pickle-only checkpoints (``pytorch_model.bin``) are refused (loading one runs arbitrary code), and so is
    a folder of another kind of model (an audio tokenizer, the speech LM, an encoder).
    """
    import json

    d = Path(path)
    if not d.exists():
        fail(f"{command}: model folder not found: {d} (config.json missing)")
    if not d.is_dir():
        fail(f"{command}: --model must be a model folder (config.json + model.safetensors), got the file {d}")
    cfg_file = d / "config.json"
    if not cfg_file.is_file():
        fail(f"{command}: {d} is not a transformers model folder (config.json missing)")
    if not any((d / n).is_file() for n in ("model.safetensors", "model.safetensors.index.json")):
        pickles = sorted(p.name for p in d.iterdir() if p.suffix in PICKLE_SUFFIXES)
        if pickles:
            fail(f"{command}: {d} holds only pickle weights ({', '.join(pickles)}), which are refused (loading a "
                 "pickle can run arbitrary code): convert them to model.safetensors first")
        fail(f"{command}: {d} has no model.safetensors (or model.safetensors.index.json)")
    try:
        cfg = json.loads(cfg_file.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        fail(f"{command}: {cfg_file} is not valid JSON ({exc})", exc)
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    causal = set()
    for names in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.values():
        causal.update([names] if isinstance(names, str) else names)
    model_type = cfg.get("model_type") if isinstance(cfg, dict) else None
    archs = cfg.get("architectures") or [] if isinstance(cfg, dict) else []
    ok_type = model_type in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES
    ok_arch = not archs or any(a in causal or str(a).endswith("ForCausalLM") for a in archs)
    if not (ok_type and ok_arch):
        kind = ", ".join(map(str, archs)) or f"model_type {model_type!r}"
        fail(f"{command}: {d} is not a transformers causal LM ({kind}); give a causal-LM folder such as "
             "Llama, Qwen2 or Mistral (the speech LM and the audio tokenizer are not)")
    return d
