"""Healing by on-policy distillation (efficient.distill) on SmolLM2-135M-Instruct, before vs after, on CPU.

Sections (``--sections``, each printed as soon as it is done; every figure is measured in this run):

- ``attention``: per layout (``--layouts``, default ``--layout``): held-out perplexity, pass-key retrieval at
  2k and 4k, KV cache at 4k tokens vs full attention, before and after healing the sparse layers' sinks,
  gates and projections (reverse KL on the student's own continuations of long prompts, mixed with forward
  KL on text; a second domain of synthetic pass-key prompts over the training text when
  ``--retrieval-domain``), and the healing time.
- ``lowbit``: per scheme (``--schemes``): perplexity of the packed model before and after healing the group
  scales (or group-wise LoRA) over frozen codes, re-packed into the LUT format, and the checkpoint size;
  the held-out KL to the float model every ``--eval-every`` steps, and which kernel the packed model ran on
  (where that is the int8-activation kernel, the perplexity on the LUT-table kernel too).
- ``llama-cpp``: llama.cpp's requantizations of the same GGUF (``--llama-cpp``, default Q2_K): perplexity on
  the low-bit section's windows, file size, and the type of every tensor read back from the GGUF.
- ``speech``: the embedded speech LM with its composed LUT + sparse backbone: text and speech (patch decoder)
  cross-entropy on held-out flite sentences, float vs composed before vs after healing (text-head and
  patch-decoder KL).
- ``mtp``: acceptance length of 3 MTP heads (tokens committed per draft round, greedy, 3 drafts a round, on
  held-out test-text prompts; output asserted equal to plain greedy; with ``--mtp-tree 4,3,2`` also a draft
  tree verified in one pass, on the same prompts and heads) before and after self-distillation on the
  target's own rollouts: by default batched greedy rollouts that keep the target's hidden states (resumable
  shards, ``--mtp-data``), then the heads alone on the cached states (``--mtp-mode online``: the first recipe).

The last line printed is, for ``--layout``: pass-key 2k/4k and perplexity before -> after healing.

    PYTHONPATH=. python bench/bench_heal.py --layout hysparse-1:3 [--steps 60] [--max-minutes 40]

Texts: the offline English text (train split for calibration, prompts and healing; test split for perplexity
and pass-key filler). The CPU is shared: times are wall times of a loaded machine.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import os
import random
import tempfile
import time
from pathlib import Path

import torch

from bench.common.llama_cpp import SMOLLM2_FTYPES
from bench.common.passkey import passkey_prompts
from bench.common.perplexity import chained_windows
from bench.common.perplexity import perplexity as window_perplexity
from efficient.distill import (
    DistillConfig,
    Distiller,
    MTPSelfDistiller,
    kl_report,
    repack,
    sample_continuations,
    target_rollouts,
)
from efficient.distill.recipes import convert_student


def english(split: str) -> str:
    from eval.textdata import offline_english_text

    return offline_english_text(split)


def load_model():
    from eval.reference_models import load_smollm2

    return load_smollm2()


# ------------------------------------------------------------------------------------------------ measures
def perplexity(model, ids: torch.Tensor, seq_len: int, max_tokens: int) -> float:
    """Non-overlapping windows of ``seq_len`` over the first ``max_tokens`` tokens of ``ids`` (1-D)."""
    return window_perplexity(model, chained_windows(ids[:max_tokens], seq_len))


def passkey_accuracy(model, tok, prompts, new_tokens: int = 8) -> float:
    hits = 0
    for ids, key in prompts:
        out = sample_continuations(model, ids, new_tokens, temperature=0.0)[0, ids.shape[1] :]
        hits += key in tok.decode(out.tolist()).replace(" ", "")
    return hits / len(prompts)


def kv_saving(model, context: int) -> tuple[float, float]:
    from efficient.attention import AttentionConfig, kv_cache_bytes

    c = model.config
    heads = c.num_attention_heads
    kv = getattr(c, "num_key_value_heads", None) or heads
    hd = getattr(c, "head_dim", None) or c.hidden_size // heads
    cfg = c.efficient_attention
    mine = kv_cache_bytes(AttentionConfig(**cfg), context, kv, hd, dtype_bytes=4)
    full = kv_cache_bytes(AttentionConfig(layout="F" * len(cfg["layout"])), context, kv, hd, dtype_bytes=4)
    return mine, full


def stream(tok, text: str) -> torch.Tensor:
    return tok(text, return_tensors="pt", add_special_tokens=False).input_ids[0]


# ------------------------------------------------------------------------------------------------ sections
def attention_section(layout: str, model, tok, data: dict, args, results: dict) -> None:
    t0 = time.perf_counter()
    adapter = None
    if args.adapter_steps > 0:  # the sparse layers' adapters: text + a retrieval curriculum over the training text
        from efficient.attention.reconstruct import retrieval_sequences

        n = args.adapter_len
        adapter = [(data["train"][None, -n:], 0)] + retrieval_sequences(
            tok, english("train")[:400_000], n, args.adapter_retrieval, seed=1)
    student, params = convert_student(model, layout, calibration_ids=data["train"][None, : args.calib_tokens],
                                      attention_train=args.attention_train, adapter_sequences=adapter,
                                      adapter_steps=args.adapter_steps)
    r = results.setdefault("attention", {}).setdefault(layout, {})
    r["layout"] = student.config.efficient_attention["layout"]
    r["convert_s"] = time.perf_counter() - t0
    print(f"{layout}: converted in {r['convert_s']:.0f} s (adapters: {args.adapter_steps} steps per sparse layer)",
          flush=True)
    mine, full = kv_saving(student, 4096)
    r["kv_4k_mib"], r["kv_full_4k_mib"] = mine / 2**20, full / 2**20

    def measure(m) -> dict:
        t = time.perf_counter()
        out = {"ppl": perplexity(m, data["test"], args.ppl_len, args.ppl_tokens),
               "passkey": {n: passkey_accuracy(m, tok, p) for n, p in data["passkey"].items()}}
        out["seconds"] = time.perf_counter() - t
        return out

    if "full" not in results:
        results["full"] = measure(model)
        print(f"full attention: ppl {results['full']['ppl']:.2f}, passkey {results['full']['passkey']} "
              f"({results['full']['seconds']:.0f} s)", flush=True)
    r["before"] = measure(student)
    print(f"{layout} before healing: ppl {r['before']['ppl']:.2f}, passkey {r['before']['passkey']}", flush=True)
    if args.steps == 0:  # the conversion alone: "after" is "before"
        r["heal"], r["after"] = {"steps": 0, "seconds": 0.0}, r["before"]
        return
    prompts = {"text": data["train"][: (data["train"].numel() // args.prompt_len) * args.prompt_len]
               .view(-1, args.prompt_len)}
    teachers = {"text": model}
    if args.retrieval_domain:
        keys = passkey_prompts(tok, english("train")[:400_000], args.prompt_len, 64, seed=12345)
        prompts["retrieval"] = torch.cat([ids[:, -args.prompt_len :] for ids, _ in keys])
        teachers["retrieval"] = model
    cfg = DistillConfig(steps=args.steps, lr=args.lr, batch=args.batch, prompt_len=args.prompt_len,
                        gen_len=args.gen_len, mix=args.mix, text_len=args.text_len, warmup=5, seed=0,
                        lr_multipliers={"_proj.weight": args.proj_lr_mult, "_proj.bias": args.proj_lr_mult})
    d = Distiller(student, teachers, params, prompts=prompts, text=data["train"], config=cfg)
    state = Path(args.state_dir) / f"attention-{layout.replace(':', '_')}" if args.state_dir else None
    if state and args.resume and (state / "distill_state.json").is_file():
        d.load(state)
    d.run(save_dir=state, save_every=5, max_seconds=args.max_minutes * 60)
    d.close()
    h = d.history
    r["heal"] = {"steps": d.step, "seconds": d.seconds, "params": sum(p.numel() for _, p in params),
                 "rev_kl_first5": _mean(h[:5], "rev_kl_on_policy"), "rev_kl_last5": _mean(h[-5:], "rev_kl_on_policy"),
                 "fwd_kl_text_first5": _mean(h[:5], "fwd_kl_text"), "fwd_kl_text_last5": _mean(h[-5:], "fwd_kl_text")}
    r["after"] = measure(student)
    print(f"{layout} after {d.step} steps ({d.seconds / 60:.1f} min): ppl {r['after']['ppl']:.2f}, passkey "
          f"{r['after']['passkey']}; on-policy reverse KL {r['heal']['rev_kl_first5']:.4f} -> "
          f"{r['heal']['rev_kl_last5']:.4f}", flush=True)


def _mean(rows: list[dict], key: str) -> float:
    vals = [x[key] for x in rows if key in x]
    return sum(vals) / len(vals) if vals else float("nan")


def _quantization_md_ppl(model, tok) -> float:
    """docs/quantization.md's protocol (bench_lut): the first 1024 tokens of the offline test text, tokenized
    with the tokenizer's defaults, windows of 512 (llama.cpp Q2_K 27.07, float 20.83 there)."""
    from bench.common.perplexity import text_perplexity

    return text_perplexity(model, tok, english("test"), max_tokens=1024)


