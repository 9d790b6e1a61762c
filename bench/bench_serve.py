"""Load test of ``mimo-audio serve`` over loopback: concurrent mixed clients, batched vs one at a time, TTFA.

Starts the server as a subprocess on a free 127.0.0.1 port (or uses ``--url``), then runs three phases:

1. idle time to first audio: streamed TTS requests one at a time (median, worst);
2. batched vs sequential: the same fixed set of mixed requests (TTS, ASR, chat) sent one at a time, then all
   at once; throughput ratio;
3. load: N client threads loop over mixed requests (TTS / ASR / chat, streamed and not) for a fixed time;
   requests/s, p50/p99 latency per kind, time to first audio, errors, and the server's RSS sampled every
   0.5 s (start, peak, end, slope) to show whether memory stays flat.

Bounded in time and count; loopback only. Example::

    python bench/bench_serve.py --clients 32 --duration 120
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import os
import socket
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import numpy as np
import soundfile as sf

from bench.common.machine import cpu_name

ROOT = Path(__file__).resolve().parents[1]
KINDS = ("tts_stream", "tts", "asr", "asr_stream", "chat", "chat_stream", "chat_audio_stream")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


@dataclass
class Sample:
    kind: str
    ok: bool
    latency: float
    ttfa: float | None = None
    error: str = ""


@dataclass
class Recorder:
    samples: list[Sample] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, s: Sample) -> None:
        with self.lock:
            self.samples.append(s)


class Client:
    """One synchronous client; every request kind returns a Sample (never raises)."""

    def __init__(self, url: str, wav: bytes, max_new: int):
        self.http = httpx.Client(base_url=url, timeout=300)
        self.wav = wav
        self.wav_b64 = base64.b64encode(wav).decode()
        self.max_new = max_new

    def close(self) -> None:
        self.http.close()

    def run(self, kind: str, i: int) -> Sample:
        t0 = time.perf_counter()
        try:
            ttfa = getattr(self, kind)(i, t0)
            return Sample(kind, True, time.perf_counter() - t0, ttfa)
        except Exception as exc:  # the bench records failures; it never stops on one
            return Sample(kind, False, time.perf_counter() - t0, error=f"{type(exc).__name__}: {exc}"[:200])

    def _text(self, i: int) -> str:
        return ["Hello there, how are you today?", "The weather is lovely this morning.",
                "Please read this sentence aloud.", "Numbers like three and seven."][i % 4]

    def _check(self, r: httpx.Response) -> None:
        if r.status_code != 200:
            raise RuntimeError(f"HTTP {r.status_code}: {r.text[:150]}")

    def tts_stream(self, i: int, t0: float) -> float | None:
        body = {"model": "m", "input": self._text(i), "voice": "default", "response_format": "wav",
                "max_new_patches": self.max_new}
        first, total = None, 0
        with self.http.stream("POST", "/v1/audio/speech", json=body) as r:
            self._check(r)
            for chunk in r.iter_raw():
                total += len(chunk)
                if first is None and total > 44:  # past the wav header: the first audio samples
                    first = time.perf_counter() - t0
        if total <= 44:
            raise RuntimeError("no audio in the stream")
        return first

    def tts(self, i: int, t0: float) -> None:
        body = {"model": "m", "input": self._text(i), "voice": "default", "response_format": "flac",
                "max_new_patches": self.max_new}
        r = self.http.post("/v1/audio/speech", json=body)
        self._check(r)
        if r.content[:4] != b"fLaC":
            raise RuntimeError("not a flac reply")

    def asr(self, i: int, t0: float) -> None:
        r = self.http.post("/v1/audio/transcriptions", files={"file": ("in.wav", self.wav, "audio/wav")},
                           data={"model": "m"})
        self._check(r)
        r.json()["text"]

    def asr_stream(self, i: int, t0: float) -> None:
        with self.http.stream("POST", "/v1/audio/transcriptions", files={"file": ("in.wav", self.wav, "audio/wav")},
                              data={"model": "m", "stream": "true"}) as r:
            self._check(r)
            done = any('"transcript.text.done"' in ln for ln in r.iter_lines())
        if not done:
            raise RuntimeError("transcription stream did not finish")

    def _chat_body(self, i: int, stream: bool, audio: bool) -> dict:
        body = {"model": "m", "stream": stream, "max_tokens": self.max_new,
                "messages": [{"role": "user", "content": self._text(i)}]}
        if audio:
            body["modalities"] = ["text", "audio"]
            body["audio"] = {"voice": "default", "format": "pcm16"}
        return body

    def chat(self, i: int, t0: float) -> None:
        r = self.http.post("/v1/chat/completions", json=self._chat_body(i, False, False))
        self._check(r)
        r.json()["choices"][0]["message"]

    def _sse(self, body: dict, t0: float) -> float | None:
        first = None
        with self.http.stream("POST", "/v1/chat/completions", json=body) as r:
            self._check(r)
            last = ""
            for ln in r.iter_lines():
                if not ln.startswith("data: "):
                    continue
                last = ln
                if first is None and '"data":' in ln:
                    first = time.perf_counter() - t0
        if last != "data: [DONE]":
            raise RuntimeError("chat stream did not finish")
        return first

    def chat_stream(self, i: int, t0: float) -> None:
        self._sse(self._chat_body(i, True, False), t0)

    def chat_audio_stream(self, i: int, t0: float) -> float | None:
        return self._sse(self._chat_body(i, True, True), t0)


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    v = sorted(values)
    return v[min(len(v) - 1, int(round(q * (len(v) - 1))))]


def speech_wav(url: str) -> bytes:
    """Input audio for ASR: flite's voice if installed, else a reply of the server itself."""
    try:
        out = Path("/tmp") / f"bench_serve_{os.getpid()}.wav"
        subprocess.run(["flite", "-voice", "slt", "-t", "The quick brown fox jumps over the lazy dog.", "-o",
                        str(out)], check=True, capture_output=True, timeout=30)
        data = out.read_bytes()
        out.unlink()
        return data
    except (OSError, subprocess.SubprocessError):
        r = httpx.post(url + "/v1/audio/speech", json={"model": "m", "input": "The quick brown fox.",
                                                       "response_format": "flac"}, timeout=120)
        wav, sr = sf.read(io.BytesIO(r.content))
        buf = io.BytesIO()
        sf.write(buf, np.asarray(wav, dtype="float32"), sr, format="WAV")
        return buf.getvalue()


