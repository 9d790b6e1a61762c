"""Text vocabularies of the small speech LMs: byte-level (256 byte symbols) or byte-level BPE, plus every
MiMo-Audio special.

Both round-trip any text. The byte vocabulary has no merges (one token per UTF-8 byte); the BPE vocabulary is
trained on corpus text so that a token covers several characters, as the official Qwen2 vocabulary does
(the official 7B model brings its own tokenizer instead).
"""

from __future__ import annotations

from collections.abc import Iterable
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


def make_bpe_text_tokenizer(texts: Iterable[str], vocab_size: int, path: str | Path) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE vocabulary of ``vocab_size`` symbols (specials included) on ``texts``, with the
    MiMo-Audio specials, save it in ``path`` and return it.

    Byte-level like :func:`make_byte_text_tokenizer`, so any text still encodes (unseen words fall back to
    smaller pieces, down to single bytes); the merges make a token cover several characters, so a stream
    chunk of 5 tokens holds about as much text as the 0.8 s of speech it is interleaved with.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    specials = [EOS, *SPECIAL_TOKEN_STRINGS.values(), *EXTRA_SPECIALS]
    if vocab_size < 256 + len(specials):
        raise ValueError(f"a byte-level BPE vocabulary needs at least {256 + len(specials)} symbols, got {vocab_size}")
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(list(texts), trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token=EOS, pad_token=EOS, clean_up_tokenization_spaces=False
    )
    fast.save_pretrained(str(path))
    return fast
