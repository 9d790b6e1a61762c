"""The Gradio demo through its API: every task endpoint called with real speech (flite) via gradio_client.

The server is the real ``mimo-audio demo`` subprocess (see conftest.py) on the embedded default model.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("gradio_client")
from gradio_client import handle_file  # noqa: E402
from gradio_client.exceptions import AppError  # noqa: E402

TASK_ENDPOINTS = {"/tts", "/clone_voice", "/asr", "/understand", "/dialogue", "/dialogue_reset", "/few_shot",
                  "/continue_speech", "/tokenizer_roundtrip", "/model_info"}
NO_VOICE = "(default voice)"


def _playable(path, min_seconds: float = 0.2) -> tuple[np.ndarray, int]:
    """A wav the result points at: readable, long enough, not silent."""
    import soundfile as sf

    assert path and Path(path).is_file(), f"no audio file: {path!r}"
    wav, sr = sf.read(str(path), dtype="float32")
    assert wav.ndim == 1 and sr == 24000
    assert wav.size / sr >= min_seconds, f"{path}: only {wav.size / sr:.2f} s"
    assert float(np.abs(wav).max()) > 0.01, f"{path} is silent"
    return wav, sr


def test_every_task_is_a_named_endpoint(demo_client):
    api = demo_client.view_api(return_format="dict", print_info=False)
    names = set(api["named_endpoints"])
    assert TASK_ENDPOINTS <= names, f"missing: {TASK_ENDPOINTS - names}"
    assert any("tts" in n for n in names)


def test_tts_streams_and_returns_a_wav(demo_client):
    stream, full, wave, codes, speed = demo_client.predict(
        "The birch canoe slid on the smooth planks.", "", NO_VOICE, 0, 10, api_name="/tts")
    _playable(full)
    if shutil.which("ffmpeg"):  # Gradio encodes the stream with ffmpeg; without it only the file is shown
        assert stream and Path(stream).is_file()
    assert Path(wave).is_file() and Path(codes).is_file()
    assert "RTF" in speed and "patches/s" in speed and "backend:" in speed


def test_asr_transcribes(demo_client, speech):
    text, speed, wave, codes = demo_client.predict(handle_file(speech["slt"]), "en", api_name="/asr")
    assert text.strip()
    assert "patches/s" in speed and Path(wave).is_file() and Path(codes).is_file()


def test_understanding_shows_thinking_apart_from_answer(demo_client, speech):
    thought = []
    for seed in range(4):  # sampled: on some seeds the embedded model closes its think block at once
        thinking, answer, speed, _w, _c = demo_client.predict(
            handle_file(speech["kal"]), "What did the speaker say?", True, seed, api_name="/understand")
        assert thinking.strip() and answer.strip() and thinking != answer and "patches/s" in speed
        if not thinking.startswith("(empty"):
            thought.append(thinking)
            break
    assert thought, "the thinking box stayed empty on every seed"
    thinking_off, answer2, *_ = demo_client.predict(
        handle_file(speech["kal"]), "What did the speaker say?", False, 0, api_name="/understand")
    assert thinking_off == "(thinking off)" and answer2.strip()


def test_clone_voice_saves_into_registry_and_speaks(demo_server, demo_client, speech):
    _url, voices, _log = demo_server
    fulls = []
    # The embedded model sometimes stops before speaking in a cloned voice: a few seeds, one must speak.
    for seed in (2, 3, 4):
        status, _stream, full, _speed, _wave, *pickers = demo_client.predict(
            handle_file(speech["awb"]), "awb_test", "flite awb", "This is my new voice.", seed,
            api_name="/clone_voice")
        assert "awb_test" in status
        assert (voices / "awb_test.safetensors").is_file() and (voices / "awb_test.json").is_file()
        fulls.append(full)
        if full:
            break
    _playable(next(f for f in fulls if f))
    # the saved voice is now usable by the TTS endpoint
    _s, full2, *_ = demo_client.predict("Hello again.", "", "awb_test", 1, 8, api_name="/tts")
    _playable(full2)


def test_dialogue_is_multi_turn_with_speech_out(demo_client, speech):
    demo_client.predict(api_name="/dialogue_reset")
    chat, _stream, full, speed, *_ = demo_client.predict(
        handle_file(speech["slt"]), "", "speech", NO_VOICE, True, False, 0, api_name="/dialogue")
    _playable(full)
    assert [m["role"] for m in chat][:2] == ["user", "assistant"]
    chat2, _stream, full2, *_ = demo_client.predict(
        None, "And what do you think about that?", "speech", NO_VOICE, True, False, 1, api_name="/dialogue")
    _playable(full2)
    assert len(chat2) > len(chat) and sum(m["role"] == "user" for m in chat2) >= 2
    text_reply, *_ = demo_client.predict(None, "Say it in words.", "text", NO_VOICE, False, True, 2,
                                         api_name="/dialogue")
    assert text_reply[-1]["role"] == "assistant"
    cleared, *_ = demo_client.predict(api_name="/dialogue_reset")
    assert cleared == []


def test_few_shot_with_library_task_and_user_pairs(demo_client, speech):
    _s, full, wave, codes, speed = demo_client.predict(
        "voice_conversion", "library examples", "", handle_file(speech["kal"]), 0, 8, None, None, None, None, None,
        None, api_name="/few_shot")
    _playable(full)
    pairs = [handle_file(speech["slt"]), handle_file(speech["awb"]), None, None, None, None]
    _s, full2, *_ = demo_client.predict("voice_conversion", "my example pairs", "", handle_file(speech["kal"]), 0, 8,
                                        *pairs, api_name="/few_shot")
    _playable(full2)
    with pytest.raises(AppError, match="needs both an input and an output"):
        demo_client.predict("voice_conversion", "my example pairs", "", handle_file(speech["kal"]), 0, 8,
                            handle_file(speech["slt"]), None, None, None, None, None, api_name="/few_shot")


def test_continuation_and_tokenizer_round_trip(demo_client, speech):
    _s, full, joined, *_ = demo_client.predict(handle_file(speech["slt"]), 0, 5, api_name="/continue_speech")
    _playable(full)
    _playable(joined, min_seconds=2.0)  # the prompt is in front
    resynth, stats, w_in, w_out, codes = demo_client.predict(handle_file(speech["slt"]),
                                                             api_name="/tokenizer_roundtrip")
    wav, sr = _playable(resynth, min_seconds=1.0)
    assert "frames x 8 codebooks" in stats and "kbit/s" in stats
    assert all(Path(p).is_file() for p in (w_in, w_out, codes))


@pytest.mark.parametrize("bad,message", [
    ("silence", "is silent"),
    ("long", "600.0 s long"),
    ("garbage", "could not read"),
])
def test_bad_audio_gives_a_visible_error_and_the_app_keeps_working(demo_client, speech, bad, message):
    with pytest.raises(AppError, match=message):
        demo_client.predict(handle_file(speech[bad]), "en", api_name="/asr")
    resynth, *_ = demo_client.predict(handle_file(speech["slt"]), api_name="/tokenizer_roundtrip")
    _playable(resynth)


def test_empty_text_gives_a_visible_error(demo_client):
    with pytest.raises(AppError, match="empty"):
        demo_client.predict("   ", "", NO_VOICE, 0, 10, api_name="/tts")
    with pytest.raises(AppError, match="say or type something"):
        demo_client.predict(None, "", "speech", NO_VOICE, True, False, 0, api_name="/dialogue")


def test_model_panel_is_honest_about_the_embedded_model(demo_client, speech):
    demo_client.predict(handle_file(speech["slt"]), "en", api_name="/asr")
    md, details = demo_client.predict(api_name="/model_info")
    assert "embedded default" in md and "not yet meaningful" in md and "provenance" in md.lower()
    assert details["settings"]["max_queue"] == 16
    # generation runs on the shared serving engine, not on a copy of the generation loop
    assert details["engine"] is True and "engine (max batch" in details["backend"]
    assert details["engine_stats"]["completed"] >= 1


def test_concurrent_users_are_queued_and_all_served(demo_client):
    jobs = [demo_client.submit(f"Request number {i}.", "", NO_VOICE, i, 6, api_name="/tts") for i in range(3)]
    fulls = [job.result(timeout=300)[1] for job in jobs]
    assert sum(bool(f) for f in fulls) >= 2  # the embedded model may stop before speaking on a seed
    for f in fulls:
        if f:
            _playable(f)


def test_server_log_has_no_tracebacks(demo_server):
    # refused inputs above were logged as one line each; nothing crashed inside the app
    log = demo_server[2].read_text()
    assert "Traceback" not in log, log[-3000:]
