"""The text tokenizer of a speech-LM directory and its special tokens, looked up by string."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from transformers import AutoTokenizer, PreTrainedTokenizerBase

# Special-token strings of MiMo-Audio (role -> string). `eos` is whatever the tokenizer declares.
SPECIAL_TOKEN_STRINGS: dict[str, str] = {
    "im_start": "<|im_start|>",
    "im_end": "<|im_end|>",
    "sosp": "<|sosp|>",
    "eosp": "<|eosp|>",
    "empty": "<|empty|>",
    "think_start": "<think>",
    "think_end": "</think>",
    "sostm": "<|sostm|>",
    "eostm": "<|eostm|>",
    "eot": "<|eot|>",
}


@dataclass(frozen=True)
class SpecialTokens:
    """Ids of the special tokens the prompts and the generation loop need."""

    eos: int
    im_start: int
    im_end: int
    sosp: int
    eosp: int
    empty: int
    think_start: int
    think_end: int
    sostm: int
    eostm: int
    eot: int

    @classmethod
    def from_tokenizer(cls, tokenizer: PreTrainedTokenizerBase) -> SpecialTokens:
        vocab = tokenizer.get_vocab()
        ids: dict[str, int] = {}
        missing = []
        for role, string in SPECIAL_TOKEN_STRINGS.items():
            if string in vocab:
                ids[role] = vocab[string]
            else:
                missing.append(string)
        if tokenizer.eos_token is None or tokenizer.eos_token_id is None:
            missing.append("eos_token (tokenizer declares none)")
        if missing:
            raise ValueError(
                "the text tokenizer lacks MiMo-Audio special token(s): "
                + ", ".join(missing)
                + " (is this a MiMo-Audio checkpoint directory?)"
            )
        return cls(eos=int(tokenizer.eos_token_id), **ids)

    def by_string(self, string: str) -> int:
        """Id of a special token given as its string (``"<|eostm|>"``) or as ``"eos"``."""
        if string in ("eos", "<eos>"):
            return self.eos
        for role, s in SPECIAL_TOKEN_STRINGS.items():
            if s == string:
                return getattr(self, role)
        raise ValueError(f"unknown special token {string!r}; known: eos, {', '.join(SPECIAL_TOKEN_STRINGS.values())}")


def load_text_tokenizer(path: str | Path) -> PreTrainedTokenizerBase:
    """Load the text tokenizer stored next to the LM weights (local files only, never the hub)."""
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"speech-LM directory not found: {path}")
    if not any((path / n).is_file() for n in ("tokenizer.json", "tokenizer_config.json", "vocab.json")):
        raise FileNotFoundError(f"no text tokenizer files (tokenizer.json / tokenizer_config.json) in {path}")
    return AutoTokenizer.from_pretrained(str(path), local_files_only=True)
