"""The corpus plan: determinism, held-out sentences and voices, parallel rows (no TTS engine needed)."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import asdict, replace

import pytest

from apps.corpus.plan import SIZES, CorpusConfig, plan_corpus, split_sentences
from apps.corpus.text import Sentence
from apps.corpus.voices import EVAL_PANEL, HELD_OUT_GROUPS, voice_inventory
from eval.scorers.text_norm import number_to_words

SENTENCES = tuple(Sentence(f"Sentence number {number_to_words(i)} is about the {w}.", "test")
                  for i, w in enumerate(["cat", "dog", "sea", "sky", "tree"] * 100))
CONFIG = CorpusConfig(train_sentences=40, valid_sentences=6, test_sentences=8, speed_fraction=0.3,
                      noise_fraction=0.4, whisper_fraction=0.5)


def _rows(config: CorpusConfig = CONFIG):
    return plan_corpus(SENTENCES, voice_inventory(), config)


def test_plan_is_deterministic_and_seeded() -> None:
    a, b = _rows(), _rows()
    assert [asdict(r) for r in a] == [asdict(r) for r in b]
    c = _rows(replace(CONFIG, seed=1))
    assert {r.id for r in a} != {r.id for r in c}
    assert len({r.id for r in a}) == len(a)  # ids (and so file paths) are unique


def test_splits_hold_out_sentences_and_voices() -> None:
    rows = _rows()
    splits_of_text = defaultdict(set)
    for r in rows:
        splits_of_text[r.text_id].add(r.split)
    assert all(len(s) == 1 for s in splits_of_text.values())
    train_groups = {r.voice_group for r in rows if r.split == "train"}
    for split, groups in HELD_OUT_GROUPS.items():
        assert not set(groups) & train_groups
        in_split = {r.voice_group for r in rows if r.split == split and not r.voice_seen_in_train}
        assert in_split == set(groups)
    assert all(r.voice_seen_in_train == (r.voice_group in train_groups) for r in rows)
    # every held-out utterance has a parallel utterance of the same sentence by a trained panel voice
    panel_texts = {r.text_id for r in rows if r.speaker_id in EVAL_PANEL and r.style == "plain"}
    assert {r.text_id for r in rows if not r.voice_seen_in_train} <= panel_texts


def test_sentence_splits_of_small_are_subsets_of_full() -> None:
    small = split_sentences(SENTENCES, replace(CONFIG, train_sentences=10, valid_sentences=2, test_sentences=3))
    big = split_sentences(SENTENCES, CONFIG)
    for split in ("train", "valid", "test"):
        assert set(small[split]) <= set(big[split])
    with pytest.raises(ValueError, match="needs"):
        split_sentences(SENTENCES[:20], CONFIG)


def test_parallel_rows_for_the_few_shot_tasks() -> None:
    rows = _rows()
    by_id = {r.id: r for r in rows}
    train = [r for r in rows if r.split == "train" and r.style == "plain"]
    per_text = defaultdict(set)
    for r in train:
        per_text[r.text_id].add(r.speaker_id)
    assert all(len(s) == CONFIG.voices_per_train_sentence for s in per_text.values())  # voice conversion
    derived = [r for r in rows if r.style != "plain"]
    assert {r.style for r in derived} == {"slow", "fast", "noisy", "whisper"}
    for r in derived:
        src = by_id[r.source_id]
        assert (src.style, src.text_id, src.speaker_id) == ("plain", r.text_id, r.speaker_id)
    assert all(r.engine == "espeak" for r in derived if r.style == "whisper")
    for r in derived:
        if r.noise == "babble":
            talkers = [by_id[i] for i in r.babble_ids]
            assert talkers and all(t.split == r.split and t.text_id != r.text_id for t in talkers)
    assert {r.speed for r in rows if r.style in ("slow", "fast")} == set(CONFIG.speeds)
    assert {r.snr_db for r in rows if r.style == "noisy"} <= set(CONFIG.snrs_db)


def test_engine_weights_shape_the_training_mix() -> None:
    rows = _rows(replace(CONFIG, train_sentences=200, engine_weights={"flite": 1.0, "festival": 0.0, "espeak": 0.0},
                         voices_per_train_sentence=2))
    engines = {r.engine for r in rows if r.split == "train"}
    assert engines == {"flite"}


def test_size_presets() -> None:
    assert set(SIZES) == {"small", "full", "wide"}
    assert SIZES["small"].train_sentences < SIZES["full"].train_sentences


def test_extra_sentences_extend_the_plan_once_each_plain() -> None:
    base = _rows()
    wide = _rows(replace(CONFIG, extra_train_sentences=30))
    assert {r.id for r in base} < {r.id for r in wide}  # a superset: an existing corpus is reused as it is
    assert [asdict(r) for r in wide if r.split != "train"] == [asdict(r) for r in base if r.split != "train"]
    extra = [r for r in wide if r.id not in {b.id for b in base}]
    assert len(extra) == 30 and len({r.text_id for r in extra}) == 30
    assert {r.style for r in extra} == {"plain"} and all(r.split == "train" for r in extra)
    assert SIZES["wide"].extra_train_sentences > 0
    assert replace(SIZES["wide"], extra_train_sentences=0) == SIZES["full"]
