"""``mimo-audio default-model``: which embedded default model is installed (folders, provenance, sizes)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any


def _mismatches(directory: Path, prov: dict[str, Any]) -> list[str]:
    """Files whose size or sha256 differ from provenance.json (or that it lists and are missing)."""
    import hashlib

    bad = []
    for name, info in (prov.get("files") or {}).items():
        path = directory / name
        if not path.is_file():
            bad.append(f"{name} (missing)")
            continue
        h = hashlib.sha256()
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
        if path.stat().st_size != info.get("bytes") or h.hexdigest() != info.get("sha256"):
            bad.append(f"{name} (size or sha256 differs from provenance.json)")
    return bad


def _component(directory: Path, locate, verify: bool = False) -> dict[str, Any]:
    from tokenizer.defaults import read_provenance

    info: dict[str, Any] = {"dir": str(directory)}
    try:
        locate()
    except FileNotFoundError as exc:
        return {**info, "installed": False, "problem": str(exc)}
    prov = read_provenance(directory)
    training = prov.get("training") if isinstance(prov.get("training"), dict) else {}
    size = sum(p.stat().st_size for p in directory.iterdir() if p.is_file())
    if verify:
        info["mismatches"] = _mismatches(directory, prov) if prov.get("files") else ["no provenance.json file list"]
    return {**info, "installed": True, "name": prov.get("name"), "placeholder": bool(prov.get("placeholder")),
            "parameters_m": round(prov["parameters"] / 1e6, 2) if "parameters" in prov else None,
            "dtype": prov.get("dtype"), "training_steps": training.get("steps"),
            "exported_utc": prov.get("exported_utc"), "size_mb": round(size / 1e6, 2),
            "files": sorted(p.name for p in directory.iterdir() if p.is_file())}


def run(args: argparse.Namespace) -> int:
    import mimo_audio.defaults
    import tokenizer.defaults

    report = {
        "audio_tokenizer": _component(Path(tokenizer.defaults.DEFAULT_DIR), tokenizer.defaults.default_tokenizer_dir,
                                      args.verify),
        "speech_lm": _component(Path(mimo_audio.defaults.DEFAULT_DIR), mimo_audio.defaults.default_model_dir,
                                args.verify),
    }
    components = list(report.values())
    ok = all(c["installed"] for c in components) and not any(c.get("mismatches") for c in components)
    if all(c["installed"] for c in components):
        report["paired"] = mimo_audio.defaults.check_pairing(mimo_audio.defaults.DEFAULT_DIR,
                                                             tokenizer.defaults.DEFAULT_DIR)
    sys.stdout.write(json.dumps(report, indent=1) + "\n")
    return 0 if ok else 1


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "default-model", help="show the embedded default model (used when no model path is given)",
        description="Print where the embedded default tokenizer and speech LM are, what they are (provenance.json: "
        "training steps, dtype, export date) and their size. Exit status 1 when they are not installed (or, with "
        "--verify, when a file differs from its provenance).",
    )
    p.add_argument("--verify", action="store_true", help="check the size and sha256 of every file against provenance")
    p.set_defaults(func=run)
