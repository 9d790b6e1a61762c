"""``mimo-audio tokenizer encode|decode|roundtrip``: audio <-> MiMo-Audio codes from the command line.

Without ``--model`` (or ``--size``) the embedded default tokenizer shipped with the package is used.
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

from apps.commands.options import dtype_option

log = logging.getLogger("mimo-audio.tokenizer")

CODES_KEY = "codes"


def _add_model_args(p: argparse.ArgumentParser) -> None:
    src = p.add_mutually_exclusive_group()
    src.add_argument("--model", metavar="DIR", help="tokenizer checkpoint directory (config.json + model.safetensors); "
                     "default: the embedded default tokenizer shipped with the package")
    src.add_argument("--size", "--preset", dest="preset", choices=["tiny", "official"],
                     help="random weights of this size instead of a checkpoint (output is noise; for testing; "
                     "--preset is the old spelling)")
    p.add_argument("--seed", type=int, default=0, help="seed of the random weights with --size (default 0)")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1, ... (default: cuda when available)")
    p.add_argument("--dtype", type=dtype_option(("fp32", "bf16")), default="fp32",
                   help="model dtype: fp32 or bf16 (default fp32)")


def _check(args: argparse.Namespace, outputs: list[tuple[Path, tuple[str, ...]]]) -> None:
    """Before any work: the outputs can be written (and are not the input), the device exists."""
    from apps.checks import check_device, check_output_file

    for path, suffixes in outputs:
        check_output_file(path, suffixes, inputs=[args.input], what="output")
    check_device(args.device)


def _load(args: argparse.Namespace):
    from tokenizer import AudioTokenizer, TokenizerConfig

    t0 = time.perf_counter()
    if not args.preset:  # --model DIR, or None: the embedded default
        tok = AudioTokenizer.from_pretrained(args.model, device=args.device, dtype=args.dtype)
    else:
        log.warning("using RANDOM %s weights (--size): the codes and audio are noise, not speech", args.preset)
        tok = AudioTokenizer.from_config(TokenizerConfig.preset(args.preset), seed=args.seed, device=args.device,
                                         dtype=args.dtype)
    log.info("%r ready in %.1f s", tok, time.perf_counter() - t0)
    return tok


def _encode(tok, wav_path: str, codes_path: Path, n_q: int):
    from safetensors.torch import save_file

    t0 = time.perf_counter()
    codes = tok.encode(wav_path, n_q=n_q, progress=None)
    seconds = codes.shape[1] / tok.frame_rate
    log.info("encoded %s: %d codebooks x %d frames (%.2f s of audio) in %.2f s", wav_path, codes.shape[0],
             codes.shape[1], seconds, time.perf_counter() - t0)
    codes_path.parent.mkdir(parents=True, exist_ok=True)
    meta = {"sample_rate": str(tok.sample_rate), "frame_rate": str(tok.frame_rate), "source": str(wav_path)}
    save_file({CODES_KEY: codes.contiguous()}, str(codes_path), metadata=meta)
    log.info("codes written to %s", codes_path)
    return codes


def _read_codes(path: str):
    from safetensors import safe_open

    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"codes file not found: {p}")
    try:
        with safe_open(str(p), framework="pt") as f:
            if CODES_KEY not in f.keys():
                raise ValueError(f"{p} has no '{CODES_KEY}' tensor (found: {', '.join(f.keys()) or 'nothing'})")
            return f.get_tensor(CODES_KEY)
    except ValueError:
        raise
    except Exception as exc:
        raise ValueError(f"could not read {p} as safetensors ({exc})") from exc


def _decode(tok, codes, wav_path: Path) -> None:
    import soundfile as sf

    t0 = time.perf_counter()
    wav = tok.decode(codes, progress=None)
    elapsed = time.perf_counter() - t0
    peak = float(wav.abs().max()) if wav.numel() else 0.0
    if peak > 1.0:
        log.warning("output peaks at %.2f; clipping to [-1, 1] for 16-bit PCM", peak)
    wav_path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(str(wav_path), wav.clamp(-1, 1).numpy(), tok.sample_rate, subtype="PCM_16")
    seconds = wav.numel() / tok.sample_rate
    log.info("decoded %d frames to %s (%.2f s at %d Hz) in %.2f s (RTF %.2f)", codes.shape[1], wav_path, seconds,
             tok.sample_rate, elapsed, elapsed / max(seconds, 1e-9))


def cmd_encode(args: argparse.Namespace) -> int:
    from apps.checks import CODES_OUT

    _check(args, [(Path(args.output), CODES_OUT)])
    tok = _load(args)
    _encode(tok, args.input, Path(args.output), args.n_q)
    return 0


def cmd_decode(args: argparse.Namespace) -> int:
    from apps.checks import AUDIO_OUT

    _check(args, [(Path(args.output), AUDIO_OUT)])
    codes = _read_codes(args.input)
    tok = _load(args)
    _decode(tok, codes, Path(args.output))
    return 0


def cmd_roundtrip(args: argparse.Namespace) -> int:
    from apps.checks import AUDIO_OUT, CODES_OUT

    out = Path(args.output)
    _check(args, [(out, AUDIO_OUT), (out.with_suffix(".safetensors"), CODES_OUT)])
    tok = _load(args)
    codes = _encode(tok, args.input, out.with_suffix(".safetensors"), args.n_q)
    _decode(tok, codes, out)
    print(f"input  {args.input}\ncodes  {out.with_suffix('.safetensors')}\noutput {out}")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "tokenizer",
        help="MiMo-Audio audio tokenizer: encode audio to 25 Hz codes, decode codes to 24 kHz audio",
        description="Encode audio to MiMo-Audio RVQ codes (25 Hz) and decode them back to 24 kHz audio.",
    )
    sub = parser.add_subparsers(dest="tokenizer_command", metavar="ACTION", required=True)

    p = sub.add_parser("encode", help="audio file -> codes (.safetensors, tensor 'codes' [n_q, frames])",
                       description="Encode an audio file (any rate, mono or stereo) to codes saved as safetensors.")
    p.add_argument("input", help="audio file (wav, flac, ogg, ...)")
    p.add_argument("output", help="output .safetensors holding the int64 tensor 'codes' [n_q, frames]")
    p.add_argument("--n-q", type=int, default=8, help="number of codebooks to keep (default 8, as the LM uses)")
    _add_model_args(p)
    p.set_defaults(func=cmd_encode)

    p = sub.add_parser("decode", help="codes (.safetensors) -> 24 kHz wav",
                       description="Decode codes written by 'encode' to a 24 kHz 16-bit wav file.")
    p.add_argument("input", help=".safetensors with the tensor 'codes' [n_q, frames]")
    p.add_argument("output", help="output audio file (.wav or .flac, 24 kHz 16-bit)")
    _add_model_args(p)
    p.set_defaults(func=cmd_decode)

    p = sub.add_parser("roundtrip", help="audio -> codes -> audio (codes also saved next to the output)",
                       description="Encode then decode; writes OUTPUT and the codes to OUTPUT with a .safetensors "
                                   "suffix.")
    p.add_argument("input", help="audio file")
    p.add_argument("output", help="output audio file (.wav or .flac); the codes go beside it (.safetensors)")
    p.add_argument("--n-q", type=int, default=8, help="number of codebooks to keep (default 8)")
    _add_model_args(p)
    p.set_defaults(func=cmd_roundtrip)
