"""``mimo-audio serve``: an OpenAI-compatible server (speech, transcriptions, chat) with continuous batching."""

from __future__ import annotations

import argparse
import logging
import os

from .options import dtype_option, port_number, torch_dtype
from .speech import LM_ENV, TOKENIZER_ENV

log = logging.getLogger("mimo-audio.serve")
KEY_ENV = "MIMO_AUDIO_API_KEY"


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "serve",
        help="serve the speech LM over an OpenAI-compatible HTTP API (batched, streaming)",
        description="Serve /v1/audio/speech, /v1/audio/transcriptions, /v1/chat/completions, /v1/models, /health "
        "and /metrics on HOST:PORT. Requests are batched at patch granularity by one scheduler (mimo_audio.engine). "
        "Without --lm-path the embedded default model is served.",
    )
    p.add_argument("--host", default="127.0.0.1", help="bind address (default 127.0.0.1; 0.0.0.0 exposes it)")
    p.add_argument("--port", type=port_number, default=8000, help="port (default 8000)")
    m = p.add_argument_group("model")
    m.add_argument("--lm-path", default=os.environ.get(LM_ENV),
                   help=f"speech-LM directory (default ${LM_ENV}, else the embedded default model)")
    m.add_argument("--tokenizer-path", default=os.environ.get(TOKENIZER_ENV),
                   help=f"audio tokenizer directory (default ${TOKENIZER_ENV}; required with --lm-path)")
    m.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda if available)")
    m.add_argument("--dtype", type=dtype_option(("auto", "fp32", "bf16", "fp16")), default="auto",
                   help="weights dtype: auto, fp32, bf16, fp16 (default auto: the checkpoint's; fp32 for the "
                   "embedded default)")
    m.add_argument("--voices-dir", default=None, help="voice registry folder (default $MIMO_AUDIO_HOME/voices)")
    m.add_argument("--model-id", default=None, help="id listed by /v1/models (default: mimo-audio-<lm dir name>)")
    e = p.add_argument_group("efficiency")
    e.add_argument("--quant", default=None, metavar="SCHEME",
                   help="quantize the backbone's projections in memory (efficient.quant scheme: w4g64, w2g64, "
                   "ternary, ...)")
    e.add_argument("--sparse", default=None, metavar="LAYOUT",
                   help="convert the backbone's attention (hysparse-1:3, swa-3:1, ...); untrained sinks/gates; "
                   "requests are then served one at a time")
    e.add_argument("--speculative", type=int, default=0, metavar="K",
                   help="MTP drafting of text-only replies with K draft tokens (needs mtp.safetensors beside the "
                   "LM); such requests run alone, between batch steps")
    e.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    s = p.add_argument_group("limits")
    s.add_argument("--max-batch", type=int, default=8, help="requests generated together (default 8)")
    s.add_argument("--max-queue", type=int, default=64, help="waiting requests before 503 (default 64)")
    s.add_argument("--timeout", type=float, default=300.0, help="per-request time limit in seconds (default 300)")
    s.add_argument("--max-new-patches", type=int, default=None,
                   help="cap on generated patches per request (6.25 patches = 1 s of audio)")
    s.add_argument("--max-upload-mb", type=float, default=25.0, help="upload size limit in MiB (default 25)")
    s.add_argument("--max-audio-seconds", type=float, default=300.0, help="input audio limit (default 300 s)")
    s.add_argument("--max-input-chars", type=int, default=4096, help="text input limit (default 4096)")
    p.add_argument("--api-key", default=os.environ.get(KEY_ENV),
                   help=f"require 'Authorization: Bearer KEY' on /v1/* (default ${KEY_ENV}; none: open)")
    p.set_defaults(func=run)


def load_model(args: argparse.Namespace):
    """The model with the efficiency options applied (shared with other long-running apps)."""
    import torch

    from apps.checks import check_device
    from mimo_audio import MimoAudio

    check_device(args.device)
    if args.lm_path and not args.tokenizer_path:
        raise ValueError(f"serving {args.lm_path} needs its audio tokenizer: pass --tokenizer-path or set "
                         f"${TOKENIZER_ENV}")
    if args.threads:
        torch.set_num_threads(args.threads)
    dtype = torch_dtype(args.dtype)
    m = MimoAudio.from_pretrained(args.lm_path or None, args.tokenizer_path or None, device=args.device,
                                  dtype=dtype, voices_dir=args.voices_dir)
    if args.quant or args.sparse:
        from efficient.quant import formats
        from mimo_audio.compose import compose_backbone

        if args.quant:
            formats.parse_scheme(args.quant)  # a bad scheme fails with its own message before any work
        compose_backbone(m.lm, quant=args.quant, attention=args.sparse)
        log.info("backbone: quant=%s attention=%s", args.quant, args.sparse)
    if args.speculative:
        m.load_mtp(max_draft=args.speculative)
    return m


def _check_listen(host: str, port: int) -> None:
    import socket

    try:
        with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind((host, port))
    except OSError as exc:
        raise ValueError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None


def run(args: argparse.Namespace) -> int:
    if args.max_batch < 1 or args.max_queue < 0 or args.port < 0 or args.speculative < 0:
        raise ValueError("--max-batch must be >= 1, --max-queue, --port and --speculative >= 0")
    try:
        import fastapi  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError:
        raise ValueError("the server needs the serve extra: pip install 'mimo-audio[serve]'") from None
    import asyncio
    from pathlib import Path

    _check_listen(args.host, args.port)  # before minutes of loading, not after
    if args.quant:
        from efficient.quant import formats

        formats.parse_scheme(args.quant)  # a bad scheme fails with its own message before any work
    if args.sparse and not set(args.sparse) <= set("FSRW"):  # a preset name: its syntax now (per-layer
        from efficient.attention.layout import resolve_layout  # strings are checked against the model later)

        resolve_layout(args.sparse, 4)

    from apps.server import ServerConfig, create_app, run_server
    from mimo_audio.engine import Engine, EngineConfig

    model = load_model(args)
    model_id = args.model_id or ("mimo-audio-" + (Path(args.lm_path).name if args.lm_path else "default"))
    engine = Engine(model, EngineConfig(
        max_batch=args.max_batch, max_queue=args.max_queue, request_timeout_s=args.timeout or None,
        max_new_patches=args.max_new_patches, max_upload_bytes=int(args.max_upload_mb * 2**20),
        max_audio_seconds=args.max_audio_seconds,
    ))
    app = create_app(engine, ServerConfig(model_id=model_id, api_key=args.api_key or None,
                                          max_input_chars=args.max_input_chars, speculative=args.speculative))
    engine.start()
    log.info("serving %s on http://%s:%d/v1 (max batch %d, queue %d%s)", model_id, args.host, args.port,
             engine.max_batch, args.max_queue, ", API key required" if args.api_key else "")
    try:
        asyncio.run(run_server(app, args.host, args.port, "warning"))
    except KeyboardInterrupt:
        pass
    finally:
        engine.stop()
    return 0
