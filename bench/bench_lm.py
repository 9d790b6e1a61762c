"""Baseline speed of the official-size MiMo-Audio LM (8.0 B, random weights, bf16) on this CPU.

What it does, exactly:
* builds the official config with only ``L2`` (default 4) of the 36 backbone layers, on the meta
  device, then materialises it in bf16 with small random weights (uniform +-0.02). Everything else is full
  size: 151680-row embedding and lm_head, the 16-layer patch decoder, the 6-layer patch encoder.
  That is about 4.7 GB instead of 16 GB, which fits next to the other engineers' jobs.
* times each stage with the backbone cut to ``L1`` (default 0) and ``L2`` layers (by running only the first
  layers), takes the per-layer cost as ``(t(L2) - t(L1)) / (L2 - L1)`` and extrapolates to 36 layers:
  ``t(36) = t(L2) + (36 - L2) * per_layer``. Everything not in the backbone layers is measured as is.
* reports medians over ``--reps`` repeats of: prefill (tokens/s), one backbone step with the KV cache
  (a speech patch fed back: patch encoder + backbone + lm_head), one patch-decoder call (11 steps,
  official audio sampler), and the TTS real-time factor (6.25 speech patches per second of audio plus
  ``--text-rate`` text patches per second, the interleaved transcript).

The machine has 2 cores shared with other engineers: numbers are noisy; ratios within a run are the
reliable part.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from mimo_audio import SpeechLM, SpeechLMConfig
from mimo_audio.sampling import get_preset

EMPTY_TEXT_ID = 151667


def build(layers: int, dtype: torch.dtype) -> SpeechLM:
    cfg = SpeechLMConfig.preset("official")
    cfg.num_hidden_layers = layers
    old = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device("meta"):
            model = SpeechLM(cfg, EMPTY_TEXT_ID)
    finally:
        torch.set_default_dtype(old)
    model.to_empty(device="cpu")
    # Random values without drawing 2 G random numbers: tile one random block (memcpy speed).
    g = torch.Generator().manual_seed(0)
    block = (torch.rand(1 << 20, generator=g) * 0.04 - 0.02).to(dtype)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.fill_(1.0)
                continue
            flat = p.view(-1)
            for i in range(0, flat.numel(), block.numel()):
                n = min(block.numel(), flat.numel() - i)
                flat[i : i + n].copy_(block[:n])
    model._materialize_buffers(torch.device("cpu"))
    return model.eval()


def prompt_ids(model: SpeechLM, patches: int, seed: int = 0) -> torch.Tensor:
    """Half text patches, half speech patches (random codes), as in a TTS or dialogue prompt."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.empty(1, 9, 4 * patches, dtype=torch.long)
    ids[:, 1:] = model.empty_ids[:, None]
    ids[:, 0] = torch.randint(0, 150000, (4 * patches,), generator=g)
    speech = slice(2 * patches, 4 * patches)  # second half of the columns
    ids[0, 0, speech] = EMPTY_TEXT_ID
    top = model.empty_ids[:, None]
    ids[0, 1:, speech] = (torch.rand(8, 2 * patches, generator=g) * top).long()
    return ids


def speech_patch(model: SpeechLM) -> torch.Tensor:
    p = torch.empty(1, 9, 4, dtype=torch.long)
    p[0, 0] = EMPTY_TEXT_ID
    p[0, 1:] = (torch.rand(8, 4) * model.empty_ids[:, None]).long()
    return p


