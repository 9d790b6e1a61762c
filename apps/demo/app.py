"""The Gradio app: one tab per task, a model panel, a queue with a concurrency limit.

``build_app(backend)`` makes the Blocks; ``serve(...)`` launches it on a host and port. Every task is a
named API endpoint (``tts``, ``clone_voice``, ``asr``, ``understand``, ``dialogue``, ``few_shot``,
``continue_speech``, ``tokenizer_roundtrip``, ``model_info``), so ``gradio_client`` can call them.
"""

from __future__ import annotations

import logging

import gradio as gr

from .audio_io import OutputDir
from .backend import Backend
from .model_card import model_markdown
from .tabs_listen import asr_tab, dialogue_tab, understanding_tab
from .tabs_speech import clone_tab, continuation_tab, few_shot_tab, roundtrip_tab, tts_tab
from .ui import Ctx, examples_dir

log = logging.getLogger(__name__)

API_NAMES = ("tts", "clone_voice", "asr", "understand", "dialogue", "dialogue_reset", "few_shot", "continue_speech",
             "tokenizer_roundtrip", "model_info")

CSS = """
.speed { font-size: 0.9em; }
.banner { border-left: 4px solid #d97706; padding-left: 10px; }
"""


def engine_line(backend: Backend) -> str:
    """One live line about the engine: load, throughput and latency over the last seconds."""
    st = backend.describe().get("engine_stats")
    if not isinstance(st, dict):
        return ""
    g = {k: st.get(k) or 0 for k in ("active", "queue_depth", "patches_per_s", "mean_batch", "completed", "rejected")}
    ttfa = st.get("ttfa_s_p50")
    return (f"**Engine now:** {g['active']} generating, {g['queue_depth']} waiting · "
            f"{g['patches_per_s']:.1f} patches/s (last 10 s) · mean batch {g['mean_batch']:.2f} · "
            f"{g['completed']} done, {g['rejected']} refused"
            + (f" · first audio p50 {ttfa:.2f} s" if ttfa is not None else ""))


def build_app(backend: Backend, max_input_seconds: float = 60.0, out_dir: str | None = None) -> gr.Blocks:
    ctx = Ctx(backend, OutputDir(out_dir), max_input_seconds)
    backend.max_input_seconds = max_input_seconds  # shown in the model panel
    embedded = "embedded default" in model_markdown(backend)
    with gr.Blocks(title="mimo-audio demo") as app:
        gr.Markdown("# mimo-audio demo\nEvery task of the toolkit in the browser, streamed as it is generated.")
        if embedded:
            gr.Markdown("**Running the tiny embedded default model: every tab works end to end, but its outputs are "
                        "not yet meaningful** (see the *Model* tab for its measured limits; start with "
                        "`--lm-path/--tokenizer-path` for a real checkpoint).", elem_classes=["banner"])
        # Tabs that pick voices are built before the cloning tab refreshes their choices.
        with gr.Tabs():
            with gr.Tab("TTS", id="tts"):
                tts_tab(ctx)
            with gr.Tab("Voice cloning", id="clone"):
                clone_tab_slot = gr.Column()
            with gr.Tab("ASR", id="asr"):
                asr_tab(ctx)
            with gr.Tab("Audio understanding", id="understand"):
                understanding_tab(ctx)
            with gr.Tab("Spoken dialogue", id="dialogue"):
                dialogue_tab(ctx)
            with gr.Tab("Few-shot S2S", id="few_shot"):
                few_shot_tab(ctx)
            with gr.Tab("Speech continuation", id="continue"):
                continuation_tab(ctx)
            with gr.Tab("Tokenizer round trip", id="roundtrip"):
                roundtrip_tab(ctx)
            with gr.Tab("Model", id="model"):
                if backend.engine is not None:  # live figures of the shared engine (all users together)
                    live = gr.Markdown(engine_line(backend), elem_id="engine-live")
                    gr.Timer(2.0).tick(lambda: engine_line(backend), None, live, api_visibility="private",
                                       show_progress="hidden", queue=False)
                info = gr.Markdown(model_markdown(backend), elem_id="model-card")
                with gr.Accordion("Backend details (JSON)", open=False):
                    details = gr.JSON(backend.describe())
                refresh = gr.Button("Refresh")
                refresh.click(lambda: (model_markdown(backend), backend.describe()), None, [info, details],
                              api_name="model_info")
        with clone_tab_slot:
            clone_tab(ctx)
    app.queue(default_concurrency_limit=backend.concurrency, max_size=backend.settings.max_queue)
    return app


def serve(backend: Backend, host: str = "127.0.0.1", port: int = 7860, max_input_seconds: float = 60.0,
          block: bool = True, **launch_kw) -> gr.Blocks:
    """Build and launch; prints the URL. ``block=False`` returns the running app (tests, smoke runs)."""
    app = build_app(backend, max_input_seconds)
    app.launch(server_name=host, server_port=port, prevent_thread_lock=not block, quiet=True, show_error=True,
               allowed_paths=[str(examples_dir())], max_file_size="200mb", css=CSS, **launch_kw)
    return app
