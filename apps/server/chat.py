"""OpenAI chat-completions requests -> ``MimoAudio.prepare_chat`` arguments; replies and stream chunks back."""

from __future__ import annotations

import base64
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from mimo_audio.sampling import Sampler

from .errors import ApiError
from .media import check_format, decode_base64_audio

# OpenAI's built-in voice names: served with the model's own default voice (no voice prompt).
OPENAI_VOICES = {"alloy", "ash", "ballad", "coral", "echo", "fable", "nova", "onyx", "sage", "shimmer", "verse",
                 "marin", "cedar"}
CHAT_AUDIO_FORMATS = ("wav", "pcm", "flac", "mp3", "opus")


@dataclass
class Limits:
    max_upload_bytes: int
    max_audio_seconds: float
    max_input_chars: int


@dataclass
class ChatRequest:
    messages: list[dict]
    system_prompt: str | None
    output: str  # "text" or "both"
    thinking: bool
    voice: str | None
    audio_format: str
    stream: bool
    include_usage: bool
    gen: dict[str, Any] = field(default_factory=dict)


def resolve_voice(voice: Any, known: list[str]) -> str | None:
    """``default`` / OpenAI's names -> None (the model's own voice); registry names pass; others are a 400."""
    if voice is None or (isinstance(voice, str) and (voice == "default" or voice.lower() in OPENAI_VOICES)):
        return None
    if isinstance(voice, dict) and "id" in voice:
        voice = voice["id"]
    if not isinstance(voice, str) or voice not in known:
        raise ApiError(400, f"unknown voice {voice!r}; use 'default' or a registered voice: "
                       f"{', '.join(known) or 'none registered'}", param="voice")
    return voice


def sampling(body: dict, max_patches_key: tuple[str, ...]) -> dict[str, Any]:
    """OpenAI sampling fields (plus the extensions ``max_new_patches`` / ``min_new_patches`` /
    ``min_speech_patches``) -> overrides."""
    gen: dict[str, Any] = {}
    for key in (*max_patches_key, "max_new_patches"):
        if body.get(key) is not None:
            n = body[key]
            if not isinstance(n, int) or n < 1:
                raise ApiError(400, f"{key} must be a positive integer", param=key)
            gen["max_new_patches"] = n
    if body.get("min_new_patches") is not None:
        n = body["min_new_patches"]
        if not isinstance(n, int) or n < 0:
            raise ApiError(400, "min_new_patches must be a non-negative integer", param="min_new_patches")
        gen["min_new_patches"] = min(n, gen.get("max_new_patches", n))
    if body.get("min_speech_patches") is not None:  # TTS: the speech floor (default: from the input's length)
        n = body["min_speech_patches"]
        if not isinstance(n, int) or isinstance(n, bool) or n < 0:
            raise ApiError(400, "min_speech_patches must be a non-negative integer", param="min_speech_patches")
        gen["min_speech_patches"] = n
    temperature, top_p = body.get("temperature"), body.get("top_p")
    if temperature is not None or top_p is not None:
        try:
            t = float(temperature) if temperature is not None else 1.0
            p = float(top_p) if top_p is not None else None
            gen["text_sampler"] = Sampler.greedy() if t == 0 else Sampler(True, t, None, p)
        except (TypeError, ValueError) as exc:
            raise ApiError(400, f"bad sampling settings: {exc}", param="temperature") from None
    if body.get("seed") is not None:
        if not isinstance(body["seed"], int):
            raise ApiError(400, "seed must be an integer", param="seed")
        gen["seed"] = body["seed"]
    return gen


def _text_of(content: Any, where: str) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list) and all(isinstance(p, dict) and p.get("type") == "text" for p in content):
        return "".join(str(p.get("text", "")) for p in content)
    raise ApiError(400, f"{where}: content must be text", param="messages")


