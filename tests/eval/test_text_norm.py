"""The pinned WER normaliser and the word-level edit counts."""

from __future__ import annotations

import random

import pytest

from eval.scorers.asr import word_error_rate
from eval.scorers.text_norm import normalize_text, number_to_words, ordinal_to_words, spell_numbers, year_to_words


@pytest.mark.parametrize(
    "n, words",
    [(0, "zero"), (7, "seven"), (13, "thirteen"), (40, "forty"), (42, "forty two"), (100, "one hundred"),
     (101, "one hundred one"), (1000, "one thousand"), (2024, "two thousand twenty four"),
     (1_000_000, "one million"), (123_456, "one hundred twenty three thousand four hundred fifty six")],
)
def test_number_to_words(n: int, words: str) -> None:
    assert number_to_words(n) == words


def test_years_ordinals_and_spelling_in_text() -> None:
    assert year_to_words(1905) == "nineteen oh five"
    assert year_to_words(1900) == "nineteen hundred"
    assert year_to_words(2000) == "two thousand"
    assert ordinal_to_words(21) == "twenty first"
    assert ordinal_to_words(12) == "twelfth"
    assert ordinal_to_words(40) == "fortieth"
    assert spell_numbers("In 1984 he paid 3,500 dollars on the 2nd day.") == (
        "In nineteen eighty four he paid three thousand five hundred dollars on the second day."
    )
    assert spell_numbers("an id of 12345678901234567") == "an id of 12345678901234567"  # too long: left alone


def test_normalize_text() -> None:
    assert normalize_text("Hello, World!  It's 7 o'clock.") == "hello world it's seven o'clock"
    assert normalize_text('"Quoted" words -- and (a noise tag) [laughs] here') == "quoted words and here"
    assert normalize_text("The colour grey, 50% & more") == "the color gray fifty percent and more"
    assert normalize_text("Café naïve exercise-book") == "cafe naive exercise book"
    assert normalize_text("") == ""


def test_wer_counts_and_both_aggregations() -> None:
    result = word_error_rate(["a b c d", "e"], ["a b c d", "x"])
    assert result.corpus == pytest.approx(0.2)
    assert result.mean_utterance == pytest.approx(0.5)
    r = word_error_rate(["the cat sat on the mat"], ["the cat sat on mat today"])
    assert (r.substitutions, r.deletions, r.insertions, r.reference_words) == (0, 1, 1, 6)
    assert word_error_rate(["Seven o'clock."], ["seven o'clock"]).corpus == 0.0
    assert word_error_rate(["two words"], [""]).corpus == 1.0
    with pytest.raises(ValueError, match="references"):
        word_error_rate(["a"], [])
    with pytest.raises(ValueError, match="no words"):
        word_error_rate(["!!"], ["a"])


def test_wer_matches_jiwer_on_random_strings() -> None:
    jiwer = pytest.importorskip("jiwer")
    rng = random.Random(0)
    vocab = "a b c d e f".split()
    refs = [" ".join(rng.choices(vocab, k=rng.randint(1, 8))) for _ in range(200)]
    hyps = [" ".join(rng.choices(vocab, k=rng.randint(0, 8))) for _ in range(200)]
    ours = word_error_rate(refs, hyps)
    theirs = jiwer.process_words(refs, [h if h else "" for h in hyps])
    assert ours.corpus == pytest.approx(theirs.wer)
    assert ours.substitutions + ours.deletions + ours.insertions == (
        theirs.substitutions + theirs.deletions + theirs.insertions
    )