def start_server(args) -> tuple[subprocess.Popen, str]:
    port = free_port()
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    cmd = [sys.executable, "-m", "apps", "serve", "--host", "127.0.0.1", "--port", str(port), "--max-batch",
           str(args.max_batch), "--max-queue", str(args.max_queue), "--threads", str(args.threads)]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"server exited: {proc.stderr.read().decode()[-2000:]}")
        try:
            if httpx.get(url + "/health", timeout=2).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    proc.kill()
    raise SystemExit("server did not become healthy in 300 s")


def phase_ttfa(url: str, wav: bytes, n: int, max_new: int) -> list[float]:
    c = Client(url, wav, max_new)
    out = []
    for i in range(n):
        s = c.run("tts_stream", i)
        if s.ok and s.ttfa is not None:
            out.append(s.ttfa)
    c.close()
    return out


def phase_batched_vs_sequential(url: str, wav: bytes, n: int, max_new: int) -> tuple[float, float, int]:
    kinds = [("tts", "asr", "chat")[i % 3] for i in range(n)]
    c = Client(url, wav, max_new)
    t0 = time.perf_counter()
    seq = [c.run(k, i) for i, k in enumerate(kinds)]
    t_seq = time.perf_counter() - t0
    c.close()
    clients = [Client(url, wav, max_new) for _ in kinds]
    results: list[Sample] = []
    threads = [threading.Thread(target=lambda cl=cl, k=k, i=i: results.append(cl.run(k, i)))
               for i, (cl, k) in enumerate(zip(clients, kinds))]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    t_bat = time.perf_counter() - t0
    for cl in clients:
        cl.close()
    failures = sum(not s.ok for s in seq + results)
    return t_seq, t_bat, failures


