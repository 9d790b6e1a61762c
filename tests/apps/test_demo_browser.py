"""The Gradio demo in a real browser: Playwright drives Debian's chromium headless (no browser download).

One browser session visits every tab, runs its prefilled example with one click, waits for the output,
checks that the output audio is playable by the browser (``decodeAudioData``) and not silent, and saves a
screenshot per tab in the test's output folder. Skipped when chromium or playwright is not installed.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

CHROMIUM = os.environ.get("MIMO_AUDIO_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
RUN_TIMEOUT_MS = 180_000

# tab label, button to click, element that holds the output audio (None: text output), text that must appear
TABS = [
    ("TTS", "#tts-run", "#tts-out", "#tts-speed", "patches/s"),
    ("Voice cloning", "#clone-run", "#clone-out", "#clone-status", "Saved voice"),
    ("ASR", "#asr-run", None, "#asr-speed", "done"),
    ("Audio understanding", "#understand-run", None, "#understand-speed", "done"),
    ("Spoken dialogue", "#dialogue-run", "#dialogue-out", "#dialogue-speed", "done"),
    ("Few-shot S2S", "#fewshot-run", "#fewshot-out", "#fewshot-speed", "done"),
    ("Speech continuation", "#continue-run", "#continue-out", "#continue-speed", "done"),
    ("Tokenizer round trip", "#roundtrip-run", "#roundtrip-out", "#roundtrip-speed", "kbit/s"),
]

# Fetch a result file and let the browser decode it: proof it is playable, and its duration and peak.
DECODE_JS = """async (href) => {
  const buf = await (await fetch(href)).arrayBuffer();
  const ctx = new OfflineAudioContext(1, 1, 24000);
  const audio = await ctx.decodeAudioData(buf);
  const data = audio.getChannelData(0);
  let peak = 0;
  for (let i = 0; i < data.length; i++) peak = Math.max(peak, Math.abs(data[i]));
  return {duration: audio.duration, peak: peak, rate: audio.sampleRate};
}"""


@pytest.fixture(scope="module")
def page(demo_server, speech):
    sync_api = pytest.importorskip("playwright.sync_api")
    if not Path(CHROMIUM).is_file():
        pytest.skip(f"chromium is not installed at {CHROMIUM} (make sysdeps installs Debian's chromium)")
    with sync_api.sync_playwright() as pw:
        try:
            # the fake microphone plays a flite recording, so the microphone path is tested too
            browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=[
                "--no-sandbox", "--autoplay-policy=no-user-gesture-required", "--use-fake-ui-for-media-stream",
                "--use-fake-device-for-media-stream", f"--use-file-for-fake-audio-capture={speech['slt']}"])
        except Exception as exc:  # a chromium that cannot start here (missing libraries, sandbox)
            pytest.skip(f"chromium could not be started: {exc}")
        context = browser.new_context(viewport={"width": 1280, "height": 1000}, permissions=["microphone"])
        pg = context.new_page()
        pg.goto(demo_server[0], wait_until="load")
        pg.wait_for_selector("#tts-run", timeout=60_000)
        yield pg
        browser.close()


def _wait_for_text(page, selector: str, text: str) -> None:
    page.wait_for_function("([sel, text]) => { const el = document.querySelector(sel);"
                           " return el && el.offsetParent !== null && el.innerText.includes(text); }",
                           arg=[selector, text], timeout=RUN_TIMEOUT_MS)


def _audio_href(page, selector: str) -> str:
    page.wait_for_function("(sel) => { const a = document.querySelector(sel + ' a[download]');"
                           " return a && a.href.endsWith('.wav'); }", arg=selector, timeout=RUN_TIMEOUT_MS)
    return page.eval_on_selector(f"{selector} a[download]", "a => a.href")


def test_page_lists_every_tab(page):
    tabs = page.get_by_role("tab").all_inner_texts()
    for label, *_ in TABS:
        assert label in tabs
    assert "Model" in tabs
    assert "not yet meaningful" in page.inner_text("body")


def test_asr_from_the_microphone(page, tmp_path):
    # runs before the ASR example below, while the tab's speed line is still empty
    page.get_by_role("tab", name="ASR", exact=True).click()
    box = page.locator("#asr-in")
    box.get_by_label("Clear").click()
    box.get_by_label("Record audio").click()
    box.get_by_role("button", name="Record", exact=True).click()
    box.get_by_role("button", name="Stop", exact=True).wait_for(timeout=30_000)  # recording has started
    page.wait_for_timeout(4000)
    box.get_by_role("button", name="Stop", exact=True).click()
    box.get_by_label("Play", exact=True).first.wait_for(timeout=60_000)  # the recording is loaded in the input
    # ...and uploaded: its download link points at the server's copy (clicking earlier sends no audio)
    page.wait_for_function("() => { const a = document.querySelector('#asr-in a[download]');"
                           " return a && a.href.includes('file='); }", timeout=60_000)
    page.click("#asr-run")
    # done, or a refusal (e.g. a silent recording) whose message makes the failure readable
    page.wait_for_function("() => document.querySelector('#asr-speed').innerText.includes('done')"
                           " || document.querySelector('.toast-body')", timeout=RUN_TIMEOUT_MS)
    toast = page.query_selector(".toast-body")
    if toast is not None:
        page.screenshot(path=str(tmp_path / "asr_microphone.failed.png"), full_page=True)
        pytest.fail(f"the microphone recording was refused: {toast.inner_text()}")
    assert page.input_value("#asr-text textarea").strip()
    page.screenshot(path=str(tmp_path / "asr_microphone.png"), full_page=True)


@pytest.mark.parametrize("label,button,audio,status,done_text", TABS, ids=[t[0] for t in TABS])
def test_tab_runs_its_example(page, tmp_path, label, button, audio, status, done_text):
    shot = tmp_path / f"{label.lower().replace(' ', '_')}.png"
    page.get_by_role("tab", name=label, exact=True).click()
    page.click(button)
    try:
        _wait_for_text(page, status, done_text)
    except Exception:
        page.screenshot(path=str(shot.with_suffix(".failed.png")), full_page=True)
        raise
    if audio is not None:
        href = _audio_href(page, audio)
        info = page.evaluate(DECODE_JS, href)
        assert info["duration"] > 0.2, f"{label}: {info}"
        assert info["peak"] > 0.01, f"{label}: output is silent ({info})"
        if label == "TTS" and shutil.which("ffmpeg"):  # the streamed player holds the whole utterance, and plays
            stream = page.wait_for_function(
                "(want) => { const a = document.querySelector('#tts-stream audio');"
                " return a && Math.abs(a.duration - want) < 0.3 && a.currentTime > 0 && {d: a.duration}; }",
                arg=info["duration"], timeout=60_000).json_value()
            assert abs(stream["d"] - info["duration"]) < 0.3
    else:
        box = "#asr-text" if label == "ASR" else "#understand-answer"
        assert page.input_value(f"{box} textarea").strip(), f"{label}: no text"
    page.wait_for_timeout(300)  # let the pictures paint
    page.screenshot(path=str(shot), full_page=True)
    assert shot.stat().st_size > 10_000


def test_model_tab_and_bad_input_message(page, tmp_path):
    page.get_by_role("tab", name="Model", exact=True).click()
    page.wait_for_selector("#model-card", state="visible")
    card = page.inner_text("#model-card")
    assert "Provenance" in card and "not yet meaningful" in card
    # live engine figures, refreshed by a timer: the runs above are counted
    page.wait_for_function("() => /[1-9][0-9]* done/.test(document.querySelector('#engine-live').innerText)",
                           timeout=30_000)
    assert "patches/s" in page.inner_text("#engine-live")
    page.screenshot(path=str(tmp_path / "model.png"), full_page=True)
    # empty text on the TTS tab: a visible error, and the tab still works afterwards
    page.get_by_role("tab", name="TTS", exact=True).click()
    page.fill("#tts-text textarea", "")
    page.click("#tts-run")
    toast = page.wait_for_selector(".toast-body", timeout=30_000)
    assert "empty" in toast.inner_text()
    page.screenshot(path=str(tmp_path / "tts_error.png"), full_page=True)
    page.fill("#tts-text textarea", "Working again.")
    page.click("#tts-run")
    page.wait_for_function("() => document.querySelector('#tts-speed').innerText.includes('done')",
                           timeout=RUN_TIMEOUT_MS)
