"""MoE expert offload on CPU: on-demand vs pre-gated vs speculative prefetch vs all-in-memory.

Part 1 (speed): a randomly initialised Qwen2-MoE model (12 layers x 16 experts, top-2, ~1.8 GB of
experts) decodes greedily with a 256 MiB expert-cache budget (the experts are ~7x the budget). Each
mode runs in its own process, so peak RSS is per mode; modes are interleaved and repeated, medians
quoted. Expert reads come from the page cache ("warm"), and with --cold through O_DIRECT, which
bypasses the page cache like a real disk read.

Part 2 (quality of pre-gating, real weights): SmolLM2-135M MoEfied into 8 experts/layer with top-6
hard routing and least-squares routers; held-out perplexity with its routers, with pre-gates copied
from the next router, and with pre-gates distilled from the routers on the training text.

    python -m bench.bench_moe [--tokens 24] [--repeats 2] [--cold] [--skip-quality]

The CPU is shared with other engineers: numbers are noisy; compare the ratios measured side by side.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]

MODES = ["resident", "on_demand", "pregated", "speculative"]


def build_model(directory: Path) -> None:
    from transformers import Qwen2MoeConfig, Qwen2MoeForCausalLM

    if (directory / "config.json").is_file():
        return
    cfg = Qwen2MoeConfig(vocab_size=4096, hidden_size=512, intermediate_size=1024, num_hidden_layers=12,
                         num_attention_heads=8, num_key_value_heads=4, moe_intermediate_size=1536,
                         shared_expert_intermediate_size=256, num_experts=16, num_experts_per_tok=2,
                         norm_topk_prob=False, max_position_embeddings=1024)
    torch.manual_seed(0)
    model = Qwen2MoeForCausalLM(cfg).eval()
    with torch.no_grad():  # default init gives near-uniform routers that pick the same experts for every token
        for layer in model.model.layers:
            layer.mlp.gate.weight.mul_(10.0)
    model.save_pretrained(directory)


def _peak_rss_mb(field: str = "VmHWM") -> float:
    """VmHWM (peak) or VmRSS (now) of this process; ru_maxrss would inherit the parent's peak across exec."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def worker(args: argparse.Namespace) -> None:
    torch.set_num_threads(args.threads)
    if args.switch_interval:
        sys.setswitchinterval(args.switch_interval)
    from transformers import AutoModelForCausalLM, DynamicCache

    from efficient._hf import cache_kwargs
    from efficient.moe import load_offloaded, make_pregates

    t0 = time.perf_counter()
    if args.worker == "resident":
        model, engine = AutoModelForCausalLM.from_pretrained(args.dir, dtype=torch.float32).eval(), None
        with torch.no_grad():  # really in memory, not lazily paged in from a memory-mapped file
            for prm in model.parameters():
                prm.data = prm.data.clone()
    else:
        start = "on_demand" if args.worker == "pregated" else args.worker
        model, engine = load_offloaded(args.dir, args.budget, mode=start, direct_io=args.cold,
                                       prefetch_threads=args.prefetch_threads)
        if args.worker == "pregated":
            make_pregates(engine)  # random model: pre-gates = next routers (no text to distil on)
            engine.set_mode("pregated")
    load_s = time.perf_counter() - t0
    # A random model's greedy output repeats one token, so its routing would repeat too and flatter the
    # LRU: decode a fixed random token stream instead (one token per forward, KV cache as in decoding).
    stream = torch.randint(0, model.config.vocab_size, (8 + args.tokens,), generator=torch.Generator().manual_seed(0))
    out = []
    with torch.no_grad():
        cache = DynamicCache()
        logits = model(stream[None, :8], use_cache=True, **cache_kwargs(model, cache)).logits
        out.append(int(logits[0, -1].argmax()))
        if engine is not None:
            engine.cache.reset_stats()
            engine.prefetch_predictions = engine.prefetch_correct = 0
        t1 = time.perf_counter()
        for i in range(args.tokens - 1):
            logits = model(stream[None, 8 + i : 9 + i], use_cache=True, **cache_kwargs(model, cache)).logits
            out.append(int(logits[0, -1].argmax()))
        dt = time.perf_counter() - t1
    n = args.tokens - 1
    res = {"mode": args.worker, "tok_s": n / dt, "load_s": load_s, "tokens": out,
           "peak_rss_mb": _peak_rss_mb(), "end_rss_mb": _peak_rss_mb("VmRSS")}
    if engine is not None:
        st = engine.cache.stats
        res.update(hit_rate=st.hit_rate, mb_read_per_tok=st.bytes_read / n / 2**20,
                   blocked_s_per_tok=st.time_blocked / n, cache_peak_mb=st.peak_bytes / 2**20)
        if engine.prefetch_predictions:
            res["prefetch_precision"] = engine.prefetch_correct / engine.prefetch_predictions
    print("RESULT " + json.dumps(res))