def phase_load(url: str, wav: bytes, clients: int, duration: float, max_new: int, pid: int | None):
    rec = Recorder()
    stop = time.monotonic() + duration
    rss: list[tuple[float, float]] = []

    def worker(w: int) -> None:
        c = Client(url, wav, max_new)
        i = w
        while time.monotonic() < stop:
            rec.add(c.run(KINDS[i % len(KINDS)], i))
            i += 1
        c.close()

    def sampler() -> None:
        t0 = time.monotonic()
        while time.monotonic() < stop + 1:
            if pid is not None:
                rss.append((time.monotonic() - t0, rss_mb(pid)))
            time.sleep(0.5)

    threads = [threading.Thread(target=worker, args=(w,)) for w in range(clients)]
    mon = threading.Thread(target=sampler)
    t0 = time.perf_counter()
    mon.start()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    mon.join()
    return rec.samples, wall, rss


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--url", default=None, help="use a running server (loopback) instead of starting one")
    ap.add_argument("--clients", type=int, default=32)
    ap.add_argument("--duration", type=float, default=120.0, help="seconds of the load phase (max 600)")
    ap.add_argument("--compare", type=int, default=24, help="requests in the batched-vs-sequential phase")
    ap.add_argument("--rounds", type=int, default=3, help="rounds of the batched-vs-sequential phase")
    ap.add_argument("--ttfa-runs", type=int, default=5)
    ap.add_argument("--max-new", type=int, default=48, help="max new patches per request (bounds the work)")
    ap.add_argument("--max-batch", type=int, default=32)
    ap.add_argument("--max-queue", type=int, default=64)
    ap.add_argument("--threads", type=int, default=1, help="server torch threads")
    ap.add_argument("--json", default=None, help="also write the figures here")
    args = ap.parse_args()
    if args.url and not args.url.startswith(("http://127.0.0.1", "http://localhost")):
        raise SystemExit("loopback only: --url must be http://127.0.0.1:PORT")
    args.duration = min(args.duration, 600.0)

    proc = None
    url = args.url
    if url is None:
        proc, url = start_server(args)
    try:
        wav = speech_wav(url)
        phase_ttfa(url, wav, 2, args.max_new)  # warm up
        ttfa = phase_ttfa(url, wav, args.ttfa_runs, args.max_new)
        rounds = [phase_batched_vs_sequential(url, wav, args.compare, args.max_new) for _ in range(args.rounds)]
        # the machine is shared: rounds alternate the two modes; the median ratio is the figure
        t_seq = statistics.median(r[0] for r in rounds)
        t_bat = statistics.median(r[1] for r in rounds)
        ratio = statistics.median(r[0] / r[1] for r in rounds)
        cmp_fail = sum(r[2] for r in rounds)
        samples, wall, rss = phase_load(url, wav, args.clients, args.duration, args.max_new,
                                        proc.pid if proc else None)
        metrics = httpx.get(url + "/metrics", timeout=10).text
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(30)

    cpu = cpu_name()
    load = os.getloadavg()
    ok = [s for s in samples if s.ok]
    errors = [s for s in samples if not s.ok]
    lat = [s.latency for s in ok]
    ttfa_load = [s.ttfa for s in ok if s.ttfa is not None and s.kind in ("tts_stream", "chat_audio_stream")]
    print(f"CPU: {cpu} ({os.cpu_count()} logical); load average at the end {load[0]:.1f} {load[1]:.1f} {load[2]:.1f}")
    print(f"idle TTFA (streamed TTS, {len(ttfa)} runs): median {statistics.median(ttfa):.3f} s, "
          f"worst {max(ttfa):.3f} s   [goal <= 0.5 s]" if ttfa else "idle TTFA: no audio")
    print(f"batched vs one at a time ({args.compare} mixed TTS/ASR/chat requests, {args.rounds} rounds, medians): "
          f"sequential {t_seq:.1f} s, all at once {t_bat:.1f} s -> {ratio:.2f}x   [goal >= 3x]  failures {cmp_fail}"
          f"  (per round: {', '.join(f'{a / b:.2f}x' for a, b, _ in rounds)})")
    print(f"load: {args.clients} clients for {wall:.0f} s: {len(samples)} requests, {len(ok) / wall:.2f} req/s, "
          f"errors {len(errors)}   [goal 0]")
    print(f"  latency p50 {pct(lat, 0.5):.2f} s  p99 {pct(lat, 0.99):.2f} s;  TTFA under load p50 "
          f"{pct(ttfa_load, 0.5):.2f} s  p99 {pct(ttfa_load, 0.99):.2f} s")
    print(f"  {'kind':<18} {'n':>5} {'p50 s':>8} {'p99 s':>8} {'errors':>7}")
    for k in KINDS:
        ks = [s for s in samples if s.kind == k]
        kl = [s.latency for s in ks if s.ok]
        print(f"  {k:<18} {len(ks):>5} {pct(kl, 0.5):>8.2f} {pct(kl, 0.99):>8.2f} {sum(not s.ok for s in ks):>7}")
    for e in errors[:5]:
        print(f"  error: {e.kind}: {e.error}")
    figures = {"ttfa_idle": ttfa, "t_seq": t_seq, "t_batched": t_bat, "ratio": ratio,
               "requests": len(samples), "ok": len(ok), "errors": len(errors), "wall": wall,
               "req_per_s": len(ok) / wall, "p50": pct(lat, 0.5), "p99": pct(lat, 0.99)}
    if rss:
        half = [m for t, m in rss if t >= rss[-1][0] / 2]
        first_half = [m for t, m in rss if t < rss[-1][0] / 2]
        slope = (statistics.mean(half) - statistics.mean(first_half)) / max(rss[-1][0] / 2 / 60, 1e-9)
        print(f"  server RSS: start {rss[0][1]:.0f} MB, peak {max(m for _, m in rss):.0f} MB, end {rss[-1][1]:.0f} MB; "
              f"second half vs first half {slope:+.1f} MB/min")
        quarters = [rss[min(len(rss) - 1, len(rss) * q // 4)][1] for q in range(5)]
        print("  server RSS by quarter of the run: " + " -> ".join(f"{m:.0f}" for m in quarters) + " MB")
        figures.update(rss_start=rss[0][1], rss_peak=max(m for _, m in rss), rss_end=rss[-1][1], rss_slope=slope,
                       rss_quarters=quarters)
    keep = ("mimo_audio_patches_total", "mimo_audio_step_milliseconds", "mimo_audio_mean_batch_rows",
            "mimo_audio_batch_merge_milliseconds", "mimo_audio_requests_rejected_total")
    print("  server: " + ", ".join(ln for ln in metrics.splitlines() if ln.startswith(keep)))
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2) + "\n")
    return 1 if errors or cmp_fail else 0


if __name__ == "__main__":
    sys.exit(main())
