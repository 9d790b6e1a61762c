"""Speaker similarity: cosine of Resemblyzer GE2E embeddings (the model ships inside the wheel).

Numbers from different speaker embedders are not comparable; on flite/espeak speech the same voice
scores about 0.85-0.95 and different voices about 0.5-0.65 (ecosystem spec §3.4).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np

from eval.scorers._deps import require
from eval.scorers.audio import AudioInput, load_audio

SPEAKER_SAMPLE_RATE = 16000


@contextmanager
def _torch_threads(n: int | None) -> Iterator[None]:
    """Run torch with ``n`` intra-op threads, then restore the previous setting."""
    import torch

    before = torch.get_num_threads()
    if n is not None:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


class ResemblyzerSimilarity:
    """Speaker embeddings and cosine similarity; the encoder loads once, on first use, on CPU.

    The encoder is a small 3-layer LSTM: one thread runs it as fast as two and, on a busy machine,
    avoids thread oversubscription (measured here: 0.1 s vs several seconds per utterance under load).
    Pass ``num_threads=None`` to keep torch's own setting.
    """

    def __init__(self, device: str = "cpu", num_threads: int | None = 1) -> None:
        self.device = device
        self.num_threads = num_threads
        self._encoder = None
        self._module = None

    def _load(self):
        if self._encoder is None:
            self._module = require("resemblyzer", "resemblyzer", "speaker-similarity")
            self._encoder = self._module.VoiceEncoder(self.device, verbose=False)
        return self._encoder

    def embed(self, audio: AudioInput, sample_rate: int | None = None) -> np.ndarray:
        """Unit-norm 256-d speaker embedding of one utterance."""
        samples = load_audio(audio, SPEAKER_SAMPLE_RATE, sample_rate)
        encoder = self._load()
        wav = self._module.preprocess_wav(samples, source_sr=SPEAKER_SAMPLE_RATE)
        if wav.size < SPEAKER_SAMPLE_RATE // 4:
            raise ValueError("too little speech for a speaker embedding (under 0.25 s after silence trimming)")
        with _torch_threads(self.num_threads):
            emb = np.asarray(encoder.embed_utterance(wav), dtype=np.float32)
        return emb / max(float(np.linalg.norm(emb)), 1e-12)

    def similarity(self, a: AudioInput, b: AudioInput, sample_rate: int | None = None) -> float:
        """Cosine similarity of the speaker embeddings of two utterances (higher = more alike)."""
        return float(np.dot(self.embed(a, sample_rate), self.embed(b, sample_rate)))
