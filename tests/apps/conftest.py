"""The demo server for the app tests: ``mimo-audio demo`` started as a real subprocess on a free loopback port."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def demo_server(tmp_path_factory):
    """``(url, voices_dir, log_path)`` of a running ``mimo-audio demo`` on the embedded default model."""
    pytest.importorskip("gradio")
    pytest.importorskip("gradio_client")
    root = tmp_path_factory.mktemp("demo")
    voices, log_path = root / "voices", root / "server.log"
    port = _free_port()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"), "GRADIO_ANALYTICS_ENABLED": "False",
           "MIMO_AUDIO_HOME": str(root / "home")}
    cmd = [sys.executable, "-m", "apps", "demo", "--host", "127.0.0.1", "--port", str(port),
           "--voices-dir", str(voices), "--max-input-seconds", "30"]
    with open(log_path, "w") as log:
        proc = subprocess.Popen(cmd, cwd=root, env=env, stdout=subprocess.PIPE, stderr=log, text=True)
        url, deadline = None, time.time() + 180
        while time.time() < deadline and url is None:
            line = proc.stdout.readline()
            if not line and proc.poll() is not None:
                break
            m = re.search(r"running at (http://\S+)", line)
            url = m.group(1) if m else None
        if url is None:
            proc.kill()
            pytest.fail(f"mimo-audio demo did not print its URL; log:\n{log_path.read_text()[-3000:]}")
        yield url, voices, log_path
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()


@pytest.fixture(scope="session")
def demo_client(demo_server):
    from gradio_client import Client

    return Client(demo_server[0], verbose=False)


@pytest.fixture(scope="session")
def speech(tmp_path_factory) -> dict[str, Path]:
    """Real speech (flite), silence, a 10-minute file and an unreadable file for the demo's inputs."""
    import shutil

    import numpy as np
    import soundfile as sf

    if shutil.which("flite") is None:
        pytest.skip("flite is not installed (make sysdeps)")
    d = tmp_path_factory.mktemp("demo_speech")
    out = {}
    for name, voice, text in (("slt", "slt", "The birch canoe slid on the smooth planks."),
                              ("kal", "kal", "Please close the window before you leave."),
                              ("awb", "awb", "We walked along the river until sunset.")):
        out[name] = d / f"{name}.wav"
        subprocess.run(["flite", "-voice", voice, "-t", text, "-o", str(out[name])], check=True, capture_output=True)
    out["silence"] = d / "silence.wav"
    sf.write(out["silence"], np.zeros(32000, np.float32), 16000)
    out["long"] = d / "ten_minutes.wav"
    rng = np.random.default_rng(0)
    sf.write(out["long"], (rng.standard_normal(600 * 8000) * 0.05).astype(np.float32), 8000, subtype="PCM_16")
    out["garbage"] = d / "not_audio.wav"
    out["garbage"].write_bytes(b"this is not a wav file\n" * 200)
    return out
