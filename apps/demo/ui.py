"""Pieces shared by the demo's tabs: the context they run in, error handling, shipped examples, streaming."""

from __future__ import annotations

import functools
import inspect
import logging
import shutil
import time
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from .audio_io import InputError, OutputDir, wav_bytes
from .backend import Backend, BusyError

log = logging.getLogger(__name__)

STREAM_MIN_SECONDS = 0.4  # gather streamed audio into chunks of at least this length before sending
PATCHES_PER_SECOND = 6.25  # 25 Hz frames, 4 frames per patch


def examples_dir() -> Path:
    return Path(str(resources.files("mimo_audio") / "fewshot_tasks" / "examples"))


def example(name: str) -> str:
    """Path of a shipped example wav (``slt_0``, ``awb_1``, ...)."""
    path = examples_dir() / f"{name}.wav"
    if not path.is_file():
        raise FileNotFoundError(f"shipped example {path} is missing")
    return str(path)


@dataclass
class Ctx:
    """What every tab needs: the backend, where outputs go, the input limit, and shared widgets."""

    backend: Backend
    out: OutputDir
    max_input_seconds: float = 60.0
    voice_pickers: list[Any] = field(default_factory=list)  # dropdowns refreshed when a voice is saved

    @property
    def sr(self) -> int:
        return self.backend.sample_rate

    def voice_choices(self) -> list[str]:
        return [NO_VOICE] + self.backend.voices()

    def speed_md(self, speed) -> str:
        return speed.markdown(self.sr, self.backend.settings_line())


NO_VOICE = "(default voice)"


def voice_arg(choice: str | None) -> str | None:
    return None if not choice or choice == NO_VOICE else choice


def max_patches(seconds: float | None) -> int | None:
    return int(round(float(seconds) * PATCHES_PER_SECOND)) if seconds else None


def seed_arg(seed: Any) -> int | None:
    if seed is None or seed == "" or (isinstance(seed, float) and np.isnan(seed)):
        return None
    return int(seed)


def _user_message(exc: BaseException) -> str:
    return str(exc).strip() or type(exc).__name__


def guarded(fn):
    """Turn input problems into a visible ``gr.Error`` (the app keeps serving); log anything unexpected."""
    import gradio as gr

    def translate(exc: BaseException) -> BaseException:
        if isinstance(exc, gr.Error):
            return exc
        if isinstance(exc, (InputError, ValueError, FileNotFoundError, BusyError)):
            log.info("%s: refused: %s", fn.__name__, _user_message(exc))  # one line, no traceback
            return gr.Error(_user_message(exc), title="Cannot run this", print_exception=False)
        log.exception("demo handler %s failed", fn.__name__)
        return gr.Error(f"internal error ({type(exc).__name__}: {exc}); the demo is still running")

    if inspect.isgeneratorfunction(fn):
        @functools.wraps(fn)
        def gen(*args, **kwargs):
            try:
                yield from fn(*args, **kwargs)
            except Exception as exc:  # GeneratorExit is not an Exception: cancellation passes through
                raise translate(exc) from None
        return gen

    @functools.wraps(fn)
    def call(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except Exception as exc:
            raise translate(exc) from None
    return call


class Throttle:
    """Limits UI updates while text streams: each update re-sends every output, so not one per patch."""

    def __init__(self, interval: float = 0.25):
        self.interval = interval
        self.last = 0.0

    def due(self) -> bool:
        now = time.perf_counter()
        if now - self.last >= self.interval:
            self.last = now
            return True
        return False


def can_stream() -> bool:
    """Gradio encodes streamed audio with ffmpeg; without it the demo shows complete files only."""
    return shutil.which("ffmpeg") is not None


class AudioStreamer:
    """Gathers a task's streamed audio into chunks for a streaming ``gr.Audio`` and keeps the whole waveform."""

    def __init__(self, sample_rate: int):
        self.sr = sample_rate
        self.enabled = can_stream()
        self.pending: list[np.ndarray] = []
        self.parts: list[np.ndarray] = []

    def push(self, audio) -> bytes | None:
        """Add new samples; returns a wav chunk once enough is gathered, else None."""
        if audio is None or audio.numel() == 0:
            return None
        a = audio.float().cpu().numpy().reshape(-1)
        self.parts.append(a)
        if not self.enabled:
            return None
        self.pending.append(a)
        if sum(p.size for p in self.pending) >= STREAM_MIN_SECONDS * self.sr:
            return self.flush()
        return None

    def flush(self) -> bytes | None:
        if not self.pending:
            return None
        chunk = np.concatenate(self.pending)
        self.pending = []
        return wav_bytes(chunk, self.sr)

    def whole(self) -> np.ndarray:
        return np.concatenate(self.parts) if self.parts else np.zeros(0, np.float32)


def result_audio(result, streamed: AudioStreamer | None = None) -> np.ndarray:
    """The final waveform of a result: the decoded audio, else what was streamed."""
    if result is not None and result.audio is not None and result.audio.numel():
        return result.audio.float().cpu().numpy().reshape(-1)
    return streamed.whole() if streamed is not None else np.zeros(0, np.float32)


def picture(label: str, css_class: str):
    """An output image; the picture draws its own title, so Gradio's label (which would cover it) is hidden."""
    import gradio as gr

    return gr.Image(show_label=False, label=label, type="pil", interactive=False, elem_classes=[css_class])
