"""The generation loop: determinism, batch == single, stop rules, lengths, seeds, samplers, context."""

from __future__ import annotations

import pytest
import torch

from mimo_audio import GenerationConfig, Sampler, generate, iter_patches
from mimo_audio.generation import left_pad

from .conftest import random_codes

GREEDY = GenerationConfig(max_new_patches=24)


def prompt(lm, text_ids, frames=0, seed=0):
    n = len(text_ids)
    ids = torch.full((9, 4 * n), -100, dtype=torch.long)
    ids[0, ::4] = torch.tensor(text_ids)
    ids[1:] = lm.empty_ids[:, None]
    if frames:
        sp = torch.full((9, frames), -100, dtype=torch.long)
        sp[0, ::4] = lm.empty_token_id
        sp[1:] = random_codes(frames, seed)
        ids = torch.cat([ids, sp], dim=1)
    return ids


def test_greedy_is_deterministic_and_mixes_text_and_speech(tiny_lm):
    p = prompt(tiny_lm, [70, 71, 72], frames=8)
    a = generate(tiny_lm, [p], GREEDY)[0]
    b = generate(tiny_lm, [p], GREEDY)[0]
    assert a.text_ids == b.text_ids and torch.equal(a.codes, b.codes)
    assert a.num_patches == 24 and a.stop_reason == "max_length"
    speech = [i for i, t in enumerate(a.text_ids) if t == tiny_lm.empty_token_id]
    text = [i for i, t in enumerate(a.text_ids) if t != tiny_lm.empty_token_id]
    assert speech and text, "the tiny model should exercise both kinds of patch"
    for i in text:  # text patches carry empty audio ids
        assert torch.equal(a.codes[i], tiny_lm.empty_ids.expand(4, 8))
    for i in speech:
        assert bool((a.codes[i] < tiny_lm.empty_ids).all())
    layout = a.to_layout()
    assert layout.shape == (9, 96) and layout[0, ::4].tolist() == a.text_ids


def test_batch_equals_single_under_greedy(tiny_lm):
    prompts = [prompt(tiny_lm, [70, 71, 72], 8), prompt(tiny_lm, [80], 0), prompt(tiny_lm, [5, 6, 7], 20, seed=2)]
    batch = generate(tiny_lm, prompts, GREEDY)
    for p, b in zip(prompts, batch):
        single = generate(tiny_lm, [p], GREEDY)[0]
        assert b.text_ids == single.text_ids
        assert torch.equal(b.codes, single.codes)


def test_batch_rows_stop_independently(tiny_lm):
    p1, p2 = prompt(tiny_lm, [70, 71, 72, 73], 8), prompt(tiny_lm, [5, 6, 7], 20, seed=2)
    ref = generate(tiny_lm, [p1], GREEDY)[0]
    stop = next(t for i, t in enumerate(ref.text_ids) if i >= 2 and t not in ref.text_ids[:i])
    cfg = GREEDY.with_(stop_tokens=(stop,))
    both = generate(tiny_lm, [p1, p2], cfg)
    alone = [generate(tiny_lm, [p], cfg)[0] for p in (p1, p2)]
    assert both[0].stop_reason == "stop_token" and both[0].text_ids[-1] == stop
    for b, a in zip(both, alone):
        assert b.text_ids == a.text_ids and b.stop_reason == a.stop_reason


def test_stop_token_ends_generation_and_is_kept(tiny_lm):
    p = prompt(tiny_lm, [70, 71, 72, 73], 8)
    ref = generate(tiny_lm, [p], GREEDY)[0]
    k = next(i for i, t in enumerate(ref.text_ids) if i >= 3 and t not in ref.text_ids[:i])
    out = generate(tiny_lm, [p], GREEDY.with_(stop_tokens=(ref.text_ids[k],)))[0]
    assert out.text_ids == ref.text_ids[: k + 1]
    assert out.stop_reason == "stop_token"


def test_min_new_patches_suppresses_stop_tokens(tiny_lm):
    p = prompt(tiny_lm, [70, 71, 72, 73], 8)
    ref = generate(tiny_lm, [p], GREEDY)[0]
    stop = ref.text_ids[0]
    assert generate(tiny_lm, [p], GREEDY.with_(stop_tokens=(stop,)))[0].num_patches == 1
    out = generate(tiny_lm, [p], GREEDY.with_(stop_tokens=(stop,), min_new_patches=6))[0]
    assert stop not in out.text_ids[:6]
    assert out.num_patches >= 6