def parse_chat(body: dict, limits: Limits, voices: list[str]) -> ChatRequest:
    msgs = body.get("messages")
    if not isinstance(msgs, list) or not msgs:
        raise ApiError(400, "'messages' must be a non-empty list", param="messages")
    if body.get("n", 1) != 1:
        raise ApiError(400, "only n=1 is supported", param="n")
    modalities = body.get("modalities") or ["text"]
    if not isinstance(modalities, list) or not set(modalities) <= {"text", "audio"}:
        raise ApiError(400, "modalities must be ['text'] or ['text', 'audio']", param="modalities")
    output = "both" if "audio" in modalities else "text"
    audio = body.get("audio") or {}
    if output == "both" and not isinstance(audio, dict):
        raise ApiError(400, "'audio' must be an object {voice, format}", param="audio")
    fmt = check_format(audio.get("format", "wav"), CHAT_AUDIO_FORMATS) if output == "both" else "wav"
    voice = resolve_voice(audio.get("voice"), voices) if output == "both" else None
    thinking = bool(body.get("thinking", False)) or body.get("reasoning_effort") in ("low", "medium", "high")

    system: list[str] = []
    out: list[dict] = []
    chars = 0
    for i, m in enumerate(msgs):
        if not isinstance(m, dict) or "role" not in m:
            raise ApiError(400, f"messages[{i}] must be an object with 'role' and 'content'", param="messages")
        role = m["role"]
        content = m.get("content")
        if role in ("system", "developer"):
            text = _text_of(content, f"messages[{i}]")
            chars += len(text)
            if out:  # a system message after the conversation started: a system turn in place
                out.append({"role": "system", "content": text})
            else:
                system.append(text)
            continue
        if role not in ("user", "assistant"):
            raise ApiError(400, f"messages[{i}]: role {role!r} is not supported (system, developer, user, "
                           "assistant)", param="messages")
        if content is None and role == "assistant" and isinstance(m.get("audio"), dict):
            content = m["audio"].get("transcript") or ""
        if isinstance(content, str):
            if not content.strip():
                raise ApiError(400, f"messages[{i}] is empty", param="messages")
            chars += len(content)
            out.append({"role": role, "content": content})
            continue
        if not isinstance(content, list) or not content:
            raise ApiError(400, f"messages[{i}]: content must be a string or a non-empty list of parts",
                           param="messages")
        parts = []
        for j, part in enumerate(content):
            kind = part.get("type") if isinstance(part, dict) else None
            if kind == "text":
                chars += len(str(part.get("text", "")))
                parts.append({"type": "text", "text": str(part.get("text", ""))})
            elif kind == "input_audio" and role == "user":
                ia = part.get("input_audio") or {}
                wav, sr = decode_base64_audio(ia.get("data"), limits.max_upload_bytes, limits.max_audio_seconds,
                                              f"messages[{i}].content[{j}].input_audio")
                parts.append({"type": "audio", "audio": wav, "sample_rate": sr})
            else:
                raise ApiError(400, f"messages[{i}].content[{j}]: part type {kind!r} is not supported "
                               "(text, input_audio in user messages)", param="messages")
        out.append({"role": role, "content": parts})
    if chars > limits.max_input_chars:
        raise ApiError(413, f"the messages hold {chars} characters; the limit is {limits.max_input_chars}",
                       code="input_too_large")
    if not out or out[-1]["role"] != "user":
        raise ApiError(400, "the last message must be a user message", param="messages")
    stream_opts = body.get("stream_options") or {}
    return ChatRequest(
        messages=out, system_prompt="\n".join(system) or None, output=output, thinking=thinking, voice=voice,
        audio_format=fmt, stream=bool(body.get("stream", False)),
        include_usage=bool(stream_opts.get("include_usage", False)) if isinstance(stream_opts, dict) else False,
        gen=sampling(body, ("max_tokens", "max_completion_tokens")),
    )


def finish_reason(stop_reason: str) -> str:
    return "stop" if stop_reason == "stop_token" else "length"


class ChatIds:
    """Ids and timestamps shared by the chunks of one completion."""

    def __init__(self, model: str):
        self.id = f"chatcmpl-{uuid.uuid4().hex[:24]}"
        self.audio_id = f"audio_{uuid.uuid4().hex[:24]}"
        self.created = int(time.time())
        self.model = model

    def chunk(self, delta: dict, finish: str | None = None, usage: dict | None = None) -> dict:
        choices = [] if usage is not None and not delta else [{"index": 0, "delta": delta, "finish_reason": finish,
                                                               "logprobs": None}]
        out = {"id": self.id, "object": "chat.completion.chunk", "created": self.created, "model": self.model,
               "choices": choices}
        if usage is not None:
            out["usage"] = usage
        return out


def usage(result) -> dict:
    return {"prompt_tokens": result.prompt_patches, "completion_tokens": result.num_patches,
            "total_tokens": result.prompt_patches + result.num_patches}


def completion(ids: ChatIds, req: ChatRequest, result, audio_bytes: bytes | None) -> dict:
    message: dict[str, Any] = {"role": "assistant", "content": result.text, "refusal": None}
    if req.thinking and result.thinking is not None:
        message["reasoning_content"] = result.thinking
    if req.output == "both":
        message["content"] = None  # as OpenAI: a spoken reply carries its text as the audio transcript
        message["audio"] = {"id": ids.audio_id, "expires_at": ids.created + 3600, "transcript": result.text,
                            "data": base64.b64encode(audio_bytes or b"").decode("ascii")}
    return {"id": ids.id, "object": "chat.completion", "created": ids.created, "model": ids.model,
            "choices": [{"index": 0, "message": message, "finish_reason": finish_reason(result.stop_reason),
                         "logprobs": None}],
            "usage": usage(result)}
