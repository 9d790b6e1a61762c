"""MTP speculative decoding of the speech LM's text outputs: equal to plain greedy, clear errors."""

from __future__ import annotations

import shutil

import pytest
import torch

from efficient.spec import MTPConfig, MTPDrafter
from mimo_audio import MimoAudio
from mimo_audio.sampling import Sampler
from mimo_audio.speculative import SpeculativeText, SpeechLMTarget, load_speech_mtp

from .conftest import random_codes

G = {"preset": "greedy", "max_new_patches": 24}


@pytest.fixture(scope="module")
def mtp_dir(tiny_dir, tmp_path_factory):
    """A copy of the tiny LM with two random MTP heads (started from the last backbone block)."""
    d = tmp_path_factory.mktemp("tiny_mtp") / "lm"
    shutil.copytree(tiny_dir, d)
    m = MimoAudio.from_pretrained(d, device="cpu")
    target = SpeechLMTarget(m.lm)
    torch.manual_seed(0)
    drafter = MTPDrafter(MTPConfig.from_target(target.config, num_heads=2, sliding_window=8, draft_slack=8),
                         target.embed, target.final_norm, target.lm_head)
    drafter.init_from_target(m.lm.model.layers[-1])
    drafter.save(d)
    target.close()
    return d


@pytest.fixture(scope="module")
def mimo_mtp(mtp_dir) -> MimoAudio:
    torch.set_num_threads(1)
    return MimoAudio.from_pretrained(mtp_dir, device="cpu")


def test_greedy_speculative_equals_plain_for_prompts_and_k(mimo_mtp):
    m = mimo_mtp
    accepted = 0
    for seed in range(3):
        codes = random_codes(8 + 4 * seed, seed=seed)
        plain = m.asr(codes, **G)
        for k in (1, 2, 3):
            assert m.asr(codes, speculative=k, **G) == plain, (seed, k)
            stats = m.last_draft_stats[0]
            assert stats.draft_rounds > 0 and len(stats.acceptance_per_position) == k
            accepted += sum(stats.accepted)
        assert m.asr(codes, speculative=3, adaptive_draft=True, **G) == plain
    assert accepted > 0  # the accept path (not only rejections) was exercised
    # understanding with a thinking block, and a text dialogue: thinking and answer text both equal
    r0 = m.understand(random_codes(8, seed=5), "What?", thinking=True, **G)
    r1 = m.understand(random_codes(8, seed=5), "What?", thinking=True, speculative=2, **G)
    assert (r1.text, r1.thinking, r1.num_patches, r1.stop_reason) == (r0.text, r0.thinking, r0.num_patches,
                                                                      r0.stop_reason)
    msgs = [{"role": "user", "content": "Hello there"}]
    assert m.chat(msgs, speculative=True, **G).text == m.chat(msgs, **G).text


def test_min_new_patches_and_stop_tokens_match_plain(mimo_mtp):
    m = mimo_mtp
    codes = random_codes(12, seed=7)
    for min_new in (0, 5, 20):
        plain = m.run([m_asr(m, codes)], m.generation_config("asr", "text", min_new_patches=min_new, **G))[0]
        spec = m.run([m_asr(m, codes)], m.generation_config("asr", "text", min_new_patches=min_new,
                                                            speculative=3, **G))[0]
        assert (spec.text, spec.num_patches, spec.stop_reason) == (plain.text, plain.num_patches, plain.stop_reason)
        assert spec.num_patches >= min(min_new, G["max_new_patches"]) or spec.stop_reason == "max_length"


def m_asr(m, codes):
    from mimo_audio import formats

    return formats.asr(codes)


def test_sampling_runs_and_never_emits_suppressed_tokens(mimo_mtp):
    m = mimo_mtp
    cfg = m.generation_config("asr", "text", max_new_patches=16, seed=3, speculative=2,
                              text_sampler=Sampler(temperature=0.8, top_p=0.95))
    spec = SpeculativeText.from_lm(m.lm, m.lm_path, max_draft=2)
    out, stats = spec.generate(m.render(m_asr(m, random_codes(8, seed=1))), cfg)
    assert m.special.empty not in out.text_ids and m.special.sostm not in out.text_ids
    assert 1 <= out.num_patches <= 16 and stats.new_tokens == out.num_patches
    again, _ = spec.generate(m.render(m_asr(m, random_codes(8, seed=1))), cfg)
    assert again.text_ids == out.text_ids  # seeded: reproducible
    spec.target.close()


def test_missing_heads_and_speech_outputs_give_clear_errors(tiny_dir, mimo_mtp):
    plain = MimoAudio.from_pretrained(tiny_dir, device="cpu")
    with pytest.raises(FileNotFoundError, match="mimo-audio train mtp"):
        plain.asr(random_codes(8), speculative=True, **G)
    with pytest.raises(FileNotFoundError, match="no MTP heads"):
        load_speech_mtp(plain.lm, tiny_dir)
    with pytest.raises(ValueError, match="text-only outputs"):
        mimo_mtp.tts("hi", speculative=True, **G)
    with pytest.raises(ValueError, match="speculative decoding needs MTP heads"):
        from mimo_audio.generation import generate

        generate(mimo_mtp.lm, [mimo_mtp.render(m_asr(mimo_mtp, random_codes(8)))],
                 mimo_mtp.generation_config("asr", "text", speculative=2, **G))


def test_cli_chat_speculative(mtp_dir, tiny_dir, tmp_path):
    import json

    from apps.cli import main

    common = ["--text", "Hello", "--preset", "greedy", "--max-new-patches", "12", "--device", "cpu"]
    assert main(["chat", "--lm-path", str(mtp_dir), *common, "--json", str(tmp_path / "a.json")]) == 0
    assert main(["chat", "--lm-path", str(mtp_dir), *common, "--speculative", "2",
                 "--json", str(tmp_path / "b.json")]) == 0
    a, b = (json.loads((tmp_path / f).read_text()) for f in ("a.json", "b.json"))
    assert a["text"] == b["text"] and len(b["speculative"][0]["accept_per_position"]) == 2
    assert main(["chat", "--lm-path", str(tiny_dir), *common, "--speculative", "2"]) == 1  # no heads: clean error
