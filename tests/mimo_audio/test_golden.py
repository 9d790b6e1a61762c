"""Golden fixture of the speech LM: fixed seeded weights and prompt; logits and greedy patches must not drift.

Tolerances come from running this fixture on one machine with its default kernels and with
``ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2`` (max difference 4e-6) and scalar kernels
(``ATEN_CPU_CAPABILITY=default``, 7e-5), logits of magnitude ~17: ATOL is ~14x the widest spread. A greedy
choice is compared exactly only where its top-1 minus top-2 margin exceeds MARGIN, so rounding on another
CPU cannot flip it. Regenerate with tests/mimo_audio/make_golden.py only when outputs are meant to change.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from mimo_audio.generation import GenerationConfig, generate
from mimo_audio.modeling import SpeechLM

ATOL = 1e-3
MARGIN = 1e-2
_spec = importlib.util.spec_from_file_location("lm_make_golden", Path(__file__).with_name("make_golden.py"))
golden = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(golden)


@pytest.fixture(scope="module")
def expected() -> dict[str, torch.Tensor]:
    return load_file(str(golden.GOLDEN / "expected.safetensors"))


@pytest.fixture(scope="module")
def model() -> SpeechLM:
    return SpeechLM.from_pretrained(golden.GOLDEN, device="cpu", empty_token_id=golden.EMPTY).eval()


def _margin(scores: torch.Tensor) -> torch.Tensor:
    top = scores.topk(2, dim=-1).values
    return top[..., 0] - top[..., 1]


def test_prompt_is_the_formula(expected):
    assert torch.equal(golden.golden_prompt(), expected["prompt"])


def test_teacher_forced_logits(model, expected):
    got = golden.teacher_forced(model, expected["full"])
    assert sorted(got) == sorted(k for k in expected if k == "text_logits" or k.startswith("patch_logits_"))
    for key, value in got.items():
        torch.testing.assert_close(value, expected[key], atol=ATOL, rtol=0, msg=key)


def test_greedy_choices_where_the_margin_is_large(model, expected):
    """Teacher-forced on the expected continuation, so a near-tie early on cannot hide later choices."""
    cfg, G = model.config, model.config.group_size
    got = golden.teacher_forced(model, expected["full"])
    n_prompt = expected["prompt"].shape[1] // G
    text_logits = got["text_logits"][n_prompt - 1 : -1]  # the logits that chose each new patch's text token
    sure = _margin(expected["text_logits"][n_prompt - 1 : -1]) > MARGIN
    assert sure.sum() >= 12
    assert torch.equal(text_logits.argmax(-1)[sure], expected["greedy_text"][sure])
    # codes of the generated speech patches (the last ones of patch_logits_c: the prompt's come first)
    new_speech = expected["greedy_text"] == golden.EMPTY
    want = expected["greedy_codes"][new_speech]  # [N, G, C]
    compared = 0
    for c in range(cfg.audio_channels):
        logits = got[f"patch_logits_{c}"][-want.shape[0] :].clone()
        ref = expected[f"patch_logits_{c}"][-want.shape[0] :].clone()
        logits[..., cfg.speech_zeroemb_idx[c]] = ref[..., cfg.speech_zeroemb_idx[c]] = float("-inf")
        sure = _margin(ref) > MARGIN
        assert torch.equal(logits.argmax(-1)[sure], want[:, :, c][sure])
        compared += int(sure.sum())
    assert compared >= 0.9 * want[..., 0].numel() * cfg.audio_channels


def test_free_running_greedy_generation_up_to_the_first_near_tie(model, expected):
    n = expected["greedy_text"].numel()
    run = generate(model, [expected["prompt"]], GenerationConfig(max_new_patches=n))[0]
    close = (expected["text_margin"] <= MARGIN) | (expected["code_margin"].flatten(1).min(-1).values <= MARGIN)
    safe = int(close.nonzero()[0]) if bool(close.any()) else n  # patches before the first near-tie choice
    assert safe >= 4
    assert run.text_ids[:safe] == expected["greedy_text"][:safe].tolist()
    assert torch.equal(run.codes[:safe], expected["greedy_codes"][:safe])


def test_golden_fixture_is_small():
    assert sum(p.stat().st_size for p in golden.GOLDEN.iterdir()) < 500_000
