"""The OpenAI-compatible HTTP API over a :class:`mimo_audio.engine.Engine` (FastAPI).

Routes: ``POST /v1/audio/speech``, ``POST /v1/audio/transcriptions``, ``POST /v1/chat/completions``,
``GET /v1/models``, ``GET /health``, ``GET /metrics``. Preparation (audio decoding and encoding, prompt
rendering) and waiting run in worker threads; generation runs in the engine's scheduler thread, batched
across requests. Every error is OpenAI error JSON; tracebacks stay in the server log.
"""

from __future__ import annotations

import base64
import hmac
import json
import logging
import os
import sys
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any

import torch
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.concurrency import iterate_in_threadpool, run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from mimo_audio.engine import Cancelled, Engine, EngineError, EngineStopped, PromptTooLong, QueueFull, RequestTimeout
from mimo_audio.errors import SilentAudioError
from mimo_audio.sampling import Sampler

from . import chat as chatmod
from .errors import ApiError
from .media import FORMATS, STREAMED, check_format, decode_upload, encode_whole, media_type, pcm16, wav_header
from .metrics import prometheus

logger = logging.getLogger("mimo-audio.server")


@dataclass
class ServerConfig:
    model_id: str = "mimo-audio"
    api_key: str | None = None
    max_input_chars: int = 4096
    speculative: int = 0  # MTP draft tokens for text-only replies (0 = off)


def _engine_error(exc: Exception) -> ApiError:
    if isinstance(exc, QueueFull):
        return ApiError(503, str(exc), code="server_overloaded", headers={"Retry-After": "1"})
    if isinstance(exc, RequestTimeout):
        return ApiError(504, str(exc), code="timeout")
    if isinstance(exc, PromptTooLong):
        return ApiError(413, str(exc), code="input_too_large")
    if isinstance(exc, EngineStopped):
        return ApiError(503, str(exc), code="shutting_down")
    if isinstance(exc, Cancelled):
        return ApiError(499, str(exc), code="cancelled")
    if isinstance(exc, (ValueError, FileNotFoundError)):
        return ApiError(400, str(exc))
    logger.error("request failed", exc_info=exc)
    return ApiError(500, "internal error while generating; see the server log", code="internal_error")


