"""Benchmark: ASR with MTP speculative decoding against plain decoding, on real speech, side by side.

The embedded default model (with its shipped ``mtp.safetensors``) transcribes a few flite clips one at a time,
greedy, three ways: plain decoding, ``speculative=3`` with a fixed draft length, and ``speculative=3``
adaptive (the default of ``mimo-audio asr --speculative``: drafting is switched off when it does not pay).
Modes are interleaved per clip and repeated; the medians of wall time per clip and the ratio to plain are
printed with the decoded tokens and backbone forwards (a speculative run must decode exactly the tokens that
plain decoding keeps). The machine is shared: read the ratios, not the absolutes.
Run: ``PYTHONPATH=. python bench/bench_asr_speculative.py [--repeats 3]``.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import torch

from bench.common.machine import cpu_name
from mimo_audio import MimoAudio

SENTENCES = [
    ("slt", "The quick brown fox jumps over the lazy dog."),
    ("kal", "Please call Stella and ask her to bring these things with her from the store."),
    ("awb", "It was a bright cold day in April, and the clocks were striking thirteen."),
    ("rms", "She sells sea shells by the sea shore."),
]
MODES = {"plain": {}, "spec3": {"speculative": 3, "adaptive_draft": False},
         "spec3-adaptive": {"speculative": 3, "adaptive_draft": True}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    if shutil.which("flite") is None:
        raise SystemExit("flite is not installed (make sysdeps)")
    torch.set_num_threads(args.threads)
    m = MimoAudio.from_pretrained(device="cpu")
    tmp = Path(tempfile.mkdtemp(prefix="bench_asr_spec_"))
    clips = []
    for i, (voice, text) in enumerate(SENTENCES):
        path = tmp / f"clip{i}_{voice}.wav"
        subprocess.run(["flite", "-voice", voice, "-t", text, "-o", str(path)], check=True, capture_output=True)
        clips.append(m.encode_audio(path))  # encode once: the bench times the LM only
    m.asr(clips[0], preset="greedy", speculative=3)  # warm-up, loads the MTP heads
    times: dict[str, list[float]] = {k: [] for k in MODES}
    print(f"CPU: {cpu_name()} ({args.threads} thread(s); machine shared with other jobs)")
    print(f"{'clip':>5} {'mode':>15} {'median s':>9} {'tokens':>7} {'forwards':>9} {'plain steps':>12} {'vs plain':>9}")
    for i, codes in enumerate(clips):
        per: dict[str, list[float]] = {k: [] for k in MODES}
        info: dict[str, tuple[int, int, int]] = {}
        texts = {}
        for _ in range(args.repeats):
            for mode, kw in MODES.items():
                t0 = time.perf_counter()
                texts[mode] = m.asr(codes, preset="greedy", **kw)
                per[mode].append(time.perf_counter() - t0)
                if kw:
                    s = m.last_draft_stats[0]
                    info[mode] = (s.new_tokens, s.target_forwards, s.plain_steps)
        assert len(set(texts.values())) == 1, texts  # greedy: every mode transcribes the same
        base = statistics.median(per["plain"])
        for mode in MODES:
            med = statistics.median(per[mode])
            times[mode].append(med)
            tok, fwd, plain = info.get(mode, ("-", "-", "-"))
            print(f"{i:>5} {mode:>15} {med:>9.3f} {tok!s:>7} {fwd!s:>9} {plain!s:>12} {med / base:>8.2f}x")
    total = {k: sum(v) for k, v in times.items()}
    print("total over clips: " + ", ".join(f"{k} {v:.2f}s ({v / total['plain']:.2f}x plain)" for k, v in total.items()))


if __name__ == "__main__":
    main()
