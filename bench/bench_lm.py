"""Baseline speed of the official-size MiMo-Audio LM (8.0 B, random weights, bf16) on this CPU.

What it does, exactly:
* builds the official config with ONE of the 36 backbone layers, on the meta device, then materialises
  it in bf16 with small random weights (a tiled random block, +-0.02). Everything else is full size:
  151680-row embedding and lm_head, the 16-layer patch decoder, the 6-layer patch encoder (3.6 GB
  instead of 16 GB, so it fits next to the other engineers' jobs).
* times, as medians over ``--reps`` repeats:
  - "rest": the model's forward with the backbone cut to 0 layers (text embedding, patch encoder over
    the speech patches, final norm, lm_head and downcast of the last position);
  - one backbone decoder layer called directly, on the prompt (prefill) and on one new position over
    a KV cache of the prompt (step);
  - the patch decoder (11 steps of the 16-layer local transformer, 8 heads, official audio sampler);
  and reports ``rest + 36 x layer`` for the backbone, i.e. the full 36-layer model by construction.
* TTS real-time factor = seconds of compute per second of audio: 6.25 speech patches (step + patch
  decoder each) plus ``--text-rate`` text patches (step only, the interleaved transcript).
* then, side by side in the same run, one backbone layer step and the patch decoder in bf16 vs fp32;
  everything is repeated for each ``--threads`` value (default 1 and 2: under contention 1 can win).

The machine has 2 cores shared with four other engineers' jobs: absolute numbers are noisy (medians
help); the bf16/fp32 ratios measured back to back are the most reliable part.
"""

from __future__ import annotations

import argparse
import copy
import time

import torch
from transformers import DynamicCache

from bench.common.timing import median_time
from efficient._hf import cache_kwargs
from mimo_audio import SpeechLM, SpeechLMConfig
from mimo_audio.sampling import get_preset

EMPTY_TEXT_ID = 151667


def build(layers: int, dtype: torch.dtype) -> SpeechLM:
    cfg = SpeechLMConfig.named("official")
    cfg.num_hidden_layers = layers
    old = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device("meta"):
            model = SpeechLM(cfg, EMPTY_TEXT_ID)
    finally:
        torch.set_default_dtype(old)
    model.to_empty(device="cpu")
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
    speech = slice(2 * patches, 4 * patches)
    ids[0, 0, speech] = EMPTY_TEXT_ID
    ids[0, 1:, speech] = (torch.rand(8, 2 * patches, generator=g) * model.empty_ids[:, None]).long()
    return ids


def rest_times(model: SpeechLM, prompt_patches: int, reps: int) -> tuple[float, float]:
    """Everything but the backbone layers: prefill of the prompt, and one speech patch fed back."""
    model.model.config.num_hidden_layers = 0  # Qwen2Model runs self.layers[:num_hidden_layers]
    try:
        ids = prompt_ids(model, prompt_patches)
        prefill = median_time(lambda: model(ids, logits_to_keep=1), reps, warmup=1)
        patch = ids[..., -4:]  # a speech patch
        step = median_time(lambda: model(patch, logits_to_keep=1), reps * 2, warmup=1)
    finally:
        model.model.config.num_hidden_layers = len(model.model.layers)
    return prefill, step


@torch.no_grad()
def layer_times(model: SpeechLM, dtype: torch.dtype, context: int, reps: int) -> tuple[float, float]:
    """One backbone decoder layer: prefill over ``context`` positions, and one new position over that cache."""
    layer = model.model.layers[0]
    if dtype != model.dtype:
        layer = copy.deepcopy(layer).to(dtype)
    rotary = model.model.rotary_emb
    x = torch.randn(1, context, model.config.hidden_size, dtype=dtype)
    pos = torch.arange(context)[None]
    cos, sin = rotary(x, pos)

    def prefill(cache=None):
        layer(x, attention_mask=None, position_ids=pos, use_cache=cache is not None,
              position_embeddings=(cos, sin), **cache_kwargs(layer, cache, pos[0]))

    t_prefill = median_time(prefill, reps, warmup=1)
    cache = DynamicCache()
    prefill(cache)
    n = [context]

    def step():
        p = torch.tensor([[n[0]]])
        c, s = rotary(x[:, :1], p)
        layer(x[:, :1], attention_mask=None, position_ids=p, use_cache=True,
              position_embeddings=(c, s), **cache_kwargs(layer, cache, p[0]))
        n[0] += 1

    return t_prefill, median_time(step, reps * 2, warmup=1)