def create_app(engine: Engine, config: ServerConfig | None = None) -> FastAPI:
    cfg = config or ServerConfig()
    model = engine.model
    ecfg = engine.config
    limits = chatmod.Limits(ecfg.max_upload_bytes, ecfg.max_audio_seconds, cfg.max_input_chars)
    app = FastAPI(title="mimo-audio", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.engine = engine

    # ------------------------------------------------------------------ errors and auth
    @app.exception_handler(ApiError)
    async def _api_error(_: Request, exc: ApiError) -> JSONResponse:
        return exc.response()

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {}
        loc = ".".join(str(x) for x in first.get("loc", ()) if x != "body")
        return ApiError(400, f"invalid request: {loc}: {first.get('msg', 'bad value')}", param=loc or None).response()

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        return ApiError(exc.status_code, str(exc.detail)).response()

    @app.exception_handler(Exception)
    async def _unexpected(_: Request, exc: Exception) -> JSONResponse:
        logger.error("unhandled error", exc_info=exc)
        return ApiError(500, "internal server error; see the server log", code="internal_error").response()

    @app.middleware("http")
    async def _auth(request: Request, call_next):
        if cfg.api_key and request.url.path.startswith("/v1/"):
            given = request.headers.get("authorization", "")
            if not hmac.compare_digest(given.encode(), f"Bearer {cfg.api_key}".encode()):
                return ApiError(401, "invalid or missing API key (Authorization: Bearer KEY)",
                                code="invalid_api_key").response()
        return await call_next(request)

    # ------------------------------------------------------------------ helpers
    async def json_body(request: Request) -> dict:
        raw = await request.body()
        if len(raw) > ecfg.max_upload_bytes * 4 // 3 + 65536:
            raise ApiError(413, "request body too large", code="input_too_large")
        try:
            body = json.loads(raw or b"{}")
        except json.JSONDecodeError as exc:
            raise ApiError(400, f"request body is not valid JSON: {exc}") from None
        if not isinstance(body, dict):
            raise ApiError(400, "request body must be a JSON object")
        return body

    def slotted(fn, *args, **kwargs):
        with engine.work_slot():  # a few CPU-heavy request threads at a time (see EngineConfig.worker_slots)
            return fn(*args, **kwargs)

    async def prepare(fn, *args, **kwargs):
        try:
            return await run_in_threadpool(slotted, fn, *args, **kwargs)
        except ApiError:
            raise
        except (ValueError, FileNotFoundError) as exc:
            raise ApiError(400, str(exc)) from None

    def submit(job):
        try:
            return engine.submit(job)
        except Exception as exc:
            raise _engine_error(exc) from None

    async def wait(handle):
        try:
            return await run_in_threadpool(handle.result)
        except Exception as exc:
            raise _engine_error(exc) from None

    async def guarded(events: Iterator, handle) -> AsyncIterator:
        """Iterate a handle's events off the event loop; the client leaving cancels the request."""
        try:
            async for item in iterate_in_threadpool(events):
                yield item
        except EngineError as exc:  # mid-stream failure: the status is sent already; end the stream
            logger.warning("stream of request %s ended early: %s", handle.id, exc)
        finally:
            handle.cancel()

    # ------------------------------------------------------------------ info routes
    @app.get("/health")
    async def health() -> JSONResponse:
        if not engine.running:
            return ApiError(503, "engine not running", code="not_ready").response()
        return JSONResponse({"status": "ok", "model": cfg.model_id})

    @app.get("/metrics")
    async def metrics() -> PlainTextResponse:
        return PlainTextResponse(prometheus(engine.stats()), media_type="text/plain; version=0.0.4")

    @app.get("/v1/models")
    async def models() -> JSONResponse:
        card = {"id": cfg.model_id, "object": "model", "created": int(time.time()), "owned_by": "mimo-audio"}
        return JSONResponse({"object": "list", "data": [card]})

    @app.get("/v1/models/{model_id}")
    async def model_card(model_id: str) -> JSONResponse:
        if model_id != cfg.model_id:
            raise ApiError(404, f"model {model_id!r} not found; this server serves {cfg.model_id!r}", param="model")
        return JSONResponse({"id": cfg.model_id, "object": "model", "created": 0, "owned_by": "mimo-audio"})

    # ------------------------------------------------------------------ speech
    @app.post("/v1/audio/speech")
    async def speech(request: Request) -> Response:
        body = await json_body(request)
        text = body.get("input")
        if not isinstance(text, str) or not text.strip():
            raise ApiError(400, "'input' must be a non-empty string", param="input")
        if len(text) > cfg.max_input_chars:
            raise ApiError(413, f"'input' has {len(text)} characters; the limit is {cfg.max_input_chars}",
                           param="input", code="input_too_large")
        fmt = check_format(body.get("response_format", "wav"), FORMATS)
        speed = body.get("speed", 1.0)
        if not isinstance(speed, (int, float)) or not 0.25 <= speed <= 4.0:
            raise ApiError(400, "speed must be a number in [0.25, 4.0]", param="speed")
        voice = chatmod.resolve_voice(body.get("voice", "default"), model.voices.names())
        instructions = body.get("instructions") or None
        gen = chatmod.sampling(body, ())
        job = await prepare(model.prepare_tts, text, instructions, voice, **gen)
        handle = submit(job)
        sr = model.sample_rate
        stream = body.get("stream_format", "audio") == "audio" and fmt in STREAMED and speed == 1.0
        if not stream:
            result = await wait(handle)
            audio = result.audio if result.audio is not None else torch.zeros(0)
            if speed != 1.0 and audio.numel():
                import librosa

                audio = torch.from_numpy(librosa.effects.time_stretch(audio.numpy(), rate=float(speed)))
            data = await run_in_threadpool(slotted, encode_whole, audio, sr, fmt)
            return Response(data, media_type=media_type(fmt))

        def chunks() -> Iterator[bytes]:
            if fmt == "wav":
                yield wav_header(sr)
            for ev in handle:
                if ev.audio is not None and ev.audio.numel():
                    yield pcm16(ev.audio)

        return StreamingResponse(guarded(chunks(), handle), media_type=media_type(fmt))

    # ------------------------------------------------------------------ transcription
    @app.post("/v1/audio/transcriptions")
    async def transcriptions(request: Request) -> Response:
        length = int(request.headers.get("content-length") or 0)
        if length > ecfg.max_upload_bytes + 65536:
            raise ApiError(413, f"upload of {length / 2**20:.1f} MiB exceeds the limit of "
                           f"{ecfg.max_upload_bytes / 2**20:.1f} MiB", code="input_too_large")
        try:
            form = await request.form(max_part_size=ecfg.max_upload_bytes + 1)
        except Exception as exc:
            raise ApiError(400, f"expected a multipart/form-data upload: {exc}") from None
        upload = form.get("file")
        if upload is None or isinstance(upload, str):
            raise ApiError(400, "a 'file' part with the audio is required", param="file")
        data = await upload.read()
        fmt = str(form.get("response_format") or "json")
        if fmt not in ("json", "text", "verbose_json"):
            raise ApiError(400, f"unsupported response_format {fmt!r}; supported: json, text, verbose_json",
                           param="response_format")
        language = str(form.get("language") or "en")
        if language not in ("en", "zh"):
            raise ApiError(400, f"language {language!r} is not supported (en, zh)", param="language")
        gen: dict[str, Any] = {}
        if form.get("temperature") not in (None, "", "0", "0.0"):
            try:
                gen["text_sampler"] = Sampler(True, float(form["temperature"]), None, 0.95)
            except ValueError:
                raise ApiError(400, "temperature must be a number", param="temperature") from None
        if cfg.speculative:
            gen["speculative"] = cfg.speculative
        wav, sr = await run_in_threadpool(slotted, decode_upload, data, ecfg.max_upload_bytes, ecfg.max_audio_seconds,
                                          "the uploaded file")
        duration = len(wav) / sr
        try:
            job = await run_in_threadpool(slotted, model.prepare_asr, (wav, sr), language, **gen)
        except SilentAudioError:
            job = None  # silence transcribes to "" (as MimoAudio.asr does), without running the model
        except (ValueError, FileNotFoundError) as exc:
            raise ApiError(400, str(exc)) from None
        handle = submit(job) if job is not None else None
        if handle is None:
            if str(form.get("stream") or "false").lower() == "true":
                return StreamingResponse(iter([_sse({"type": "transcript.text.done", "text": ""})]),
                                         media_type="text/event-stream")
            return _transcription(fmt, "", language, duration)
        if str(form.get("stream") or "false").lower() == "true":
            def sse() -> Iterator[str]:
                text = ""
                for ev in handle:
                    if ev.text:
                        text += ev.text
                        yield _sse({"type": "transcript.text.delta", "delta": ev.text})
                    if ev.result is not None:
                        yield _sse({"type": "transcript.text.done", "text": ev.result.text})

            return StreamingResponse(guarded(sse(), handle), media_type="text/event-stream")
        result = await wait(handle)
        return _transcription(fmt, result.text, language, duration)

    # ------------------------------------------------------------------ chat
    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> Response:
        body = await json_body(request)
        req = await run_in_threadpool(slotted, chatmod.parse_chat, body, limits, model.voices.names())
        gen = dict(req.gen)
        if cfg.speculative and req.output == "text":
            gen["speculative"] = cfg.speculative
        job = await prepare(model.prepare_chat, req.messages, req.output, req.thinking, req.voice,
                            req.system_prompt, **gen)
        handle = submit(job)
        ids = chatmod.ChatIds(cfg.model_id)
        sr = model.sample_rate
        if not req.stream:
            result = await wait(handle)
            audio = None
            if req.output == "both":
                wave = result.audio if result.audio is not None else torch.zeros(0)
                audio = await run_in_threadpool(slotted, encode_whole, wave, sr, req.audio_format)
            return JSONResponse(chatmod.completion(ids, req, result, audio))

        def sse() -> Iterator[str]:
            yield _sse(ids.chunk({"role": "assistant", "content": ""}))
            for ev in handle:
                delta: dict[str, Any] = {}
                if ev.thinking:
                    delta["reasoning_content"] = ev.thinking
                if req.output == "both":
                    audio: dict[str, Any] = {"id": ids.audio_id}
                    if ev.text:
                        audio["transcript"] = ev.text
                    if ev.audio is not None and ev.audio.numel():
                        audio["data"] = _b64(pcm16(ev.audio))  # streamed audio is pcm16, as OpenAI's
                    if len(audio) > 1:
                        delta["audio"] = audio
                elif ev.text:
                    delta["content"] = ev.text
                if delta:
                    yield _sse(ids.chunk(delta))
                if ev.result is not None:
                    yield _sse(ids.chunk({}, chatmod.finish_reason(ev.result.stop_reason)))
                    if req.include_usage:
                        yield _sse(ids.chunk({}, usage=chatmod.usage(ev.result)))
            yield "data: [DONE]\n\n"

        return StreamingResponse(guarded(sse(), handle), media_type="text/event-stream")

    return app


def _transcription(fmt: str, text: str, language: str, duration: float) -> Response:
    if fmt == "text":
        return PlainTextResponse(text)
    if fmt == "verbose_json":
        return JSONResponse({"task": "transcribe", "language": "english" if language == "en" else "chinese",
                             "duration": duration, "text": text,
                             "segments": [{"id": 0, "seek": 0, "start": 0.0, "end": duration, "text": text,
                                           "tokens": [], "temperature": 0.0, "avg_logprob": 0.0,
                                           "compression_ratio": 1.0, "no_speech_prob": 0.0}]})
    return JSONResponse({"text": text})


def _sse(obj: dict) -> str:
    return f"data: {json.dumps(obj, ensure_ascii=False)}\n\n"


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _fixed_mmap_threshold() -> None:
    """glibc raises its mmap threshold as large blocks are freed, after which tensors of varying sizes (the
    batch cache changes shape with its rows) come from the heap and fragment it: RSS creeps up under load.
    A fixed threshold keeps large blocks mmapped, so freeing them returns the memory to the system; two
    arenas keep the request threads from each growing a heap of their own."""
    if sys.platform != "linux" or os.environ.get("MIMO_AUDIO_MALLOC", "fixed") != "fixed":
        return
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(-3, 256 * 1024)  # M_MMAP_THRESHOLD
        libc.mallopt(-1, 512 * 1024)  # M_TRIM_THRESHOLD
        libc.mallopt(-8, 2)  # M_ARENA_MAX: many request threads, few heaps (each arena keeps its own fragments)
    except (OSError, AttributeError):
        logger.debug("mallopt not available; default allocator settings")


async def run_server(app: FastAPI, host: str, port: int, log_level: str = "info") -> None:
    """Serve ``app`` with uvicorn until interrupted (a larger worker-thread pool for concurrent streams)."""
    import anyio.to_thread
    import uvicorn

    anyio.to_thread.current_default_thread_limiter().total_tokens = 256
    # The engine's scheduler thread releases the GIL on every torch op; with dozens of request threads busy,
    # getting it back waits up to the switch interval (5 ms by default) each time. A short interval keeps
    # the batch loop (the critical path) moving.
    sys.setswitchinterval(float(os.environ.get("MIMO_AUDIO_SWITCH_INTERVAL", "0.0005")))
    _fixed_mmap_threshold()
    server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level=log_level, access_log=False))
    await server.serve()


__all__ = ["ServerConfig", "create_app", "run_server"]
