"""Benchmark: HySparse and hybrid SWA+sinks against full attention, side by side in one run.

SmolLM2-135M-Instruct (real weights, 30 layers): full attention (the unmodified transformers model with its
DynamicCache) against HySparse 1:3, the sparsest HySparse layout (full first and last layers only, with and
without TidalDecode-style re-selection) and hybrid SWA 5:1 with sinks, all converted training-free
(sinks and gates fitted on 1k tokens of the train text). Reported:

- KV-cache bytes at 1k/4k/8k context (measured from the cache tensors, and the ratio to full attention);
- decode tokens/s at 1k/4k/8k: caches are filled with random K/V of that length (decode cost does not depend
  on the values), then greedy steps are timed, configs interleaved, median over repeats; speed-ups by wall
  clock and by process CPU time (the latter leaves out the time spent waiting for a core on a shared machine);
- perplexity on held-out text (the "What's New" docs) and passkey retrieval at 2k/4k/8k (the prompt plus the
  8 answer tokens fit in the length), before and after a healing fine-tune (KL to the original model) of the
  new parameters;
- with ``--qwen`` (or ``--qwen-only``): the speech LM's official backbone shape (Qwen2: hidden 4096, 32 q / 8 kv
  heads, head dim 128, FFN 11008) with random bf16 weights and fewer layers than 36: KV bytes and decode speed.

One command fills every cell of both SmolLM2 tables; rows are printed (and written to ``--json``) as they finish.
The machine is shared (2 cores, other jobs running): timings are noisy; read the ratios, not the absolutes.
Run: ``python -m bench.bench_attention [--quick] [--json out.json]``.
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import time

import torch
from transformers import DynamicCache

from bench.common.passkey import passkey_prompts
from bench.common.perplexity import perplexity
from efficient._hf import cache_kwargs
from efficient.attention import HybridAttentionCache, apply_attention, heal, kv_cache_bytes
from efficient.attention.cache import FullKVLayer
from efficient.spec.target import rollback

LAYOUTS = ["hysparse-1:3", "hysparse-sparsest", "hysparse-sparsest-reselect", "swa-5:1"]


def random_cache(model, n: int, dtype: torch.dtype, seed: int = 0):
    """A cache of ``n`` random positions: DynamicCache for the original model, HybridAttentionCache otherwise."""
    cfg = model.config
    heads, kv = cfg.num_attention_heads, cfg.num_key_value_heads
    hd = getattr(cfg, "head_dim", None) or cfg.hidden_size // heads
    gen = torch.Generator().manual_seed(seed)
    layers = cfg.num_hidden_layers

    def kv_pair(length):
        return (torch.randn(1, kv, length, hd, generator=gen).to(dtype),
                torch.randn(1, kv, length, hd, generator=gen).to(dtype))

    if getattr(cfg, "efficient_attention", None) is None:
        cache = DynamicCache()
        for i in range(layers):
            cache.update(*kv_pair(n), i)
        return cache
    cache = HybridAttentionCache.for_model(model, max_cache_len=n + 64)
    for layer in cache.layers:
        if isinstance(layer, FullKVLayer):
            layer.update(*kv_pair(n), {"cache_position": torch.arange(n)})
        else:
            k, v = kv_pair(layer.capacity)
            layer.seen = n - layer.capacity
            layer.write(k, v, torch.arange(n - layer.capacity, n))
    return cache


def cache_bytes(cache) -> int:
    if isinstance(cache, HybridAttentionCache):
        return cache.memory().kv_bytes
    return sum(layer.keys.nbytes + layer.values.nbytes for layer in cache.layers)


@torch.no_grad()
def decode_speed(models: dict, contexts: list[int], steps: int, repeats: int, dtype) -> dict:
    """tokens/s per (config, context) by wall clock and by process CPU time (what this process computed, without
    the time it waited for a core on a shared machine), configs interleaved in each repeat; KV bytes."""
    speed, cpu, kvb = {}, {}, {}
    for n in contexts:
        caches = {name: random_cache(m, n, dtype) for name, m in models.items()}
        for name, cache in caches.items():
            kvb[name, n] = cache_bytes(cache)
        times: dict[str, list[float]] = {name: [] for name in models}
        cpu_times: dict[str, list[float]] = {name: [] for name in models}
        token = torch.tensor([[42]])
        for _ in range(repeats):
            for name, m in models.items():
                cache = caches[name]
                t0, c0 = time.perf_counter(), time.process_time()
                tok = token
                for i in range(steps):
                    out = m(tok, logits_to_keep=1, **cache_kwargs(m, cache, torch.tensor([n + i])))
                    tok = out.logits[:, -1:].argmax(-1)
                times[name].append((time.perf_counter() - t0) / steps)
                cpu_times[name].append((time.process_time() - c0) / steps)
                rollback(cache, n)
        for name in models:
            speed[name, n] = 1.0 / statistics.median(times[name])
            cpu[name, n] = 1.0 / statistics.median(cpu_times[name])
        del caches
    return speed, cpu, kvb


# ----------------------------------------------------------------------------------------------- quality
def held_out_perplexity(model, ids: torch.Tensor, seq_len: int) -> float:
    """Perplexity on the first ``seq_len`` held-out tokens, as one window."""
    return perplexity(model, [ids[:, :seq_len]])


def passkey_accuracy(model, prompts, new_tokens: int = 8) -> float:
    hits = 0
    for ids, key in prompts:
        cache = DynamicCache() if getattr(model.config, "efficient_attention", None) is None else \
            HybridAttentionCache.for_model(model)
        out = model(input_ids=ids, logits_to_keep=1, **cache_kwargs(model, cache))
        tokens = []
        for _ in range(new_tokens):
            nxt = out.logits[:, -1:].argmax(-1)
            tokens.append(int(nxt))
            out = model(input_ids=nxt, logits_to_keep=1, **cache_kwargs(model, cache))
        text = model._bench_tok.decode(tokens)
        hits += key in text.replace(" ", "")
    return hits / len(prompts)


# ------------------------------------------------------------------------------------------------- qwen2
@torch.no_grad()
def qwen_backbone(layers: int, contexts: list[int], steps: int, repeats: int) -> list[str]:
    from transformers import Qwen2Config, Qwen2ForCausalLM
    try:  # transformers 5.x
        from transformers.initialization import no_init_weights
    except ImportError:  # 4.x
        from transformers.modeling_utils import no_init_weights

    cfg = Qwen2Config(vocab_size=1024, hidden_size=4096, intermediate_size=11008, num_hidden_layers=layers,
                      num_attention_heads=32, num_key_value_heads=8, max_position_embeddings=65536,
                      rope_theta=1_000_000.0, tie_word_embeddings=False)
    def empty_model():
        # bf16 from the start and no init: a 36-layer-wide model is gigabytes; copies share the base's tensors
        previous = torch.get_default_dtype()
        torch.set_default_dtype(torch.bfloat16)
        try:
            with no_init_weights():
                return Qwen2ForCausalLM(copy.deepcopy(cfg)).eval()
        finally:
            torch.set_default_dtype(previous)

    base = empty_model()
    gen = torch.Generator().manual_seed(0)
    for p in base.parameters():
        p.copy_((torch.randn(p.shape, generator=gen) * 0.02).to(p.dtype))
    models = {"full (transformers)": base}
    for layout in ["hysparse-1:3", "hysparse-sparsest", "swa-5:1"]:
        m = empty_model()
        m.load_state_dict(base.state_dict(), assign=True)
        models[layout] = apply_attention(m, layout, init="random")
    speed, _, kvb = decode_speed(models, contexts, steps, repeats, torch.bfloat16)
    lines = [f"Qwen2 backbone shape (hidden 4096, 32/8 heads, head dim 128, FFN 11008), {layers} of 36 layers, "
             "random bf16 weights",
             "| layout | layers F/total | " + " | ".join(f"KV MiB @{n // 1024}k | tok/s @{n // 1024}k | speed-up"
                                                        for n in contexts) + " | KV @32k, 36 layers (formula) |",
             "|---" * (2 + 3 * len(contexts) + 1) + "|"]
    for name, m in models.items():
        layout = getattr(m.config, "efficient_attention", {"layout": "F" * layers})["layout"]
        cells = []
        for n in contexts:
            cells += [f"{kvb[name, n] / 2**20:.0f}", f"{speed[name, n]:.2f}",
                      f"{speed[name, n] / speed['full (transformers)', n]:.2f}x"]
        from efficient.attention import AttentionConfig, resolve_layout

        preset = "full" if name.startswith("full") else name
        full36 = AttentionConfig(layout=resolve_layout(preset, 36))
        formula = kv_cache_bytes(full36, 32768, 8, 128)
        lines.append(f"| {name} | {layout.count('F')}/{layers} | " + " | ".join(cells) +
                     f" | {formula / 2**30:.2f} GiB ({full36.layout.count('F')} full) |")
    return lines


# -------------------------------------------------------------------------------------------------- main
SPEED_CONFIGS = ["hysparse-1:3", "hysparse-sparsest", "hysparse-sparsest-reselect", "swa-5:1"]
QUALITY_CONFIGS = ["hysparse-1:3", "hysparse-sparsest", "swa-5:1"]
BASE = "full (transformers)"


def _dump(path: str | None, results: dict) -> None:
    if path:
        with open(path, "w") as f:
            json.dump(results, f, indent=1, default=str)


def speed_table(models: dict, contexts: list[int], steps: int, repeats: int, results: dict) -> None:
    speed, cpu, kvb = decode_speed(models, contexts, steps=steps, repeats=repeats, dtype=torch.float32)
    print(f"\nSmolLM2-135M, fp32, batch 1: KV cache and decode speed (random-filled cache, {steps} steps x {repeats} "
          "repeats, configs interleaved, medians; wall-clock and process CPU time on a shared, noisy CPU)")
    head = " | ".join(f"KV MiB @{n // 1024}k | KV ratio | tok/s @{n // 1024}k | speed-up (wall) | speed-up (CPU)"
                      for n in contexts)
    print("| config | layout F/30 | " + head + " |")
    print("|---" * (2 + 5 * len(contexts)) + "|")
    for name, m in models.items():
        layout = getattr(m.config, "efficient_attention", {"layout": "F" * 30})["layout"]
        cells = []
        for n in contexts:
            cells += [f"{kvb[name, n] / 2**20:.1f}", f"{kvb[BASE, n] / kvb[name, n]:.2f}x", f"{speed[name, n]:.2f}",
                      f"{speed[name, n] / speed[BASE, n]:.2f}x", f"{cpu[name, n] / cpu[BASE, n]:.2f}x"]
        print(f"| {name} | {layout.count('F')} | " + " | ".join(cells) + " |", flush=True)
        results.setdefault(name, {}).update(
            layout=layout, kv_bytes={n: kvb[name, n] for n in contexts}, tok_s={n: speed[name, n] for n in contexts},
            cpu_tok_s={n: cpu[name, n] for n in contexts})


def quality_rows(models: dict, model, tok, train, test, prompts, args, results: dict) -> None:
    """Perplexity and passkey for every config, then the same after healing; each row as soon as it is done."""
    for name, m in models.items():
        if args.healed_only:
            break
        t0 = time.perf_counter()
        ppl = held_out_perplexity(m, test, args.ppl_len)
        pk = {n: passkey_accuracy(m, p) for n, p in prompts.items()}
        results.setdefault(name, {}).update(ppl=ppl, passkey=pk)
        print(f"quality {name}: ppl {ppl:.2f}, passkey {pk} ({time.perf_counter() - t0:.0f} s)", flush=True)
        _dump(args.json, results)
    heal_ids = train[0, args.calib_tokens:]
    for name, m in models.items():
        if name == BASE or args.heal_steps == 0:
            continue
        t0 = time.perf_counter()
        h = copy.deepcopy(m)
        h._bench_tok = tok
        losses = heal(h, heal_ids, teacher=model, steps=args.heal_steps, seq_len=args.heal_seq_len, lr=args.heal_lr)
        heal_s = time.perf_counter() - t0
        ppl = held_out_perplexity(h, test, args.ppl_len)
        pk = {n: passkey_accuracy(h, p) for n, p in prompts.items()}
        results.setdefault(name, {})["healed"] = dict(ppl=ppl, passkey=pk, kl_first=losses[0], kl_last=losses[-1],
                                       kl_last5=statistics.mean(losses[-5:]), kl_first5=statistics.mean(losses[:5]),
                                       seconds=heal_s)
        print(f"healed {name}: KL {losses[0]:.3f} -> {losses[-1]:.3f} (mean of first/last 5: "
              f"{statistics.mean(losses[:5]):.3f} -> {statistics.mean(losses[-5:]):.3f}; {heal_s:.0f} s), "
              f"ppl {ppl:.2f}, passkey {pk} ({time.perf_counter() - t0:.0f} s)", flush=True)
        del h
        _dump(args.json, results)


def print_quality(results: dict, names: list[str], lengths: list[int], args) -> None:
    print(f"\nQuality: perplexity on {args.ppl_len} held-out tokens; passkey accuracy over {args.passkey_trials} "
          f"prompts per length (prompt = length - 8 tokens, 8 greedy answer tokens); healing = {args.heal_steps} "
          f"steps x {args.heal_seq_len} tokens, KL to the original, new parameters only, lr {args.heal_lr}")
    pk_head = " | ".join(f"passkey {n // 1024}k" for n in lengths)
    print(f"| config | ppl | Δppl | {pk_head} | healed ppl | healed Δppl | "
          + " | ".join(f"healed passkey {n // 1024}k" for n in lengths) + " | healing KL (mean first 5 -> last 5) |")
    print("|---" * (4 + 2 * len(lengths) + 3) + "|")
    ref = results.get(BASE, {}).get("ppl", float("nan"))
    for name in names:
        r = results.get(name, {})
        if "ppl" not in r and "healed" not in r:
            continue
        cells = ([f"{r['ppl']:.2f}", f"{r['ppl'] - ref:+.2f}"] + [f"{r['passkey'][n]:.0%}" for n in lengths]
                 if "ppl" in r else ["(other run)"] * (2 + len(lengths)))
        h = r.get("healed")
        if h:
            cells += [f"{h['ppl']:.2f}", f"{h['ppl'] - ref:+.2f}"] + [f"{h['passkey'][n]:.0%}" for n in lengths]
            cells.append(f"{h['kl_first5']:.3f} -> {h['kl_last5']:.3f}")
        else:
            cells += ["-"] * (3 + len(lengths))
        print(f"| {name} | " + " | ".join(cells) + " |", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small sizes: a few minutes on a shared 2-core CPU")
    ap.add_argument("--heal-steps", type=int, default=None, help="healing steps per config (default 40; quick 4)")
    ap.add_argument("--heal-seq-len", type=int, default=256)
    ap.add_argument("--heal-lr", type=float, default=5e-3)
    ap.add_argument("--passkey-trials", type=int, default=2)
    ap.add_argument("--passkey-lengths", help="comma-separated context lengths (default 2048,4096,8192)")
    ap.add_argument("--contexts", help="comma-separated decode contexts (default 1024,4096,8192)")
    ap.add_argument("--ppl-len", type=int, default=None, help="held-out tokens for perplexity (default 2048)")
    ap.add_argument("--calib-tokens", type=int, default=1024, help="calibration tokens for sinks and gates")
    ap.add_argument("--configs", help="comma-separated layouts for the speed table (default: " +
                    ",".join(SPEED_CONFIGS) + ")")
    ap.add_argument("--quality-configs", help="comma-separated layouts for the quality table (default: " +
                    ",".join(QUALITY_CONFIGS) + ")")
    ap.add_argument("--skip-speed", action="store_true")
    ap.add_argument("--skip-quality", action="store_true")
    ap.add_argument("--healed-only", action="store_true", help="quality after healing only (to split runs)")
    ap.add_argument("--no-baseline", action="store_true",
                    help="no quality row for the unmodified model (when another process measures it)")
    ap.add_argument("--qwen", action="store_true", help="also the Qwen2 backbone-shape table (slow)")
    ap.add_argument("--qwen-only", action="store_true", help="only the Qwen2 backbone-shape table")
    ap.add_argument("--qwen-layers", type=int, default=None)
    ap.add_argument("--steps", type=int, default=4, help="decode steps per timing")
    ap.add_argument("--repeats", type=int, default=5, help="timing repeats (median)")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads (default 1: on a shared, oversubscribed CPU every small op of a 2-thread "
                         "run waits for the other thread, which hides the attention cost behind sync overhead)")
    ap.add_argument("--json", help="write the numbers here (updated after every finished row)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    q = args.quick
    contexts = [int(x) for x in args.contexts.split(",")] if args.contexts else ([1024, 2048] if q else
                                                                                 [1024, 4096, 8192])
    lengths = [int(x) for x in args.passkey_lengths.split(",")] if args.passkey_lengths else (
        [1024, 2048] if q else [2048, 4096, 8192])
    args.heal_steps = args.heal_steps if args.heal_steps is not None else (4 if q else 40)
    args.ppl_len = args.ppl_len or (512 if q else 2048)
    qwen_layers = args.qwen_layers or (4 if q else 8)
    qwen_contexts = [8192, 16384] if q else [16384, 32768]
    torch.manual_seed(0)
    if args.qwen_only:
        print("\n".join(qwen_backbone(qwen_layers, qwen_contexts, steps=2, repeats=2)))
        return
    from eval.reference_models import load_smollm2
    from eval.textdata import offline_english_text

    model, tok = load_smollm2()
    model._bench_tok = tok
    train = tok(offline_english_text("train")[:400_000], return_tensors="pt").input_ids
    test_text = offline_english_text("test")
    test = tok(test_text[:200_000], return_tensors="pt").input_ids
    speed_cfgs = args.configs.split(",") if args.configs else (SPEED_CONFIGS[:2] + SPEED_CONFIGS[3:] if q
                                                                 else SPEED_CONFIGS)
    quality_cfgs = args.quality_configs.split(",") if args.quality_configs else QUALITY_CONFIGS
    models = {BASE: model}
    wanted = ([] if args.skip_speed else speed_cfgs) + ([] if args.skip_quality else quality_cfgs)
    for layout in dict.fromkeys(wanted):
        t0 = time.perf_counter()
        conv = apply_attention(model, layout, inplace=False, calibration_ids=train[:, : args.calib_tokens])
        conv._bench_tok = tok
        models[layout] = conv
        print(f"converted {layout:28s} {conv.config.efficient_attention['layout']} "
              f"({time.perf_counter() - t0:.0f} s incl. calibration)", flush=True)
    results: dict = {"contexts": contexts, "passkey_lengths": lengths, "args": vars(args)}
    if not args.skip_speed:
        speed_table({k: models[k] for k in [BASE] + speed_cfgs}, contexts, args.steps, args.repeats, results)
        _dump(args.json, results)
    if not args.skip_quality:
        prompts = {n: passkey_prompts(tok, test_text, n - 8, args.passkey_trials, seed=n) for n in lengths}
        names = quality_cfgs if args.no_baseline else [BASE] + quality_cfgs
        quality_rows({k: models[k] for k in names}, model, tok, train, test, prompts, args, results)
        print_quality(results, [BASE] + quality_cfgs, lengths, args)
    if args.qwen:
        del models
        lines = qwen_backbone(qwen_layers, qwen_contexts, steps=2, repeats=2)
        print("\n" + "\n".join(lines), flush=True)
        results["qwen2"] = lines
    _dump(args.json, results)


if __name__ == "__main__":
    main()
