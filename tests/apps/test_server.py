"""``mimo-audio serve`` driven by the official ``openai`` client over loopback, plus fault cases.

Two servers: the real command in a subprocess (the acceptance contract), and the same app in a thread of
this process over an engine the tests can also fill directly (full queue, cancellation counts).
"""

from __future__ import annotations

import base64
import io
import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

openai = pytest.importorskip("openai")
pytest.importorskip("fastapi")
uvicorn = pytest.importorskip("uvicorn")
httpx = pytest.importorskip("httpx")
sf = pytest.importorskip("soundfile")

ROOT = Path(__file__).resolve().parents[2]
MODEL_ID = "mimo-audio-default"
SHORT = {"max_new_patches": 24}  # server extension: keeps replies (and the tests) short


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_health(url: str, proc: subprocess.Popen | None = None, timeout: float = 180.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}: {proc.stderr.read().decode()[-2000:]}")
        try:
            if httpx.get(url + "/health", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise RuntimeError("server did not become healthy")


def _wav_bytes(seconds: float = 1.0, sr: int = 24000) -> bytes:
    t = np.arange(int(seconds * sr)) / sr
    buf = io.BytesIO()
    sf.write(buf, (0.3 * np.sin(2 * np.pi * 220 * t) * np.sin(2 * np.pi * 3 * t)).astype("float32"), sr,
             format="WAV")
    return buf.getvalue()


# ---------------------------------------------------------------------------------------------- the CLI server
@pytest.fixture(scope="module")
def cli_server():
    port = _free_port()
    env = dict(os.environ, OMP_NUM_THREADS="1")
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    proc = subprocess.Popen(
        [sys.executable, "-m", "apps", "serve", "--host", "127.0.0.1", "--port", str(port), "--max-new-patches",
         "40", "--threads", "1"], cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_health(url, proc)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()


def test_contract_with_the_openai_client(cli_server, tmp_path):
    client = openai.OpenAI(base_url=cli_server + "/v1", api_key="unused", max_retries=0)
    ids = [m.id for m in client.models.list().data]
    assert ids == [MODEL_ID]
    # A fixed seed keeps the reply's length (and the test's time) the same on every run. (Before the TTS speech
    # floor, min_speech_patches, the embedded model ended 3 of 30 sampled calls before any speech.)
    speech = client.audio.speech.create(model=ids[0], voice="default", input="Hello there, how are you?",
                                        response_format="wav", extra_body={"seed": 0})
    wav_path = tmp_path / "reply.wav"
    speech.write_to_file(wav_path)
    audio, sr = sf.read(wav_path)
    assert sr == 24000 and audio.size > 0
    with open(wav_path, "rb") as f:
        text = client.audio.transcriptions.create(model=ids[0], file=f)
    assert isinstance(text.text, str)
    reply = client.chat.completions.create(model=ids[0], messages=[{"role": "user", "content": "Hi, who are you?"}])
    assert reply.choices[0].message.role == "assistant" and reply.choices[0].message.content
    with pytest.raises(openai.BadRequestError) as err:
        client.audio.speech.create(model=ids[0], voice="default", input="", response_format="wav")
    assert err.value.status_code == 400 and err.value.body["type"] == "invalid_request_error"
    assert "input" in err.value.body["message"]


# ---------------------------------------------------------------------------------------------- in-thread server
class _ThreadServer:
    def __init__(self, app):
        self.port = _free_port()
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.url = f"http://127.0.0.1:{self.port}"

    def __enter__(self):
        self.thread.start()
        _wait_health(self.url, timeout=30)
        return self

    def __exit__(self, *exc):
        self.server.should_exit = True
        self.thread.join(10)


@pytest.fixture(scope="module")
def engine():
    import torch

    from mimo_audio import MimoAudio
    from mimo_audio.engine import Engine, EngineConfig

    torch.set_num_threads(1)
    m = MimoAudio.from_pretrained()
    cfg = EngineConfig(max_batch=2, max_queue=2, max_new_patches=60, max_audio_seconds=5, max_upload_bytes=2**20)
    with Engine(m, cfg) as eng:
        yield eng


@pytest.fixture(scope="module")
def served(engine):
    from apps.server import ServerConfig, create_app

    with _ThreadServer(create_app(engine, ServerConfig(model_id=MODEL_ID, max_input_chars=200))) as srv:
        yield srv


@pytest.fixture()
def client(served):
    return openai.OpenAI(base_url=served.url + "/v1", api_key="unused", max_retries=0)


def test_chat_stream_matches_non_stream(client):
    msgs = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hello!"},
            {"role": "assistant", "content": "Hi."}, {"role": "user", "content": "Tell me about the sea."}]
    full = client.chat.completions.create(model=MODEL_ID, messages=msgs, temperature=0, max_tokens=20)
    chunks = list(client.chat.completions.create(model=MODEL_ID, messages=msgs, temperature=0, max_tokens=20,
                                                 stream=True, stream_options={"include_usage": True}))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text.strip() == full.choices[0].message.content
    assert chunks[-1].usage.completion_tokens == full.usage.completion_tokens == 20
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"


def test_chat_with_audio_in_and_out(client):
    wav = base64.b64encode(_wav_bytes(1.0)).decode()
    reply = client.chat.completions.create(
        model=MODEL_ID, modalities=["text", "audio"], audio={"voice": "default", "format": "wav"},
        messages=[{"role": "user", "content": [
            {"type": "text", "text": "What do you hear?"},
            {"type": "input_audio", "input_audio": {"data": wav, "format": "wav"}},
        ]}],
        temperature=0, max_tokens=40,
    )
    audio = reply.choices[0].message.audio
    assert audio is not None and isinstance(audio.transcript, str)
    data = base64.b64decode(audio.data)
    assert data[:4] == b"RIFF"
    thinking = client.chat.completions.create(model=MODEL_ID, messages=[{"role": "user", "content": "2+2?"}],
                                              temperature=0, max_tokens=10, extra_body={"thinking": True})
    assert thinking.choices[0].finish_reason in ("stop", "length")


def test_chat_stream_with_audio_deltas(served):
    body = {"model": MODEL_ID, "stream": True, "modalities": ["text", "audio"], "audio": {"voice": "default",
            "format": "pcm16"}, "messages": [{"role": "user", "content": "Say hello."}], "temperature": 0}
    pcm = b""
    with httpx.stream("POST", served.url + "/v1/chat/completions", json=body, timeout=60) as r:
        assert r.status_code == 200
        lines = [ln for ln in r.iter_lines() if ln.startswith("data: ")]
    assert lines[-1] == "data: [DONE]"
    for ln in lines[:-1]:
        delta = json.loads(ln[6:])["choices"][0]["delta"]
        if "audio" in delta and "data" in delta["audio"]:
            pcm += base64.b64decode(delta["audio"]["data"])
    assert len(pcm) > 0 and len(pcm) % 2 == 0


def test_speech_formats_and_streaming(client, served):
    for fmt, magic in (("flac", b"fLaC"), ("wav", b"RIFF"), ("mp3", None), ("opus", b"OggS")):
        data = client.audio.speech.create(model=MODEL_ID, voice="alloy", input="Good morning.",
                                          response_format=fmt, extra_body=SHORT).content
        assert len(data) > 100 and (magic is None or data[:4] == magic)
    pcm = client.audio.speech.create(model=MODEL_ID, voice="default", input="Good morning.", response_format="pcm",
                                     extra_body=SHORT)
    assert len(pcm.content) % 2 == 0
    t0 = time.monotonic()
    first = None
    with client.audio.speech.with_streaming_response.create(model=MODEL_ID, voice="default", input="Streaming.",
                                                            response_format="wav", extra_body={"seed": 0}) as resp:
        total = 0
        for chunk in resp.iter_bytes():
            total += len(chunk)
            if first is None and total > 44:
                first = time.monotonic() - t0
    assert total > 44 and first is not None
    with pytest.raises(openai.BadRequestError, match="unknown voice"):
        client.audio.speech.create(model=MODEL_ID, voice="nobody", input="Hi.", response_format="wav")


def test_transcription_formats_and_stream(client, tmp_path):
    path = tmp_path / "in.wav"
    path.write_bytes(_wav_bytes(1.0))
    with open(path, "rb") as f:
        verbose = client.audio.transcriptions.create(model=MODEL_ID, file=f, response_format="verbose_json")
    assert abs(verbose.duration - 1.0) < 0.01 and isinstance(verbose.text, str)
    with open(path, "rb") as f:
        text = client.audio.transcriptions.create(model=MODEL_ID, file=f, response_format="text")
    assert isinstance(text, str) and text.strip() == verbose.text
    with open(path, "rb") as f:
        events = list(client.audio.transcriptions.create(model=MODEL_ID, file=f, stream=True))
    assert events[-1].type == "transcript.text.done" and events[-1].text == verbose.text
    buf = io.BytesIO()
    sf.write(buf, np.zeros(24000, dtype="float32"), 24000, format="WAV")
    silent = client.audio.transcriptions.create(model=MODEL_ID, file=("silence.wav", buf.getvalue()))
    assert silent.text == ""  # silence is an empty transcript, as MimoAudio.asr gives


def test_faults_get_clear_answers_and_the_server_keeps_serving(client, served, engine, tmp_path):
    # corrupt upload -> 400
    bad = tmp_path / "bad.wav"
    bad.write_bytes(b"RIFF\x00\x00garbage" * 50)
    with open(bad, "rb") as f, pytest.raises(openai.BadRequestError, match="could not decode"):
        client.audio.transcriptions.create(model=MODEL_ID, file=f)
    # over-long inputs -> 413
    long_audio = tmp_path / "long.wav"
    long_audio.write_bytes(_wav_bytes(8.0, sr=16000))
    with open(long_audio, "rb") as f, pytest.raises(openai.APIStatusError) as err:
        client.audio.transcriptions.create(model=MODEL_ID, file=f)
    assert err.value.status_code == 413 and "limit is 5 s" in err.value.body["message"]
    with pytest.raises(openai.APIStatusError) as err:
        client.audio.speech.create(model=MODEL_ID, voice="default", input="word " * 100, response_format="wav")
    assert err.value.status_code == 413
    big = tmp_path / "big.wav"
    big.write_bytes(b"\x00" * (2**20 + 10))
    with open(big, "rb") as f, pytest.raises(openai.APIStatusError) as err:
        client.audio.transcriptions.create(model=MODEL_ID, file=f)
    assert err.value.status_code == 413
    # malformed JSON -> 400, never a traceback
    r = httpx.post(served.url + "/v1/chat/completions", content=b"{nope", timeout=10)
    assert r.status_code == 400 and "error" in r.json() and "Traceback" not in r.text
    # a bad speech floor -> 400 naming it
    r = httpx.post(served.url + "/v1/audio/speech", json={"input": "Hi.", "min_speech_patches": -1}, timeout=10)
    assert r.status_code == 400 and r.json()["error"]["param"] == "min_speech_patches"
    # full queue -> 503 at once (2 running + 2 waiting, filled directly through the engine)
    m = engine.model
    job = m.prepare_tts("Hold.", max_new_patches=60, min_new_patches=60, preset="greedy")
    hold = [engine.submit(job) for _ in range(2)]
    deadline = time.monotonic() + 10
    while engine.stats()["active"] < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    hold += [engine.submit(job) for _ in range(2)]
    t0 = time.monotonic()
    with pytest.raises(openai.InternalServerError) as err:
        client.chat.completions.create(model=MODEL_ID, messages=[{"role": "user", "content": "hi"}])
    assert err.value.status_code == 503 and time.monotonic() - t0 < 5
    assert "queue is full" in err.value.body["message"]
    for h in hold:
        h.cancel()
    # a client that leaves mid-stream: its request is cancelled and frees its slot
    before = engine.stats()["cancelled"]
    body = {"model": MODEL_ID, "input": "Talk for a while.", "voice": "default", "response_format": "pcm",
            "min_new_patches": 60, "max_new_patches": 60}
    with httpx.stream("POST", served.url + "/v1/audio/speech", json=body, timeout=30) as r:
        next(r.iter_raw())
    deadline = time.monotonic() + 15
    while engine.stats()["cancelled"] == before and time.monotonic() < deadline:
        time.sleep(0.05)
    assert engine.stats()["cancelled"] > before
    # ... and the others are still served
    ok = client.chat.completions.create(model=MODEL_ID, messages=[{"role": "user", "content": "hi"}], max_tokens=5)
    assert ok.choices[0].message.content is not None
    metrics = httpx.get(served.url + "/metrics").text
    assert "mimo_audio_requests_cancelled_total" in metrics and "mimo_audio_queue_depth 0" in metrics


def test_api_key(engine):
    from apps.server import ServerConfig, create_app

    with _ThreadServer(create_app(engine, ServerConfig(model_id=MODEL_ID, api_key="s3cret"))) as srv:
        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(base_url=srv.url + "/v1", api_key="wrong", max_retries=0).models.list()
        ok = openai.OpenAI(base_url=srv.url + "/v1", api_key="s3cret", max_retries=0)
        assert [m.id for m in ok.models.list().data] == [MODEL_ID]
        assert httpx.get(srv.url + "/health").status_code == 200  # health stays open for load balancers


# ---------------------------------------------------------------------------------------------- load balancer
# Two servers behind nginx with the documented config (docs/serving/nginx.conf): both take work, streams pass
# through the proxy, and one backend going away leaves the other serving. Skipped where nginx is missing.
CONF = Path(__file__).resolve().parents[2] / "docs" / "serving" / "nginx.conf"


@pytest.mark.skipif(shutil.which("nginx") is None, reason="nginx is not installed (Makefile SYSPKGS has it)")
def test_two_servers_behind_nginx(tmp_path):
    import torch

    from apps.server import ServerConfig, create_app
    from mimo_audio import MimoAudio
    from mimo_audio.engine import Engine, EngineConfig

    torch.set_num_threads(1)
    model = MimoAudio.from_pretrained()
    engines = [Engine(model, EngineConfig(max_new_patches=24)).start() for _ in range(2)]
    servers = [_ThreadServer(create_app(e, ServerConfig(model_id=MODEL_ID))) for e in engines]
    front = _free_port()
    conf = CONF.read_text()
    conf = conf.replace("127.0.0.1:8001", f"127.0.0.1:{servers[0].port}")
    conf = conf.replace("127.0.0.1:8002", f"127.0.0.1:{servers[1].port}")
    conf = conf.replace("127.0.0.1:8000", f"127.0.0.1:{front}").replace("/tmp/mimo-audio-nginx", str(tmp_path / "ng"))
    (tmp_path / "nginx.conf").write_text(conf)
    proxy = None
    try:
        for s in servers:
            s.__enter__()
        proxy = subprocess.Popen(["nginx", "-p", str(tmp_path), "-c", str(tmp_path / "nginx.conf"), "-g",
                                  "daemon off;"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        url = f"http://127.0.0.1:{front}"
        deadline = time.monotonic() + 20
        while True:
            try:
                if httpx.get(url + "/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline and proxy.poll() is None, proxy.stderr.read().decode()[-500:]
            time.sleep(0.1)
        client = openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0)
        for _ in range(6):
            client.chat.completions.create(model=MODEL_ID, messages=[{"role": "user", "content": "hi"}], max_tokens=4)
        assert all(e.stats()["completed"] >= 1 for e in engines)  # both processes took work
        with client.audio.speech.with_streaming_response.create(model=MODEL_ID, voice="default", input="Hello.",
                                                                response_format="wav", extra_body=SHORT) as resp:
            chunks = list(resp.iter_bytes())
        assert b"".join(chunks)[:4] == b"RIFF"
        # one backend goes away: the proxy sends everything to the other
        servers[1].__exit__()
        for _ in range(3):
            reply = client.chat.completions.create(model=MODEL_ID, messages=[{"role": "user", "content": "hi"}],
                                                   max_tokens=4)
            assert reply.choices[0].message.content is not None
    finally:
        if proxy is not None:
            proxy.terminate()
            proxy.wait(10)
        servers[0].__exit__()
        for e in engines:
            e.stop()


def test_serve_refuses_a_busy_port_before_loading(tmp_path):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
        r = subprocess.run([sys.executable, "-m", "apps", "serve", "--port", str(port)], cwd=ROOT, env=env,
                           capture_output=True, text=True, timeout=120)
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert r.stderr.strip().splitlines()[-1].endswith(f"cannot listen on 127.0.0.1:{port}: Address already in use")
