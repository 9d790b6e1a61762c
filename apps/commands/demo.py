"""``mimo-audio demo``: the Gradio demo (every task in the browser), or ``--smoke`` for a non-interactive check.

Without ``--lm-path`` it runs the embedded default model shipped with the package.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time

from .options import port_number

logger = logging.getLogger("mimo-audio")

LM_ENV = "MIMO_AUDIO_LM_PATH"
TOKENIZER_ENV = "MIMO_AUDIO_TOKENIZER_PATH"


def _settings(args: argparse.Namespace):
    from apps.demo.backend import BackendSettings

    return BackendSettings(
        lm_path=args.lm_path, tokenizer_path=args.tokenizer_path, device=args.device, dtype=args.dtype,
        quant=args.quant, sparse=args.sparse, speculative=args.speculative, voices_dir=args.voices_dir,
        max_batch=args.max_batch, max_queue=args.max_queue, use_engine=not args.no_engine,
    )


def _smoke(backend, max_input_seconds: float) -> int:
    """Start the app on a free loopback port, call a few endpoints through gradio_client, stop."""
    from gradio_client import Client, handle_file

    from apps.demo.app import serve
    from apps.demo.ui import example

    app = serve(backend, "127.0.0.1", _free_port(), max_input_seconds, block=False)
    try:
        client = Client(app.local_url, verbose=False)
        wav = example("slt_0")
        t0 = time.perf_counter()
        text, *_ = client.predict(handle_file(wav), "en", api_name="/asr")
        _stream, full, *_ = client.predict("Hello from the demo.", "", "(default voice)", 0, 10, api_name="/tts")
        resynth, *_ = client.predict(handle_file(wav), api_name="/tokenizer_roundtrip")
        sys.stdout.write(f"demo smoke OK in {time.perf_counter() - t0:.1f} s: {app.local_url}\n"
                         f"  asr: {text!r}\n  tts: {full}\n  tokenizer round trip: {resynth}\n")
    finally:
        app.close()
    return 0


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _check_port(host: str, port: int) -> None:
    import socket

    with socket.socket() as s:
        try:
            s.bind((host, port))
        except OSError as exc:
            raise ValueError(f"cannot serve on {host}:{port} ({exc.strerror or exc}); pick another --port") from None


def _demo(args: argparse.Namespace) -> int:
    try:
        import gradio  # noqa: F401
    except ImportError:
        raise ValueError("the demo needs Gradio: pip install 'mimo-audio[demo]'") from None
    from apps.demo.app import serve
    from apps.demo.backend import Backend
    from apps.demo.ui import can_stream

    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per HTTP request otherwise
    if not can_stream():
        logger.warning("ffmpeg is not installed: the demo shows complete audio files but cannot stream them "
                       "(apt-get install ffmpeg)")
    port = None if args.smoke else (args.port or _free_port())
    if port is not None:
        _check_port(args.host, port)  # before loading: a busy port is found in a second, not after the model
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    backend = Backend.load(_settings(args))
    try:
        if args.smoke:
            return _smoke(backend, args.max_input_seconds)
        app = serve(backend, args.host, port, args.max_input_seconds, block=False)
        sys.stdout.write(f"mimo-audio demo running at {app.local_url}  (Ctrl+C to stop)\n")
        sys.stdout.flush()
        try:
            app.block_thread()
        except KeyboardInterrupt:
            pass
        return 0
    finally:
        backend.close()


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "demo", help="the Gradio demo: every task in the browser",
        description="Serve the Gradio demo (TTS, voice cloning, ASR, understanding, dialogue, few-shot, continuation, "
                    "tokenizer round trip) and print its URL. Without --lm-path it runs the embedded default model.")
    p.add_argument("--host", default="127.0.0.1", help="interface to serve on (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=port_number, default=7860, help="port (default 7860; 0 picks a free one)")
    p.add_argument("--smoke", action="store_true",
                   help="non-interactive check: start on a free port, call ASR, TTS and the round trip, exit")
    g = p.add_argument_group("model")
    g.add_argument("--lm-path", default=os.environ.get(LM_ENV),
                   help=f"speech-LM directory; default ${LM_ENV}, else the embedded default model")
    g.add_argument("--tokenizer-path", default=os.environ.get(TOKENIZER_ENV),
                   help=f"audio tokenizer directory (required with --lm-path); default ${TOKENIZER_ENV}")
    g.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda if available)")
    g.add_argument("--dtype", choices=("auto", "float32", "bfloat16", "float16"), default="auto",
                   help="weights dtype (auto keeps the checkpoint's; float32 for the embedded default)")
    g.add_argument("--voices-dir", default=None, help="voice registry folder (default $MIMO_AUDIO_HOME/voices)")
    b = p.add_argument_group("backend")
    b.add_argument("--quant", default=None, metavar="SCHEME",
                   help="low-bit LUT weights for the LM backbone (efficient.quant scheme, e.g. w4g64)")
    b.add_argument("--sparse", default=None, metavar="LAYOUT",
                   help="sparse attention layout for the LM backbone (e.g. hysparse-1:3, swa-3:1)")
    b.add_argument("--speculative", type=int, default=0, metavar="K",
                   help="MTP speculative decoding of text outputs with K draft tokens (needs mtp.safetensors)")
    b.add_argument("--threads", type=int, default=0, help="torch CPU threads (default: torch's choice)")
    b.add_argument("--max-batch", type=int, default=4, help="requests run together by the engine (default 4)")
    b.add_argument("--max-queue", type=int, default=16, help="requests allowed to wait (default 16)")
    b.add_argument("--no-engine", action="store_true", help="call the model directly, one request at a time")
    b.add_argument("--max-input-seconds", type=float, default=60.0,
                   help="longest audio input accepted (default 60 s; longer uploads get a clear message)")
    p.set_defaults(func=_demo)