def test_max_new_patches_and_suppressed_tokens(tiny_lm):
    p = prompt(tiny_lm, [70, 71], 4)
    out = generate(tiny_lm, [p], GREEDY.with_(max_new_patches=3))[0]
    assert out.num_patches == 3 and out.stop_reason == "max_length"
    no_speech = generate(tiny_lm, [p], GREEDY.with_(suppress_tokens=(tiny_lm.empty_token_id,)))[0]
    assert tiny_lm.empty_token_id not in no_speech.text_ids
    with pytest.raises(ValueError, match="min_new_patches"):
        GenerationConfig(max_new_patches=3, min_new_patches=4)


def test_seeded_sampling_is_reproducible(tiny_lm):
    p = prompt(tiny_lm, [70, 71, 72], 8)
    cfg = GenerationConfig.from_preset("default", max_new_patches=16, seed=123)
    a, b = generate(tiny_lm, [p], cfg)[0], generate(tiny_lm, [p], cfg)[0]
    assert a.text_ids == b.text_ids and torch.equal(a.codes, b.codes)
    c = generate(tiny_lm, [p], cfg.with_(seed=124))[0]
    assert a.text_ids != c.text_ids or not torch.equal(a.codes, c.codes)


def test_iterator_can_be_stopped_by_the_caller(tiny_lm):
    p = prompt(tiny_lm, [70, 71, 72], 8)
    it = iter_patches(tiny_lm, [p], GREEDY)
    steps = [next(it) for _ in range(3)]
    it.close()
    ref = generate(tiny_lm, [p], GREEDY)[0]
    assert [int(s.text[0]) for s in steps] == ref.text_ids[:3]


def test_prompt_longer_than_context_is_a_clear_error(tiny_lm):
    too_long = prompt(tiny_lm, [70] * (tiny_lm.max_patches + 1))
    with pytest.raises(ValueError, match="context of 512 patches"):
        generate(tiny_lm, [too_long], GREEDY)
    near = prompt(tiny_lm, [70] * (tiny_lm.max_patches - 2))
    out = generate(tiny_lm, [near], GREEDY)[0]  # max_new_patches is capped to the remaining room
    assert out.num_patches == 2


def test_left_pad_rejects_malformed_prompts(tiny_lm):
    with pytest.raises(ValueError, match="T % 4"):
        left_pad([torch.zeros(9, 6, dtype=torch.long)], 0, tiny_lm.empty_ids)
    with pytest.raises(ValueError, match="no prompts"):
        left_pad([], 0, tiny_lm.empty_ids)


def test_sampler_filters_follow_the_official_rules():
    logits = torch.tensor([[1.0, 2.0, 3.0, 4.0]])
    assert Sampler.greedy()(logits).item() == 3
    assert Sampler.greedy()(logits, removed=[3]).item() == 2
    kept = Sampler(True, 1.0, top_k=2).filter_logits(logits)
    assert torch.isinf(kept[0, :2]).all() and torch.isfinite(kept[0, 2:]).all()
    # top-p 0.5: the largest token has p=0.64 > 0.5 so it alone survives.
    kept = Sampler(True, 1.0, top_p=0.5).filter_logits(logits)
    assert torch.isfinite(kept).sum() == 1 and torch.isfinite(kept[0, 3])
    g = torch.Generator().manual_seed(0)
    draws = Sampler(True, 1.0)(logits.expand(2000, 4), generator=g)
    freq = torch.bincount(draws, minlength=4).float() / 2000
    torch.testing.assert_close(freq, logits.softmax(-1)[0], atol=0.04, rtol=0)
    with pytest.raises(ValueError, match="temperature"):
        Sampler(True, 0.0)
    with pytest.raises(ValueError, match="top_p"):
        Sampler(True, 1.0, top_p=1.5)


def test_sampler_never_returns_a_removed_token_even_if_top_p_kept_only_it():
    logits = torch.tensor([[10.0, 0.0, 0.0, 1.0]])
    s = Sampler(True, 1.0, top_p=0.5)
    for seed in range(5):
        tok = s(logits, removed=[0], generator=torch.Generator().manual_seed(seed))
        assert tok.item() == 3  # the best remaining token, chosen by re-filtering without token 0


def test_seeded_sampling_in_a_batch_equals_running_alone(tiny_lm):
    prompts = [prompt(tiny_lm, [70, 71, 72], 8), prompt(tiny_lm, [5, 6, 7], 20, seed=2)]
    cfg = GenerationConfig.from_preset("default", max_new_patches=16, seed=7)
    batch = generate(tiny_lm, prompts, cfg)
    for p, b in zip(prompts, batch):
        alone = generate(tiny_lm, [p], cfg)[0]
        assert b.text_ids == alone.text_ids and torch.equal(b.codes, alone.codes)
    assert any(t == tiny_lm.empty_token_id for b in batch for t in b.text_ids)  # the audio sampler ran too
