"""Few-shot LM examples: the query pair is converted the way the example pair is."""

from __future__ import annotations

import numpy as np
import torch

from apps.train.lm_data import LMExamples
from mimo_audio.prompts import PromptRenderer
from mimo_audio.text_tokenizer import SpecialTokens
from mimo_audio.text_vocab import make_byte_text_tokenizer


def test_voice_conversion_query_has_the_example_output_voice(mini_corpus, tmp_path):
    tok = make_byte_text_tokenizer(tmp_path)
    special = SpecialTokens.from_tokenizer(tok)
    from apps.corpus import load_manifest

    rows = [r for r in load_manifest(mini_corpus) if r["split"] == "train"]
    codes = {r["id"]: torch.zeros(8, 8, dtype=torch.long) for r in rows}
    data = LMExamples(mini_corpus, "train", codes, PromptRenderer(tok, special, [1024] * 2 + [128] * 6))
    gen = np.random.default_rng(0)
    outputs = set()
    for _ in range(40):
        (ex_in, ex_out), (q_in, q_out) = data.fewshot_pairs(gen)
        assert ex_in["text_id"] == ex_out["text_id"] and q_in["text_id"] == q_out["text_id"]
        assert q_out["speaker_id"] == ex_out["speaker_id"] != q_in["speaker_id"]
        assert q_out["text_id"] != ex_out["text_id"]  # another sentence: the answer is not in the prompt
        outputs.add(ex_out["speaker_id"])
    assert outputs == {"flite-slt", "flite-kal"}
