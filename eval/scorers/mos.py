"""Non-intrusive quality: DNSMOS P.835 (SIG, BAK, OVRL) and P.808 MOS via speechmos' packaged ONNX models."""

from __future__ import annotations

from dataclasses import dataclass

from eval.scorers._deps import require
from eval.scorers.audio import AudioInput, load_audio

MOS_SAMPLE_RATE = 16000


@dataclass(frozen=True)
class DNSMOSScore:
    """DNSMOS scores on a 1-5 scale: signal, background, overall (P.835) and P.808."""

    sig: float
    bak: float
    ovrl: float
    p808: float


class DNSMOS:
    """DNSMOS scorer. Clips shorter than 9 s are looped to 9 s by the model's own front end."""

    def __init__(self) -> None:
        self._dnsmos = None

    def _load(self):
        if self._dnsmos is None:
            require("onnxruntime", "onnxruntime", "DNSMOS")
            require("requests", "requests", "DNSMOS")  # speechmos imports it without declaring it
            self._dnsmos = require("speechmos.dnsmos", "speechmos", "DNSMOS")
        return self._dnsmos

    def score(self, audio: AudioInput, sample_rate: int | None = None) -> DNSMOSScore:
        samples = load_audio(audio, MOS_SAMPLE_RATE, sample_rate)
        out = self._load().run(samples, sr=MOS_SAMPLE_RATE)
        return DNSMOSScore(
            sig=float(out["sig_mos"]), bak=float(out["bak_mos"]), ovrl=float(out["ovrl_mos"]),
            p808=float(out["p808_mos"]),
        )
