"""Real-time TTS at the official size on CPU: the whole speech LM with low-bit weights, streaming audio out.

    PYTHONPATH=. python bench/bench_realtime.py --quant w2g128 --threads 1 2
    PYTHONPATH=. python bench/bench_realtime.py --layers 2 --tokenizer tiny --seconds 1   # smoke run

What runs (batch 1, greedy, random weights: speed does not depend on the values):
* the official-shape speech LM through :class:`mimo_audio.fast_decoder.FastSpeechLM`: 36 backbone layers
  (fused QKV / gate-up, static KV cache), text head, hidden downcast, 6-layer patch encoder + group downcast
  (for every generated patch fed back), 16-layer patch decoder (11 steps); every linear in ``--quant``
  (``--head-quant`` for the 151680-row text head), speech embeddings and the patch decoder's per-channel heads
  dense fp32, token embedding bf16. Built layer by layer from random packed weights
  (:func:`efficient.fastpath.random_packed`): no float copy of the model ever exists.
* the TTS loop: a 10 s spoken prompt (``--prompt-seconds``) encoded by the audio tokenizer and prefilled while
  it is spoken (:func:`spoken_prompt`: pieces of at least ``--prompt-chunk`` s, each encoded independently - the
  tokenizer has no streaming encoder - larger when the work falls behind), on a clock that starts with the
  speaker; first audio is timed from the end of the prompt to the first decoded audio; then patches are
  generated (``--text-rate`` text patches per second of audio interleaved, the rest speech patches), each
  speech patch's 4 frames pushed through the tokenizer's incremental decoder (``stream_decoder(lookahead)``),
  audio out: the first push as soon as it can return audio (``--first-push``), then every ``--push-every``
  patches. ``--compare-first-audio`` also runs the loop as before (tokenizer linears plain, first patch pushed
  alone) and prints first audio before/after side by side; ``--compare-prompt`` the same for the prompt's
  prefill (``--prompt-path before``: one patch at a time through the patch encoder, PyTorch ops per backbone
  layer, text head after every piece).
* ``--tokenizer official``: the official tokenizer shape (1.28 B) with random weights in bf16; ``tiny``: the test
  preset; ``embedded``: the small tokenizer shipped with the package.

Printed: a table per thread count (patches/s, ms per part, weight bytes per patch, read bandwidth measured in
the same run, bandwidth bound, first-audio latency, peak RSS), the patch decoder before/after (reference
transformers modules with ``QuantLinear`` vs the fast path, same codes, same run) with ``--compare``, and last
one line ``patches/s`` for the last ``--threads`` value.
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import sys
import time

import torch

from bench.common.machine import cpu_name
from efficient.fastpath import PackedMatrix, random_packed
from efficient.quant import native
from efficient.quant.formats import parse_scheme
from mimo_audio import SpeechLMConfig
from mimo_audio.delay_pattern import DelayPattern
from mimo_audio.fast_decoder import FastLayer, FastPatchDecoder, FastSpeechLM
from mimo_audio.sampling import Sampler

EMPTY_TEXT_ID = 151667
PATCHES_PER_SECOND = 6.25


def peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6


def read_bandwidth(threads: int) -> float:
    """GB/s of one pass over 512 MiB (the kernels' own reader), median of 5."""
    lib = native.library()
    buf = torch.ones(512 << 20, dtype=torch.uint8)
    ts = []
    for _ in range(6):
        t0 = time.perf_counter()
        lib.lk_read_bw(buf.data_ptr(), buf.numel(), threads)
        ts.append(time.perf_counter() - t0)
    return buf.numel() / statistics.median(ts[1:]) / 1e9


# ----------------------------------------------------------------------------------------------- model build
def rand_matrix(scheme: str, N: int, K: int, seed: int, bias: bool = False) -> PackedMatrix:
    sch = parse_scheme(scheme)
    b = torch.randn(N, generator=torch.Generator().manual_seed(seed)) * 0.01 if bias else None
    return PackedMatrix.from_packed(sch, [random_packed(sch, N, K, seed)], [N], K, b)


def rand_layer(scheme: str, dim: int, ffn: int, heads: int, kv: int, hd: int, max_len: int, seed: int,
               causal: bool = True) -> FastLayer:
    qkv = rand_matrix(scheme, (heads + 2 * kv) * hd, dim, seed, bias=True)
    o = rand_matrix(scheme, dim, heads * hd, seed + 1)
    gu = rand_matrix(scheme, 2 * ffn, dim, seed + 2)
    down = rand_matrix(scheme, dim, ffn, seed + 3)
    return FastLayer(qkv, o, gu, down, torch.ones(dim), torch.ones(dim), 1e-6, heads, kv, hd, max_len, causal)


def rope(hd: int, n: int, theta: float) -> tuple[torch.Tensor, torch.Tensor]:
    inv = 1.0 / theta ** (torch.arange(0, hd, 2, dtype=torch.float32) / hd)
    f = torch.arange(n, dtype=torch.float32)[:, None] * inv[None]
    emb = torch.cat([f, f], -1)
    return emb.cos(), emb.sin()


def build(cfg: SpeechLMConfig, scheme: str, head_scheme: str, layers: int, max_len: int,
          local_head_scheme: str = "w4g32") -> FastSpeechLM:
    g = torch.Generator().manual_seed(0)
    # token embedding: int8 rows + a per-row scale (only looked up, never streamed: this only saves memory)
    block = torch.randint(-127, 128, (1 << 20,), generator=g, dtype=torch.int8)
    emb = torch.empty(cfg.vocab_size, cfg.hidden_size, dtype=torch.int8)
    emb_scale = torch.full((cfg.vocab_size,), 0.02 / 127)
    flat = emb.view(-1)
    for i in range(0, flat.numel(), block.numel()):
        n = min(block.numel(), flat.numel() - i)
        flat[i : i + n].copy_(block[:n])
    H, D = cfg.hidden_size, cfg.local_dim
    hd = cfg.head_dim or H // cfg.num_attention_heads
    bb = [rand_layer(scheme, H, cfg.intermediate_size, cfg.num_attention_heads, cfg.num_key_value_heads, hd,
                     max_len, 10 * i) for i in range(layers)]
    lhd = D // cfg.local_attn_heads
    nh = cfg.local_attn_heads
    dec = [rand_layer(scheme, D, cfg.local_ffn_dim, nh, nh, lhd, 16, 1000 + 10 * i) for i in range(cfg.local_layers)]
    enc = [rand_layer(scheme, D, cfg.local_ffn_dim, cfg.local_attn_heads, cfg.local_attn_heads, lhd, cfg.group_size,
                      2000 + 10 * i, causal=False) for i in range(cfg.input_local_layers)]
    theta = cfg.backbone_config().rope_parameters["rope_theta"]
    heads = [PackedMatrix.dense([torch.randn(v, D, generator=g) * 0.02]) if local_head_scheme == "fp32"
             else rand_matrix(local_head_scheme, v, D, 500 + c) for c, v in enumerate(cfg.speech_vocab_size)]
    embs = [torch.randn(v, D, generator=g) * 0.02 for v in cfg.speech_vocab_size]
    delay = DelayPattern(tuple(cfg.delay_pattern), cfg.group_size)
    steps = len(delay.schedule)
    decoder = FastPatchDecoder(dec, torch.ones(D), 1e-6, heads, embs, None, delay.schedule, cfg.speech_zeroemb_idx,
                               cfg.group_size, *rope(lhd, steps, theta))
    group_down = rand_matrix(scheme, H, D * cfg.group_size, 7)
    return FastSpeechLM(emb, embs, enc, torch.ones(D), group_down, bb, torch.ones(H),
                        rand_matrix(head_scheme, cfg.vocab_size, H, 8), rand_matrix(scheme, D, H, 9), decoder, 1e-6,
                        EMPTY_TEXT_ID, cfg.speech_zeroemb_idx, rope(hd, max_len, theta),
                        rope(lhd, cfg.group_size, theta), emb_scale)


@torch.no_grad()
def fast_random(model, seed: int = 0) -> None:
    """Random weights at the scales of :func:`tokenizer.api.init_random` (norms 1, biases 0, weights
    N(0, 1/fan_in), codebooks shrinking), filled by tiling one random block: seconds instead of minutes for the
    1.28 B official shape. Speed does not depend on the values."""
    g = torch.Generator().manual_seed(seed)
    block = torch.randn(1 << 20, generator=g)
    for name, p in model.named_parameters():
        if name.endswith("norm.weight"):
            p.fill_(1.0)
        elif p.dim() == 1:
            p.zero_()
        else:
            fan_in = p.shape[0] if ".dconv" in name and name.endswith("conv.weight") else p[0].numel()
            flat = p.view(-1)
            for i in range(0, flat.numel(), block.numel()):
                n = min(block.numel(), flat.numel() - i)
                flat[i : i + n].copy_(block[:n] * fan_in**-0.5)
            block = block.roll(7919)  # distinct neighbouring matrices
    from tokenizer.api import init_random_buffers

    init_random_buffers(model, g)


def build_tokenizer(kind: str, pack: str = "packed"):
    """The audio tokenizer in bf16 (``embedded``: fp32). ``pack``: ``packed`` = oneDNN pre-packed linear
    weights with the plain copies released (no extra memory), ``plain`` = unpacked (the per-call weight
    re-layout of ``F.linear``: the path before the packing), ``copy`` = packed copies next to the plain
    weights (+2.6 GB at full size)."""
    from tokenizer import AudioTokenizer, TokenizerConfig
    from tokenizer.model import MiMoAudioTokenizerModel

    if kind == "embedded":
        return AudioTokenizer.from_pretrained(None, dtype=torch.float32)
    cfg = TokenizerConfig.preset(kind)
    with torch.device("meta"):
        model = MiMoAudioTokenizerModel(cfg)
    keep = ("quantizer", "istft")  # bf16 everywhere else, created directly in bf16 (no fp32 copy)
    state = {k: torch.empty(v.shape, dtype=v.dtype if any(s in k for s in keep) else torch.bfloat16)
             for k, v in model.state_dict().items()}
    model.load_state_dict(state, assign=True)
    fast_random(model, 0)
    if pack == "copy":
        return AudioTokenizer(model, device="cpu", dtype=torch.bfloat16)
    import tokenizer.api as tapi

    saved, tapi.prepack_linears = tapi.prepack_linears, lambda *_a, **_k: 0
    try:
        tok = AudioTokenizer(model, device="cpu", dtype=torch.bfloat16)
    finally:
        tapi.prepack_linears = saved
    if pack == "packed":
        tok.pack_weights()
    return tok


# ----------------------------------------------------------------------------------------------- the loop
def speech_like(seconds: float, sr: int) -> torch.Tensor:
    t = torch.arange(int(seconds * sr)) / sr
    f0 = 120 + 30 * torch.sin(2 * torch.pi * 0.5 * t)
    wav = 0.3 * torch.sin(2 * torch.pi * torch.cumsum(f0, 0) / sr) * (0.6 + 0.4 * torch.sin(2 * torch.pi * 3 * t))
    return wav + 0.01 * torch.randn(len(t), generator=torch.Generator().manual_seed(0))


def text_patch(token: int, empty_ids: torch.Tensor, G: int) -> torch.Tensor:
    ids = torch.empty(1, len(empty_ids) + 1, G, dtype=torch.long)
    ids[0, 0] = token
    ids[0, 1:] = empty_ids[:, None]
    return ids


def speech_ids(codes: torch.Tensor, G: int) -> torch.Tensor:
    """codes [C, frames] (frames % G == 0) -> ids [1, C+1, frames]."""
    ids = torch.full((1, codes.shape[0] + 1, codes.shape[1]), EMPTY_TEXT_ID, dtype=torch.long)
    ids[0, 1:] = codes
    return ids


def spoken_prompt(lm: FastSpeechLM, tok, wav: torch.Tensor, G: int, C: int, args, now) -> tuple:
    """Encode and prefill a spoken prompt while it is spoken, on a simulated clock (no sleeping).

    The clock starts when the speaker starts. Work starts once ``--prompt-chunk`` s of new audio have arrived
    (or the prompt has ended), or when the previous piece is done if that is later, and then takes *all* the
    audio that has arrived by then: a prompt that falls behind catches up in larger pieces, paying the
    encoder's fixed per-call cost (one pass over its weights) less often. Codes that do not fill a patch wait
    for the next piece. The work itself is real and timed with ``now``; the clock only skips the idle waits.
    Prefill (``--prompt-path fast``): all patches of a piece through the patch encoder at once, the backbone
    with ``FastLayer.rows_``, the text head only after the last piece (no earlier piece's logits are used);
    ``before``: the path before that (one patch at a time, PyTorch ops per layer, text head every piece).
    Returns the last logits, the prompt's lag after its end, and per-piece times / audio seconds.
    """
    sr = tok.sample_rate
    step, patch_samples = int(args.prompt_chunk * sr), G * tok.samples_per_frame
    n, seconds = len(wav), len(wav) / sr
    clock, pos = 0.0, 0
    carry = torch.zeros(C, 0, dtype=torch.long)
    chunk_times, enc_times, chunk_audio = [], [], []
    text_logits = local = None
    fast = args.prompt_path == "fast"
    lm.fast_prefill = fast
    while pos < n:
        clock = max(clock, min((pos + step) / sr, seconds))  # wait for a chunk of new audio
        end = max(pos + step, int(clock * sr) // patch_samples * patch_samples)  # all that has arrived
        if n - end < tok.mel_frontend.min_samples:  # never leave a sliver the front-end cannot take
            end = n
        t0 = now()
        codes = tok.encode(wav[pos:end], sr)[:C]  # [C, frames]
        enc_times.append(now() - t0)
        codes = torch.cat([carry, codes], dim=1)
        frames = codes.shape[1] // G * G
        if frames:
            text_logits, local = lm.forward(speech_ids(codes[:, :frames], G), text_logits=not fast)
        if fast and end >= n:  # the prompt's last position: generation starts from its text logits
            text_logits = lm.text_logits()
        carry = codes[:, frames:]
        dt = now() - t0
        chunk_times.append(dt)
        chunk_audio.append((end - pos) / sr)
        clock += dt
        pos = end
    lm.fast_prefill = True
    return text_logits, local, clock - seconds, chunk_times, enc_times, chunk_audio


@torch.no_grad()
def tts_run(lm: FastSpeechLM, tok, cfg: SpeechLMConfig, args) -> dict:
    G, C = cfg.group_size, cfg.audio_channels
    empty = torch.tensor(cfg.speech_zeroemb_idx)
    sr = tok.sample_rate
    greedy = Sampler.greedy()
    lm.reset()
    now = time.process_time if args.clock == "cpu" else time.perf_counter
    # prompt: 16 text patches (instruction + transcript), then the spoken prompt, encoded while it is spoken
    lm.forward(torch.cat([text_patch(1000 + i, empty, G) for i in range(16)], dim=2))
    wav = speech_like(args.prompt_seconds, sr)
    text_logits, local, prompt_lag, chunk_times, enc_times, chunk_audio = spoken_prompt(lm, tok, wav, G, C, args, now)
    stream = tok.stream_decoder(lookahead=args.lookahead)
    n_speech = round(args.seconds * PATCHES_PER_SECOND)
    n_text = round(args.seconds * args.text_rate)
    text_every = (n_speech + n_text) / max(n_text, 1)
    parts = {"backbone step (36 layers + heads)": 0.0, "patch encoder (fed-back patch)": 0.0,
             "patch decoder (11 steps)": 0.0, "audio decode (stream)": 0.0}
    first_audio = patches_to_audio = None
    pending: list[torch.Tensor] = []  # patches not yet pushed to the audio decoder
    t_start = now()
    made_speech = made_text = 0
    i = 0
    while made_speech < n_speech:
        if made_text < n_text and i >= (made_text + 1) * text_every - 1:
            t0 = now()
            text_logits, local = lm.forward(text_patch(int(text_logits.argmax()), empty, G))
            parts["backbone step (36 layers + heads)"] += now() - t0
            made_text += 1
        else:
            t0 = now()
            codes = lm.decoder.decode_patch(local, greedy)  # [1, G, C]
            t1 = now()
            pending.append(codes[0].T)
            audio = torch.empty(0)
            if first_audio is None:  # at once: each patch as made; audible: hold until audio can come out
                push = args.first_push == "at-once" or len(pending) * G >= stream.frames_to_first_audio()
            else:
                push = len(pending) >= args.push_every
            if push or made_speech + 1 == n_speech:
                audio = stream.push(torch.cat(pending, dim=1).contiguous())
                pending.clear()
            t2 = now()
            if first_audio is None and audio.numel():
                first_audio = t2 - t_start
                patches_to_audio = made_speech + 1
            x = lm.encode_speech(codes.transpose(1, 2))  # the patch encoder, timed apart from the backbone
            t3 = now()
            text_logits, local = lm.forward_embeds(x)
            t4 = now()
            parts["patch decoder (11 steps)"] += t1 - t0
            parts["audio decode (stream)"] += t2 - t1
            parts["patch encoder (fed-back patch)"] += t3 - t2
            parts["backbone step (36 layers + heads)"] += t4 - t3
            made_speech += 1
        i += 1
    total = now() - t_start
    return {"total": total, "speech": made_speech, "text": made_text, "parts": parts,
            "first_audio": None if first_audio is None else first_audio + prompt_lag, "prompt_lag": prompt_lag,
            "chunk_ms": 1e3 * statistics.median(chunk_times), "encode_ms": 1e3 * statistics.median(enc_times),
            "chunks": len(chunk_times), "patches_to_audio": patches_to_audio,
            "chunk_audio_s": statistics.median(chunk_audio),
            "lookahead": stream.lookahead}


# ----------------------------------------------------------------------------------------------- before/after
def reference_decoder(cfg: SpeechLMConfig, fast: FastPatchDecoder):
    """The same patch decoder (same codes) as transformers modules with ``QuantLinear``: the path that
    ``SpeechLM.decode_patch`` runs (see ``efficient.quant``)."""
    from efficient.quant.linear import QuantLinear
    from mimo_audio import SpeechLM

    c = SpeechLMConfig.preset("official")
    c.num_hidden_layers, c.vocab_size = 0, 16
    with torch.device("meta"):
        lm = SpeechLM(c, 0)
    for layer, fl in zip(lm.local_transformer.layers, fast.layers):
        a, m = layer.self_attn, layer.mlp
        for mods, pm in (([a.q_proj, a.k_proj, a.v_proj], fl.qkv), ([a.o_proj], fl.o),
                         ([m.gate_proj, m.up_proj], fl.gate_up), ([m.down_proj], fl.down)):
            t = pm.canonical()  # the checkpoint layout (PackedMatrix may keep only the int8-kernel one)
            flat = pm.scheme.kind in ("uniform", "sym")  # flat bytes of 16-row blocks
            per_row = t["qweight"].numel() // ((pm.N + 15) // 16) if flat else None
            r0 = 0
            for mod in mods:
                q = QuantLinear(mod.in_features, mod.out_features, pm.scheme, bias=mod.bias is not None)
                n = mod.out_features
                if flat:
                    q.qweight = t["qweight"][r0 // 16 * per_row : (r0 + n) // 16 * per_row]
                else:
                    q.qweight, q.wscale = t["qweight"][r0 : r0 + n], t["wscale"][r0 : r0 + n]
                if q.bias is not None:
                    q.bias = pm.bias[r0 : r0 + n]
                r0 += n
                owner = a if mod in (a.q_proj, a.k_proj, a.v_proj, a.o_proj) else m
                name = next(k for k, v in owner.named_children() if v is mod)
                setattr(owner, name, q)
        layer.input_layernorm.weight = torch.nn.Parameter(fl.ln1.clone())
        layer.post_attention_layernorm.weight = torch.nn.Parameter(fl.ln2.clone())
    lm.local_transformer.norm.weight = torch.nn.Parameter(fast.norm.clone())
    for ch, fh in enumerate(fast.heads):
        if fh.kind == "dense":
            lm.local_transformer_lm_heads[ch].weight = torch.nn.Parameter(fh.t["w"])
        else:
            q = QuantLinear(fh.K, fh.N, fh.scheme, bias=False)
            for k, v in fh.canonical().items():
                setattr(q, k, v)
            lm.local_transformer_lm_heads[ch] = q
    for e, fe in zip(lm.speech_embeddings, fast.emb):
        e.weight = torch.nn.Parameter(fe)
    lm.local_transformer.rotary_emb = type(lm.local_transformer.rotary_emb)(lm.local_transformer.config)
    lm.empty_ids = torch.tensor(c.speech_zeroemb_idx)
    return lm.eval()  # the official config has attention dropout: eval() turns it off


def compare_decoders(ref, fast: FastPatchDecoder, dim: int, reps: int) -> tuple[float, float, bool, float]:
    greedy = Sampler.greedy()
    h = torch.randn(1, dim, generator=torch.Generator().manual_seed(1))
    trace: list[torch.Tensor] = []
    codes = fast.decode_patch(h, greedy, trace=trace)
    same = torch.equal(ref.decode_patch(h, greedy), codes)
    ref0 = ref.patch_decoder_logits(h, codes)[0][0, 0]  # step 0: both paths see bit-identical inputs
    rel0 = float((trace[0][0] - ref0).abs().max() / ref0.abs().max())
    tr, tf = [], []
    for _ in range(reps):  # alternate so both see the same load
        t0 = time.perf_counter()
        ref.decode_patch(h, greedy)
        t1 = time.perf_counter()
        fast.decode_patch(h, greedy)
        tf.append(time.perf_counter() - t1)
        tr.append(t1 - t0)
    return statistics.median(tr), statistics.median(tf), same, rel0


def kernel_table(scheme: str, threads_list: list[int]) -> None:
    """LUT vs dequantized bf16 (oneDNN) vs int8 (_int_mm) per backbone shape and M: what the choice sees."""
    from efficient.fastpath import choose

    sch = parse_scheme(scheme)
    print(f"\nkernel choice, {scheme}, best of 5 calls, ms (hot weights):")
    print("| N x K | threads | M | lut | bf16 | int8 | chosen |")
    print("|---|---|---|---|---|---|---|")
    for N, K in ((4096, 4096), (22016, 4096)):
        pm = PackedMatrix.from_packed(sch, [random_packed(sch, N, K)], [N], K)
        for th in threads_list:
            torch.set_num_threads(th)
            for M in (1, 4, 16, 64):
                _, t = choose(pm, M, allow_requant=True, reps=5)
                cells = " | ".join(f"{t[k] * 1e3:.2f}" if k in t else "-" for k in ("lut", "bf16", "int8"))
                print(f"| {N} x {K} | {th} | {M} | {cells} | {min(t, key=t.get)} |")


@torch.no_grad()
def speculative_model(lm: FastSpeechLM, r: dict, accept: float, reps: int = 3) -> dict:
    """Would speculative patch decoding with the patch MTP head pay here? Measured inputs, modelled loop.

    A round (patch i+1 sampled): MTP block -> draft patch i+2 (patch decoder D); backbone on [i+1, draft] in one
    pass (c2 x B, B = one-position step); patch decoder at i+1 verifies (D); if accepted (prob. a) the patch
    decoder at i+2 gives i+3 (D). Patches per round 1 + a; time m + c2 B + (2 + a) D. Plain: B + D per patch.
    m = 1.5 backbone layers (the MTP block's layer plus its 2d -> d input projection).
    """
    layers = lm.layers[:4]
    H = layers[0].dim
    cos, sin = lm.cos[:2], lm.sin[:2]

    def one():
        for layer in layers:
            layer.reset(0)
            layer.step_(torch.randn(1, H), cos[:1], sin[:1])

    def two():  # what FastSpeechLM.forward_embeds runs for 2 positions
        for layer in layers:
            layer.reset(0)
            layer.rows_(torch.randn(2, H), cos, sin)

    t1 = min(_timed(one) for _ in range(reps))
    t2 = min(_timed(two) for _ in range(reps))
    for layer in lm.layers:
        layer.reset(0)
    n = r["speech"]
    steps = n + r["text"]
    B = r["parts"]["backbone step (36 layers + heads)"] / steps + r["parts"]["patch encoder (fed-back patch)"] / n
    D = r["parts"]["patch decoder (11 steps)"] / n
    c2 = t2 / t1
    m = 1.5 * B / len(lm.layers)
    speedup = (1 + accept) * (B + D) / (m + c2 * B + (2 + accept) * D)
    return {"c2": c2, "B": B, "D": D, "m": m, "speedup": speedup}


def _timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


# ----------------------------------------------------------------------------------------------- main
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quant", default="w2g128",
                    help="scheme of every linear: w2g128, w4g32, w4g32s (symmetric 4-bit, 4.5 bpw), ternary, ...")
    ap.add_argument("--head-quant", default=None, help="scheme of the text head (default: --quant)")
    ap.add_argument("--local-head-quant", default="w4g32",
                    help="scheme of the patch decoder's 8 per-channel heads, or fp32 (dense)")
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2], help="thread counts, side by side")
    ap.add_argument("--layers", type=int, default=36, help="backbone layers (36 = official; fewer for a smoke run)")
    ap.add_argument("--seconds", type=float, default=4.0, help="seconds of audio to generate per run")
    ap.add_argument("--prompt-seconds", type=float, default=10.0, help="spoken prompt length")
    ap.add_argument("--prompt-chunk", type=float, default=0.5,
                    help="least seconds of new spoken prompt encoded and prefilled at a time while it arrives (a "
                         "prompt that fell behind takes all that has arrived)")
    ap.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                    help="time every part by wall clock, or by this process's CPU time (1 thread on a shared "
                         "machine: the time it would take with its core to itself)")
    ap.add_argument("--text-rate", type=float, default=3.0, help="text patches per second of audio")
    ap.add_argument("--tokenizer", choices=("official", "tiny", "embedded"), default="official")
    ap.add_argument("--tokenizer-pack", choices=("packed", "plain", "copy"), default="packed",
                    help="tokenizer linears: oneDNN pre-packed in place (default, no extra memory), plain (the "
                         "per-call re-layout), or packed copies beside the plain weights (+2.6 GB at full size)")
    ap.add_argument("--lookahead", type=int, default=4, help="stream decoder lookahead in code frames")
    ap.add_argument("--push-every", type=int, default=3,
                    help="patches per audio-decoder push after the first (larger = fewer weight passes, more delay)")
    ap.add_argument("--first-push", choices=("audible", "at-once"), default="audible",
                    help="until audio comes out: push once it can return audio (audible), or every patch at once "
                         "(at-once: with lookahead 4 the first patch alone returns nothing, a decoder pass spent "
                         "for no audio)")
    ap.add_argument("--prompt-path", choices=("fast", "before"), default="fast",
                    help="prompt prefill: fast (patch encoder over all patches of a piece at once, backbone rows "
                         "with the native glue, text head only after the last piece) or before (the earlier path)")
    ap.add_argument("--compare-prompt", action="store_true",
                    help="also run the loop with --prompt-path before and print the prompt work and first audio "
                         "before/after side by side (same run, same weights)")
    ap.add_argument("--compare-first-audio", action="store_true",
                    help="also run the loop as before this work (tokenizer linears plain, first patch pushed at once) "
                         "and print first audio before/after side by side")
    ap.add_argument("--kernel-choice", choices=("off", "lut-bf16", "all"), default="all",
                    help="patch encoder (M=4): time LUT / bf16 / int8 (all; int8 re-quantizes per row), keep the best")
    ap.add_argument("--kernel-table", action="store_true",
                    help="also print LUT vs bf16 vs int8 for two backbone shapes and M = 1, 4, 16, 64")
    ap.add_argument("--compare", action="store_true", help="also time the reference patch decoder (same codes)")
    ap.add_argument("--reps", type=int, default=5, help="repeats of the patch-decoder comparison")
    ap.add_argument("--accept", type=float, default=0.86,
                    help="greedy acceptance of the patch MTP head for the speculative-decoding estimate")
    args = ap.parse_args()
    try:
        parse_scheme(args.quant)
        parse_scheme(args.head_quant or args.quant)
        if args.local_head_quant != "fp32":
            parse_scheme(args.local_head_quant)
    except ValueError as exc:
        sys.exit(f"error: {exc}")
    if native.library() is None:
        sys.exit("error: the native LUT kernels are not built (pip install -e . / python setup.py build_ext --inplace)")
    cfg = SpeechLMConfig.preset("official")
    max_len = 16 + round(args.prompt_seconds * PATCHES_PER_SECOND) + 8 + round(
        args.seconds * (PATCHES_PER_SECOND + args.text_rate)) + 8
    t0 = time.perf_counter()
    lm = build(cfg, args.quant, args.head_quant or args.quant, args.layers, max_len, args.local_head_quant)
    t_build = time.perf_counter() - t0
    tok = build_tokenizer(args.tokenizer, args.tokenizer_pack)
    tok_before = build_tokenizer(args.tokenizer, "plain") if args.compare_first_audio else None
    picked = {}
    if args.kernel_choice != "off":
        torch.set_num_threads(args.threads[-1])
        picked = lm.choose_encoder_kernels(allow_requant=args.kernel_choice == "all")
    print(f"CPU: {cpu_name()}, {os.cpu_count()} logical CPUs, load average {os.getloadavg()[0]:.1f} at start; "
          f"torch {torch.__version__}; kernel path {native.kernel_path()}")
    print(f"built official-shape LM with {args.layers}/36 backbone layers in {args.quant} "
          f"(text head {args.head_quant or args.quant}) in {t_build:.1f} s; tokenizer {args.tokenizer}"
          f" (linears {args.tokenizer_pack}); "
          f"peak RSS so far {peak_rss_gb():.2f} GB; patch encoder kernels chosen: {picked or 'lut (no choice)'}")
    if args.kernel_table:
        kernel_table(args.quant, args.threads)
    scale = 36 / args.layers  # report the 36-layer model when fewer layers were built
    bb_bytes = sum(layer.nbytes() for layer in lm.layers) * scale + lm.lm_head.nbytes() + lm.hidden_downcast.nbytes()
    enc_bytes = lm.encoder_nbytes()
    dec_bytes = lm.decoder.nbytes()
    steps = len(lm.decoder.schedule)
    per_patch = bb_bytes + enc_bytes + steps * dec_bytes  # every weight read from DRAM each time it is used
    results = {}
    for th in args.threads:
        torch.set_num_threads(th)
        bw = read_bandwidth(th)
        r = tts_run(lm, tok, cfg, args)
        cmp = None
        if args.compare:
            ref = reference_decoder(cfg, lm.decoder)
            cmp = compare_decoders(ref, lm.decoder, cfg.local_dim, args.reps)
            del ref
        results[th] = (r, bw, cmp)
        report(args, th, r, bw, cmp, bb_bytes, enc_bytes, dec_bytes, per_patch, steps, scale)
        if tok_before is not None:
            old = tts_run(lm, tok_before, cfg, argparse.Namespace(**{**vars(args), "first_push": "at-once"}))
            first_audio_table(args, th, old, r)
        if args.compare_prompt:
            old = tts_run(lm, tok, cfg, argparse.Namespace(**{**vars(args), "prompt_path": "before"}))
            first_audio_table(args, th, old, r, "prompt prefill before (one patch at a time, PyTorch ops per "
                                                "layer, text head every piece) / after (--prompt-path fast)")
        sp = speculative_model(lm, r, args.accept)
        print(f"speculative patch decoding with the patch MTP head (acceptance {args.accept}), {th} thread(s): "
              f"backbone 2 positions / 1 = {sp['c2']:.2f}x, B = {sp['B'] * 1e3:.0f} ms, D = {sp['D'] * 1e3:.0f} ms "
              f"-> modelled speed-up {sp['speedup']:.2f}x ({'pays' if sp['speedup'] > 1.05 else 'does not pay'})")
    th = args.threads[-1]
    r = results[th][0]
    print(f"\npatches/s {args.quant} threads={th}: {r['speech'] / r['total']:.2f}")


