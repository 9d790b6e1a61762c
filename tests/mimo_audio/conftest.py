"""Fixtures of the speech-LM tests: one tiny random checkpoint per session."""

from __future__ import annotations

import pytest
import torch
from helpers.tiny_lm import make_tiny_checkpoint

from mimo_audio import MimoAudio, SpeechLM, load_text_tokenizer
from mimo_audio.fewshot import TaskLibrary
from mimo_audio.voices import VoiceRegistry


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory):
    return make_tiny_checkpoint(tmp_path_factory.mktemp("tiny_lm"), seed=0)


@pytest.fixture(scope="session")
def tiny_lm(tiny_dir) -> SpeechLM:
    torch.set_num_threads(1)
    return SpeechLM.from_pretrained(tiny_dir)


@pytest.fixture(scope="session")
def text_tok(tiny_dir):
    return load_text_tokenizer(tiny_dir)


@pytest.fixture()
def mimo(tiny_lm, text_tok, tmp_path) -> MimoAudio:
    """The task API over the tiny LM, without an audio tokenizer (inputs given as codes)."""
    return MimoAudio(
        tiny_lm, text_tok, audio_tokenizer=None, voices=VoiceRegistry(tmp_path / "voices"),
        tasks=TaskLibrary(tmp_path / "tasks"),
    )


def random_codes(frames: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    top = torch.tensor([1024, 1024, 128, 128, 128, 128, 128, 128])[:, None]
    return (torch.rand(8, frames, generator=g) * top).long()
