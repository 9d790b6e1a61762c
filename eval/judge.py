"""An LLM judge through any OpenAI-compatible ``/v1/chat/completions`` endpoint (off unless configured)."""

from __future__ import annotations

import re

PROMPT = ("You grade answers. Question: {q}\nReference answer: {ref}\nCandidate answer: {ans}\n"
          "Is the candidate answer correct and consistent with the reference? Reply with a score from 0 to 10 "
          "on the first line as 'Score: N'.")


class Judge:
    def __init__(self, base_url: str, model: str = "gpt-4o-mini", api_key: str | None = None) -> None:
        import requests

        self.url = base_url.rstrip("/") + ("" if base_url.rstrip("/").endswith("/v1") else "/v1")
        self.model = model
        self.session = requests.Session()
        if api_key:
            self.session.headers["Authorization"] = f"Bearer {api_key}"

    def describe(self) -> str:
        return f"{self.model} at {self.url}"

    def score(self, question: str, reference: str, answer: str) -> float:
        """A score in [0, 1]; raises ValueError when the judge's reply holds no score."""
        body = {"model": self.model, "temperature": 0,
                "messages": [{"role": "user", "content": PROMPT.format(q=question, ref=reference, ans=answer)}]}
        r = self.session.post(f"{self.url}/chat/completions", json=body, timeout=120)
        if r.status_code != 200:
            raise RuntimeError(f"judge: HTTP {r.status_code}: {r.text[:200]}")
        text = r.json()["choices"][0]["message"].get("content") or ""
        m = re.search(r"score\s*[:=]?\s*(\d+(?:\.\d+)?)", text, re.IGNORECASE)
        if not m:
            raise ValueError(f"judge reply has no score: {text[:100]!r}")
        return min(max(float(m.group(1)) / 10.0, 0.0), 1.0)
