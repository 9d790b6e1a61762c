"""Sentence sourcing, segmentation and the speakability filter."""

from __future__ import annotations

import pytest

from apps.corpus.text import MAX_WORDS, MIN_WORDS, clean_sentence, split_sentences

VOCAB = frozenset(
    "the a an cat sat on mat it is what time i have three hundred twenty dollars mr smith said hello "
    "function returns list of items and don't we've been there nineteen eighty four in first day"
    .split()
)


def test_split_sentences_keeps_abbreviations_together() -> None:
    text = 'Mr. Smith said hello. "What time is it?" The cat sat! it is'
    assert split_sentences(text) == ["Mr. Smith said hello.", '"What time is it?"', "The cat sat! it is"]


@pytest.mark.parametrize(
    "raw, expected",
    [
        ("The cat sat on the mat.", "The cat sat on the mat."),
        ('"What time is it?" the cat said.', "What time is it? the cat said."),  # quotes are not spoken
        ('"The cat sat on the mat."', "The cat sat on the mat."),
        ("I have 320 dollars.", "I have three hundred twenty dollars."),
        ("In 1984 the cat sat on the first day.", "In nineteen eighty four the cat sat on the first day."),
        ("It is the 1st day.", "It is the first day."),
        ("The cat sat on the mat!!", "The cat sat on the mat!"),
        ("The function returns list(items).", None),  # code
        ("The function returns os.path items.", None),  # dotted name
        ("The function returns a list of 3.5 items.", None),  # decimal
        ("The cat sat on the mat", None),  # no final punctuation
        ("the cat sat on the mat.", None),  # no capital
        ("The cat sat.", None),  # under MIN_WORDS
        ("The API returns a list of items.", None),  # acronym
        ("The function returns zorblax items.", None),  # not in the CMU dictionary
        ("The cat sat -- and sat.", "The cat sat, and sat."),
    ],
)
def test_clean_sentence(raw: str, expected: str | None) -> None:
    vocab = VOCAB | {"said", "what", "time", "is", "it", "returns", "zorblax"} - {"zorblax"}
    assert clean_sentence(raw, frozenset(vocab)) == expected


def test_word_limits() -> None:
    vocab = frozenset({"cat", "the", "a"})
    assert clean_sentence("The " + "cat " * (MAX_WORDS - 1) + "cat.", vocab) is None
    assert clean_sentence("The " + "cat " * (MAX_WORDS - 2) + "cat.", vocab) is not None
    assert MIN_WORDS == 4


def test_installed_sources_give_varied_speakable_sentences() -> None:
    pytest.importorskip("pocketsphinx")
    from apps.corpus.text import load_sentences

    try:
        sentences = load_sentences()
    except FileNotFoundError as exc:
        pytest.skip(str(exc))
    assert len(sentences) > 1000
    assert len({s.key for s in sentences}) == len(sentences)
    for s in sentences[:: max(1, len(sentences) // 500)]:
        words = s.text.split()
        assert MIN_WORDS <= len(words) <= MAX_WORDS + 5  # hyphenated words count once here
        assert s.text[0].isupper() and s.text[-1] in ".!?"
        assert not any(c.isdigit() for c in s.text)
    assert sum(s.text.endswith("?") for s in sentences) > 20  # questions, not only statements
