"""Benchmark of the MiMo-Audio tokenizer on CPU: RTF of encode/decode and streaming-decode latency.

    python -m bench.bench_tokenizer                 # official size (1.28 B params), ~10 min
    python -m bench.bench_tokenizer --preset tiny   # smoke run in seconds

Random weights (no checkpoint can be downloaded here): speed does not depend on the weights, but the SNR
figures of reduced lookahead do, so read those as "how far from exact", not as audio quality.
All configurations run side by side in one process; the figures are medians over --repeats runs.
RTF = processing time / audio duration (lower is better; < 1 is faster than real time).
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from bench.common.machine import cpu_name
from tokenizer import AudioTokenizer, TokenizerConfig
from tokenizer.checkpoint import load_into
from tokenizer.model import MiMoAudioTokenizerModel


def machine() -> str:
    cpu = cpu_name()
    flags = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    isa = [f for f in ("avx2", "avx512f", "avx512_bf16", "avx512_vnni", "amx_bf16") if f" {f}" in flags]
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return (f"{cpu}, {os.cpu_count()} logical CPUs ({', '.join(isa)}); torch {torch.__version__}; "
            f"load average {load:.1f} at start")


def bf16_copy(tok: AudioTokenizer) -> AudioTokenizer:
    """A bf16 twin of ``tok`` without an intermediate fp32 copy (1.28 B params: 2.6 GB instead of 5.1 GB)."""
    with torch.device("meta"):
        model = MiMoAudioTokenizerModel(tok.config)
    keep_fp32 = ("quantizer", "istft")
    state = {k: v if any(s in k for s in keep_fp32) else v.to(torch.bfloat16)
             for k, v in tok.model.state_dict().items()}
    load_into(model, state)
    return AudioTokenizer(model, device="cpu", dtype=torch.bfloat16)


def speech_like(seconds: float, sr: int = 24000) -> np.ndarray:
    t = np.arange(int(seconds * sr)) / sr
    f0 = 130 + 30 * np.sin(2 * np.pi * 0.5 * t)
    phase = 2 * np.pi * np.cumsum(f0) / sr
    x = sum(np.sin(k * phase) / k for k in range(1, 12)) * (0.3 + 0.7 * np.sin(2 * np.pi * 2.5 * t) ** 2)
    return (0.2 * x + 0.005 * np.random.RandomState(0).randn(t.size)).astype(np.float32)


def snr_db(ref: torch.Tensor, out: torch.Tensor) -> float:
    noise = (ref - out).double().pow(2).sum().item()
    return float("inf") if noise == 0 else 10 * np.log10(ref.double().pow(2).sum().item() / noise)


def bench_offline(toks: dict[str, AudioTokenizer], wav: np.ndarray, threads: list[int], repeats: int) -> list[dict]:
    """Round-robin over (dtype, threads) inside each repeat, so every configuration sees the same machine load."""
    sr = next(iter(toks.values())).sample_rate
    seconds = len(wav) / sr
    configs = [(label, th) for label in toks for th in threads]
    wall = {c: {"enc": [], "dec": []} for c in configs}
    cpu = {c: {"enc": [], "dec": []} for c in configs}
    for label, th in configs:  # warm-up (oneDNN primitive creation, allocator)
        torch.set_num_threads(th)
        toks[label].decode(toks[label].encode(wav[: 2 * sr], sr))
    for rep in range(repeats):
        for label, th in configs:
            tok = toks[label]
            torch.set_num_threads(th)
            for stage in ("enc", "dec"):
                w0, c0 = time.perf_counter(), time.process_time()
                if stage == "enc":
                    codes = tok.encode(wav, sr)
                else:
                    tok.decode(codes)
                wall[(label, th)][stage].append(time.perf_counter() - w0)
                cpu[(label, th)][stage].append(time.process_time() - c0)
            print(f"  repeat {rep + 1}: {label} {th} thread(s): encode {wall[(label, th)]['enc'][-1]:6.2f} s, "
                  f"decode {wall[(label, th)]['dec'][-1]:6.2f} s (load {os.getloadavg()[0]:.1f})", flush=True)
    rows = []
    for label, th in configs:
        med = {k: statistics.median(v) for k, v in wall[(label, th)].items()}
        cmed = {k: statistics.median(v) for k, v in cpu[(label, th)].items()}
        rows.append(dict(dtype=label, threads=th, enc=med["enc"], dec=med["dec"], enc_rtf=med["enc"] / seconds,
                         dec_rtf=med["dec"] / seconds, enc_cpu=cmed["enc"] / seconds, dec_cpu=cmed["dec"] / seconds))
    return rows


def bench_stream(tok: AudioTokenizer, codes: torch.Tensor, chunk: int, lookaheads: list[int | None]) -> list[dict]:
    reference = tok.decode(codes, causal_norm=True)
    official = tok.decode(codes)
    rows = []
    for la in lookaheads:
        dec = tok.stream_decoder(lookahead=la)
        times, outs, first_chunk, ttfa = [], [], None, None
        t_start = time.perf_counter()
        for i in range(0, codes.shape[1], chunk):
            t0 = time.perf_counter()
            out = dec.push(codes[:, i : i + chunk])
            times.append(time.perf_counter() - t0)
            outs.append(out)
            if out.numel() and first_chunk is None:
                first_chunk, ttfa = i // chunk, time.perf_counter() - t_start
        t0 = time.perf_counter()
        outs.append(dec.flush())
        total = sum(times) + time.perf_counter() - t0
        out = torch.cat(outs)
        frames_before_audio = (first_chunk + 1) * chunk if first_chunk is not None else codes.shape[1]
        rows.append(dict(
            lookahead=dec.lookahead, exact=dec.exact, chunk_ms=chunk * 40, per_chunk=statistics.median(times),
            p90=float(np.percentile(times, 90)), rtf=total / (codes.shape[1] / tok.frame_rate),
            wait_ms=frames_before_audio * 40, ttfa=ttfa if ttfa is not None else float("nan"),
            snr_stream=snr_db(reference, out), snr_official=snr_db(official, out),
            max_abs=(reference - out).abs().max().item(),
        ))
        r = rows[-1]
        full = " (full)" if r["exact"] else "       "
        print(f"  lookahead {r['lookahead']:>2} frames{full}: chunk {r['chunk_ms']} ms, "
              f"median {r['per_chunk'] * 1e3:7.1f} ms/chunk (p90 {r['p90'] * 1e3:.1f}), RTF {r['rtf']:.3f}, "
              f"audio after {r['wait_ms']} ms of input + {r['ttfa'] * 1e3:.0f} ms compute; "
              f"SNR vs exact stream {r['snr_stream']:.1f} dB (max abs {r['max_abs']:.1e}), "
              f"vs official decode {r['snr_official']:.1f} dB", flush=True)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="official", choices=["official", "tiny"])
    ap.add_argument("--seconds", type=float, default=10.0, help="audio length (default 10 s)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--dtypes", default="fp32,bf16")
    ap.add_argument("--chunk", type=int, default=5, help="streaming chunk in code frames (default 5 = 200 ms)")
    ap.add_argument("--lookaheads", default="full,20,8,2", help="streaming lookaheads in code frames")
    ap.add_argument("--audio", help="benchmark on this audio file instead of a synthetic signal")
    args = ap.parse_args()

    print(f"machine: {machine()}")
    print("note: this machine is shared; timings are noisy (see the load average). Medians of "
          f"{args.repeats} runs.\n", flush=True)
    t0 = time.perf_counter()
    tok = AudioTokenizer.from_config(TokenizerConfig.preset(args.preset), seed=0, device="cpu")
    params = sum(p.numel() for p in tok.model.parameters())
    print(f"model: {args.preset}, {params / 1e6:.1f} M params (random weights), built in "
          f"{time.perf_counter() - t0:.1f} s", flush=True)
    if args.audio:
        from tokenizer.audio import prepare_waveform

        wav = prepare_waveform(args.audio, None, 24000).numpy()[: int(args.seconds * 24000)]
    else:
        wav = speech_like(args.seconds)
    seconds = len(wav) / 24000
    print(f"audio: {seconds:.1f} s\n\noffline encode / decode:", flush=True)

    threads = [int(t) for t in args.threads.split(",")]
    toks = {}
    for label in args.dtypes.split(","):
        if label == "fp32":
            toks[label] = tok
        else:  # a second copy, so the configurations can alternate within each repeat
            toks[label] = bf16_copy(tok)
    rows = bench_offline(toks, wav, threads, args.repeats)

    print("\n| dtype | threads | encode RTF | decode RTF | encode s | decode s | encode CPU-s / audio-s | "
          "decode CPU-s / audio-s |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['dtype']} | {r['threads']} | {r['enc_rtf']:.3f} | {r['dec_rtf']:.3f} | {r['enc']:.2f} | "
              f"{r['dec']:.2f} | {r['enc_cpu']:.3f} | {r['dec_cpu']:.3f} |")
    by = {(r["dtype"], r["threads"]): r for r in rows}
    for th in threads:
        if ("fp32", th) in by and ("bf16", th) in by:
            a, b = by[("fp32", th)], by[("bf16", th)]
            print(f"bf16 speed-up over fp32 ({th} thread(s)): encode x{a['enc'] / b['enc']:.2f}, "
                  f"decode x{a['dec'] / b['dec']:.2f}")
    for label in toks:
        if (label, 1) in by and (label, 2) in by:
            a, b = by[(label, 1)], by[(label, 2)]
            print(f"2 threads vs 1 ({label}): encode x{a['enc'] / b['enc']:.2f}, decode x{a['dec'] / b['dec']:.2f}")
    best = min(rows, key=lambda r: r["enc_rtf"] + r["dec_rtf"])
    goal = "MET" if best["enc_rtf"] <= 0.5 and best["dec_rtf"] <= 0.5 else "NOT met"
    print(f"goal RTF <= 0.5 for encode and decode on 2 cores: {goal} (best: {best['dtype']}, {best['threads']} "
          f"thread(s): encode {best['enc_rtf']:.3f}, decode {best['dec_rtf']:.3f})")
    print("CPU-s / audio-s with 1 thread = the RTF one otherwise idle core would give; the wall-clock RTF above "
          "includes waiting for the CPU while other processes run.")

    stream_dtype = best["dtype"]
    tok = toks[stream_dtype]
    del toks
    torch.set_num_threads(best["threads"])
    codes = tok.encode(wav, 24000)
    lookaheads = [None if x == "full" else int(x) for x in args.lookaheads.split(",")]
    full = tok.stream_decoder().full_lookahead
    lookaheads = list(dict.fromkeys(None if (la is not None and la >= full) else la for la in lookaheads))
    print(f"\nstreaming decode ({stream_dtype}, {best['threads']} thread(s), {args.chunk * 40} ms chunks, "
          f"{codes.shape[1]} frames):", flush=True)
    srows = bench_stream(tok, codes, args.chunk, lookaheads)
    print("\n| lookahead (frames) | ms / chunk (median) | stream RTF | input before first audio | compute to first "
          "audio | SNR vs exact stream | SNR vs official decode |")
    print("|---|---|---|---|---|---|---|")
    for r in srows:
        snr = f"exact (max abs {r['max_abs']:.0e})" if r["exact"] else f"{r['snr_stream']:.1f} dB"
        print(f"| {r['lookahead']}{' (full)' if r['exact'] else ''} | {r['per_chunk'] * 1e3:.0f} | {r['rtf']:.3f} | "
              f"{r['wait_ms']} ms | {r['ttfa'] * 1e3:.0f} ms | {snr} | {r['snr_official']:.1f} dB |")
    print(f"\ntotal benchmark time {time.perf_counter() - t0:.0f} s; load average at end {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
