"""The model-adapter interface: one method per task kind, each returning an :class:`Output`.

An adapter that cannot do a kind raises ``NotImplementedError`` (recorded as that sample's error).
Audio arguments are file paths; ``gen`` holds the task's generation settings.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np


@dataclass
class Output:
    text: str | None = None
    thinking: str | None = None
    audio: np.ndarray | None = None  # float32 mono
    sample_rate: int | None = None
    prompt: Any = None  # the prompt actually sent (rendered text, or the request body without audio bytes)
    extra: dict[str, Any] = field(default_factory=dict)  # stop reason, speculative-decoding counters, ...


class ModelAdapter:
    name: ClassVar[str] = ""
    registry: ClassVar[dict[str, type[ModelAdapter]]] = {}

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if cls.name:
            ModelAdapter.registry[cls.name] = cls

    def label(self) -> str:
        """Folder name of this model's results."""
        raise NotImplementedError

    def fingerprint(self) -> dict[str, Any]:
        """What identifies the model's outputs (weights hash, backend options, endpoint)."""
        raise NotImplementedError

    def asr(self, audio: str, language: str, gen: dict[str, Any]) -> Output:
        raise NotImplementedError(f"{self.name} adapter: no ASR")

    def tts(self, text: str, voice: str | None, instruct: str | None, gen: dict[str, Any]) -> Output:
        raise NotImplementedError(f"{self.name} adapter: no TTS")

    def understand(self, audio: str, question: str, thinking: bool, gen: dict[str, Any]) -> Output:
        raise NotImplementedError(f"{self.name} adapter: no audio understanding")

    def chat(self, messages: list[dict], output: str, thinking: bool, gen: dict[str, Any]) -> Output:
        raise NotImplementedError(f"{self.name} adapter: no chat")

    def few_shot(self, examples: list[dict], query: str, instruction: str | None, gen: dict[str, Any]) -> Output:
        raise NotImplementedError(f"{self.name} adapter: no few-shot speech-to-speech")

    def continue_speech(self, audio: str, gen: dict[str, Any]) -> Output:
        raise NotImplementedError(f"{self.name} adapter: no speech continuation")

    def resynthesize(self, audio: str) -> Output:
        raise NotImplementedError(f"{self.name} adapter: no audio tokenizer round trip")
