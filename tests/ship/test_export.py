"""apps/scripts/export_default_model.py: copy, cast, verify, budget, provenance, package data."""

from __future__ import annotations

import fnmatch
import hashlib
import json
import logging
import sys
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from apps.scripts.export_default_model import export_default_model, main
from mimo_audio import MimoAudio, SpeechLM
from tokenizer import checkpoint

ROOT = Path(__file__).resolve().parents[2]


def _tensors(path: Path) -> dict[str, torch.Tensor]:
    with safe_open(str(path), framework="pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}


def test_fp32_export_is_exact_and_documented(tiny_runs, default_assets):
    (tok_src, lm_src), (tok_dir, lm_dir) = tiny_runs, default_assets
    assert {k: v for k, v in _tensors(tok_dir / "model.safetensors").items()}.keys() == \
        checkpoint.read_state_dict(tok_src).keys()
    for k, v in checkpoint.read_state_dict(tok_src).items():
        assert torch.equal(_tensors(tok_dir / "model.safetensors")[k], v), k
    ref = SpeechLM.from_pretrained(lm_src).state_dict()
    for k, v in SpeechLM.from_pretrained(lm_dir).state_dict().items():
        assert torch.equal(v, ref[k]), k
    tok_prov = json.loads((tok_dir / "provenance.json").read_text())
    lm_prov = json.loads((lm_dir / "provenance.json").read_text())
    for d, prov in ((tok_dir, tok_prov), (lm_dir, lm_prov)):
        names = sorted(p.name for p in d.iterdir() if p.name != "provenance.json")
        assert sorted(prov["files"]) == names
        for name, info in prov["files"].items():
            data = (d / name).read_bytes()
            assert info["bytes"] == len(data) and info["sha256"] == hashlib.sha256(data).hexdigest()
        assert prov["placeholder"] is False and prov["dtype"] == "fp32" and prov["exported_utc"].endswith("Z")
    assert tok_prov["training"]["steps"] == 7 and lm_prov["training"]["steps"] == 11
    assert lm_prov["training"]["corpus"]["utterances"] == 2
    assert lm_prov["audio_tokenizer_sha256"] == tok_prov["files"]["model.safetensors"]["sha256"]
    assert {"tokenizer.json", "tokenizer_config.json", "config.json"} <= set(lm_prov["files"])


def test_bf16_export_halves_the_weights_and_keeps_codebooks_fp32(tiny_runs, default_assets, tmp_path, monkeypatch):
    tok_dir, lm_dir = tmp_path / "tok", tmp_path / "lm"
    mtp = tmp_path / "heads.safetensors"
    save_file({"mtp.0.proj.weight": torch.randn(8, 8)}, str(mtp))
    summary = export_default_model(*tiny_runs, dtype="bf16", tokenizer_out=tok_dir, lm_out=lm_dir, mtp=mtp)
    tensors = _tensors(tok_dir / "model.safetensors")
    for k, v in tensors.items():
        if v.is_floating_point():
            fp32 = k.startswith("encoder.quantizer.") or k.endswith("istft.window")
            assert v.dtype == (torch.float32 if fp32 else torch.bfloat16), k
    fp32_lm = (default_assets[1] / "model.safetensors").stat().st_size
    assert (lm_dir / "model.safetensors").stat().st_size < 0.55 * fp32_lm
    assert (lm_dir / "mtp.safetensors").read_bytes() == mtp.read_bytes()  # heads are copied as they are
    assert summary["dtype"] == "bf16" and json.loads((lm_dir / "provenance.json").read_text())["mtp_heads"]
    m = MimoAudio.from_pretrained(lm_dir, tok_dir, device="cpu")
    assert m.lm.dtype == torch.bfloat16 and m.audio_tokenizer.dtype == torch.float32
    assert m.tts("hi", preset="greedy", max_new_patches=3).num_patches >= 1
    # as the embedded default, a bf16-stored LM runs in fp32 (about twice as fast on CPU)
    import mimo_audio.defaults
    import tokenizer.defaults

    monkeypatch.setattr(tokenizer.defaults, "DEFAULT_DIR", tok_dir)
    monkeypatch.setattr(mimo_audio.defaults, "DEFAULT_DIR", lm_dir)
    assert MimoAudio.from_pretrained(device="cpu").lm.dtype == torch.float32


def test_bf16_lm_beside_an_unchanged_fp32_tokenizer(tiny_runs, tmp_path):
    """A new LM is shipped in bf16 next to the installed fp32 tokenizer: the tokenizer's weights (so its codes)
    stay bit-identical and re-exporting an exported folder keeps its training provenance."""
    first_tok, first_lm = tmp_path / "tok1", tmp_path / "lm1"
    export_default_model(*tiny_runs, tokenizer_out=first_tok, lm_out=first_lm)
    tok_dir, lm_dir = tmp_path / "tok2", tmp_path / "lm2"
    summary = export_default_model(first_tok, tiny_runs[1], dtype="fp32", lm_dtype="bf16", tokenizer_out=tok_dir,
                                   lm_out=lm_dir)
    assert summary["dtype"] == "fp32" and summary["lm_dtype"] == "bf16"
    assert (tok_dir / "model.safetensors").read_bytes() == (first_tok / "model.safetensors").read_bytes()
    lm = _tensors(lm_dir / "model.safetensors")
    assert all(v.dtype == torch.bfloat16 for v in lm.values() if v.is_floating_point())
    tok_prov = json.loads((tok_dir / "provenance.json").read_text())
    assert tok_prov["training"]["steps"] == 7  # carried over from the exported folder's provenance
    lm_prov = json.loads((lm_dir / "provenance.json").read_text())
    assert lm_prov["dtype"] == "bf16" and lm_prov["audio_tokenizer_sha256"] == tok_prov["files"]["model.safetensors"][
        "sha256"]


def test_over_budget_export_installs_nothing(tiny_runs, tmp_path):
    tok_dir, lm_dir = tmp_path / "tok", tmp_path / "lm"
    lm_dir.mkdir()
    (lm_dir / "keep.txt").write_text("the installed default")
    with pytest.raises(ValueError, match=r"over the 0\.5 MB budget.*--dtype bf16"):
        export_default_model(*tiny_runs, tokenizer_out=tok_dir, lm_out=lm_dir, budget_mb=0.5)
    assert not tok_dir.exists() and (lm_dir / "keep.txt").read_text() == "the installed default"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["lm"]  # no staging folder left behind


def test_bad_sources_are_refused(tiny_runs, tmp_path):
    tok_src, lm_src = tiny_runs
    with pytest.raises(FileNotFoundError, match="tokenizer checkpoint directory not found"):
        export_default_model(tmp_path / "nope", lm_src, tokenizer_out=tmp_path / "t", lm_out=tmp_path / "l")
    with pytest.raises(ValueError, match="model_type 'qwen2'"):  # an LM is not a tokenizer
        export_default_model(lm_src, lm_src, tokenizer_out=tmp_path / "t", lm_out=tmp_path / "l")
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"not safetensors")
    with pytest.raises(ValueError, match="MTP heads"):
        export_default_model(tok_src, lm_src, tokenizer_out=tmp_path / "t", lm_out=tmp_path / "l", mtp=bad)
    assert not (tmp_path / "t").exists() and not (tmp_path / "l").exists()


