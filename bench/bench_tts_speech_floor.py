"""Sampled TTS that ends before any speech: the default speech floor of TTS on vs off, side by side.

    python -m bench.bench_tts_speech_floor                  # the embedded default model, 30 seeds x 3 sentences
    python -m bench.bench_tts_speech_floor --seeds 10 --instruct "whispering, slowly" --voice anna.wav
    python -m bench.bench_tts_speech_floor --lm runs/lm/model --tokenizer runs/tok/model

Every (seed, sentence) runs twice with the task's sampler preset: with ``min_speech_patches=0`` (the floor off,
the old behaviour) and with the default floor (:func:`mimo_audio.tasks.tts_min_speech_patches`). The sentences
of one seed run as one batch (each row has its own seeded stream, so it samples as it would alone). A call
"ends with no speech" when it returns no speech codes or its decoded waveform never reaches ``--silence-peak``.
Printed: how many calls end with no speech, the median output seconds, the median patches generated, and
the (seed, sentence) pairs that gave no speech with the floor off.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from mimo_audio import MimoAudio
from mimo_audio.tasks import tts_min_speech_patches

SENTENCES = (
    "Hello there, how are you?",
    "The birch canoe slid on the smooth planks.",
    "Please call me back when you get home tonight.",
)


def _run(m: MimoAudio, seed: int, floor: bool, args: argparse.Namespace, voice) -> list[dict]:
    gen = {"seed": seed, "max_new_patches": args.max_new_patches}
    if not floor:
        gen["min_speech_patches"] = 0
    results = m.tts_batch(list(SENTENCES), instruct=args.instruct, voice=voice, **gen)
    rows = []
    for r in results:
        audio = r.audio if r.audio is not None else torch.zeros(0)
        top = float(audio.abs().max()) if audio.numel() else 0.0
        rows.append({"seconds": r.seconds, "patches": r.num_patches,
                     "silent": r.codes.shape[1] == 0 or top < args.silence_peak})
    return rows


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--lm", default=None, help="speech-LM checkpoint (default: the embedded default model)")
    p.add_argument("--tokenizer", default=None, help="audio tokenizer (default: the LM's embedded one)")
    p.add_argument("--seeds", type=int, default=30, help="seeds 0..N-1")
    p.add_argument("--max-new-patches", type=int, default=300, help="length cap per call (keeps babble short)")
    p.add_argument("--silence-peak", type=float, default=0.01, help="a waveform under this peak counts as silence")
    p.add_argument("--instruct", default=None, help="style instruction (instruct TTS)")
    p.add_argument("--voice", default=None, help="a wav to clone (voice-cloning TTS)")
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    m = MimoAudio.from_pretrained(args.lm, args.tokenizer)
    print("floors (speech patches):", {s: tts_min_speech_patches(s) for s in SENTENCES})
    voice = m.encode_audio(args.voice) if args.voice else None  # encoded once
    stats = {False: [], True: []}
    failed_off: list[tuple[int, int]] = []
    t0 = time.perf_counter()
    for seed in range(args.seeds):
        for floor in (False, True):
            rows = _run(m, seed, floor, args, voice)
            stats[floor] += rows
            if not floor:
                failed_off += [(seed, i) for i, r in enumerate(rows) if r["silent"]]
        print(f"seed {seed}: {time.perf_counter() - t0:.0f} s", flush=True)
    n = len(stats[False])
    print(f"\n{n} calls each ({args.seeds} seeds x {len(SENTENCES)} sentences), preset 'tts', "
          f"max_new_patches {args.max_new_patches}, instruct {args.instruct!r}, voice {args.voice!r}")
    print(f"{'':28}{'floor off':>12}{'floor on':>12}")
    for label, fn in (
        ("calls with no speech", lambda rows: sum(r["silent"] for r in rows)),
        ("median output seconds", lambda rows: statistics.median(r["seconds"] for r in rows)),
        ("min output seconds", lambda rows: min(r["seconds"] for r in rows)),
        ("median patches generated", lambda rows: statistics.median(r["patches"] for r in rows)),
        ("calls at the length cap", lambda rows: sum(r["patches"] >= args.max_new_patches for r in rows)),
    ):
        off, on = fn(stats[False]), fn(stats[True])
        print(f"{label:28}{off:>12.2f}{on:>12.2f}" if isinstance(off, float) else f"{label:28}{off:>12}{on:>12}")
    print("no speech with the floor off (seed, sentence):", failed_off)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
