"""The audio tokenizer's share of first-audio latency, before/after, side by side in one process.

    PYTHONPATH=. python -m bench.bench_first_audio                  # official size (1.28 B params, bf16)
    PYTHONPATH=. python -m bench.bench_first_audio --preset tiny    # smoke run
    PYTHONPATH=. python -m bench.bench_first_audio --profile        # + torch.profiler top ops per stage

What a spoken prompt and the first audio cost the tokenizer (random weights, speed does not depend on them):
* encode of one prompt chunk (``--chunk`` s), done while the next chunk is spoken; the last one is on the
  first-audio path;
* the streaming decoder at the start of the answer: the pushes until audio first comes out. *Before*: each patch
  (4 code frames) pushed as it is made (with lookahead 4 the first yields no audio: a pass over the decoder's
  weights for nothing); *after*: patches held until the decoder can emit audio
  (:meth:`StreamDecoder.frames_to_first_audio`), then one push;
* a steady-state push of ``--push-every`` patches.

Before = the linears as ``F.linear`` runs them on bf16 CPU tensors (the weight re-laid out on every call);
after = the same weights pre-packed once for oneDNN with the plain copies released (:meth:`AudioTokenizer.
pack_weights`; same memory, identical outputs). Both run in the same process, alternating per repetition;
medians of wall and CPU time (read CPU time on a shared machine). Printed last: the ratio before/after of the
tokenizer's share of first audio.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch

from bench.bench_realtime import build_tokenizer, speech_like
from bench.common.machine import cpu_name

GROUP = 4  # code frames per speech patch


def clock(fn):
    w0, c0 = time.perf_counter(), time.process_time()
    out = fn()
    return time.perf_counter() - w0, time.process_time() - c0, out


def run_stage(tok, wav: torch.Tensor, codes: torch.Tensor, args, schedule: str) -> dict[str, tuple[float, float]]:
    """One repetition of every stage: {stage: (wall s, cpu s)}."""
    sr = tok.sample_rate
    out = {}
    w, c, _ = clock(lambda: tok.encode(wav, sr))
    out["encode chunk"] = (w, c)
    stream = tok.stream_decoder(lookahead=args.lookahead)
    wall = cpu = 0.0
    sent = 0
    # before: each patch pushed as it is made; after: held until audio can come out, then one push
    plan = ([GROUP] * 16 if schedule == "before" else [-(-stream.frames_to_first_audio() // GROUP) * GROUP])
    for n in plan:
        w, c, audio = clock(lambda n=n, s=sent: stream.push(codes[:, s : s + n]))
        wall, cpu, sent = wall + w, cpu + c, sent + n
        if audio.numel():
            break
    out["pushes to first audio"] = (wall, cpu)
    out["patches decoded before first audio"] = (sent / GROUP, sent / GROUP)
    n = GROUP * args.push_every
    w, c, _ = clock(lambda: stream.push(codes[:, sent : sent + n]))
    out[f"steady push ({args.push_every} patches)"] = (w, c)
    return out


def profile(tok, wav, codes, args, label: str) -> None:
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as prof

    stream = tok.stream_decoder(lookahead=args.lookahead)
    stream.push(codes[:, :GROUP])
    for stage, fn in (("encode chunk", lambda: tok.encode(wav, tok.sample_rate)),
                      ("push", lambda: stream.push(codes[:, GROUP : 2 * GROUP]))):
        with prof(activities=[ProfilerActivity.CPU]) as p:
            fn()
        print(f"\n{label}: {stage}")
        print(p.key_averages().table(sort_by="self_cpu_time_total", row_limit=12))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", choices=("official", "tiny"), default="official")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--chunk", type=float, default=0.5, help="seconds of prompt encoded per call")
    ap.add_argument("--lookahead", type=int, default=4, help="stream decoder lookahead, code frames")
    ap.add_argument("--push-every", type=int, default=3, help="patches per steady-state push")
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--profile", action="store_true", help="print torch.profiler tables (before and after)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    before = build_tokenizer(args.preset, "plain")
    after = build_tokenizer(args.preset, "plain")  # the same values (fixed seed), packed below
    packed = after.pack_weights()
    print(f"CPU: {cpu_name()}, {os.cpu_count()} logical CPUs, load average {os.getloadavg()[0]:.1f} at start; "
          f"torch {torch.__version__}; {args.threads} thread(s); tokenizer {args.preset} bf16, built in "
          f"{time.perf_counter() - t0:.0f} s; {packed} linears packed in 'after'")
    sr = before.sample_rate
    wav = speech_like(args.chunk, sr)
    codes = before.encode(speech_like(4.0, sr), sr)
    same_codes = torch.equal(after.encode(wav, sr), before.encode(wav, sr))
    a = torch.cat([after.stream_decoder(args.lookahead).push(codes[:, :24])])
    b = torch.cat([before.stream_decoder(args.lookahead).push(codes[:, :24])])
    same_audio = a.shape == b.shape and torch.equal(a, b)
    if args.profile:
        profile(before, wav, codes, args, "before")
        profile(after, wav, codes, args, "after")
    for tok, sched in ((before, "before"), (after, "after")):  # warm-up: oneDNN primitives, allocator
        run_stage(tok, wav, codes, args, sched)
    res: dict[str, list[dict]] = {"before": [], "after": []}
    for _ in range(args.reps):
        res["before"].append(run_stage(before, wav, codes, args, "before"))
        res["after"].append(run_stage(after, wav, codes, args, "after"))
    med = {k: {s: tuple(statistics.median(r[s][i] for r in v) for i in (0, 1)) for s in v[0]} for k, v in res.items()}
    print(f"\nmedians of {args.reps}; wall ms / CPU ms (the machine is shared: CPU time is the steadier figure)")
    print("| stage | before | after | before/after (CPU) |")
    print("|---|---|---|---|")
    for s in med["before"]:
        (bw, bc), (aw, ac) = med["before"][s], med["after"][s]
        if s.startswith("patches"):
            print(f"| {s} | {bw:.0f} | {aw:.0f} | |")
            continue
        print(f"| {s} | {bw * 1e3:.0f} / {bc * 1e3:.0f} | {aw * 1e3:.0f} / {ac * 1e3:.0f} | {bc / ac:.2f}x |")
    tb = med["before"]["encode chunk"][1] + med["before"]["pushes to first audio"][1]
    ta = med["after"]["encode chunk"][1] + med["after"]["pushes to first audio"][1]
    print(f"outputs identical before/after: codes {same_codes}, audio {same_audio}")
    print(f"\ntokenizer share of first audio (last chunk's encode + pushes to first audio), CPU ms: "
          f"{tb * 1e3:.0f} -> {ta * 1e3:.0f} ({tb / ta:.2f}x)")


if __name__ == "__main__":
    main()
