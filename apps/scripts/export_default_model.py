"""Export trained checkpoints as the embedded default model (package data of ``tokenizer`` and ``mimo_audio``).

    python -m apps.scripts.export_default_model --tokenizer runs/tok/model --lm runs/lm/model [--dtype bf16]
    python -m apps.scripts.export_default_model --random          # placeholder weights for development

Writes ``tokenizer/assets/default/`` (config.json, model.safetensors) and ``mimo_audio/assets/default/``
(config.json, model.safetensors, the text-tokenizer files, mtp.safetensors when the run has MTP heads), each
with a ``provenance.json`` (what, training run, corpus, date, sha256 and size of every file). The export is
staged next to the destination, loaded back strictly, run once (tokenizer round trip, a two-patch TTS), checked
against the size budget (60 MB for both together) and only then swapped in; a failed export leaves the installed
assets untouched. ``--dtype bf16`` halves the size; the RVQ codebooks and the iSTFT window stay fp32 (the
tokenizer loader keeps its quantizer in fp32 whatever the model dtype).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from apps.commands.options import dtype_option

log = logging.getLogger("mimo-audio.export")

BUDGET_MB = 60.0
MB = 1_000_000
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
# Text-tokenizer files load_text_tokenizer may read (copied verbatim when present).
TEXT_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json",
                        "vocab.json", "merges.txt", "tokenizer.model", "chat_template.jinja")
MTP_FILE = "mtp.safetensors"
# Settings of a recipe run worth keeping in provenance.json (those a run has; the rest is in the run folder).
RECIPE_KEYS = ("preset", "steps", "batch_size", "lr", "warmup", "seed", "max_patches", "crop_seconds", "tokenizer",
               "init_from", "freeze_codec", "train_vocoder", "vocoder_teacher", "mtp_heads")
WEIGHTS = "model.safetensors"


def _keeps_fp32(key: str) -> bool:
    """Tokenizer tensors that stay fp32 in a bf16 export: RVQ codebooks / statistics and the iSTFT window."""
    return key.startswith("encoder.quantizer.") or key.endswith("istft.window")


def _cast(tensors: dict[str, torch.Tensor], dtype: torch.dtype, keep=lambda key: False) -> dict[str, torch.Tensor]:
    return {k: (v.to(dtype) if v.is_floating_point() and not keep(k) else v).contiguous() for k, v in tensors.items()}


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _publish_modes(directory: Path) -> None:
    """World-readable files and folder (safetensors and mkdtemp create them private)."""
    directory.chmod(0o755)
    for p in directory.iterdir():
        p.chmod(0o644)


def _dir_bytes(directory: Path) -> int:
    return sum(p.stat().st_size for p in directory.iterdir() if p.is_file())


# ---------------------------------------------------------------- provenance
def _run_info(model_dir: Path) -> dict[str, Any]:
    """Training facts of a recipe run: ``RUN/model`` -> ``RUN/summary.json`` or ``RUN/last/state.json``; a
    checkpoint ``RUN/last/model`` -> ``RUN/last/state.json``."""
    run = model_dir.parent if model_dir.name == "model" else model_dir
    for candidate in (run / "summary.json", run / "last" / "state.json", run / "state.json"):
        if candidate.is_file():
            try:
                state = json.loads(candidate.read_text())
            except json.JSONDecodeError:
                continue
            info: dict[str, Any] = {"run": str(run), "from": candidate.name, "steps": state.get("step")}
            cfg = state.get("config") or {}
            info["recipe"] = {k: cfg[k] for k in RECIPE_KEYS if k in cfg}
            for key in ("seconds_per_step", "eval", "train_hours", "stretches", "warm_start"):
                if key in state:
                    info[key] = state[key]
            corpus = (state.get("stretches") or [{}])[-1].get("corpus") or cfg.get("corpus")  # the latest data
            if corpus:
                info["corpus"] = _corpus_info(Path(corpus))
            return info
    return {"run": str(run), "note": "no summary.json or last/state.json next to the checkpoint"}


def _corpus_info(corpus: Path) -> dict[str, Any]:
    info: dict[str, Any] = {"path": str(corpus)}
    manifest = corpus / "manifest.jsonl"
    if manifest.is_file():
        with open(manifest, encoding="utf-8") as f:
            info["utterances"] = sum(1 for line in f if line.strip())
    build = corpus / "build.json"
    if build.is_file():
        try:
            info["build"] = json.loads(build.read_text()).get("config")
        except json.JSONDecodeError:
            pass
    return info


def _origin(src: Path, run: dict[str, Any], placeholder: bool) -> dict[str, Any]:
    if placeholder:
        return {"source": "random initialisation (export_default_model --random)", "training": {"steps": 0}}
    installed = src / "provenance.json"
    if "from" not in run and installed.is_file():  # no run beside it: an exported folder (e.g. the installed default)
        try:
            prov = json.loads(installed.read_text())
            return {"source": prov.get("source", str(src)), "training": prov.get("training", run)}
        except json.JSONDecodeError:
            pass
    return {"source": str(src), "training": run}


def _write_provenance(directory: Path, fields: dict[str, Any]) -> dict[str, Any]:
    files = {p.name: {"bytes": p.stat().st_size, "sha256": sha256(p)}
             for p in sorted(directory.iterdir()) if p.is_file() and p.name != "provenance.json"}
    prov = {**fields, "exported_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "exporter": "apps/scripts/export_default_model.py", "files": files}
    (directory / "provenance.json").write_text(json.dumps(prov, indent=1) + "\n", encoding="utf-8")
    return prov


# ---------------------------------------------------------------- staging
def _stage_tokenizer(src: Path, dst: Path, dtype: torch.dtype) -> tuple[dict[str, torch.Tensor], int]:
    from tokenizer import AudioTokenizer, checkpoint

    tok = AudioTokenizer.from_pretrained(src, device="cpu")  # strict: names every bad or missing tensor
    params = sum(p.numel() for p in tok.model.parameters())
    tensors = checkpoint.read_state_dict(src)
    dst.mkdir(parents=True)
    shutil.copy2(src / checkpoint.CONFIG, dst / checkpoint.CONFIG)
    save_file(_cast(tensors, dtype, _keeps_fp32), str(dst / WEIGHTS), metadata={"format": "pt"})
    return tensors, params


def _stage_lm(src: Path, dst: Path, dtype: torch.dtype, mtp: Path | None) -> tuple[dict[str, torch.Tensor], int]:
    from mimo_audio import SpecialTokens, SpeechLM, load_text_tokenizer

    text_tok = load_text_tokenizer(src)
    lm = SpeechLM.from_pretrained(src, device="cpu", empty_token_id=SpecialTokens.from_tokenizer(text_tok).empty)
    tensors = {k: v.detach() for k, v in lm.state_dict().items()}
    dst.mkdir(parents=True)
    shutil.copy2(src / "config.json", dst / "config.json")
    for name in TEXT_TOKENIZER_FILES:
        if (src / name).is_file():
            shutil.copy2(src / name, dst / name)
    save_file(_cast(tensors, dtype), str(dst / WEIGHTS), metadata={"format": "pt"})
    if mtp is not None:  # copied as they are (small; their loader owns their dtype)
        try:
            with safe_open(str(mtp), framework="pt") as f:
                if not list(f.keys()):
                    raise ValueError("it holds no tensors")
        except Exception as exc:  # SafetensorError for a corrupt file
            raise ValueError(f"could not read the MTP heads {mtp} as safetensors ({exc})") from exc
        shutil.copy2(mtp, dst / MTP_FILE)
    return tensors, lm.num_parameters()


def _check_values(loaded: dict[str, torch.Tensor], source: dict[str, torch.Tensor], what: str) -> None:
    """Every exported tensor equals its source up to the rounding of the cast."""
    for key, ref in source.items():
        if key not in loaded:
            continue  # optional buffers (the loader recreates them)
        got, ref = loaded[key].float().cpu(), ref.float().cpu()
        tol = 0.0 if loaded[key].dtype == torch.float32 or not ref.is_floating_point() else 2.0**-8
        if not torch.allclose(got, ref, rtol=tol, atol=tol * 1e-3):
            raise ValueError(f"exported {what} tensor {key} differs from the source checkpoint")


def _verify(tok_dir: Path, lm_dir: Path, tok_src: dict[str, torch.Tensor], lm_src: dict[str, torch.Tensor]) -> None:
    """Load the staged assets strictly, exactly as the defaults will be loaded, and run them once."""
    from mimo_audio import MimoAudio
    from tokenizer import checkpoint

    _check_values(checkpoint.read_state_dict(tok_dir), tok_src, "tokenizer")
    m = MimoAudio.from_pretrained(lm_dir, tok_dir, device="cpu")
    _check_values(m.lm.state_dict(), lm_src, "speech LM")
    t = torch.arange(12000) / 24000.0
    wav = 0.3 * torch.sin(2 * torch.pi * 220.0 * t) * (1 + 0.5 * torch.sin(2 * torch.pi * 3.0 * t))
    codes = m.audio_tokenizer.encode(wav, 24000)
    audio = m.audio_tokenizer.decode(codes)
    if not torch.isfinite(audio).all():
        raise ValueError("the exported tokenizer decodes to non-finite audio")
    r = m.tts("Hello.", preset="greedy", max_new_patches=2)
    if r.num_patches < 1:
        raise ValueError("the exported speech LM generated nothing")
    log.info("verified: tokenizer round trip %s -> %d samples; TTS %d patch(es)", tuple(codes.shape), audio.numel(),
             r.num_patches)


def _swap_in(staged: Path, dest: Path) -> None:
    old = dest.with_name(dest.name + ".old")
    if old.exists():
        shutil.rmtree(old)
    if dest.exists():
        os.replace(dest, old)
    shutil.move(str(staged), str(dest))  # a rename on one filesystem, a copy across two
    if old.exists():
        shutil.rmtree(old)


# ---------------------------------------------------------------- export
def export_default_model(
    tokenizer_src: str | Path,
    lm_src: str | Path,
    dtype: str = "fp32",
    tokenizer_out: str | Path | None = None,
    lm_out: str | Path | None = None,
    mtp: str | Path | None = None,
    budget_mb: float = BUDGET_MB,
    placeholder: bool = False,
    note: str | None = None,
    lm_dtype: str | None = None,
) -> dict[str, Any]:
    """Copy trained checkpoints into the asset directories (default: the package's). Returns a summary.

    ``lm_dtype`` (default: ``dtype``) stores the speech LM in another dtype than the tokenizer, e.g. a bf16 LM
    next to an fp32 tokenizer whose codes must not change."""
    import mimo_audio.defaults
    import tokenizer.defaults

    lm_dtype = lm_dtype or dtype
    for d in (dtype, lm_dtype):
        if d not in DTYPES:
            raise ValueError(f"dtype must be one of {sorted(DTYPES)}, got {d!r}")
    tok_src, lm_src = Path(tokenizer_src), Path(lm_src)
    for what, src in (("tokenizer", tok_src), ("speech-LM", lm_src)):
        if not src.is_dir():
            raise FileNotFoundError(f"{what} checkpoint directory not found: {src}")
    tok_out = Path(tokenizer_out) if tokenizer_out else Path(tokenizer.defaults.DEFAULT_DIR)
    lm_out = Path(lm_out) if lm_out else Path(mimo_audio.defaults.DEFAULT_DIR)
    if mtp is None and (lm_src / MTP_FILE).is_file():
        mtp = lm_src / MTP_FILE
    mtp = Path(mtp) if mtp is not None else None
    if mtp is not None and not mtp.is_file():
        raise FileNotFoundError(f"MTP heads not found: {mtp}")
    tok_run, lm_run = _run_info(tok_src), _run_info(lm_src)
    trained_on = (lm_run.get("recipe") or {}).get("tokenizer")
    if trained_on and Path(trained_on).resolve() != tok_src.resolve():
        log.warning("the LM run was trained with the tokenizer %s, not %s: the pair may not match", trained_on, tok_src)

    for dest in (tok_out, lm_out):
        dest.parent.mkdir(parents=True, exist_ok=True)
    stage_root = Path(tempfile.mkdtemp(prefix=".export-", dir=lm_out.parent))  # beside the destination: cheap moves
    try:
        tok_stage, lm_stage = stage_root / "tokenizer", stage_root / "lm"
        tok_tensors, tok_params = _stage_tokenizer(tok_src, tok_stage, DTYPES[dtype])
        lm_tensors, lm_params = _stage_lm(lm_src, lm_stage, DTYPES[lm_dtype], mtp)
        what = "RANDOM placeholder weights (not a trained model)" if placeholder else "trained here"
        tok_preset = (tok_run.get("recipe") or {}).get("preset", "small")
        lm_preset = (lm_run.get("recipe") or {}).get("preset", "small")
        tok_prov = _write_provenance(tok_stage, {
            "name": "mimo-audio embedded default audio tokenizer", "component": "audio_tokenizer",
            "description": f"MiMo-Audio tokenizer architecture (25 Hz RVQ codes, 24 kHz audio), {tok_preset} "
                           f"preset; {what}",
            "placeholder": placeholder, "parameters": tok_params,
            "dtype": "fp32" if dtype == "fp32" else "bf16 (RVQ codebooks and the iSTFT window in fp32)",
            **_origin(tok_src, tok_run, placeholder), **({"note": note} if note else {}),
        })
        _write_provenance(lm_stage, {
            "name": "mimo-audio embedded default speech LM", "component": "speech_lm",
            "description": f"MiMo-Audio patch speech LM architecture (Qwen2 backbone, 4-frame patches), {lm_preset} "
                           f"preset; {what}",
            "placeholder": placeholder, "parameters": lm_params, "dtype": lm_dtype, "mtp_heads": mtp is not None,
            **_origin(lm_src, lm_run, placeholder),
            "audio_tokenizer_sha256": tok_prov["files"][WEIGHTS]["sha256"], **({"note": note} if note else {}),
        })
        sizes = {"tokenizer": _dir_bytes(tok_stage), "lm": _dir_bytes(lm_stage)}
        total = sum(sizes.values())
        if total > budget_mb * MB:
            fix = "export with --dtype bf16 to halve it, or train a smaller preset" if dtype == "fp32" else \
                "train a smaller preset" + (" or leave out the MTP heads" if mtp is not None else "")
            raise ValueError(
                f"the default model is {total / MB:.1f} MB (tokenizer {sizes['tokenizer'] / MB:.1f} MB + LM "
                f"{sizes['lm'] / MB:.1f} MB), over the {budget_mb:g} MB budget of the package: {fix}; nothing "
                "was installed"
            )
        _verify(tok_stage, lm_stage, tok_tensors, lm_tensors)
        _publish_modes(tok_stage)
        _publish_modes(lm_stage)
        _swap_in(tok_stage, tok_out)
        _swap_in(lm_stage, lm_out)
    finally:
        shutil.rmtree(stage_root, ignore_errors=True)
    summary = {"tokenizer": str(tok_out), "lm": str(lm_out), "dtype": dtype, "lm_dtype": lm_dtype,
               "placeholder": placeholder,
               "tokenizer_mb": round(sizes["tokenizer"] / MB, 2), "lm_mb": round(sizes["lm"] / MB, 2),
               "total_mb": round(sum(sizes.values()) / MB, 2), "budget_mb": budget_mb,
               "tokenizer_params_m": round(tok_params / 1e6, 2), "lm_params_m": round(lm_params / 1e6, 2)}
    log.info("exported the default model: %s", summary)
    return summary


def make_placeholder_checkpoints(directory: str | Path, preset: str = "small", seed: int = 0) -> tuple[Path, Path]:
    """Random-init checkpoints of the training presets (tokenizer, LM) in the layout the recipes write."""
    from apps.train.speech_lm import lm_config
    from apps.train.tokenizer import TRAIN_PRESETS
    from mimo_audio import SpecialTokens, SpeechLM
    from mimo_audio.text_vocab import make_byte_text_tokenizer
    from tokenizer import AudioTokenizer, TokenizerConfig

    directory = Path(directory)
    tok_dir, lm_dir = directory / "tok" / "model", directory / "lm" / "model"
    tok = AudioTokenizer.from_config(TokenizerConfig.from_dict(dict(TRAIN_PRESETS[preset])), seed=seed, device="cpu")
    tok.save_pretrained(tok_dir)
    special = SpecialTokens.from_tokenizer(make_byte_text_tokenizer(lm_dir))
    torch.manual_seed(seed)
    SpeechLM(lm_config(preset), special.empty).init_weights(seed=seed).save_pretrained(lm_dir)
    return tok_dir, lm_dir


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Export trained checkpoints as the embedded default model.")
    p.add_argument("--tokenizer", metavar="DIR", help="trained tokenizer (official layout), e.g. runs/tok/model")
    p.add_argument("--lm", metavar="DIR",
                   help="trained speech LM (official layout + text tokenizer), e.g. runs/lm/model")
    p.add_argument("--mtp", metavar="FILE", default=None,
                   help="MTP heads (safetensors) to ship as mtp.safetensors (default: LM/mtp.safetensors if present)")
    p.add_argument("--dtype", type=dtype_option(tuple(DTYPES)), default="fp32",
                   help="weights dtype of the export (bf16 halves the size; RVQ codebooks stay fp32)")
    p.add_argument("--lm-dtype", type=dtype_option(tuple(DTYPES)), default=None,
                   help="the speech LM's dtype when it differs from --dtype (e.g. a bf16 LM beside an fp32 tokenizer, "
                   "whose codes then stay exactly as trained)")
    p.add_argument("--random", action="store_true",
                   help="export RANDOM placeholder weights of --size instead (development only; output is noise)")
    p.add_argument("--size", "--preset", dest="preset", choices=("small", "tiny"), default="small",
                   help="size of the --random weights (--preset is the old spelling)")
    p.add_argument("--seed", type=int, default=0, help="seed of the --random weights")
    p.add_argument("--budget-mb", type=float, default=BUDGET_MB,
                   help=f"size limit of both together in MB of 10^6 bytes (default {BUDGET_MB:g})")
    p.add_argument("--tokenizer-out", default=None,
                   help="destination (default: the package's tokenizer/assets/default)")
    p.add_argument("--lm-out", default=None, help="destination (default: the package's mimo_audio/assets/default)")
    p.add_argument("--note", default=None, help="free text stored in both provenance.json files")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    torch.set_num_threads(min(torch.get_num_threads(), 4))
    kwargs = dict(dtype=args.dtype, lm_dtype=args.lm_dtype, tokenizer_out=args.tokenizer_out, lm_out=args.lm_out,
                  budget_mb=args.budget_mb, note=args.note)
    try:
        if args.random:
            if args.tokenizer or args.lm:
                p.error("--random builds its own weights: drop --tokenizer / --lm")
            with tempfile.TemporaryDirectory(prefix="mimo-placeholder-") as tmp:
                tok_dir, lm_dir = make_placeholder_checkpoints(tmp, args.preset, args.seed)
                summary = export_default_model(tok_dir, lm_dir, placeholder=True, mtp=args.mtp, **kwargs)
        else:
            if not (args.tokenizer and args.lm):
                p.error("give both --tokenizer DIR and --lm DIR (or --random for placeholder weights)")
            summary = export_default_model(args.tokenizer, args.lm, mtp=args.mtp, **kwargs)
    except (FileNotFoundError, ValueError) as exc:
        log.error("%s", exc)
        return 1
    print(json.dumps(summary, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
