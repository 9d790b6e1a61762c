"""Multiple-choice prompts and answer extraction (thinking blocks stripped first)."""

from __future__ import annotations

import re

LETTERS = "ABCDEFGHIJ"
_THINK = re.compile(r"<think>.*?</think>", re.DOTALL | re.IGNORECASE)


def format_question(question: str, choices: list[str]) -> str:
    opts = "\n".join(f"({LETTERS[i]}) {c}" for i, c in enumerate(choices))
    return f"{question}\n{opts}\nChoose the correct option from the {len(choices)} choices and answer with its letter."


def strip_thinking(text: str) -> str:
    """Drop ``<think>...</think>`` blocks, and everything before a lone ``</think>`` (an opened block)."""
    text = _THINK.sub(" ", text or "")
    if "</think>" in text.lower():
        text = text[text.lower().rfind("</think>") + len("</think>"):]
    return text.strip()


def _norm(s: str) -> str:
    return " ".join(re.sub(r"[^a-z0-9 ]+", " ", s.lower()).split())


def extract_choice(text: str, choices: list[str]) -> int | None:
    """Index of the chosen option, or None when the answer names none (or several) of them."""
    body = strip_thinking(text)
    if not body:
        return None
    n = len(choices)
    letters = LETTERS[:n]
    patterns = (
        rf"answer\s*(?:is|:)?\s*[:\-]?\s*\**\(?([{letters}])\)?\**(?![a-z])",
        rf"option\s*\(?([{letters}])\)?(?![a-z])",
        rf"\*\*\(?([{letters}])\)?\*\*",
        rf"^\s*\(?([{letters}])\)?(?:[.):\s]|$)",
        rf"\(([{letters}])\)",
    )
    for pat in patterns:
        m = re.search(pat, body, flags=re.IGNORECASE | re.MULTILINE)
        if m:
            return LETTERS.index(m.group(1).upper())
    # the choice text itself: exactly one option whose words all appear (longest match wins ties of nesting)
    nb = f" {_norm(body)} "
    hits = [i for i, c in enumerate(choices) if _norm(c) and f" {_norm(c)} " in nb]
    if len(hits) > 1:
        longest = max(hits, key=lambda i: len(_norm(choices[i])))
        hits = [longest] if all(_norm(choices[i]) in _norm(choices[longest]) for i in hits) else hits
    return hits[0] if len(hits) == 1 else None


def answer_index(answer: str, choices: list[str]) -> int | None:
    """The gold answer as an index: a letter (``B``, ``(B)``) or the choice text."""
    a = answer.strip()
    m = re.fullmatch(r"\(?([A-Ja-j])\)?\.?", a)
    if m and LETTERS.index(m.group(1).upper()) < len(choices):
        return LETTERS.index(m.group(1).upper())
    for i, c in enumerate(choices):
        if _norm(c) == _norm(a):
            return i
    return None