def _bits(scheme: str) -> int:
    """Bits of the scheme (of a mixed layout: its default scheme, which most weights use)."""
    from efficient.quant.layouts import get_layout

    layout = get_layout(scheme)
    return int((layout.default if layout else scheme)[1])


def _kernel(bits: int) -> str:
    """Which kernel the packed uniform layers of ``bits`` run on now."""
    from efficient.quant import native

    path = native.kernel_path()
    if path == "torch":
        return "PyTorch fallback (native kernels not built)"
    if native.int8_kernel_for(bits):
        return f"native int8-activation kernel ({path}) on the packed LUT codes"
    return f"native LUT kernel ({path}, {native.table_mode()} tables)"


@contextlib.contextmanager
def _env(name: str, value: str):
    old = os.environ.get(name)
    os.environ[name] = value
    try:
        yield
    finally:
        if old is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = old


def _method(args) -> str:
    """The quantizer as printed: e.g. ``awq+gptq-act-order``."""
    m = args.quant_method + ("-act-order" if args.act_order and args.quant_method == "gptq" else "")
    return f"{args.quant_transform}+{m}" if args.quant_transform else m


def lowbit_section(scheme: str, model, tok, data: dict, args, results: dict) -> None:
    from efficient.quant import save_quantized
    from efficient.quant.api import text_calibration

    r = results.setdefault("lowbit", {}).setdefault(scheme, {})
    t0 = time.perf_counter()
    calibrated = args.quant_method != "rtn" or args.quant_transform
    calib = text_calibration(model, tok, english("train")[:40_000]) if calibrated else None
    student, params = convert_student(model, scheme, quant_method=args.quant_method, quant_calib_fn=calib,
                                      quant_transform=args.quant_transform, quant_act_order=args.act_order,
                                      quant_train=args.quant_train, lora_rank=args.lora_rank)
    r["convert_s"] = time.perf_counter() - t0
    if "float_ppl" not in results:
        results["float_ppl"] = perplexity(model, data["test"], 512, args.ppl_tokens)
    packed = copy.deepcopy(student)
    repack(packed)
    bits = _bits(scheme)
    r["kernel"] = _kernel(bits)
    r["ppl_before"] = perplexity(packed, data["test"], 512, args.ppl_tokens)
    if args.quantization_md_ppl:
        r["ppl_before_quantization_md"] = _quantization_md_ppl(packed, tok)
    if "int8-activation" in r["kernel"]:  # the same packed codes on the LUT-table kernel too
        with _env("MIMO_QUANT_INT8", "off"):
            r["kernel_lut"] = _kernel(bits)
            r["ppl_before_lut"] = perplexity(packed, data["test"], 512, args.ppl_tokens)
        print(f"{scheme} packed before healing: ppl {r['ppl_before_lut']:.2f} on {r['kernel_lut']}", flush=True)
    del packed
    print(f"{scheme} ({_method(args)}) before healing: ppl {r['ppl_before']:.2f} "
          f"(float {results['float_ppl']:.2f})", flush=True)
    if args.steps == 0:  # the packed model's perplexity on both kernels only
        return
    prompts = data["train"][: (data["train"].numel() // 64) * 64].view(-1, 64)
    cfg = DistillConfig(steps=args.steps, lr=args.quant_lr, batch=args.batch, prompt_len=64, gen_len=args.gen_len,
                        mix=args.quant_mix, text_len=args.text_len, warmup=5, seed=0,
                        lr_multipliers={"latent": args.latent_lr_mult} if args.quant_train == "ste" else {})
    d = Distiller(student, model, params, prompts=prompts, text=data["train"], config=cfg)
    state = Path(args.state_dir) / f"lowbit-{scheme}" if args.state_dir else None
    if state and args.resume and (state / "distill_state.json").is_file():
        d.load(state)
    # held-out KL to the float model (teacher forced, past the perplexity tokens) every --eval-every steps
    held = data["test"][args.ppl_tokens : args.ppl_tokens + 2 * 512]
    curve = r.setdefault("heldout_kl", [])
    t_end = time.perf_counter() + args.max_minutes * 60
    while True:
        if not curve or curve[-1]["step"] != d.step:
            curve.append({"step": d.step, "minutes": d.seconds / 60, **kl_report(student, model, held, 512, 2)})
            print(f"{scheme} step {d.step} ({d.seconds / 60:.1f} min): held-out KL fwd {curve[-1]['fwd_kl']:.4f} "
                  f"rev {curve[-1]['rev_kl']:.4f}", flush=True)
            if args.json:
                Path(args.json).write_text(json.dumps(results, indent=1, default=str))
        left = t_end - time.perf_counter()
        if d.step >= args.steps or left <= 0:
            break
        chunk = args.eval_every if args.eval_every > 0 else args.steps
        d.run(min(args.steps, d.step + chunk), save_dir=state, save_every=5, max_seconds=left)
    d.close()
    repack(student)
    r["ppl_after"] = perplexity(student, data["test"], 512, args.ppl_tokens)
    if args.quantization_md_ppl:
        r["ppl_after_quantization_md"] = _quantization_md_ppl(student, tok)
        print(f"{scheme} on docs/quantization.md's protocol: ppl {r['ppl_before_quantization_md']:.2f} -> "
              f"{r['ppl_after_quantization_md']:.2f}", flush=True)
    if "int8-activation" in r["kernel"]:  # the same packed codes on the LUT-table kernel too
        with _env("MIMO_QUANT_INT8", "off"):
            r["ppl_after_lut"] = perplexity(student, data["test"], 512, args.ppl_tokens)
        print(f"{scheme} healed, packed: ppl {r['ppl_after']:.2f} on {r['kernel']}, {r['ppl_after_lut']:.2f} on "
              f"{r['kernel_lut']}", flush=True)
    r["heal"] = {"steps": d.step, "seconds": d.seconds, "mode": args.quant_train,
                 "loss_first5": _mean(d.history[:5], "loss"), "loss_last5": _mean(d.history[-5:], "loss")}
    with tempfile.TemporaryDirectory() as tmp:
        save_quantized(student, tmp)
        r["file_mib"] = (Path(tmp) / "model.safetensors").stat().st_size / 2**20
    print(f"{scheme} after {d.step} steps ({d.seconds / 60:.1f} min): ppl {r['ppl_after']:.2f} "
          f"({100 * (r['ppl_after'] / results['float_ppl'] - 1):+.1f}% vs float), file {r['file_mib']:.1f} MiB",
          flush=True)




def llama_cpp_section(qname: str, data: dict, args, results: dict) -> None:
    """llama.cpp's ``qname`` requantization of the same GGUF: perplexity on the same windows as the low-bit
    rows, the file size, and the type and bytes of every tensor (from the GGUF itself)."""
    import importlib.util
    import re
    from collections import defaultdict

    if importlib.util.find_spec("llama_cpp") is None or importlib.util.find_spec("gguf") is None:
        print(f"(llama.cpp {qname} reference skipped: llama-cpp-python / gguf not installed)", flush=True)
        return
    from gguf import GGUFReader

    from bench.common.llama_cpp import smollm2_gguf

    path = smollm2_gguf(qname, args.threads)
    r = results.setdefault("llama_cpp", {}).setdefault(qname, {})
    r["file_mib"] = path.stat().st_size / 2**20
    types: dict = defaultdict(lambda: {"count": 0, "bytes": 0, "weights": 0})
    for t in GGUFReader(str(path)).tensors:
        key = f"{re.sub(r'blk[.][0-9]+[.]', 'blk.N.', t.name)} {t.tensor_type.name}"
        types[key]["count"] += 1
        types[key]["bytes"] += int(t.n_bytes)
        types[key]["weights"] += int(t.n_elements)
    r["tensors"] = dict(types)
    windows = [w[0].tolist() for w in chained_windows(data["test"][: args.ppl_tokens], 512)]
    # in a child process: a llama.cpp build that does not run on this CPU dies there (SIGILL), not here
    from concurrent.futures import ProcessPoolExecutor
    from concurrent.futures.process import BrokenProcessPool
    from multiprocessing import get_context

    try:
        with ProcessPoolExecutor(1, mp_context=get_context("spawn")) as pool:
            r["ppl"] = pool.submit(_llama_cpp_perplexity, str(path), windows, args.threads).result()
    except BrokenProcessPool:
        r["ppl"] = None
        print(f"llama.cpp {qname}: the llama-cpp-python build crashed evaluating on this CPU (no perplexity)",
              flush=True)
    ppl = "-" if r["ppl"] is None else f"{r['ppl']:.2f}"
    print(f"llama.cpp {qname} (requantized from the Q4_1 GGUF): ppl {ppl} on the low-bit windows, file "
          f"{r['file_mib']:.1f} MiB; tensors:", flush=True)
    for key, v in sorted(r["tensors"].items()):
        print(f"  {key}: {v['count']} tensors, {v['bytes'] / 2**20:.2f} MiB, {8 * v['bytes'] / v['weights']:.3f} "
              "bits/weight", flush=True)


def _llama_cpp_perplexity(path: str, windows: list[list[int]], threads: int) -> float:
    from bench.common.llama_cpp import open_llama, window_nll

    nll, count = window_nll(open_llama(path, threads), windows)
    return float(torch.tensor(nll / count).exp())


def _mtp_drafter(model, target, data: dict):
    from efficient.distill import hidden_and_logits
    from efficient.spec import MTPConfig, MTPDrafter

    drafter = MTPDrafter(MTPConfig.from_target(model.config, num_heads=3), target.embed, target.final_norm,
                         target.lm_head)
    with torch.no_grad():
        h, _ = hidden_and_logits(model, data["train"][None, :128])
    torch.manual_seed(0)
    drafter.init_from_target(target.decoder_layers[-1], hidden_rms=float(h.pow(2).mean(-1).sqrt().median()))
    return drafter


def mtp_acceptance(target, drafter, held: list[list[int]], new_tokens: int, trees: list[tuple] = ()) -> dict:
    """Acceptance length = tokens committed per drafting round (accepted drafts + the bonus token; one target
    forward per round), greedy, pooled over the held-out prompts: the chain (3 drafts a round, adaptive off),
    then each ``(shape, max_nodes)`` tree on the same prompts. Plain greedy is decoded once and every output is
    compared with it; decode times are summed over the prompts (prefill excluded)."""
    from efficient.spec import SpeculativeDecoder, TreeSpeculativeDecoder, generate_plain

    refs, t_plain = [], 0.0
    for p in held:
        ref, sp = generate_plain(target, p, new_tokens)
        refs.append(ref)
        t_plain += sp.time_total - sp.time_prefill

    def run(make) -> dict:
        rounds = toks = 0
        proposed, accepted = [0, 0, 0], [0, 0, 0]
        equal, t_spec = True, 0.0
        for p, ref in zip(held, refs):
            out, st = make().generate(p, new_tokens)
            equal &= out == ref
            rounds += st.draft_rounds
            toks += st.draft_round_tokens
            proposed = [a + b for a, b in zip(proposed, st.proposed)]
            accepted = [a + b for a, b in zip(accepted, st.accepted)]
            t_spec += st.time_total - st.time_prefill
        return {"accept": toks / max(rounds, 1), "greedy_equal": equal,
                "per_position": [a / max(p, 1) for a, p in zip(accepted, proposed)],
                "decode_speedup": t_plain / t_spec if t_spec else float("nan"), "prompts": len(held),
                "tokens": new_tokens, "decode_s": t_spec, "plain_decode_s": t_plain}

    out = run(lambda: SpeculativeDecoder(target, drafter.eval(), max_draft=3, adaptive=False))
    out["trees"] = {}
    for shape, nodes in trees:
        key = ",".join(map(str, shape)) + (f"@{nodes}" if nodes else "")
        out["trees"][key] = run(lambda s=shape, k=nodes: TreeSpeculativeDecoder(target, drafter.eval(), s, max_nodes=k))
    return out


def _held_out_prompts(tok, n: int) -> list[list[int]]:
    """``n`` prompts of 64 tokens, paragraphs spread over the offline test text (never used for training)."""
    paras = [x for x in english("test").split("\n\n") if len(x) > 600]
    step = max(1, len(paras) // n)
    return [tok(paras[i * step], add_special_tokens=False).input_ids[:64] for i in range(n)]


def mtp_section(model, tok, data: dict, args, results: dict) -> None:
    from efficient.spec import CausalLMTarget, load_mtp

    r = results.setdefault("mtp", {})
    target = CausalLMTarget(model)
    protocols = {"held-out": (args.mtp_prompts, args.mtp_tokens)}
    if args.mtp_old_protocol:  # docs/healing.md's first rows: 3 prompts x 40 tokens
        protocols["old (3 x 40)"] = (3, 40)

    trees = args.mtp_tree or []

    def measure(drafter, tag: str) -> None:
        for name, (n, new) in protocols.items():
            m = mtp_acceptance(target, drafter, _held_out_prompts(tok, n), new, trees if tag == "after" else [])
            r.setdefault(tag, {})[name] = m
            for kind, x in [("chain", m), *((f"tree {k}", v) for k, v in m["trees"].items())]:
                per = "/".join(f"{a:.2f}" for a in x["per_position"])
                print(f"MTP x3 {tag}, {kind}, {name} ({n} prompts x {new} tokens): acceptance length "
                      f"{x['accept']:.2f} (per draft depth {per}); greedy output equal to plain greedy: "
                      f"{x['greedy_equal']}; decode {x['decode_speedup']:.2f}x plain", flush=True)
                assert x["greedy_equal"], f"speculative greedy output ({kind}) differs from plain greedy"
            if tag == "after" and name == "held-out":
                r["accept_after"], r["greedy_equal"] = m["accept"], m["greedy_equal"]
                if m["trees"]:
                    r["tree"], r["accept_after_tree"] = next(iter(m["trees"].items()))[0], \
                        next(iter(m["trees"].values()))["accept"]

    if args.mtp_heads:  # evaluate trained heads only
        measure(load_mtp(args.mtp_heads, target), "after")
        r["train"] = {"heads": args.mtp_heads}
        target.close()
        return
    drafter = _mtp_drafter(model, target, data)
    if not args.mtp_skip_before:
        measure(drafter, "before")
        r["accept_before"] = r["before"]["held-out"]["accept"]
    if args.mtp_mode == "cached":
        _mtp_train_cached(model, drafter, data, args, r)
    else:
        _mtp_train_online(model, drafter, data, args, r)
    for p in drafter.parameters():
        p.requires_grad_(False)
    if args.mtp_save:
        print(f"wrote {drafter.save(Path(args.mtp_save))}", flush=True)
    measure(drafter, "after")
    target.close()


def _mtp_train_cached(model, drafter, data: dict, args, r: dict) -> None:
    """Batched greedy rollouts that keep the hidden states (shards, resumable), then the heads alone."""
    from efficient.distill.mtp_cached import CachedMTPTrainer
    from efficient.distill.mtp_data import generate_rollout_shards, load_rollout_shards

    P = args.mtp_prompt_len
    starts = data["train"][: (data["train"].numel() // P) * P].view(-1, P)
    g = torch.Generator().manual_seed(0)
    rows = starts[torch.randperm(starts.shape[0], generator=g)[: args.mtp_rollouts]]
    shard_dir = Path(args.mtp_data or tempfile.mkdtemp(prefix="mtp-rollouts-"))
    info = generate_rollout_shards(model, rows, args.mtp_rollout_tokens, shard_dir, batch=args.mtp_rollout_batch,
                                   dtype=None if args.mtp_fp32 else torch.bfloat16,
                                   max_seconds=args.mtp_gen_minutes * 60)
    cached = load_rollout_shards(shard_dir, max_rows=args.mtp_rollouts)
    n, L = cached["tokens"].shape
    r["data"] = {"rows": n, "positions": n * L, "generated_tokens": n * args.mtp_rollout_tokens,
                 "prompt_len": P, "rollout_s_this_run": info["seconds"], "dtype": "fp32" if args.mtp_fp32 else "bf16"}
    print(f"MTP data: {n} greedy rollouts x ({P} prompt + {args.mtp_rollout_tokens} generated) tokens = "
          f"{n * args.mtp_rollout_tokens} generated tokens; this run generated {info['generated_tokens']} in "
          f"{info['seconds'] / 60:.1f} min", flush=True)
    trainer = CachedMTPTrainer(drafter, cached, lr=args.mtp_lr, batch=args.mtp_batch, steps=args.mtp_steps,
                               vocab_size=args.mtp_vocab, bf16=not args.mtp_fp32, holdout=args.mtp_holdout)
    state = Path(args.state_dir) / "mtp-cached" if args.state_dir else None
    if state and args.resume and (state / "distill_state.json").is_file():
        trainer.load(state)
    trainer.run(save_dir=state, save_every=50, max_seconds=args.max_minutes * 60, eval_every=args.mtp_eval_every)
    h = trainer.history
    r["train"] = {"mode": "cached", "steps": trainer.step, "seconds": trainer.seconds, "batch_rows": args.mtp_batch,
                  "vocab": int(drafter.draft_vocab.numel()) if drafter.draft_vocab is not None else None,
                  "ce_first10": _mean(h[:10], "loss"), "ce_last10": _mean(h[-10:], "loss"),
                  "agree_last50": [_mean(h[-50:], f"agree{k}") for k in (1, 2, 3)],
                  "heldout_rows": trainer.evaluate() if args.mtp_holdout else None}
    print(f"MTP heads trained {trainer.step} steps on cached states in {trainer.seconds / 60:.1f} min: CE "
          f"{r['train']['ce_first10']:.3f} -> {r['train']['ce_last10']:.3f}; teacher-forced agreement (last 50 "
          f"steps) {'/'.join(f'{a:.2f}' for a in r['train']['agree_last50'])}; held-out rollouts "
          f"{r['train']['heldout_rows']}", flush=True)


def _mtp_train_online(model, drafter, data: dict, args, r: dict) -> None:
    """The first recipe: a target forward per step on a few rollouts (+ text windows)."""
    t0 = time.perf_counter()
    starts = data["train"][: (data["train"].numel() // 64) * 64].view(-1, 64)
    g = torch.Generator().manual_seed(0)
    rows = starts[torch.randperm(starts.shape[0], generator=g)[: args.mtp_rollouts]]
    seqs = target_rollouts(model, rows, args.mtp_rollout_tokens, batch=8, progress=True)
    r["rollout_s"] = time.perf_counter() - t0
    if args.mtp_text_windows:  # plus teacher-forced text windows of the same length (cheap: no decoding)
        n = seqs.shape[1]
        text = data["train"][-(args.mtp_text_windows * n) :].view(-1, n)
        seqs = torch.cat([seqs, text])
    trainer = MTPSelfDistiller(model, drafter, seqs, lr=args.mtp_lr, batch=args.batch, steps=args.mtp_steps)
    state = Path(args.state_dir) / "mtp" if args.state_dir else None
    if state and args.resume and (state / "distill_state.json").is_file():
        trainer.load(state)
    trainer.run(save_dir=state, save_every=10, max_seconds=args.max_minutes * 60)
    r["train"] = {"mode": "online", "steps": trainer.step, "seconds": trainer.seconds, "rollouts": list(seqs.shape)}


def speech_items(m, sentences: list[str], voices: list[str], workdir: Path) -> list[torch.Tensor]:
    """Teacher-forced speech-LM sequences from flite speech: TTS (speech targets) and ASR (text targets)."""
    import subprocess

    from mimo_audio import formats
    from mimo_audio.prompts import Speech, Text

    out = []
    for i, sentence in enumerate(sentences):
        wav = workdir / f"{i}.wav"
        subprocess.run(["flite", "-voice", voices[i % len(voices)], "-t", sentence, "-o", str(wav)], check=True)
        codes = m.encode_audio(str(wav))
        out.append(m.renderer.render(formats.tts(sentence) + [Speech(codes)]))
        out.append(m.renderer.render(formats.asr(codes) + [Text(sentence), Text(formats.IM_END)]))
    return out


def _sentences(text: str, n: int, seed: int) -> list[str]:
    import re

    cands = [s.strip() for s in re.split(r"(?<=[.!?])\s+", text) if 40 <= len(s.strip()) <= 120]
    random.Random(seed).shuffle(cands)
    return cands[:n]


@torch.no_grad()
def speech_losses(lm, items: list[torch.Tensor]) -> dict[str, float]:
    from mimo_audio.training import speech_lm_loss

    text, audio, nt, ns = 0.0, 0.0, 0, 0
    for ids in items:
        out = speech_lm_loss(lm, ids[None])
        text += float(out.text) * out.text_tokens
        nt += out.text_tokens
        if out.speech_patches:
            audio += float(sum(out.channels) / len(out.channels)) * out.speech_patches
            ns += out.speech_patches
    return {"text_ce": text / max(nt, 1), "speech_ce": audio / max(ns, 1)}


def speech_section(args, results: dict) -> None:
    """The embedded speech LM: composed LUT + sparse backbone, healed on flite speech of training sentences,
    measured on held-out sentences (text cross-entropy and mean RVQ-channel cross-entropy)."""
    from mimo_audio.api import MimoAudio
    from mimo_audio.distill import composed_student, speech_kl

    r = results.setdefault("speech", {})
    m = MimoAudio.from_pretrained()
    lm = m.lm.eval()
    for p in lm.parameters():
        p.requires_grad_(False)
    voices = ["slt", "kal", "awb", "rms"]
    with tempfile.TemporaryDirectory() as tmp:
        train = speech_items(m, _sentences(english("train"), args.speech_items, 1), voices, Path(tmp))
        val = speech_items(m, _sentences(english("test"), args.speech_items // 2, 2), voices, Path(tmp))
    opts = dict(window=args.speech_window, block_size=8, top_k=2)
    student, params = composed_student(lm, quant=args.speech_quant, attention="hysparse-1:3", **opts)
    r["setup"] = {"quant": args.speech_quant, "attention": "hysparse-1:3", **opts, "train_items": len(train),
                  "val_items": len(val), "layout": student.model.config.efficient_attention["layout"]}
    def val_kl(st) -> float:
        with torch.no_grad():
            return sum(float(speech_kl(st, lm, x[None])[0]) for x in val) / len(val)

    r["float"], r["before"] = speech_losses(lm, val), speech_losses(student, val)
    r["before"]["kl"] = val_kl(student)
    print(f"speech LM float {r['float']}, composed before healing {r['before']}", flush=True)
    d = Distiller(student, lm, params, text=train, offpolicy_fn=speech_kl,
                  config=DistillConfig(batch=1, mix=1.0, steps=args.speech_steps, lr=3e-3, warmup=2,
                                       lr_multipliers={"_proj.weight": 0.02, "_proj.bias": 0.02}))
    d.run(max_seconds=args.max_minutes * 60)
    d.close()
    repack(student)
    r["after"] = speech_losses(student, val)
    r["after"]["kl"] = val_kl(student)
    r["heal"] = {"steps": d.step, "seconds": d.seconds}
    f, b, a = r["float"], r["before"], r["after"]
    print(f"speech LM composed {args.speech_quant}+hysparse-1:3 after {d.step} steps ({d.seconds / 60:.1f} min): "
          f"text CE {b['text_ce']:.3f} -> {a['text_ce']:.3f} (float {f['text_ce']:.3f}, "
          f"{100 * (a['text_ce'] / f['text_ce'] - 1):+.1f}%), speech CE {b['speech_ce']:.3f} -> "
          f"{a['speech_ce']:.3f} (float {f['speech_ce']:.3f}, {100 * (a['speech_ce'] / f['speech_ce'] - 1):+.1f}%); "
          f"held-out KL to the float model {b['kl']:.4f} -> {a['kl']:.4f}", flush=True)


# ------------------------------------------------------------------------------------------------ report
def summary(results: dict, args) -> None:
    print("\n## Healing results (SmolLM2-135M-Instruct, fp32, CPU)")
    full = results.get("full")
    if results.get("attention"):
        print("| layout | KV at 4k (MiB, full) | ppl before | ppl after | " + " | ".join(
            f"passkey {n // 1024}k before -> after" for n in args.lengths) + " | heal steps (min) |")
        print("|---" * (5 + len(args.lengths)) + "|")
        if full:
            print(f"| full | {r_kv(None)} | {full['ppl']:.2f} | - | " + " | ".join(
                f"{full['passkey'][n]:.0%}" for n in args.lengths) + " | - |")
        for name, r in results["attention"].items():
            if "after" not in r:
                continue
            print(f"| {name} | {r['kv_4k_mib']:.1f} ({r['kv_full_4k_mib']:.1f}) | {r['before']['ppl']:.2f} | "
                  f"{r['after']['ppl']:.2f} | " + " | ".join(
                      f"{r['before']['passkey'][n]:.0%} -> {r['after']['passkey'][n]:.0%}" for n in args.lengths)
                  + f" | {r['heal']['steps']} ({r['heal']['seconds'] / 60:.1f}) |")
    if any("ppl_after" in r for r in results.get("lowbit", {}).values()):
        print(f"\n| scheme | ppl before | ppl after | float ppl {results['float_ppl']:.2f} | file MiB | steps (min) |")
        print("|---|---|---|---|---|---|")
        for name, r in results["lowbit"].items():
            if "ppl_after" not in r:
                continue
            rows = [("", "ppl_before", "ppl_after")]
            if "ppl_after_lut" in r:  # default int8-activation kernel, then the LUT-table kernel
                rows = [(" (int8-act kernel)", "ppl_before", "ppl_after"),
                        (" (LUT kernel)", "ppl_before_lut", "ppl_after_lut")]
            for tag, before, after in rows:
                print(f"| {name} {_method(args)} + {args.quant_train}{tag} | {r[before]:.2f} | "
                      f"{r[after]:.2f} | {100 * (r[after] / results['float_ppl'] - 1):+.1f}% | "
                      f"{r['file_mib']:.1f} | {r['heal']['steps']} ({r['heal']['seconds'] / 60:.1f}) |")
    m = results.get("mtp")
    if m and "accept_after" in m:
        before = f"{m['accept_before']:.2f} -> " if "accept_before" in m else ""
        print(f"\nMTP x3 acceptance length {before}{m['accept_after']:.2f} (greedy equal: {m['greedy_equal']}; "
              f"{m['train'].get('steps', '-')} steps)")
        for name, a in m.get("after", {}).items():
            print(f"  {name}: {a['accept']:.2f} ({a['prompts']} prompts x {a['tokens']} tokens), decode "
                  f"{a['decode_speedup']:.2f}x plain")
            for key, x in a.get("trees", {}).items():
                print(f"  {name}, tree {key}: {x['accept']:.2f} (greedy equal: {x['greedy_equal']}), decode "
                      f"{x['decode_speedup']:.2f}x plain")
    sp = results.get("speech")
    if sp and "after" in sp:
        print(f"\n| speech LM (embedded), {sp['setup']['quant']} + hysparse-1:3 | text CE | speech CE (mean of 8 "
              "channels) | KL to float |\n|---|---|---|---|")
        for k in ("float", "before", "after"):
            print(f"| {k} | {sp[k]['text_ce']:.3f} | {sp[k]['speech_ce']:.3f} | {sp[k].get('kl', 0.0):.4f} |")
    r = results.get("attention", {}).get(args.layout)
    if r and "after" in r:
        b, a = r["before"], r["after"]
        pk = ", ".join(f"passkey {n // 1024}k {b['passkey'][n]:.0%} -> {a['passkey'][n]:.0%}" for n in args.lengths)
        print(f"{args.layout}: {pk}, ppl {b['ppl']:.2f} -> {a['ppl']:.2f}"
              + (f" (full attention {full['ppl']:.2f})" if full else ""), flush=True)


def r_kv(_):
    return "-"


def _tree_spec(text: str) -> tuple[tuple[int, ...], int]:
    """``4,3,2`` or ``4,3,2@16`` -> (branching per depth, verified nodes or 0)."""
    from efficient.spec import parse_tree

    shape, _, nodes = text.partition("@")
    try:
        if nodes and int(nodes) < 1:
            raise ValueError(f"NODES must be >= 1, got {nodes}")
        return parse_tree(shape), int(nodes or 0)
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"{text!r}: {err}") from None


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--layout", default="hysparse-1:3", help="layout of the last line (default hysparse-1:3)")
    ap.add_argument("--layouts", help="comma-separated layouts for the attention section (default: --layout)")
    ap.add_argument("--schemes", default="w4g128,w2g128",
                    help="low-bit schemes or mixed layouts, e.g. q2k-mix (default w4g128,w2g128)")
    ap.add_argument("--sections", default="attention",
                    help="attention,lowbit,llama-cpp,mtp,speech (default attention)")
    ap.add_argument("--llama-cpp", default="Q2_K", help="llama.cpp file types of the llama-cpp section (default "
                    f"Q2_K; of {','.join(SMOLLM2_FTYPES)})")
    ap.add_argument("--steps", type=int, default=60,
                    help="healing steps per conversion (0: the conversion before healing only)")
    ap.add_argument("--max-minutes", type=float, default=40.0, help="wall-time cap per healing run")
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--prompt-len", type=int, default=512, help="on-policy prompt tokens (attention)")
    ap.add_argument("--gen-len", type=int, default=32)
    ap.add_argument("--text-len", type=int, default=512)
    ap.add_argument("--mix", type=float, default=0.5, help="off-policy forward-KL weight (attention)")
    ap.add_argument("--lr", type=float, default=1e-2, help="sinks and gates; projections get --proj-lr-mult x")
    ap.add_argument("--proj-lr-mult", type=float, default=0.02)
    ap.add_argument("--attention-train", default="sparse", choices=["gates", "sparse"])
    ap.add_argument("--adapter-steps", type=int, default=10,
                    help="fit the sparse layers' K/V adapters for this many steps per layer (0: no adapters)")
    ap.add_argument("--adapter-len", type=int, default=2048, help="tokens per adapter-fit sequence")
    ap.add_argument("--adapter-retrieval", type=int, default=4, help="retrieval-curriculum sequences for the fit")
    ap.add_argument("--retrieval-domain", action="store_true",
                    help="second teacher domain of synthetic pass-key prompts over the training text (MOPD)")
    ap.add_argument("--quant-method", default="rtn", choices=["rtn", "rtn-act", "gptq"])
    ap.add_argument("--quant-transform", choices=["awq"], default=None,
                    help="low-bit: fold activation-aware per-channel scales into the norms / previous linears first")
    ap.add_argument("--act-order", action="store_true", help="low-bit gptq: act-order with static groups")
    ap.add_argument("--quant-train", default="scales", choices=["scales", "lora", "ste"],
                    help="low-bit healing: group scales/mins over frozen codes, group-wise LoRA, or ste (latent "
                    "codes with a straight-through rounding + the group scales/mins: codes can move)")
    ap.add_argument("--latent-lr-mult", type=float, default=4.0,
                    help="--quant-train ste: learning-rate multiplier of the latent codes (units of a group step)")
    ap.add_argument("--quant-lr", type=float, default=5e-3)
    ap.add_argument("--quantization-md-ppl", action="store_true",
                    help="low-bit: also the perplexity on docs/quantization.md's protocol (1024 tokens)")
    ap.add_argument("--quant-mix", type=float, default=0.5)
    ap.add_argument("--lora-rank", type=int, default=16)
    ap.add_argument("--mtp-steps", type=int, default=800)
    ap.add_argument("--mtp-lr", type=float, default=1.5e-3)
    ap.add_argument("--mtp-rollouts", type=int, default=2048)
    ap.add_argument("--mtp-rollout-tokens", type=int, default=80)
    ap.add_argument("--mtp-text-windows", type=int, default=0,
                    help="also train on this many windows of the training text (the target's distribution on text)")
    ap.add_argument("--mtp-prompts", type=int, default=16, help="held-out prompts (64 tokens of test paragraphs)")
    ap.add_argument("--mtp-tokens", type=int, default=64, help="tokens decoded per held-out prompt")
    ap.add_argument("--mtp-old-protocol", action="store_true",
                    help="also measure on the first protocol of docs/healing.md (3 prompts x 40 tokens)")
    ap.add_argument("--mtp-mode", default="cached", choices=["cached", "online"],
                    help="cached: heads train on cached hidden states of batched rollouts (default); online: a "
                    "target forward per step")
    ap.add_argument("--mtp-data", help="rollout shard directory (cached mode; reused and resumed)")
    ap.add_argument("--mtp-prompt-len", type=int, default=48, help="prompt tokens per rollout (cached mode)")
    ap.add_argument("--mtp-rollout-batch", type=int, default=64, help="rollouts decoded together (cached mode)")
    ap.add_argument("--mtp-gen-minutes", type=float, default=0.0, help="cap on rollout generation (0: none)")
    ap.add_argument("--mtp-batch", type=int, default=8, help="rows per head-training step (cached mode)")
    ap.add_argument("--mtp-vocab", type=int, default=8192,
                    help="draft vocabulary: the most frequent target tokens (cached mode; 0: all)")
    ap.add_argument("--mtp-holdout", type=int, default=64, help="rollout rows kept out of training (agreement)")
    ap.add_argument("--mtp-eval-every", type=int, default=0, help="held-out-row agreement every N steps")
    ap.add_argument("--mtp-fp32", action="store_true", help="fp32 rollouts and heads (default: bf16 where faster)")
    ap.add_argument("--mtp-skip-before", action="store_true", help="skip measuring the untrained heads")
    ap.add_argument("--mtp-save", help="write the trained heads (mtp.safetensors) to this directory")
    ap.add_argument("--mtp-heads", help="evaluate these trained heads only (mtp.safetensors or its directory)")
    ap.add_argument("--mtp-tree", nargs="+", metavar="SHAPE[@NODES]", type=_tree_spec,
                    help="also measure tree drafting, each on the same prompts and heads as the chain: top-k per "
                    "depth (4,3,2: 4 + 12 + 24 draft nodes), @NODES verifies only the NODES most probable "
                    "(4,3,2@16); the first is the headline (default: chain only)")
    ap.add_argument("--speech-items", type=int, default=16, help="training sentences (validation: half)")
    ap.add_argument("--speech-steps", type=int, default=80)
    ap.add_argument("--speech-quant", default="w4g64")
    ap.add_argument("--speech-window", type=int, default=16, help="window of the composed speech backbone")
    ap.add_argument("--calib-tokens", type=int, default=1024)
    ap.add_argument("--eval-every", type=int, default=10, help="held-out KL every N low-bit healing steps (0: ends)")
    ap.add_argument("--ppl-len", type=int, default=2048, help="perplexity window (attention; low-bit uses 512)")
    ap.add_argument("--ppl-tokens", type=int, default=4096)
    ap.add_argument("--passkey-lengths", default="2048,4096")
    ap.add_argument("--passkey-trials", type=int, default=4)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--state-dir", help="save healing states here (resumable with --resume)")
    ap.add_argument("--resume", action="store_true")
    ap.add_argument("--json", help="write all figures here")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    args.lengths = [int(x) for x in args.passkey_lengths.split(",")]
    sections = args.sections.split(",")
    model = tok = data = None
    if set(sections) & {"attention", "lowbit", "mtp", "llama-cpp"}:
        model, tok = load_model()
        for p in model.parameters():
            p.requires_grad_(False)
        test_text = english("test")
        data = {"train": stream(tok, english("train")[:600_000]), "test": stream(tok, test_text[:200_000])}
        data["passkey"] = {n: passkey_prompts(tok, test_text, n - 8, args.passkey_trials, seed=n)
                           for n in args.lengths}
    results: dict = {"args": {k: v for k, v in vars(args).items()}}
    t0 = time.perf_counter()
    try:
        if "attention" in sections:
            for layout in (args.layouts.split(",") if args.layouts else [args.layout]):
                attention_section(layout, model, tok, data, args, results)
        if "llama-cpp" in sections:
            for qname in args.llama_cpp.split(","):
                llama_cpp_section(qname, data, args, results)
        if "lowbit" in sections:
            for scheme in args.schemes.split(","):
                lowbit_section(scheme, model, tok, data, args, results)
        if "mtp" in sections:
            mtp_section(model, tok, data, args, results)
        if "speech" in sections:
            speech_section(args, results)
    finally:
        results["total_s"] = time.perf_counter() - t0
        if args.json:
            Path(args.json).write_text(json.dumps(results, indent=1, default=str))
    summary(results, args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