def run_worker(mode: str, args: argparse.Namespace) -> dict:
    cmd = [sys.executable, "-m", "bench.bench_moe", "--worker", mode, "--dir", str(args.dir),
           "--budget", str(args.budget),
           "--tokens", str(args.tokens), "--threads", str(args.threads),
           "--prefetch-threads", str(args.prefetch_threads),
           "--switch-interval", str(args.switch_interval)] + (["--cold"] if args.cold else [])
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env={"PYTHONPATH": str(ROOT),
                          "PATH": "/usr/bin:/bin", "HOME": str(Path.home())})
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[7:])
    raise RuntimeError(f"worker {mode} failed:\n{proc.stderr[-3000:]}")


def speed(args: argparse.Namespace) -> None:
    build_model(args.dir)
    expert_bytes = sum(f.stat().st_size for f in args.dir.glob("*.safetensors"))
    print(f"model: {args.dir} ({expert_bytes / 2**30:.2f} GiB on disk), expert-cache budget "
          f"{args.budget / 2**20:.0f} MiB, {args.tokens} tokens, {args.threads} torch thread(s), "
          f"{args.prefetch_threads} prefetch thread(s), "
          f"reads {'O_DIRECT (cold)' if args.cold else 'through the page cache (warm)'}")
    modes = [m for m in MODES if m in args.modes.split(",")]
    runs: dict[str, list[dict]] = {m: [] for m in modes}
    for r in range(args.repeats):
        for m in modes:
            res = run_worker(m, args)
            runs[m].append(res)
            print(f"  repeat {r} {m:12s} {res['tok_s']:.2f} tok/s", flush=True)
    med = {m: {k: statistics.median(x[k] for x in v) for k in v[0] if isinstance(v[0][k], float)}
           for m, v in runs.items()}
    if len(modes) < len(MODES):
        for m in modes:
            print(m, {k: round(v, 3) for k, v in med[m].items()})
        return
    same = runs["on_demand"][0]["tokens"] == runs["speculative"][0]["tokens"] == runs["resident"][0]["tokens"]
    print("\nmedians over repeats; every mode ran in its own process, modes interleaved")
    print("\n| mode | tok/s | vs on-demand | hit rate | MiB read/token | blocked ms/token | peak RSS MiB |"
          " RSS after decode MiB | peak RSS / all-in-memory RSS |")
    print("|---|---|---|---|---|---|---|---|---|")
    for m in MODES:
        d = med[m]
        hr = f"{d['hit_rate']:.2f}" if "hit_rate" in d else "-"
        rd = f"{d['mb_read_per_tok']:.0f}" if "mb_read_per_tok" in d else "0"
        bl = f"{1000 * d['blocked_s_per_tok']:.0f}" if "blocked_s_per_tok" in d else "0"
        ratio = d["peak_rss_mb"] / med["resident"]["end_rss_mb"]
        print(f"| {m} | {d['tok_s']:.2f} | {d['tok_s'] / med['on_demand']['tok_s']:.2f}x | {hr} | {rd} | {bl} | "
              f"{d['peak_rss_mb']:.0f} | {d['end_rss_mb']:.0f} | {ratio:.0%} |")
    print("(all-in-memory RSS = its RSS after decode: its peak also counts the loader's transient second copy)")
    if "prefetch_precision" in med["speculative"]:
        print(f"share of each block's experts already cached or in flight when it routes: speculative "
              f"{med['speculative']['prefetch_precision']:.2f}, pre-gated {med['pregated']['prefetch_precision']:.2f}")
    print(f"argmax tokens identical (resident == on_demand == speculative): {same}; pre-gated differs by design: "
          f"{runs['pregated'][0]['tokens'] != runs['resident'][0]['tokens']}")


