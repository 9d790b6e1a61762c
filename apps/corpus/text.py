"""Speakable English sentences from offline sources.

Sources (read at generation time from installed Debian packages; no text is committed):

- ``fortunes`` / ``fortunes-min`` (``/usr/share/games/fortunes``): quotations, proverbs, jokes and
  literature excerpts. Conversational, varied in length, mood and sentence type (questions,
  exclamations), which technical prose lacks. Only the files in :data:`FORTUNE_FILES` are used:
  the dropped ones are ASCII art, IRC logs, code, or deliberately nonsensical.
- ``python3.11-doc`` via :func:`eval.textdata.offline_english_text`: long, grammatical
  expository prose that every machine here can install (the project already depends on it).

Every sentence is cleaned into the exact string the TTS engines read (numbers spelled out, quotes
and dashes dropped) and kept only if it is 4-25 words, starts with a capital, ends with ``.?!``,
has no symbols or code-like tokens, and every word is in the CMU pronouncing dictionary that
pocketsphinx ships, so that both the engines and the ASR scorer know how to say it.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from eval.scorers.text_norm import spell_numbers

log = logging.getLogger(__name__)

FORTUNE_DIRS = (Path("/usr/share/games/fortunes"), Path("/usr/share/fortune"))
FORTUNE_FILES = (
    "fortunes", "literature", "riddles", "art", "computers", "cookie", "definitions", "education",
    "food", "humorists", "kids", "law", "love", "magic", "medicine", "miscellaneous", "news",
    "paradoxum", "people", "pets", "platitudes", "pratchett", "science", "songs-poems", "sports",
    "startrek", "tao", "wisdom", "work",
)
MIN_WORDS, MAX_WORDS = 4, 25

_ABBREVIATIONS = ("Mr.", "Mrs.", "Ms.", "Dr.", "St.", "Jr.", "Sr.", "vs.", "etc.", "e.g.", "i.e.", "Prof.", "Mt.")
_SENTENCE_END = re.compile(r"(?:(?<=[.!?])|(?<=[.!?][\"')\]]))\s+(?=[\"'(\[]*[A-Z])")
_BAD_CHARS = re.compile(r"[^A-Za-z0-9 ,.;:!?'\-]")
_WORD = re.compile(r"[A-Za-z']+")


@dataclass(frozen=True)
class Sentence:
    """One corpus sentence: the exact text to speak, its source, and a stable id."""

    text: str
    source: str  # "fortunes" or "python-docs"

    @property
    def key(self) -> str:
        return re.sub(r"[^a-z ]", "", self.text.lower())


def _fortune_root() -> Path | None:
    for root in FORTUNE_DIRS:
        if (root / "fortunes").is_file():
            return root
    return None


def fortune_paragraphs() -> list[str]:
    """Fortune entries (quotes without their attribution lines), or [] if the package is missing."""
    root = _fortune_root()
    if root is None:
        return []
    entries: list[str] = []
    for name in FORTUNE_FILES:
        path = root / name
        if not path.is_file():
            continue
        for entry in path.read_text(encoding="utf-8", errors="replace").split("\n%\n"):
            lines = [ln.strip() for ln in entry.splitlines()]
            lines = [ln for ln in lines if ln and not ln.startswith(("--", "- "))]
            text = " ".join(lines)
            text = re.sub(r"\b[QA]:\s*", "", text)  # riddles: "Q: ... A: ..."
            if text:
                entries.append(text)
    return entries


def python_doc_paragraphs() -> list[str]:
    """Prose paragraphs of the Python 3.11 documentation, or [] if python3.11-doc is missing."""
    from eval.textdata import offline_english_text

    paragraphs: list[str] = []
    for split in ("train", "test"):
        try:
            paragraphs.extend(offline_english_text(split).split("\n\n"))
        except FileNotFoundError:
            return []
    return paragraphs


def split_sentences(paragraph: str) -> list[str]:
    """Split a paragraph at sentence ends, not at common abbreviations."""
    protected = paragraph
    for i, abbr in enumerate(_ABBREVIATIONS):
        protected = protected.replace(abbr, f"\x00{i}\x00")
    parts = _SENTENCE_END.split(protected)
    out = []
    for part in parts:
        for i, abbr in enumerate(_ABBREVIATIONS):
            part = part.replace(f"\x00{i}\x00", abbr)
        out.append(part.strip())
    return [p for p in out if p]


@lru_cache(maxsize=1)
def cmu_vocabulary() -> frozenset[str]:
    """The words of the CMU pronouncing dictionary that the pocketsphinx wheel ships."""
    try:
        import pocketsphinx
    except ImportError as exc:
        raise ImportError(
            "the corpus text filter needs the CMU dictionary from the 'pocketsphinx' package: "
            "pip install 'mimo-audio[eval]' (or: pip install pocketsphinx)"
        ) from exc
    path = Path(pocketsphinx.get_model_path()) / "en-us" / "cmudict-en-us.dict"
    words = set()
    with open(path, encoding="utf-8", errors="replace") as f:
        for line in f:
            word = line.split(" ", 1)[0]
            words.add(word.split("(", 1)[0])
    return frozenset(words)


def clean_sentence(raw: str, vocabulary: frozenset[str]) -> str | None:
    """The speakable form of one sentence, or None when it should be skipped."""
    text = raw.replace("\u2019", "'").replace("\u2018", "'").replace("\u201c", '"').replace("\u201d", '"')
    text = text.replace("``", '"').replace("''", '"')
    text = re.sub(r"\s+", " ", text).strip()
    text = text.replace('"', "").replace(" -- ", ", ").replace("--", ", ")
    text = re.sub(r"^[\s'.,;:-]+", "", text)
    if _BAD_CHARS.search(text) or re.search(r"\w\.\w|\w'\s|\s'\w|'$|^'", text):
        return None  # symbols, dotted names, quoting apostrophes
    if re.search(r"\d", text):
        if re.search(r"\d[.,:]\d(?!\d{2}\b)|\d(?!(?:st|nd|rd|th)\b)[A-Za-z]|[A-Za-z]\d", text.replace(",000", "000")):
            return None  # decimals, times, versions, mixed tokens (ordinals are handled below)
        text = spell_numbers(text)
        if re.search(r"\d", text):
            return None
    text = re.sub(r"([!?])[!?]+", r"\1", text)
    text = re.sub(r"\s+([,.;:!?])", r"\1", text)
    text = re.sub(r"([,;:])(?=[,.;:!?])", "", text)
    text = re.sub(r"\s+", " ", text).strip()
    if not text or not text[0].isupper() or text[-1] not in ".!?" or "..." in text:
        return None
    words = _WORD.findall(text)
    if not MIN_WORDS <= len(words) <= MAX_WORDS:
        return None
    for w in words:
        if len(w) > 1 and w.isupper() and w != "I'M":
            return None  # acronyms: engines spell them, speakers do not
        if re.search(r"[a-z][A-Z]", w):
            return None  # camelCase identifiers
        if w.strip("'").lower() not in vocabulary:
            return None
    return text


@lru_cache(maxsize=1)
def load_sentences() -> tuple[Sentence, ...]:
    """All usable sentences from the installed sources, deduplicated, in a fixed source order."""
    vocabulary = cmu_vocabulary()
    sources = (("fortunes", fortune_paragraphs()), ("python-docs", python_doc_paragraphs()))
    seen: set[str] = set()
    sentences: list[Sentence] = []
    for name, paragraphs in sources:
        if not paragraphs:
            log.warning("text source %s is not installed; skipping it", name)
        kept = 0
        for paragraph in paragraphs:
            for raw in split_sentences(paragraph):
                text = clean_sentence(raw, vocabulary)
                if text is None:
                    continue
                sentence = Sentence(text=text, source=name)
                if sentence.key in seen:
                    continue
                seen.add(sentence.key)
                sentences.append(sentence)
                kept += 1
        log.info("text source %s: %d sentences", name, kept)
    if not sentences:
        raise FileNotFoundError(
            "no corpus text source is installed: apt-get install fortunes-min (or fortunes) python3.11-doc"
        )
    return tuple(sentences)
