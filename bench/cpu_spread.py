"""How much the tokenizer's golden quantities move with the CPU's instruction set, in one run.

The golden test (tests/tokenizer/test_golden.py) runs a tiny fixed checkpoint on a fixed input. Its outputs
are not bit-identical across CPUs: PyTorch picks its vectorised kernels (ATen: AVX2 or AVX-512), oneDNN and
MKL pick theirs (AVX2, AVX-512, AMX) from the CPU they run on, and each kernel sums in its own order. This
script runs the golden computation in one subprocess per ISA setting on this machine (forcing older kernels
through ``ATEN_CPU_CAPABILITY``, ``ONEDNN_MAX_CPU_ISA`` and ``MKL_ENABLE_INSTRUCTIONS``, as an older or
another vendor's CPU would pick them) and prints, per quantity, how far each setting lands from the
default one and from the stored fixture.

    PYTHONPATH=. python bench/cpu_spread.py            # table
    PYTHONPATH=. python bench/cpu_spread.py --json out.json

Quantities: log-mel (rel. L2), encoder latents (rel. L2, max |diff| / RMS, rel. abs-sum as the old test
checked it), codes (share of frames that differ), both decoded waveforms (rel. L2, SNR in dB).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

from bench.common.machine import cpu_name

ROOT = Path(__file__).resolve().parents[1]
STRONG_RANGE_NATS = 6.9  # 60 dB below the loudest log-mel entry (magnitude mel: 20 * log10(e) * 6.9 = 60)
GOLDEN = ROOT / "tests" / "tokenizer" / "golden"

# name -> environment. "avx2" is what an AVX2-only CPU (or MKL/oneDNN choosing AVX2 paths) computes with.
SETTINGS: dict[str, dict[str, str]] = {
    "default": {},
    "onednn-avx512": {"ONEDNN_MAX_CPU_ISA": "AVX512_CORE"},
    "onednn-avx2": {"ONEDNN_MAX_CPU_ISA": "AVX2"},
    "mkl-avx2": {"MKL_ENABLE_INSTRUCTIONS": "AVX2"},
    "mkl-avx": {"MKL_ENABLE_INSTRUCTIONS": "AVX"},
    "mkl-sse42": {"MKL_ENABLE_INSTRUCTIONS": "SSE4_2"},
    "mkl-cbwr-compat": {"MKL_CBWR": "COMPATIBLE"},
    "aten-avx2": {"ATEN_CPU_CAPABILITY": "avx2"},
    "avx2": {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2", "MKL_ENABLE_INSTRUCTIONS": "AVX2"},
    "no-mkldnn": {"CPU_SPREAD_NO_MKLDNN": "1"},
}
# Not a CPU difference: what a user's torch.set_float32_matmul_precision("medium") (bf16 on AMX/AVX512-BF16
# CPUs) would do. Run it with --settings default bf16-matmul.
OPTIONAL_SETTINGS = {"bf16-matmul": {"CPU_SPREAD_MATMUL_PRECISION": "medium"}}


def cpu_flags() -> set[str]:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def _golden_input():
    spec = importlib.util.spec_from_file_location("make_golden", GOLDEN.parent / "make_golden.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.golden_input()


def worker(out: Path) -> None:
    """Compute the golden quantities under the inherited environment and save them."""
    from safetensors.torch import save_file

    sys.path.insert(0, str(ROOT))
    if os.environ.get("CPU_SPREAD_NO_MKLDNN"):
        torch.backends.mkldnn.enabled = False
    if os.environ.get("CPU_SPREAD_MATMUL_PRECISION"):
        torch.set_float32_matmul_precision(os.environ["CPU_SPREAD_MATMUL_PRECISION"])
    from tokenizer import AudioTokenizer

    expected = json.loads((GOLDEN / "expected.json").read_text())
    tok = AudioTokenizer.from_pretrained(GOLDEN, device="cpu")
    x = _golden_input()
    with torch.inference_mode():
        mel = tok.mel(x, 16000)
        latents, _ = tok.model.encoder([mel])
        codes = tok.encode(x, 16000, n_q=len(expected["codes"]))
        want = torch.tensor(expected["codes"])
        from safetensors.torch import load_file

        stored_mel = load_file(str(GOLDEN / "tensors.safetensors"))["mel"]
        latents_sm, _ = tok.model.encoder([stored_mel])  # the encoder alone, on the fixture's log-mel
        tensors = {
            "mel": mel.float().contiguous(), "latents": latents.float().contiguous(), "codes": codes.contiguous(),
            "latents_stored_mel": latents_sm.float().contiguous(),
            "codes_stored_mel": tok.model.encode([stored_mel], len(expected["codes"]))[0].contiguous(),
            "decode": tok.decode(want).float().contiguous(),
            "decode_causal_norm": tok.decode(want, causal_norm=True).float().contiguous(),
        }
    save_file(tensors, str(out), metadata={"capability": torch.backends.cpu.get_cpu_capability()})


def run_setting(name: str, env: dict[str, str], tmp: Path) -> tuple[dict[str, torch.Tensor], str]:
    from safetensors import safe_open

    out = tmp / f"{name}.safetensors"
    full_env = {**os.environ, **env, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    subprocess.run([sys.executable, __file__, "--worker", str(out)], env=full_env, check=True)
    with safe_open(str(out), framework="pt") as fh:
        return {k: fh.get_tensor(k) for k in fh.keys()}, fh.metadata().get("capability", "?")


def rel_l2(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double().flatten(), b.double().flatten()
    return ((a - b).norm() / b.norm().clamp_min(1e-30)).item()


def snr_db(a: torch.Tensor, ref: torch.Tensor) -> float:
    err = rel_l2(a, ref)
    return math.inf if err == 0 else -20 * math.log10(err)


def strong(mel: torch.Tensor) -> torch.Tensor:
    """Log-mel entries within 60 dB (6.9 nats) of the loudest one: above fp32 FFT rounding noise."""
    return mel >= mel.max() - STRONG_RANGE_NATS


def mag_of_peak(mel: torch.Tensor, ref: torch.Tensor) -> float:
    """Largest magnitude difference, relative to the loudest entry (FFT rounding is on that scale)."""
    return ((mel.double().exp() - ref.double().exp()).abs().max() / ref.double().exp().max()).item()


def compare(run: dict[str, torch.Tensor], ref: dict[str, torch.Tensor]) -> dict[str, float]:
    lat, lat_ref = run["latents"].double(), ref["latents"].double()
    rms = lat_ref.pow(2).mean().sqrt()
    keep = strong(ref["mel"])
    return {
        "mel_rel_l2": rel_l2(run["mel"], ref["mel"]),
        "mel_max_abs": (run["mel"] - ref["mel"]).abs().max().item(),
        "mel_strong_max_abs": (run["mel"] - ref["mel"])[keep].abs().max().item(),
        "mel_mag_of_peak": mag_of_peak(run["mel"], ref["mel"]),
        "enc_stored_mel_rel_l2": rel_l2(run["latents_stored_mel"], ref["latents_stored_mel"]),
        "codes_stored_mel_differ": (run["codes_stored_mel"] != ref["codes_stored_mel"]).float().mean().item(),
        "latents_rel_l2": rel_l2(lat, lat_ref),
        "latents_max_abs_over_rms": ((lat - lat_ref).abs().max() / rms).item(),
        "latents_abs_sum_rel": abs(lat.abs().sum().item() / lat_ref.abs().sum().item() - 1),
        "codes_differ_frac": (run["codes"] != ref["codes"]).float().mean().item() if run["codes"].shape
        == ref["codes"].shape else 1.0,
        "decode_rel_l2": rel_l2(run["decode"], ref["decode"]),
        "decode_causal_norm_rel_l2": rel_l2(run["decode_causal_norm"], ref["decode_causal_norm"]),
    }


def compare_fixture(run: dict[str, torch.Tensor]) -> dict[str, float]:
    """Against the stored fixture: expected.json (codes, statistics) and tensors.safetensors (mel, latents)."""
    from safetensors.torch import load_file

    expected = json.loads((GOLDEN / "expected.json").read_text())
    stored = load_file(str(GOLDEN / "tensors.safetensors"))
    lat = run["latents"].double().flatten()
    keep = strong(stored["mel"])
    return {
        "mel_strong_max_abs": (run["mel"] - stored["mel"])[keep].abs().max().item(),
        "mel_mag_of_peak": mag_of_peak(run["mel"], stored["mel"]),
        "latents_rel_l2": rel_l2(run["latents"], stored["latents"]),
        "enc_stored_mel_rel_l2": rel_l2(run["latents_stored_mel"], stored["latents"]),
        "latents_abs_sum_rel": abs(lat.abs().sum().item() / expected["latents"]["abs_sum"] - 1),
        "codes_differ_frac": (run["codes"] != torch.tensor(expected["codes"])).float().mean().item(),
        "codes_stored_mel_differ": (run["codes_stored_mel"] != torch.tensor(expected["codes"])).float().mean().item(),
        "decode_abs_sum_rel": abs(run["decode"].double().abs().sum().item() / expected["decode"]["abs_sum"] - 1),
    }


def _print_table(title: str, rows: dict[str, dict[str, float]]) -> None:
    keys = list(next(iter(rows.values())))
    print(f"\n{title}")
    print(f"{'setting':16s} " + " ".join(f"{k[:13]:>13s}" for k in keys))
    for name, vals in rows.items():
        print(f"{name:16s} " + " ".join(f"{vals[k]:13.2e}" for k in keys))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--worker", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--settings", nargs="+", choices=sorted({**SETTINGS, **OPTIONAL_SETTINGS}),
                    default=list(SETTINGS))
    ap.add_argument("--json", type=Path, help="also write the figures here")
    args = ap.parse_args()
    if args.worker:
        worker(args.worker)
        return
    flags = cpu_flags()
    isa = [f for f in ("avx2", "avx512f", "avx512_bf16", "avx512_fp16", "amx_bf16", "amx_int8") if f in flags]
    print(f"CPU: {cpu_name()} ({', '.join(isa)}); torch {torch.__version__}; one subprocess per setting")
    results, caps = {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.settings:
            results[name], caps[name] = run_setting(name, {**SETTINGS, **OPTIONAL_SETTINGS}[name], Path(tmp))
    names = list(results)
    pairs = {f"{a}|{b}": compare(results[a], results[b]) for i, a in enumerate(names) for b in names[i + 1:]}
    spread = {k: max(p[k] for p in pairs.values()) for k in next(iter(pairs.values()))} if pairs else {}
    vs_default = {name: compare(run, results[names[0]]) for name, run in results.items()}
    vs_fixture = {name: compare_fixture(run) for name, run in results.items()}
    print("ATen kernels per setting: " + ", ".join(f"{n}={c}" for n, c in caps.items()))
    _print_table(f"against '{names[0]}' (this machine, other kernels):", vs_default)
    if spread:
        _print_table("max over all pairs of settings (the measured spread):", {"max-pairwise": spread})
    _print_table("against the stored fixture (tests/tokenizer/golden):", vs_fixture)
    if args.json:
        every = {**SETTINGS, **OPTIONAL_SETTINGS}
        args.json.write_text(json.dumps({
            "cpu": cpu_name(), "isa": isa, "torch": torch.__version__, "settings": {n: every[n] for n in names},
            "max_pairwise": spread, "vs_fixture": vs_fixture, "vs_first": vs_default}, indent=1) + "\n")


if __name__ == "__main__":
    main()