def median_time(fn, reps: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


@torch.no_grad()
def measure(model: SpeechLM, layers: int, prompt_patches: int, reps: int) -> dict[str, float]:
    model.model.config.num_hidden_layers = layers  # Qwen2Model runs self.layers[:num_hidden_layers]
    ids = prompt_ids(model, prompt_patches)
    out: dict[str, float] = {}
    out["prefill"] = median_time(lambda: model(ids, use_cache=True, logits_to_keep=1), reps)
    state = model(ids, use_cache=True, logits_to_keep=1)
    cache = state.past_key_values
    patch = speech_patch(model)
    mask_len = [prompt_patches]

    def step():
        mask_len[0] += 1
        mask = torch.ones(1, mask_len[0], dtype=torch.long)
        pos = torch.tensor([[mask_len[0] - 1]])  # explicit: with 0 layers the cache cannot tell its length
        model(patch, attention_mask=mask, position_ids=pos, past_key_values=cache, use_cache=True, logits_to_keep=1)

    out["step"] = median_time(step, reps * 2)
    return out


@torch.no_grad()
def layer_step_time(layer: torch.nn.Module, rotary, dtype: torch.dtype, context: int, reps: int) -> float:
    """One backbone decoder layer, one new position over a KV cache of ``context`` positions."""
    import copy

    from transformers import DynamicCache

    layer = copy.deepcopy(layer).to(dtype)
    layer.self_attn.layer_idx = 0
    cache = DynamicCache()
    x = torch.randn(1, context, layer.hidden_size if hasattr(layer, "hidden_size") else 4096, dtype=dtype)
    pos = torch.arange(context)[None]
    cos, sin = rotary(x, pos)
    layer(x, attention_mask=None, position_ids=pos, past_key_values=cache, use_cache=True,
          cache_position=pos[0], position_embeddings=(cos, sin))
    n = [context]

    def step():
        p = torch.tensor([[n[0]]])
        c, s = rotary(x[:, :1], p)
        layer(x[:, :1], attention_mask=None, position_ids=p, past_key_values=cache, use_cache=True,
              cache_position=p[0], position_embeddings=(c, s))
        n[0] += 1

    return median_time(step, reps * 2)


@torch.no_grad()
def patch_decoder_time(model: SpeechLM, dtype: torch.dtype, reps: int) -> float:
    """The patch decoder (local transformer, heads, embeddings) converted to ``dtype`` for the measurement."""
    parts = (model.local_transformer, model.local_transformer_lm_heads, model.speech_embeddings)
    old = model.dtype
    for p in parts:
        p.to(dtype)
    try:
        hidden = torch.randn(1, model.config.local_dim, dtype=dtype)
        return median_time(lambda: model.decode_patch(hidden, get_preset("tts").audio), reps)
    finally:
        for p in parts:
            p.to(old)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--layers", type=int, nargs=2, default=(0, 4), metavar=("L1", "L2"))
    ap.add_argument("--prompt-patches", type=int, default=64)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--text-rate", type=float, default=3.0, help="text patches per second of TTS audio")
    ap.add_argument("--compare-fp32", action="store_true", default=True,
                    help="also time one backbone layer and the patch decoder in fp32 (default on)")
    ap.add_argument("--no-compare-fp32", dest="compare_fp32", action="store_false")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    l1, l2 = args.layers
    full = SpeechLMConfig.preset("official").num_hidden_layers

    t0 = time.perf_counter()
    model = build(l2, torch.bfloat16)
    size_gb = sum(p.numel() * p.element_size() for p in model.parameters()) / 1e9
    print(f"built official config with {l2}/{full} backbone layers in bf16: {size_gb:.2f} GB "
          f"({time.perf_counter() - t0:.1f} s); torch threads = {torch.get_num_threads()}")

    a = measure(model, l1, args.prompt_patches, args.reps)
    b = measure(model, l2, args.prompt_patches, args.reps)
    scaled = {k: b[k] + (full - l2) * (b[k] - a[k]) / (l2 - l1) for k in a}
    per_layer = {k: (b[k] - a[k]) / (l2 - l1) for k in a}

    local = patch_decoder_time(model, torch.bfloat16, args.reps)

    speech_patch_s = scaled["step"] + local
    text_patch_s = scaled["step"]
    audio_s_per_s = 6.25 * speech_patch_s + args.text_rate * text_patch_s
    rows = [
        (f"prefill, {args.prompt_patches} patches (36 layers, extrapolated)", scaled["prefill"] * 1e3, "ms"),
        ("prefill throughput", args.prompt_patches / scaled["prefill"], "patches/s"),
        ("backbone per layer, prefill", per_layer["prefill"] * 1e3, "ms"),
        ("backbone step (1 patch, KV cache, + lm_head)", scaled["step"] * 1e3, "ms"),
        ("backbone per layer, step", per_layer["step"] * 1e3, "ms"),
        ("patch decoder, 11 steps (measured)", local * 1e3, "ms"),
        ("one speech patch (step + patch decoder)", speech_patch_s * 1e3, "ms"),
        ("generation speed, speech patches", 1 / speech_patch_s, "patches/s"),
        (f"TTS real-time factor (6.25 speech + {args.text_rate:.1f} text patches per s)", audio_s_per_s, "x"),
    ]
    print(f"\nMiMo-Audio official-size LM, bf16, random weights, medians of {args.reps} repeats "
          f"(measured with {l1} and {l2} backbone layers, extrapolated to {full})")
    print(f"| {'quantity':<62} | {'value':>10} | unit |")
    print(f"|{'-' * 64}|{'-' * 12}|------|")
    for name, value, unit in rows:
        print(f"| {name:<62} | {value:>10.2f} | {unit} |")
    print(f"\nratios: patch decoder / backbone step = {local / scaled['step']:.2f}; "
          f"real time needs {audio_s_per_s:.1f}x speed-up (RTF < 1 is faster than real time)")

    if args.compare_fp32:
        print("\nbf16 vs fp32 side by side (same weights, same run):")
        rot = model.model.rotary_emb
        lb = layer_step_time(model.model.layers[0], rot, torch.bfloat16, args.prompt_patches, args.reps)
        lf = layer_step_time(model.model.layers[0], rot, torch.float32, args.prompt_patches, args.reps)
        pb = patch_decoder_time(model, torch.bfloat16, args.reps)
        pf = patch_decoder_time(model, torch.float32, args.reps)
        print(f"| {'quantity':<44} | {'bf16 ms':>9} | {'fp32 ms':>9} | bf16/fp32 |")
        print(f"|{'-' * 46}|{'-' * 11}|{'-' * 11}|-----------|")
        print(f"| {'one backbone layer, 1-patch step':<44} | {lb * 1e3:>9.1f} | {lf * 1e3:>9.1f} | {lb / lf:>9.2f} |")
        print(f"| {'patch decoder, 11 steps':<44} | {pb * 1e3:>9.1f} | {pf * 1e3:>9.1f} | {pb / pf:>9.2f} |")


if __name__ == "__main__":
    main()
