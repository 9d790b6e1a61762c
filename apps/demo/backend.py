"""The demo's one door to the model: loading, and every generation call, streamed as ``StreamEvent``s.

All tabs call :meth:`Backend.stream` with a task name and the arguments of the matching ``MimoAudio``
method (``tts``, ``asr``, ``understand``, ``chat``, ``few_shot``, ``continue``). When the serving engine
(``mimo_audio.engine``) is installed, jobs are prepared by ``MimoAudio.prepare_<task>`` and run by one
shared :class:`Engine` (batching, queueing, cancellation), the same one the server and the eval runner use.
Without it, the tasks run directly on the model, one at a time.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

TASKS = ("tts", "asr", "understand", "chat", "few_shot", "continue")
TEXT_TASKS = ("asr", "understand")  # text-only outputs: where MTP speculative decoding applies


class BusyError(RuntimeError):
    """The engine's queue is full; the user should try again shortly."""


@dataclass
class BackendSettings:
    lm_path: str | None = None
    tokenizer_path: str | None = None
    device: str | None = None
    dtype: str = "auto"
    quant: str | None = None  # efficient.quant scheme for the LM backbone (e.g. w4g64)
    sparse: str | None = None  # efficient.attention layout for the LM backbone (e.g. hysparse-1:3)
    speculative: int = 0  # MTP draft tokens for text outputs (0 = off)
    voices_dir: str | None = None
    max_batch: int = 4  # engine batch size (and the demo's concurrency limit with the engine)
    max_queue: int = 16  # engine queue length (and the demo's queue size)
    use_engine: bool = True  # use mimo_audio.engine when it is installed


@dataclass
class Speed:
    """Live speed of one generation: real-time factor, patches per second, first-audio latency."""

    started: float
    first_audio: float | None = None
    audio_samples: int = 0
    frames: int = 0  # speech frames (25 Hz) seen so far
    patches: int | None = None  # from the final result
    finished: float | None = None

    @classmethod
    def start(cls) -> Speed:
        return cls(time.perf_counter())

    def update(self, ev) -> None:
        if ev.audio is not None and ev.audio.numel():
            if self.first_audio is None:
                self.first_audio = time.perf_counter()
            self.audio_samples += int(ev.audio.numel())
        if ev.codes is not None:
            self.frames += int(ev.codes.shape[1])
        if ev.result is not None:
            self.patches = int(ev.result.num_patches)
            self.finished = time.perf_counter()

    def markdown(self, sample_rate: int, settings: str) -> str:
        now = self.finished or time.perf_counter()
        elapsed = max(now - self.started, 1e-6)
        audio_s = self.audio_samples / float(sample_rate) if self.audio_samples else self.frames / 25.0
        parts = [f"**{'done' if self.finished else 'running'}** in {elapsed:.2f} s"]
        if audio_s:
            parts.append(f"{audio_s:.2f} s of audio, RTF **{elapsed / audio_s:.3f}** "
                         f"({audio_s / elapsed:.1f}x real time)")
        if self.patches is not None:
            parts.append(f"{self.patches} patches, **{self.patches / elapsed:.1f} patches/s**")
        elif self.frames:
            parts.append(f"~{self.frames / 4 / elapsed:.1f} patches/s so far")
        if self.first_audio is not None:
            parts.append(f"first audio after {self.first_audio - self.started:.2f} s")
        return " · ".join(parts) + f"  \n<small>backend: {settings}</small>"


def _engine_module():
    try:
        from mimo_audio import engine
    except ImportError:
        return None
    return engine


