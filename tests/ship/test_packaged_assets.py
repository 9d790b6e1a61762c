"""The assets inside this checkout: not ignored by git, within budget, matching their provenance, loadable.

Before the trained weights are exported (a fresh source checkout) the checks that need them are skipped; once
they are committed they must be the real model, not ``--random`` placeholders.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
from pathlib import Path

import pytest

import mimo_audio.defaults
import tokenizer.defaults

ROOT = Path(__file__).resolve().parents[2]
TOK_DIR, LM_DIR = Path(tokenizer.defaults.DEFAULT_DIR), Path(mimo_audio.defaults.DEFAULT_DIR)
BUDGET_BYTES = 60_000_000


def _git(*args: str) -> subprocess.CompletedProcess | None:
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        return None
    return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True)


def _installed() -> bool:
    return (TOK_DIR / "model.safetensors").is_file() and (LM_DIR / "model.safetensors").is_file()


def test_asset_paths_are_not_git_ignored():
    paths = [str(d.relative_to(ROOT) / n) for d in (TOK_DIR, LM_DIR)
             for n in ("model.safetensors", "config.json", "provenance.json", "tokenizer.json")]
    res = _git("check-ignore", *paths)
    if res is None:
        pytest.skip("not a git checkout")
    assert res.returncode == 1 and not res.stdout.strip(), f"git ignores: {res.stdout}"


@pytest.fixture(scope="module")
def provenance() -> tuple[dict, dict]:
    if not _installed():
        pytest.skip("the embedded default model is not exported in this checkout (apps/scripts/export_default_model)")
    return (json.loads((TOK_DIR / "provenance.json").read_text()), json.loads((LM_DIR / "provenance.json").read_text()))


def test_assets_fit_the_budget_and_match_their_provenance(provenance):
    total = 0
    for d, prov in zip((TOK_DIR, LM_DIR), provenance):
        for name, info in prov["files"].items():
            data = (d / name).read_bytes()
            assert len(data) == info["bytes"] and hashlib.sha256(data).hexdigest() == info["sha256"], name
        total += sum(p.stat().st_size for p in d.iterdir() if p.is_file())
    assert total <= BUDGET_BYTES, f"embedded default model is {total / 1e6:.1f} MB, over 60 MB"
    tok_prov, lm_prov = provenance
    assert lm_prov["audio_tokenizer_sha256"] == tok_prov["files"]["model.safetensors"]["sha256"]


def test_committed_assets_are_not_placeholders(provenance):
    res = _git("ls-files", "--error-unmatch", str((LM_DIR / "model.safetensors").relative_to(ROOT)))
    if res is None or res.returncode != 0:
        pytest.skip("the weights are not committed in this checkout")
    assert not any(p.get("placeholder") for p in provenance), "committed default assets are --random placeholders"


def test_installed_defaults_load_strictly_and_run(provenance):
    import torch

    from mimo_audio import MimoAudio

    m = MimoAudio.from_pretrained(device="cpu")
    r = m.tts("Hello.", preset="greedy", max_new_patches=2)
    assert r.num_patches >= 1 and r.codes.shape[0] == 8
    codes = m.audio_tokenizer.encode(torch.sin(torch.arange(9600) * 0.07) * 0.3, 24000)
    assert codes.shape[0] == 8 and torch.isfinite(m.audio_tokenizer.decode(codes)).all()