def test_script_random_placeholders_and_budget_error(tmp_path, caplog, monkeypatch):
    import mimo_audio.defaults
    import tokenizer.defaults

    tok_dir, lm_dir = tmp_path / "tok", tmp_path / "lm"
    outs = ["--tokenizer-out", str(tok_dir), "--lm-out", str(lm_dir)]
    assert main(["--random", "--preset", "tiny", *outs]) == 0
    assert json.loads((lm_dir / "provenance.json").read_text())["placeholder"] is True
    monkeypatch.setattr(tokenizer.defaults, "DEFAULT_DIR", tok_dir)
    monkeypatch.setattr(mimo_audio.defaults, "DEFAULT_DIR", lm_dir)
    with caplog.at_level(logging.WARNING):
        MimoAudio.from_pretrained(device="cpu")
    assert "RANDOM placeholder weights" in caplog.text
    assert main(["--random", "--preset", "tiny", "--budget-mb", "0.1", *outs]) == 1
    assert "over the 0.1 MB budget" in caplog.text
    with pytest.raises(SystemExit):
        main(["--tokenizer", str(tok_dir)])  # --lm missing


def test_package_data_covers_every_exported_file(default_assets):
    if sys.version_info < (3, 11):
        pytest.skip("tomllib needs Python 3.11")
    import tomllib

    package_data = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]
    for package, folder in (("tokenizer", default_assets[0]), ("mimo_audio", default_assets[1])):
        patterns = package_data.get(package, [])
        for f in folder.iterdir():
            assert any(fnmatch.fnmatch(f"assets/default/{f.name}", p) for p in patterns), (package, f.name)
