"""A pinned English text normaliser for WER, and number spelling shared with the corpus generator.

WER numbers are only comparable when both sides go through the same normaliser, so this one is
versioned (:data:`NORMALIZER_VERSION`) and has no third-party dependency whose behaviour could
drift. It lowercases, spells out integers ("42" -> "forty two"), expands "%" and "&", folds a few
spelling variants, drops punctuation except word-internal apostrophes, and splits hyphenated words,
which matches what pocketsphinx emits (lowercase words from the CMU dictionary, no punctuation).
"""

from __future__ import annotations

import re
import unicodedata

NORMALIZER_VERSION = "mimo-en-1"

_ONES = (
    "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen "
    "sixteen seventeen eighteen nineteen"
).split()
_TENS = "_ _ twenty thirty forty fifty sixty seventy eighty ninety".split()
_SCALES = ((10**9, "billion"), (10**6, "million"), (1000, "thousand"), (100, "hundred"))
_ORDINAL_IRREGULAR = {
    "one": "first", "two": "second", "three": "third", "five": "fifth", "eight": "eighth",
    "nine": "ninth", "twelve": "twelfth",
}


def number_to_words(n: int) -> str:
    """Spell a non-negative integer below 10**12 in English words ("1905" -> "one thousand nine hundred five")."""
    if n < 0:
        return "minus " + number_to_words(-n)
    if n >= 10**12:
        raise ValueError(f"number too large to spell: {n}")
    if n < 20:
        return _ONES[n]
    if n < 100:
        tens, ones = divmod(n, 10)
        return _TENS[tens] + ("" if ones == 0 else " " + _ONES[ones])
    for value, name in _SCALES:
        if n >= value:
            head, rest = divmod(n, value)
            return number_to_words(head) + " " + name + ("" if rest == 0 else " " + number_to_words(rest))
    raise AssertionError("unreachable")


def year_to_words(n: int) -> str:
    """Spell a year the way it is spoken ("1905" -> "nineteen oh five", "2000" -> "two thousand")."""
    if 1100 <= n <= 1999 or 2100 <= n <= 2999:
        head, tail = divmod(n, 100)
        if tail == 0:
            return number_to_words(head) + " hundred"
        return number_to_words(head) + " " + ("oh " + _ONES[tail] if tail < 10 else number_to_words(tail))
    return number_to_words(n)


def ordinal_to_words(n: int) -> str:
    """Spell an ordinal ("21" -> "twenty first")."""
    words = number_to_words(n).split()
    last = words[-1]
    if last in _ORDINAL_IRREGULAR:
        words[-1] = _ORDINAL_IRREGULAR[last]
    elif last.endswith("y"):
        words[-1] = last[:-1] + "ieth"
    else:
        words[-1] = last + "th"
    return " ".join(words)


_ORDINAL = re.compile(r"\b(\d+)(st|nd|rd|th)\b", re.IGNORECASE)
_INTEGER = re.compile(r"\b\d{1,3}(?:,\d{3})+\b|\b\d+\b")
_SPELLING = {  # British -> American for words the corpus sources use; both sides are folded
    "colour": "color", "colours": "colors", "honour": "honor", "favour": "favor", "behaviour": "behavior",
    "neighbour": "neighbor", "labour": "labor", "centre": "center", "theatre": "theater", "grey": "gray",
    "realise": "realize", "organise": "organize", "recognise": "recognize", "ok": "okay",
}


def spell_numbers(text: str) -> str:
    """Replace ordinals and integers by words; 4-digit numbers from 1100 to 2999 are read as years."""
    text = _ORDINAL.sub(lambda m: ordinal_to_words(int(m.group(1))), text)

    def integer(m: re.Match) -> str:
        digits = m.group(0)
        n = int(digits.replace(",", ""))
        if n >= 10**12:
            return digits  # left as digits: too long to be read as one number
        if "," not in digits and len(digits) == 4 and (1100 <= n <= 1999 or 2100 <= n <= 2999):
            return year_to_words(n)
        return number_to_words(n)

    return _INTEGER.sub(integer, text)


def normalize_text(text: str) -> str:
    """Normalise one transcript for WER: lowercase words separated by single spaces."""
    text = unicodedata.normalize("NFKD", text)
    text = "".join(c for c in text if not unicodedata.combining(c))
    text = text.replace("\u2019", "'").replace("\u2018", "'")
    text = text.replace("%", " percent ").replace("&", " and ")
    text = spell_numbers(text).lower()
    text = re.sub(r"[\[(<{][^\])>}]*[\])>}]", " ", text)  # bracketed asides and noise tags
    text = re.sub(r"(?<![a-z])'|'(?![a-z])", " ", text)  # quotes, not apostrophes inside words
    text = re.sub(r"[^a-z0-9' ]+", " ", text)
    words = [_SPELLING.get(w, w) for w in text.split()]
    return " ".join(words)