@torch.no_grad()
def quality(args: argparse.Namespace) -> None:
    torch.set_num_threads(args.threads)
    from bench.common.perplexity import perplexity
    from efficient.moe import MemoryExpertStore, distill_pregates, fit_routers, make_pregates, moefy, offload_moe
    from eval.reference_models import load_smollm2
    from eval.textdata import offline_english_text

    model, tok = load_smollm2()
    seq, nb = 128, args.quality_batches

    def batches(split: str, n: int) -> list[torch.Tensor]:
        ids = tok(offline_english_text(split)[: 4000 * n], return_tensors="pt").input_ids[0]
        return [ids[i * seq * 2 : (i + 1) * seq * 2].view(2, seq) for i in range(n)]

    train, test = batches("train", nb), batches("test", nb)

    def ppl() -> float:
        return perplexity(model, test)

    t0 = time.perf_counter()
    rows = [("dense SmolLM2-135M", ppl())]
    moefy(model, num_experts=8, top_k=args.quality_topk)
    fit_routers(model, train)
    rows.append((f"MoEfied 8 experts, top-{args.quality_topk}, own routers", ppl()))
    experts = {(i, e): (ex.gate_proj.weight, ex.up_proj.weight, ex.down_proj.weight)
               for i, layer in enumerate(model.model.layers) for e, ex in enumerate(layer.mlp.experts)}
    engine = offload_moe(model, MemoryExpertStore(experts), None, mode="resident")
    make_pregates(engine)
    engine.set_mode("pregated")
    rows.append(("pre-gated, pre-gate = next router (no fine-tune)", ppl()))
    rep = distill_pregates(model, engine, train)
    engine.set_mode("pregated")
    rows.append(("pre-gated, pre-gates distilled on train text", ppl()))
    print(f"\nPre-gating quality on MoEfied SmolLM2 ({nb}x2x{seq} train tokens to fit, {nb}x2x{seq} held-out "
          f"tokens; {time.perf_counter() - t0:.0f} s)")
    print("| model | held-out perplexity |\n|---|---|")
    for name, p in rows:
        print(f"| {name} | {p:.2f} |")
    print(f"pre-gate top-{args.quality_topk} overlap with the true router (train data): "
          f"{rep['topk_overlap_before']:.2f} before, {rep['topk_overlap_after']:.2f} after distillation")
    # how well does the lossless speculative predictor (next router on this block's input) do on real weights?
    from efficient.moe import ExpertCache

    store = engine.store
    engine.cache = ExpertCache(store, 3 * args.quality_topk * 2 * store.expert_bytes((0, 0)))
    engine.set_mode("speculative")
    from transformers import DynamicCache

    from efficient._hf import cache_kwargs

    engine.prefetch_predictions = engine.prefetch_correct = 0
    kv, seq_ids = DynamicCache(), test[0][:1, :48]
    for t in range(seq_ids.shape[1]):  # token by token, as in decoding
        model(input_ids=seq_ids[:, t : t + 1], use_cache=True, **cache_kwargs(model, kv))
    share = engine.prefetch_correct / engine.prefetch_predictions
    print(f"speculative prefetch on MoEfied SmolLM2 (real weights, 48 decode steps): share of each block's experts "
          f"already prefetched or cached when it routes = {share:.2f}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dir", type=Path, default=Path("/tmp/mimo_bench_moe"))
    p.add_argument("--budget", type=int, default=256 * 2**20)
    p.add_argument("--tokens", type=int, default=24)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--prefetch-threads", type=int, default=1, help="background read threads")
    p.add_argument("--switch-interval", type=float, default=0.0, help="sys.setswitchinterval for the workers")
    p.add_argument("--cold", action="store_true", help="read experts with O_DIRECT (bypass the page cache)")
    p.add_argument("--modes", default=",".join(MODES), help="comma-separated subset (prints raw medians)")
    p.add_argument("--skip-speed", action="store_true")
    p.add_argument("--skip-quality", action="store_true")
    p.add_argument("--quality-batches", type=int, default=4)
    p.add_argument("--quality-topk", type=int, default=6)
    p.add_argument("--worker", choices=MODES, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        worker(args)
        return
    if not args.skip_speed:
        speed(args)
    if not args.skip_quality:
        quality(args)


if __name__ == "__main__":
    main()
