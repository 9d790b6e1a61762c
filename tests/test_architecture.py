"""The import rules as code: `lint-imports` checks the contracts in pyproject.toml ([tool.importlinter])."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("apps", "bench", "eval", "mimo_audio", "tokenizer", "efficient")


def _lint_imports(cwd: Path) -> subprocess.CompletedProcess:
    exe = Path(sys.executable).with_name("lint-imports")
    if not exe.exists():
        exe = shutil.which("lint-imports")
        if exe is None:
            pytest.skip("import-linter is not installed (pip install -e '.[dev]')")
    return subprocess.run([str(exe), "--no-cache", "--no-logo", str(cwd / "pyproject.toml")], cwd=cwd,
                          capture_output=True, text=True, timeout=120)


def test_the_import_contracts_hold():
    res = _lint_imports(ROOT)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "0 broken" in res.stdout


@pytest.fixture()
def tree(tmp_path) -> Path:
    """A copy of the project's packages (code only) and its pyproject, to plant violations in."""
    for pkg in PACKAGES:
        shutil.copytree(ROOT / pkg, tmp_path / pkg, ignore=shutil.ignore_patterns("assets", "__pycache__", "*.wav",
                                                                                   "*.safetensors", "*.so"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    return tmp_path


@pytest.mark.parametrize("module, line, broken", [
    ("tokenizer/streaming.py", "from tokenizer import api", "No cycles are allowed in tokenizer"),
    ("efficient/attention/cache.py", "from . import convert", "No cycles are allowed in efficient.attention"),
    ("mimo_audio/generation.py", "import eval.scorers", "mimo_audio is not allowed to import eval"),
    ("efficient/spec/decoder.py", "import mimo_audio", "efficient is not allowed to import mimo_audio"),
    ("tokenizer/mel.py", "import efficient", "tokenizer is not allowed to import efficient"),
    ("eval/scorers/asr.py", "import apps", "eval is not allowed to import apps"),
    ("bench/bench_lm.py", "import apps.cli", "bench is not allowed to import apps"),
])
def test_a_planted_violation_breaks_a_contract(tree, module, line, broken):
    path = tree / module
    path.write_text(path.read_text() + f"\n{line}  # planted\n")
    res = _lint_imports(tree)
    assert res.returncode != 0
    assert broken in res.stdout, res.stdout