class Backend:
    def __init__(self, model, settings: BackendSettings | None = None):
        self.model = model
        self.settings = settings or BackendSettings()
        self._lock = threading.Lock()  # direct mode: one generation at a time
        self.engine = None
        self.load_seconds: float | None = None

    # ------------------------------------------------------------------ set-up
    @classmethod
    def load(cls, settings: BackendSettings) -> Backend:
        import torch

        from mimo_audio import MimoAudio

        if settings.lm_path and not settings.tokenizer_path:
            raise ValueError(f"the demo needs the audio tokenizer of {settings.lm_path}: pass --tokenizer-path (the "
                             "embedded tokenizer is used only with the embedded LM)")
        t0 = time.perf_counter()
        dtype = None if settings.dtype == "auto" else getattr(torch, settings.dtype)
        model = MimoAudio.from_pretrained(settings.lm_path or None, settings.tokenizer_path or None,
                                          device=settings.device, dtype=dtype, voices_dir=settings.voices_dir)
        if settings.quant or settings.sparse:
            from mimo_audio.compose import compose_backbone

            compose_backbone(model.lm, quant=settings.quant, attention=settings.sparse)
        if settings.speculative:
            model.load_mtp(max_draft=settings.speculative)
        backend = cls(model, settings)
        backend.load_seconds = time.perf_counter() - t0
        backend.start()
        return backend

    def start(self) -> None:
        eng = _engine_module() if self.settings.use_engine else None
        if eng is not None and self.engine is None:
            self.engine = eng.Engine(self.model, eng.EngineConfig(max_batch=self.settings.max_batch,
                                                                  max_queue=self.settings.max_queue))
            self.engine.start()
            log.info("generation runs on the serving engine (max_batch %d, max_queue %d)",
                     self.settings.max_batch, self.settings.max_queue)

    def close(self) -> None:
        stop = getattr(self.engine, "stop", None) or getattr(self.engine, "close", None)
        if stop is not None:
            stop()
        self.engine = None

    @property
    def concurrency(self) -> int:
        """How many requests the UI may run at once: the engine batches, the direct path does not."""
        return int(getattr(self.engine, "max_batch", self.settings.max_batch)) if self.engine is not None else 1

    @property
    def sample_rate(self) -> int:
        return self.model.sample_rate

    @property
    def codebook_sizes(self) -> list[int] | None:
        tok = self.model.audio_tokenizer
        return list(getattr(getattr(tok, "config", None), "codebook_size", None) or []) or None

    def settings_line(self) -> str:
        import torch

        s = self.settings
        lm = self.model.lm
        bits = [
            f"{lm.device.type} {str(next(lm.parameters()).dtype).replace('torch.', '')}",
            f"{torch.get_num_threads()} threads",
            f"quant {s.quant or 'off'}",
            f"sparse attention {s.sparse or 'off'}",
            f"speculative {s.speculative or 'off'}",
            (f"engine (max batch {self.concurrency}, queue {s.max_queue})" if self.engine is not None
             else "direct calls (one at a time)"),
        ]
        return ", ".join(bits)

    def describe(self) -> dict[str, Any]:
        out = {"settings": asdict(self.settings), "backend": self.settings_line(), "load_seconds": self.load_seconds,
               "model_dir": str(self.model.lm_path) if self.model.lm_path else None,
               "engine": self.engine is not None}
        if self.engine is not None and hasattr(self.engine, "stats"):
            try:
                out["engine_stats"] = self.engine.stats()
            except Exception as exc:  # stats are informative only
                out["engine_stats"] = f"unavailable ({exc})"
        return out

    # ------------------------------------------------------------------ generation
    def _gen(self, kind: str, gen: dict[str, Any], text_output: bool) -> dict[str, Any]:
        gen = {k: v for k, v in gen.items() if v is not None}
        if self.settings.speculative and text_output:
            gen.setdefault("speculative", self.settings.speculative)
        return gen

    def stream(self, kind: str, *args: Any, **kwargs: Any) -> Iterator:
        """Run task ``kind`` with the arguments of its ``MimoAudio`` method; yields StreamEvents, the last with
        ``result``. ``gen=`` holds the generation overrides (seed, max_new_patches, ...). A chat on a
        Conversation gets the reply appended, as ``MimoAudio.chat`` does."""
        if kind not in TASKS:
            raise ValueError(f"unknown task {kind!r}; known: {TASKS}")
        text_output = kind in TEXT_TASKS or (kind == "chat" and kwargs.get("output", "text") == "text")
        gen = self._gen(kind, kwargs.pop("gen", {}) or {}, text_output)
        # Preparation (audio encoding, prompt rendering) happens here, on the caller's thread.
        job = getattr(self.model, f"prepare_{kind}")(*args, **kwargs, **gen)
        return self._engine_stream(job) if self.engine is not None else self._direct_stream(job)

    def _engine_stream(self, job) -> Iterator:
        eng = _engine_module()
        try:
            handle = self.engine.submit(job)
        except eng.QueueFull as exc:
            raise BusyError(f"the server is busy ({exc}); try again in a moment") from None
        done = False
        try:
            for ev in handle:
                done = ev.result is not None
                yield ev
        except eng.EngineError as exc:  # timed out, stopped, cancelled: say so in the UI
            raise BusyError(f"generation did not finish: {exc}") from None
        finally:
            if not done:  # the user left or the UI cancelled: free the engine slot
                handle.cancel()

    def _direct_stream(self, job) -> Iterator:
        """Without the engine: one job at a time on the model (MTP drafting has no streaming loop)."""
        m = self.model
        with self._lock:
            if job.config.speculative:
                yield _whole(m.run_job(job))
                return
            for ev in m.stream_job(job):
                if ev.result is not None:
                    job.finish(ev.result)
                yield ev

    # ------------------------------------------------------------------ audio tokenizer and voices
    def encode(self, wav: np.ndarray, sample_rate: int):
        return self.model.encode_audio((wav, sample_rate))

    def decode(self, codes) -> np.ndarray:
        return self.model.decode_codes(codes).numpy()

    def register_voice(self, name: str, wav: np.ndarray, sample_rate: int, description: str = "") -> Path:
        return self.model.register_voice(name, (wav, sample_rate), description)

    def voices(self) -> list[str]:
        return self.model.voices.names()


def _whole(result):
    from mimo_audio import StreamEvent

    return StreamEvent(text=result.text, thinking=result.thinking or "", codes=result.codes, audio=result.audio,
                       result=result)
