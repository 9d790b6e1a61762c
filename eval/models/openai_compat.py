"""Any OpenAI-compatible endpoint over HTTP (the toolkit's own server included).

Routes: ``/v1/audio/transcriptions`` (ASR, multipart), ``/v1/audio/speech`` (TTS, wav bytes back),
``/v1/chat/completions`` (understanding and dialogue; audio goes in as an ``input_audio`` part, base64 wav;
speech replies come back in ``message.audio.data``). The request body is recorded as the prompt, with
audio bytes replaced by their file names.
"""

from __future__ import annotations

import base64
import io
import logging
from pathlib import Path
from typing import Any

import numpy as np

from eval.models.base import ModelAdapter, Output

log = logging.getLogger(__name__)


def _b64(path: str) -> str:
    return base64.b64encode(Path(path).read_bytes()).decode()


def _decode_wav(data: bytes) -> tuple[np.ndarray, int]:
    import soundfile as sf

    wav, sr = sf.read(io.BytesIO(data), dtype="float32", always_2d=True)
    return wav.mean(axis=1), int(sr)


class OpenAIAdapter(ModelAdapter):
    name = "openai"

    def __init__(self, base_url: str, model: str = "mimo-audio", api_key: str | None = None, voice: str = "default",
                 timeout: float = 600.0) -> None:
        import requests

        self.base_url = base_url.rstrip("/")
        if not self.base_url.endswith("/v1"):
            self.base_url += "/v1"
        self.model, self.voice, self.timeout = model, voice, timeout
        self.session = requests.Session()
        if api_key:
            self.session.headers["Authorization"] = f"Bearer {api_key}"

    def label(self) -> str:
        host = self.base_url.split("://", 1)[-1].split("/", 1)[0].replace(":", "_")
        return f"openai-{host}-{self.model}".replace("/", "_")

    def fingerprint(self) -> dict[str, Any]:
        return {"adapter": "openai", "base_url": self.base_url, "model": self.model, "voice": self.voice}

    def _post(self, route: str, **kwargs: Any):
        r = self.session.post(f"{self.base_url}{route}", timeout=self.timeout, **kwargs)
        if r.status_code != 200:
            raise RuntimeError(f"{route}: HTTP {r.status_code}: {r.text[:300]}")
        return r

    def asr(self, audio: str, language: str, gen: dict[str, Any]) -> Output:
        data = {"model": self.model, "language": language}
        with open(audio, "rb") as f:
            r = self._post("/audio/transcriptions", data=data, files={"file": (Path(audio).name, f, "audio/wav")})
        return Output(text=r.json().get("text", ""), prompt={**data, "file": Path(audio).name})

    def tts(self, text: str, voice: str | None, instruct: str | None, gen: dict[str, Any]) -> Output:
        body: dict[str, Any] = {"model": self.model, "input": text, "voice": self.voice, "response_format": "wav"}
        if instruct:
            body["instructions"] = instruct
        if voice:
            log.debug("the speech route takes no voice prompt audio; using voice %r", self.voice)
        wav, sr = _decode_wav(self._post("/audio/speech", json=body).content)
        return Output(audio=wav, sample_rate=sr, prompt=body)

    def _chat(self, messages: list[dict], output: str, thinking: bool, gen: dict[str, Any]) -> Output:
        wire, shown = [], []
        for m in messages:
            parts, shown_parts = [], []
            if m.get("audio"):
                parts.append({"type": "input_audio", "input_audio": {"data": _b64(m["audio"]), "format": "wav"}})
                shown_parts.append({"type": "input_audio", "input_audio": Path(m["audio"]).name})
            if m.get("content"):
                parts.append({"type": "text", "text": m["content"]})
                shown_parts.append({"type": "text", "text": m["content"]})
            wire.append({"role": m["role"], "content": parts})
            shown.append({"role": m["role"], "content": shown_parts})
        body: dict[str, Any] = {"model": self.model, "messages": wire}
        if "temperature" in gen:
            body["temperature"] = gen["temperature"]
        if output != "text":
            body["modalities"] = ["text", "audio"]
            body["audio"] = {"voice": self.voice, "format": "wav"}
        msg = self._post("/chat/completions", json=body).json()["choices"][0]["message"]
        out = Output(text=msg.get("content") or "", thinking=msg.get("reasoning_content"),
                     prompt={**body, "messages": shown})
        if output != "text" and (msg.get("audio") or {}).get("data"):
            out.audio, out.sample_rate = _decode_wav(base64.b64decode(msg["audio"]["data"]))
            out.text = out.text or msg["audio"].get("transcript", "")
        return out

    def understand(self, audio: str, question: str, thinking: bool, gen: dict[str, Any]) -> Output:
        return self._chat([{"role": "user", "audio": audio, "content": question}], "text", thinking, gen)

    def chat(self, messages: list[dict], output: str, thinking: bool, gen: dict[str, Any]) -> Output:
        return self._chat(messages, output, thinking, gen)
