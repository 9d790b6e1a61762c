"""The byte-level text vocabulary the small speech LMs ship: 256 byte symbols plus every MiMo-Audio special.

No merges, so every UTF-8 byte is one token: any text round-trips, and the vocabulary is tiny enough for the
embedded default model (the official 7B model brings its own Qwen2 tokenizer instead).
"""

from __future__ import annotations

from pathlib import Path

from transformers import PreTrainedTokenizerFast

from .text_tokenizer import SPECIAL_TOKEN_STRINGS

EOS = "<|endoftext|>"
EXTRA_SPECIALS = ("<|Human|>", "<|SpeechLM|>")


def make_byte_text_tokenizer(path: str | Path) -> PreTrainedTokenizerFast:
    """Build the byte-level tokenizer (with the MiMo-Audio specials), save it in ``path`` and return it."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    alphabet = pre_tokenizers.ByteLevel.alphabet()
    vocab = {ch: i for i, ch in enumerate(sorted(alphabet))}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens([EOS, *SPECIAL_TOKEN_STRINGS.values(), *EXTRA_SPECIALS])
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token=EOS, pad_token=EOS, clean_up_tokenization_spaces=False
    )
    fast.save_pretrained(str(path))
    return fast