@torch.no_grad()
def patch_decoder_time(model: SpeechLM, dtype: torch.dtype, reps: int) -> float:
    """The patch decoder (local transformer, heads, embeddings), converted to ``dtype`` for the measurement."""
    parts = (model.local_transformer, model.local_transformer_lm_heads, model.speech_embeddings)
    old = model.dtype
    for p in parts:
        p.to(dtype)
    try:
        hidden = torch.randn(1, model.config.local_dim, dtype=dtype)
        return median_time(lambda: model.decode_patch(hidden, get_preset("tts").audio), reps, warmup=1)
    finally:
        for p in parts:
            p.to(old)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--prompt-patches", type=int, default=64, help="prompt length (half text, half speech)")
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2],
                    help="torch thread counts to measure side by side (default: 1 and 2)")
    ap.add_argument("--text-rate", type=float, default=3.0, help="text patches per second of TTS audio")
    ap.add_argument("--no-fp32", dest="fp32", action="store_false", help="skip the bf16 vs fp32 comparison")
    args = ap.parse_args()
    full = SpeechLMConfig.named("official").num_hidden_layers
    t0 = time.perf_counter()
    model = build(1, torch.bfloat16)
    size_gb = sum(p.numel() * p.element_size() for p in model.parameters()) / 1e9
    print(f"built the official config with 1/{full} backbone layers in bf16: {size_gb:.2f} GB "
          f"({time.perf_counter() - t0:.1f} s); torch {torch.__version__}")
    for threads in args.threads:
        torch.set_num_threads(threads)
        report(model, args, threads)


def report(model: SpeechLM, args: argparse.Namespace, threads: int) -> None:
    full = SpeechLMConfig.named("official").num_hidden_layers
    P = args.prompt_patches
    rest_prefill, rest_step = rest_times(model, P, args.reps)
    layer_prefill, layer_step = layer_times(model, torch.bfloat16, P, args.reps)
    local = patch_decoder_time(model, torch.bfloat16, args.reps)
    prefill = rest_prefill + full * layer_prefill
    step = rest_step + full * layer_step
    speech_patch = step + local
    rtf = 6.25 * speech_patch + args.text_rate * step
    rows = [
        (f"prefill, {P} patches: total", prefill * 1e3, "ms"),
        ("prefill throughput", P / prefill, "patches/s"),
        ("  of which one backbone layer", layer_prefill * 1e3, "ms"),
        ("  of which embeddings + patch encoder + heads", rest_prefill * 1e3, "ms"),
        ("backbone step, 1 patch over the KV cache: total", step * 1e3, "ms"),
        ("  of which one backbone layer", layer_step * 1e3, "ms"),
        ("  of which embeddings + patch encoder + heads", rest_step * 1e3, "ms"),
        ("patch decoder, 11 steps", local * 1e3, "ms"),
        ("one speech patch (step + patch decoder)", speech_patch * 1e3, "ms"),
        ("generation speed, speech patches", 1 / speech_patch, "patches/s"),
        (f"TTS real-time factor (6.25 speech + {args.text_rate:.1f} text patches/s)", rtf, "x"),
    ]
    print(f"\nMiMo-Audio official-size LM (36 layers = rest + 36 x one layer), bf16, random weights, "
          f"{threads} torch thread(s), medians of {args.reps}")
    print(f"| {'quantity':<58} | {'value':>10} | unit |")
    print(f"|{'-' * 60}|{'-' * 12}|------|")
    for name, value, unit in rows:
        print(f"| {name:<58} | {value:>10.2f} | {unit} |")
    print(f"\nratios: patch decoder / backbone step = {local / step:.2f}; real time needs a {rtf:.0f}x speed-up "
          "(RTF < 1 = faster than real time)")

    if args.fp32:
        _, lf = layer_times(model, torch.float32, P, args.reps)
        _, lb = layer_times(model, torch.bfloat16, P, args.reps)
        pf = patch_decoder_time(model, torch.float32, args.reps)
        pb = patch_decoder_time(model, torch.bfloat16, args.reps)
        print(f"\nbf16 vs fp32, same weights, measured back to back ({threads} thread(s)):")
        print(f"| {'quantity':<40} | {'bf16 ms':>9} | {'fp32 ms':>9} | bf16/fp32 |")
        print(f"|{'-' * 42}|{'-' * 11}|{'-' * 11}|-----------|")
        print(f"| {'one backbone layer, 1-patch step':<40} | {lb * 1e3:>9.1f} | {lf * 1e3:>9.1f} | {lb / lf:>9.2f} |")
        print(f"| {'patch decoder, 11 steps':<40} | {pb * 1e3:>9.1f} | {pf * 1e3:>9.1f} | {pb / pf:>9.2f} |")


if __name__ == "__main__":
    main()
