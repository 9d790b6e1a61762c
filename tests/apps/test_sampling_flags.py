"""--temperature / --top-k / --top-p reach the text sampler, next to --preset (embedded default model)."""

from __future__ import annotations

import json

import pytest

from apps.cli import main


@pytest.fixture()
def embedded(monkeypatch):
    monkeypatch.delenv("MIMO_AUDIO_LM_PATH", raising=False)
    monkeypatch.delenv("MIMO_AUDIO_TOKENIZER_PATH", raising=False)


def _asr(flite_wav, out, *flags: str) -> str:
    assert main(["asr", str(flite_wav), "--max-new-patches", "12", "--json", str(out), *flags]) == 0
    return json.loads(out.read_text())["transcripts"][0]["text"]


def test_top_k_one_sampling_equals_greedy(embedded, flite_wav, tmp_path):
    greedy = _asr(flite_wav, tmp_path / "g.json", "--preset", "greedy")
    assert _asr(flite_wav, tmp_path / "k.json", "--temperature", "1.5", "--top-k", "1", "--seed", "3") == greedy


def test_help_lists_the_sampling_flags(capsys):
    with pytest.raises(SystemExit):
        main(["tts", "--help"])
    text = capsys.readouterr().out
    assert all(flag in text for flag in ("--preset", "--temperature", "--top-p", "--top-k"))
