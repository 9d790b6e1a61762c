"""A fixed offline English text for calibration, perplexity, healing and drafting.

Source: the reStructuredText sources of the Python 3.11 documentation, from Debian's
``python3.11-doc`` package (``apt-get install python3.11-doc``). It is long, continuous, varied
English prose that every machine here can install; markup, code blocks and tables are stripped.
The split is by document so that held-out text is never seen by a calibration or training step:
``train`` = tutorial, howto, faq, library reference; ``test`` = the "What's New" documents.
"""

from __future__ import annotations

import re
from functools import lru_cache
from pathlib import Path

DOC_ROOTS = [Path("/usr/share/doc/python3.11/html/_sources"), Path("/usr/share/doc/python3-doc/html/_sources")]
SPLITS = {"train": ("tutorial", "howto", "faq", "library"), "test": ("whatsnew",)}

_ROLE = re.compile(r":[a-z:]+:`~?([^`<]*?)(?:\s*<[^>]*>)?`")
_LITERAL = re.compile(r"``([^`]*)``|`([^`]*)`_*")


def _doc_root() -> Path:
    for root in DOC_ROOTS:
        if root.is_dir():
            return root
    raise FileNotFoundError(
        "the offline English text needs Debian's python3.11-doc package: apt-get install python3.11-doc"
    )


def _prose(rst: str) -> list[str]:
    """Paragraphs of plain prose from one reST document."""
    paragraphs, current, skip_indent = [], [], None
    for line in rst.splitlines():
        stripped = line.strip()
        indent = len(line) - len(line.lstrip())
        if skip_indent is not None:
            if stripped and indent <= skip_indent:
                skip_indent = None
            else:
                continue
        if not stripped or re.fullmatch(r"[=\-~^*#+`'\".:_]{3,}", stripped):
            if current:
                paragraphs.append(" ".join(current))
                current = []
            continue
        if stripped.startswith((".. ", ">>>", "...", "|", "+-", "$ ")) or indent >= 3 and not current:
            # directives, interpreter sessions, tables and literal blocks are not prose
            skip_indent = indent if stripped.startswith(".. ") else None
            continue
        text = _ROLE.sub(r"\1", stripped)
        text = _LITERAL.sub(lambda m: m.group(1) or m.group(2), text)
        current.append(text.rstrip(":") + (":" if text.endswith("::") else ""))
        if stripped.endswith("::"):
            paragraphs.append(" ".join(current))
            current, skip_indent = [], indent
    if current:
        paragraphs.append(" ".join(current))
    # keep sentences, not headings or fragments
    return [p for p in paragraphs if len(p) > 80 and p.count(" ") > 12]


@lru_cache(maxsize=4)
def offline_english_text(split: str = "train") -> str:
    """The cleaned text of one split (``train`` or ``test``), paragraphs separated by blank lines."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; expected one of {sorted(SPLITS)}")
    root = _doc_root()
    paragraphs: list[str] = []
    for sub in SPLITS[split]:
        for path in sorted((root / sub).rglob("*.rst.txt")):
            paragraphs.extend(_prose(path.read_text(encoding="utf-8", errors="replace")))
    return "\n\n".join(paragraphs)
