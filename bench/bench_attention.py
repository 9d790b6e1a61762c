"""Benchmark: HySparse and hybrid SWA+sinks against full attention, side by side in one run.

SmolLM2-135M-Instruct (real weights, 30 layers): full attention (the unmodified transformers model with its
DynamicCache) against HySparse 1:3, the sparsest HySparse layout (full first and last layers only, with and
without TidalDecode-style re-selection) and hybrid SWA 5:1 with sinks, all converted training-free
(sinks and gates fitted on 1k tokens of the train text). Reported:

- KV-cache bytes at 1k/4k/8k context (measured from the cache tensors, and the ratio to full attention);
- decode tokens/s at 1k/4k/8k: caches are filled with random K/V of that length (decode cost does not depend
  on the values), then greedy steps are timed, configs interleaved, median over repeats;
- perplexity on held-out text (the "What's New" docs) and passkey retrieval at 2k/4k/8k, before and after a
  short healing fine-tune (KL to the original model) of the new parameters;
- the speech LM's official backbone shape (Qwen2: hidden 4096, 32 q / 8 kv heads, head dim 128, FFN 11008)
  with random bf16 weights and fewer layers than 36 (``--qwen-layers``): KV bytes and decode speed.

The machine is shared (2 cores, other jobs running): timings are noisy; read the ratios, not the absolutes.
Run: ``PYTHONPATH=. python bench/bench_attention.py [--quick]``.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import random
import statistics
import time

import torch
from transformers import DynamicCache

from efficient.attention import HybridAttentionCache, apply_attention, heal, kv_cache_bytes
from efficient.attention.cache import FullKVLayer

LAYOUTS = ["hysparse-1:3", "hysparse-sparsest", "hysparse-sparsest-reselect", "swa-5:1"]


def _median_time(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


# ---------------------------------------------------------------------------------------------------- caches
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
    """tokens/s per (config, context), configs interleaved in each repeat; KV bytes per (config, context)."""
    speed, kvb = {}, {}
    for n in contexts:
        caches = {name: random_cache(m, n, dtype) for name, m in models.items()}
        for name, cache in caches.items():
            kvb[name, n] = cache_bytes(cache)
        times: dict[str, list[float]] = {name: [] for name in models}
        token = torch.tensor([[42]])
        for _ in range(repeats):
            for name, m in models.items():
                cache = caches[name]
                t0 = time.perf_counter()
                tok = token
                for i in range(steps):
                    out = m(tok, past_key_values=cache, cache_position=torch.tensor([n + i]), logits_to_keep=1)
                    tok = out.logits[:, -1:].argmax(-1)
                times[name].append((time.perf_counter() - t0) / steps)
                cache.crop(n)
        for name in models:
            speed[name, n] = 1.0 / statistics.median(times[name])
        del caches
    return speed, kvb


# ----------------------------------------------------------------------------------------------- quality
@torch.no_grad()
def perplexity(model, ids: torch.Tensor, seq_len: int, segments: int) -> float:
    nll, count = 0.0, 0
    for s in range(segments):
        x = ids[:, s * seq_len : (s + 1) * seq_len]
        logits = model(input_ids=x, use_cache=False).logits[0, :-1].float()
        nll += float(torch.nn.functional.cross_entropy(logits, x[0, 1:], reduction="sum"))
        count += x.shape[1] - 1
    return math.exp(nll / count)


def passkey_prompts(tok, filler: str, length: int, trials: int, seed: int) -> list[tuple[torch.Tensor, str]]:
    rng = random.Random(seed)
    head = ("There is an important pass key hidden inside a lot of irrelevant text. Find it and memorize it. "
            "I will quiz you about the pass key.\n\n")
    filler_ids = tok(filler, add_special_tokens=False).input_ids
    out = []
    for _ in range(trials):
        key = str(rng.randint(10000, 99999))
        needle = tok(f"\n\nThe pass key is {key}. Remember it. {key} is the pass key.\n\n",
                     add_special_tokens=False).input_ids
        tail = tok("\n\nWhat is the pass key? The pass key is", add_special_tokens=False).input_ids
        head_ids = tok(head, add_special_tokens=False).input_ids
        budget = length - len(head_ids) - len(needle) - len(tail)
        start = rng.randint(0, len(filler_ids) - budget - 1)
        body = filler_ids[start : start + budget]
        depth = rng.randint(int(0.1 * budget), int(0.9 * budget))
        ids = head_ids + body[:depth] + needle + body[depth:] + tail
        out.append((torch.tensor([ids]), key))
    return out


@torch.no_grad()
def passkey_accuracy(model, prompts, new_tokens: int = 8) -> float:
    hits = 0
    for ids, key in prompts:
        cache = DynamicCache() if getattr(model.config, "efficient_attention", None) is None else \
            HybridAttentionCache.for_model(model)
        out = model(input_ids=ids, past_key_values=cache, logits_to_keep=1)
        tokens = []
        for _ in range(new_tokens):
            nxt = out.logits[:, -1:].argmax(-1)
            tokens.append(int(nxt))
            out = model(input_ids=nxt, past_key_values=cache, logits_to_keep=1)
        text = model._bench_tok.decode(tokens)
        hits += key in text.replace(" ", "")
    return hits / len(prompts)


# ------------------------------------------------------------------------------------------------- qwen2
@torch.no_grad()
def qwen_backbone(layers: int, contexts: list[int], steps: int, repeats: int) -> list[str]:
    from transformers import Qwen2Config, Qwen2ForCausalLM
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
    speed, kvb = decode_speed(models, contexts, steps, repeats, torch.bfloat16)
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
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small sizes: a few minutes on a shared 2-core CPU")
    ap.add_argument("--heal-steps", type=int, default=None)
    ap.add_argument("--passkey-trials", type=int, default=None)
    ap.add_argument("--qwen-layers", type=int, default=None)
    ap.add_argument("--skip-qwen", action="store_true")
    ap.add_argument("--skip-quality", action="store_true")
    ap.add_argument("--skip-speed", action="store_true", help="skip the SmolLM2 KV/decode table")
    ap.add_argument("--healed-only", action="store_true", help="quality after healing only (run in parallel)")
    ap.add_argument("--qwen-only", action="store_true", help="only the Qwen2 backbone-shape table")
    ap.add_argument("--skip-baseline", action="store_true", help="no quality run for the unmodified model")
    ap.add_argument("--passkey-lengths", help="comma-separated prompt lengths (default 2048,4096,8192)")
    ap.add_argument("--layouts", help="comma-separated subset of " + ",".join(LAYOUTS))
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads (default 1: on a shared, oversubscribed CPU every small op of a 2-thread "
                         "run waits for the other thread, which hides the attention cost behind sync overhead)")
    ap.add_argument("--json", help="also write the numbers here")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    q = args.quick
    contexts = [1024, 2048] if q else [1024, 4096, 8192]
    passkey_lengths = [1024, 2048] if q else [2048, 4096, 8192]
    if args.passkey_lengths:
        passkey_lengths = [int(x) for x in args.passkey_lengths.split(",")]
    trials = args.passkey_trials or 2
    heal_steps = args.heal_steps if args.heal_steps is not None else (4 if q else 16)
    ppl_len, ppl_segments = (512, 1) if q else (2048, 1)
    qwen_layers = args.qwen_layers or (4 if q else 8)
    torch.manual_seed(0)

    if args.qwen_only:
        print("\n".join(qwen_backbone(qwen_layers, [8192, 16384] if q else [16384, 32768], steps=2, repeats=2)))
        return
    from efficient.reference_models import load_smollm2
    from efficient.textdata import offline_english_text

    model, tok = load_smollm2()
    model._bench_tok = tok
    train = tok(offline_english_text("train")[:400_000], return_tensors="pt").input_ids
    test_text = offline_english_text("test")
    test = tok(test_text[:200_000], return_tensors="pt").input_ids
    layouts = LAYOUTS[:2] + LAYOUTS[3:] if q else LAYOUTS
    if args.layouts:
        layouts = args.layouts.split(",")
    models = {"full (transformers)": model}
    for layout in layouts:
        t0 = time.perf_counter()
        conv = apply_attention(model, layout, inplace=False, calibration_ids=train[:, :1024])
        conv._bench_tok = tok
        models[layout] = conv
        print(f"converted {layout:28s} {conv.config.efficient_attention['layout']} "
              f"({time.perf_counter() - t0:.0f} s incl. calibration)", flush=True)

    results: dict = {"contexts": contexts}
    base = "full (transformers)"
    for name, m in models.items():
        results[name] = {"layout": getattr(m.config, "efficient_attention", {"layout": "F" * 30})["layout"]}
    if args.skip_speed:
        contexts = []
    speed, kvb = decode_speed(models, contexts, steps=4 if q else 6, repeats=3, dtype=torch.float32)
    if contexts:
        print("\nSmolLM2-135M, fp32, batch 1: KV cache and decode speed (random-filled cache; medians of 3, noisy CPU)")
        head = " | ".join(f"KV MiB @{n // 1024}k | KV ratio | tok/s @{n // 1024}k | speed-up" for n in contexts)
        print("| config | layout F/30 | " + head + " |")
        print("|---" * (2 + 4 * len(contexts)) + "|")
        for name, m in models.items():
            layout = getattr(m.config, "efficient_attention", {"layout": "F" * 30})["layout"]
            cells = []
            for n in contexts:
                cells += [f"{kvb[name, n] / 2**20:.1f}", f"{kvb[base, n] / kvb[name, n]:.2f}x", f"{speed[name, n]:.2f}",
                          f"{speed[name, n] / speed[base, n]:.2f}x"]
            print(f"| {name} | {layout.count('F')} | " + " | ".join(cells) + " |", flush=True)
            results[name].update(kv_bytes={n: kvb[name, n] for n in contexts},
                                 tok_s={n: speed[name, n] for n in contexts})

    if not args.skip_quality:
        prompts = {n: passkey_prompts(tok, test_text, n, trials, seed=n) for n in passkey_lengths}
        rows = {}
        for name, m in models.items():
            if (args.healed_only and name != base) or (args.skip_baseline and name == base):
                continue
            t0 = time.perf_counter()
            ppl = perplexity(m, test, ppl_len, ppl_segments)
            pk = {n: passkey_accuracy(m, prompts[n]) if not args.healed_only else float("nan")
                  for n in passkey_lengths}
            rows[name] = [ppl, pk]
            print(f"quality {name}: ppl {ppl:.2f}, passkey {pk} ({time.perf_counter() - t0:.0f} s)", flush=True)
        healed = {}
        heal_ids = train[0, 1024:]
        for name, m in models.items():
            if name == base or heal_steps == 0:
                continue
            h = copy.deepcopy(m)
            h._bench_tok = tok
            t0 = time.perf_counter()
            losses = heal(h, heal_ids, teacher=model, steps=heal_steps, seq_len=256, lr=3e-3)
            ppl = perplexity(h, test, ppl_len, ppl_segments)
            pk = {n: passkey_accuracy(h, prompts[n]) for n in passkey_lengths}
            healed[name] = [ppl, pk, losses[0], losses[-1]]
            print(f"healed {name}: KL {losses[0]:.3f} -> {losses[-1]:.3f}, ppl {ppl:.2f}, passkey {pk} "
                  f"({time.perf_counter() - t0:.0f} s)", flush=True)
        print(f"\nQuality: perplexity on {ppl_segments} x {ppl_len} held-out tokens; passkey accuracy over {trials} "
              f"prompts per length; healing = {heal_steps} steps (KL to the original), new parameters only")
        print("| config | ppl | Δppl | " + " | ".join(f"passkey @{n // 1024}k" for n in passkey_lengths) +
              " | healed ppl | healed Δppl | " + " | ".join(f"healed passkey @{n // 1024}k" for n in passkey_lengths)
              + " |")
        print("|---" * (3 + 2 * len(passkey_lengths) + 2) + "|")
        ref_ppl = rows[base][0] if base in rows else float("nan")
        for name in models:
            ppl, pk = rows.get(name, [float("nan"), {n: float("nan") for n in passkey_lengths}])
            hp = healed.get(name)
            hcells = ["-", "-"] + ["-"] * len(passkey_lengths)
            if hp:
                hcells = [f"{hp[0]:.2f}", f"{hp[0] - ref_ppl:+.2f}"] + [f"{hp[1][n]:.0%}" for n in passkey_lengths]
            pk_cells = " | ".join(f"{pk[n]:.0%}" for n in passkey_lengths)
            print(f"| {name} | {ppl:.2f} | {ppl - ref_ppl:+.2f} | {pk_cells} | " + " | ".join(hcells) + " |",
                  flush=True)
            results[name].update(ppl=ppl, passkey=pk, healed=hp)

    if not args.skip_qwen:
        del models
        print()
        lines = qwen_backbone(qwen_layers, [8192, 16384] if q else [16384, 32768], steps=2, repeats=2)
        print("\n".join(lines), flush=True)
        results["qwen2"] = lines
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1, default=str)


if __name__ == "__main__":
    main()
