"""The OpenAI-compatible adapter against a real HTTP server on 127.0.0.1 backed by the embedded model.

The toolkit's own server is not on this branch, so the test serves the three routes with ``http.server``
around a real ``MimoAudio``: the adapter, the wire format and the runner are exercised for real.
"""

from __future__ import annotations

import base64
import email.parser
import io
import json
import tempfile
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import soundfile as sf
import torch


@pytest.fixture(scope="module")
def server():
    from mimo_audio import MimoAudio

    torch.set_num_threads(1)
    m = MimoAudio.from_pretrained(device="cpu")
    lock = threading.Lock()
    seen: list[str] = []

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):  # keep pytest output clean
            pass

        def _reply(self, body: bytes, ctype: str = "application/json") -> None:
            self.send_response(200)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_POST(self):  # noqa: N802 (http.server API)
            data = self.rfile.read(int(self.headers["Content-Length"]))
            seen.append(self.path)
            with lock, tempfile.TemporaryDirectory() as tmp:
                if self.path == "/v1/audio/transcriptions":
                    msg = email.parser.BytesParser().parsebytes(
                        b"Content-Type: " + self.headers["Content-Type"].encode() + b"\r\n\r\n" + data)
                    wav = Path(tmp) / "in.wav"
                    for part in msg.get_payload():
                        if part.get_filename():
                            wav.write_bytes(part.get_payload(decode=True))
                    self._reply(json.dumps({"text": m.asr(str(wav), seed=0, max_new_patches=30)}).encode())
                elif self.path == "/v1/audio/speech":
                    body = json.loads(data)
                    res = m.tts(body["input"], seed=0, max_new_patches=30)
                    buf = io.BytesIO()
                    sf.write(buf, res.audio.numpy(), res.sample_rate, format="WAV")
                    self._reply(buf.getvalue(), "audio/wav")
                elif self.path == "/v1/chat/completions":
                    body = json.loads(data)
                    parts = body["messages"][-1]["content"]
                    audio = next(p["input_audio"]["data"] for p in parts if p["type"] == "input_audio")
                    wav = Path(tmp) / "q.wav"
                    wav.write_bytes(base64.b64decode(audio))
                    text = " ".join(p["text"] for p in parts if p["type"] == "text")
                    res = m.understand(str(wav), text, seed=0, max_new_patches=20)
                    self._reply(json.dumps({"choices": [{"message": {"role": "assistant",
                                                                     "content": res.text}}]}).encode())
                else:
                    self.send_error(404)

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}", seen
    httpd.shutdown()


def test_endpoint_adapter_runs_asr_tts_and_mcq(server, librispeech, seedtts, mmau, tmp_path):
    from eval.models import make_adapter
    from eval.runner import run
    from eval.tasks import get_task

    url, seen = server
    model = make_adapter("mimo-audio", url)
    tasks = [get_task("librispeech_asr"), get_task("seedtts_en_tts"), get_task("mmau_mcq")]
    roots = {"librispeech_asr": librispeech, "seedtts_en_tts": seedtts, "mmau_mcq": mmau}
    dirs = run(tasks, model, roots, tmp_path, limit=1, progress=False, score=False)
    assert set(seen) == {"/v1/audio/transcriptions", "/v1/audio/speech", "/v1/chat/completions"}
    recs = [json.loads((d / "samples.jsonl").read_text().splitlines()[0]) for d in dirs]
    assert all("error" not in r for r in recs), [r.get("error") for r in recs]
    asr, tts, mcq = recs
    assert isinstance(asr["hypothesis"], str) and asr["prompt"]["file"].endswith(".flac")
    assert Path(tts["audio"]).is_file() and tts["prompt"]["input"] == tts["reference"]
    assert mcq["prompt"]["messages"][0]["content"][0]["input_audio"] == "a.wav"  # file name, not bytes
    assert dirs[0].parent.name.startswith("openai-127.0.0.1")
