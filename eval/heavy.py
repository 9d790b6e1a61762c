"""Scoring backends: the offline defaults and the official heavy models, loaded from local folders.

``make_asr("pocketsphinx" | "whisper:DIR" | "paraformer:DIR")`` and ``make_speaker("resemblyzer" |
"wavlm:DIR")``. Whisper (e.g. whisper-large-v3) and WavLM speaker verification (e.g. wavlm-base-plus-sv)
are read with ``transformers`` from a local Hugging Face folder (safetensors, ``local_files_only``);
Paraformer needs ``funasr``. Nothing is downloaded. Numbers from different backends are not comparable,
so the backend is recorded in every report.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)


class _PocketsphinxASR:
    def __init__(self) -> None:
        from eval.scorers import PocketsphinxASR

        self._asr = PocketsphinxASR()

    def transcribe(self, path: str, language: str = "en") -> str:
        if not language.startswith("en"):
            raise ValueError(f"pocketsphinx scores English only; pass --asr-scorer paraformer:DIR for {language}")
        return self._asr.transcribe(path)


class WhisperASR:
    """Whisper from a local transformers folder, greedy, language forced."""

    def __init__(self, path: str, device: str = "cpu") -> None:
        from transformers import WhisperForConditionalGeneration, WhisperProcessor

        self.processor = WhisperProcessor.from_pretrained(path, local_files_only=True)
        self.model = WhisperForConditionalGeneration.from_pretrained(path, local_files_only=True,
                                                                     use_safetensors=True).to(device).eval()
        self.device = device

    def transcribe(self, path: str, language: str = "en") -> str:
        import torch

        from eval.scorers import load_audio

        wav = load_audio(path, 16000)
        feats = self.processor(wav, sampling_rate=16000, return_tensors="pt").input_features.to(self.device)
        with torch.no_grad():
            ids = self.model.generate(feats, language=language[:2], task="transcribe", max_new_tokens=440)
        return self.processor.batch_decode(ids, skip_special_tokens=True)[0].strip()


class ParaformerASR:
    """FunASR Paraformer (Chinese) from a local model folder."""

    def __init__(self, path: str) -> None:
        from eval.scorers._deps import require

        funasr = require("funasr", "funasr", "Paraformer ASR")
        self.model = funasr.AutoModel(model=path, disable_update=True)

    def transcribe(self, path: str, language: str = "zh") -> str:
        res = self.model.generate(input=path)
        return str(res[0].get("text", "")) if res else ""


class _Resemblyzer:
    def __init__(self) -> None:
        from eval.scorers import ResemblyzerSimilarity

        self._spk = ResemblyzerSimilarity()

    def embed(self, path: str) -> np.ndarray:
        return self._spk.embed(path)


class WavLMSpeaker:
    """WavLM speaker-verification x-vectors (``WavLMForXVector``) from a local transformers folder."""

    def __init__(self, path: str, device: str = "cpu") -> None:
        from transformers import AutoFeatureExtractor, WavLMForXVector

        self.fe = AutoFeatureExtractor.from_pretrained(path, local_files_only=True)
        self.model = WavLMForXVector.from_pretrained(path, local_files_only=True, use_safetensors=True)
        self.model.to(device).eval()
        self.device = device

    def embed(self, path: str) -> np.ndarray:
        import torch

        from eval.scorers import load_audio

        wav = load_audio(path, 16000)
        inputs = self.fe(wav, sampling_rate=16000, return_tensors="pt").to(self.device)
        with torch.no_grad():
            emb = self.model(**inputs).embeddings[0].float().cpu().numpy()
        return emb / max(float(np.linalg.norm(emb)), 1e-12)


def _split(spec: str) -> tuple[str, str | None]:
    name, _, path = spec.partition(":")
    if path and not Path(path).is_dir():
        raise FileNotFoundError(f"scorer {name}: model folder {path} not found")
    return name, path or None


def make_asr(spec: str):
    name, path = _split(spec)
    if name == "pocketsphinx":
        return _PocketsphinxASR()
    if name == "whisper" and path:
        return WhisperASR(path)
    if name == "paraformer" and path:
        return ParaformerASR(path)
    raise ValueError(f"unknown ASR scorer {spec!r}: pocketsphinx, whisper:DIR or paraformer:DIR")


def make_speaker(spec: str):
    name, path = _split(spec)
    if name == "resemblyzer":
        return _Resemblyzer()
    if name == "wavlm" and path:
        return WavLMSpeaker(path)
    raise ValueError(f"unknown speaker scorer {spec!r}: resemblyzer or wavlm:DIR")
