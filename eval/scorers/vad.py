"""Voice activity detection with Silero VAD (its model ships inside the ``silero-vad`` wheel)."""

from __future__ import annotations

from eval.scorers._deps import require
from eval.scorers.audio import AudioInput, load_audio

VAD_SAMPLE_RATE = 16000


class SileroVAD:
    """Speech segments of an utterance; the model loads once, on first use."""

    def __init__(self, threshold: float = 0.5) -> None:
        self.threshold = threshold
        self._model = None
        self._module = None

    def _load(self):
        if self._model is None:
            self._module = require("silero_vad", "silero-vad", "VAD")
            # the ONNX copy of the model (run by onnxruntime) rather than the TorchScript one, which
            # torch.jit.load would unpickle
            self._model = self._module.load_silero_vad(onnx=True)
        return self._model

    def speech_segments(self, audio: AudioInput, sample_rate: int | None = None) -> list[tuple[float, float]]:
        """(start, end) of each speech segment, in seconds."""
        import torch

        samples = load_audio(audio, VAD_SAMPLE_RATE, sample_rate)
        model = self._load()
        stamps = self._module.get_speech_timestamps(
            torch.from_numpy(samples), model, threshold=self.threshold, sampling_rate=VAD_SAMPLE_RATE,
            return_seconds=True,
        )
        return [(float(s["start"]), float(s["end"])) for s in stamps]

    def speech_seconds(self, audio: AudioInput, sample_rate: int | None = None) -> float:
        """Total seconds of detected speech."""
        return sum(end - start for start, end in self.speech_segments(audio, sample_rate))