def first_audio_table(args, th, before: dict, after: dict,
                      what: str = "before (plain tokenizer linears, first patch pushed alone) / after (packed, "
                                  "first push when audible)") -> None:
    """The first-audio path before and after one change, same run."""
    rows = [("prompt pieces", "chunks", 1), ("audio per prompt piece, s (median)", "chunk_audio_s", 1),
            ("tokenizer encode per prompt piece, ms (median)", "encode_ms", 1),
            ("encode + prefill per prompt piece, ms (median)", "chunk_ms", 1),
            ("prompt work left when the prompt ends, s", "prompt_lag", 1),
            ("patches decoded before first audio", "patches_to_audio", 1),
            ("first audio after the prompt ends, s", "first_audio", 1)]
    print(f"\nfirst audio, {th} thread(s), {args.clock} clock: {what}, same run")
    print("| quantity | before | after | before/after |")
    print("|---|---|---|---|")
    for name, key, mul in rows:
        b, a = before.get(key), after.get(key)
        if b is None or a is None:
            print(f"| {name} | {b} | {a} | |")
            continue
        ratio = f"{b / a:.2f}x" if a else ""
        print(f"| {name} | {b * mul:.2f} | {a * mul:.2f} | {ratio} |")


def report(args, th, r, bw, cmp, bb_bytes, enc_bytes, dec_bytes, per_patch, steps, scale) -> None:
    n = r["speech"]
    rate = n / r["total"]
    bound = bw * 1e9 / per_patch
    ms = {k: 1e3 * v for k, v in r["parts"].items()}  # the backbone part includes the text patches
    steps_total = n + r["text"]
    p = r["parts"]
    lm_time = (p["backbone step (36 layers + heads)"] * n / steps_total + p["patch encoder (fed-back patch)"]
               + p["patch decoder (11 steps)"])
    lm_rate = n / lm_time  # speech patches/s of the LM alone (text patches and audio decoding excluded)
    note = f"; {36 / scale:.0f} backbone layers built (not scaled)" if scale != 1 else ""
    print(f"\n{args.quant}, {th} thread(s): {n} speech + {r['text']} text patches "
          f"({args.seconds:.1f} s of audio) in {r['total']:.2f} s ({args.clock} clock){note}")
    rows = [
        ("speech patches/s (real time = 6.25)", f"{rate:.2f}"),
        ("x real time", f"{rate / PATCHES_PER_SECOND:.2f}"),
        ("backbone step, ms per step (speech + text)", f"{ms['backbone step (36 layers + heads)'] / steps_total:.1f}"),
        ("patch encoder, ms per speech patch", f"{ms['patch encoder (fed-back patch)'] / n:.1f}"),
        ("patch decoder, ms per speech patch (11 steps)", f"{ms['patch decoder (11 steps)'] / n:.1f}"),
        ("audio decode (stream), ms per speech patch", f"{ms['audio decode (stream)'] / n:.1f}"),
        ("weights: backbone + heads, MB per step", f"{bb_bytes / 1e6:.0f}"),
        ("weights: patch encoder, MB per speech patch", f"{enc_bytes / 1e6:.0f}"),
        (f"weights: patch decoder, MB x {steps} steps", f"{dec_bytes / 1e6:.0f} x {steps}"),
        ("weight bytes per speech patch, GB (each use from DRAM)", f"{per_patch / 1e9:.2f}"),
        ("read bandwidth measured (this run), GB/s", f"{bw:.1f}"),
        ("bandwidth bound, speech patches/s (no text, no audio)", f"{bw * 1e9 / per_patch:.2f}"),
        ("  same, patch decoder read once (its 11 steps hit the L3)",
         f"{bw * 1e9 / (per_patch - (steps - 1) * dec_bytes):.2f}"),
        ("LM patches/s (backbone + encoder + decoder only)", f"{lm_rate:.2f}"),
        ("LM fraction of the bandwidth bound", f"{lm_rate / bound:.0%}"),
        (f"prompt pieces encoded + prefilled while spoken (>= {args.prompt_chunk:g} s each)", f"{r['chunks']}"),
        ("  audio per piece, s (median)", f"{r['chunk_audio_s']:.2f}"),
        ("  encode + prefill per piece, ms (median)", f"{r['chunk_ms']:.0f}"),
        ("  of which the tokenizer's encode, ms (median)", f"{r['encode_ms']:.0f}"),
        ("prompt work left when the prompt ends, s", f"{r['prompt_lag']:.2f}"),
        (f"first audio after the prompt ends, s (lookahead {r['lookahead']} frames)",
         "-" if r["first_audio"] is None else f"{r['first_audio']:.2f}"),
        ("peak RSS, GB", f"{peak_rss_gb():.2f}"),
    ]
    if cmp is not None:
        rows += [("patch decoder reference (transformers + QuantLinear), ms", f"{cmp[0] * 1e3:.1f}"),
                 ("patch decoder fast path (same codes), ms", f"{cmp[1] * 1e3:.1f}"),
                 ("  speed-up / greedy codes identical", f"{cmp[0] / cmp[1]:.2f}x / {cmp[2]}"),
                 ("  step-0 logits, max rel. difference", f"{cmp[3]:.1e}")]
    w = max(len(k) for k, _ in rows)
    print(f"| {'quantity':<{w}} | {'value':>12} |")
    print(f"|{'-' * (w + 2)}|{'-' * 14}|")
    for k, v in rows:
        print(f"| {k:<{w}} | {v:>12} |")


if __name__ == "__main__":
    main()
