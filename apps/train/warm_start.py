"""Start a speech-LM run from a trained model, also when the text vocabulary changes.

Every tensor whose name and shape match is copied. The text embedding and text head of a new vocabulary are
built from the old ones: a token's row is the mean of the rows of the old tokens its text splits into (for a
byte-level source, its bytes), and a special token keeps its row. So a model moved from bytes to BPE keeps
what it knows of speech and of spelling, and only has to learn what the merged tokens add.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from mimo_audio.modeling import SpeechLM
from mimo_audio.text_tokenizer import load_text_tokenizer

log = logging.getLogger("mimo-audio.train")

_TEXT_ROWS = ("model.embed_tokens.weight", "lm_head.weight")


def _row_map(old_tok, new_tok) -> list[list[int]]:
    """For each new token id: the old ids whose mean initialises it."""
    old_vocab = old_tok.get_vocab()
    specials = set(new_tok.get_added_vocab())  # kept whole: their text must not be split into bytes
    id_to_token = {i: t for t, i in new_tok.get_vocab().items()}
    out: list[list[int]] = []
    for i in range(len(new_tok)):
        token = id_to_token.get(i)
        if token is None:
            out.append([])
        elif token in specials:
            out.append([old_vocab[token]] if token in old_vocab else [])
        else:
            out.append(old_tok.encode(new_tok.convert_tokens_to_string([token]), add_special_tokens=False))
    return out


@torch.no_grad()
def warm_start(model: SpeechLM, source: str | Path, text_tokenizer) -> dict:
    """Load ``source`` (a speech-LM folder) into ``model`` (whose vocabulary is ``text_tokenizer``'s).

    Returns counts: copied tensors, remapped text rows, rows left at their initialisation."""
    src = SpeechLM.from_pretrained(source, device=model.device)
    src_state, dst_state = src.state_dict(), model.state_dict()
    copied, skipped = 0, []
    for name, tensor in dst_state.items():
        if name in _TEXT_ROWS:
            continue
        if name in src_state and src_state[name].shape == tensor.shape:
            tensor.copy_(src_state[name].to(tensor.dtype))
            copied += 1
        else:
            skipped.append(name)
    rows = _row_map(load_text_tokenizer(source), text_tokenizer)
    remapped = fresh = 0
    for name in _TEXT_ROWS:
        old, new = src_state[name], dst_state[name]
        for i, ids in enumerate(rows[: new.shape[0]]):
            ids = [j for j in ids if j < old.shape[0]]
            if ids:
                new[i] = old[ids].float().mean(0).to(new.dtype)
                remapped += 1
            else:
                fresh += 1
    if skipped:
        log.warning("warm start from %s: %d tensors kept their initialisation (%s)", source, len(skipped),
                    ", ".join(skipped[:5]))
    log.info("warm start from %s: %d tensors copied, %d text rows remapped, %d new", source, copied, remapped, fresh)
    return {"copied": copied, "remapped_rows": remapped, "fresh_rows": fresh, "skipped": skipped}
