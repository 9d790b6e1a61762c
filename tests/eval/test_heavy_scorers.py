"""Pluggable heavy scorers load from local folders: a tiny random WavLM speaker-verification model saved here."""

from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf


def test_wavlm_speaker_scorer_from_a_local_folder(tmp_path):
    transformers = pytest.importorskip("transformers")
    cfg = transformers.WavLMConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
                                   conv_dim=(8, 8), conv_stride=(5, 4), conv_kernel=(10, 8), num_conv_pos_embeddings=4,
                                   num_conv_pos_embedding_groups=2, tdnn_dim=(16, 16), tdnn_kernel=(3, 1),
                                   tdnn_dilation=(1, 1), xvector_output_dim=12)
    transformers.WavLMForXVector(cfg).save_pretrained(tmp_path / "wavlm", safe_serialization=True)
    transformers.Wav2Vec2FeatureExtractor(sampling_rate=16000).save_pretrained(tmp_path / "wavlm")
    from eval.heavy import make_speaker

    spk = make_speaker(f"wavlm:{tmp_path / 'wavlm'}")
    rng = np.random.default_rng(0)
    for name in ("a", "b"):
        sf.write(tmp_path / f"{name}.wav", (0.1 * rng.standard_normal(16000)).astype(np.float32), 16000)
    ea, eb = spk.embed(str(tmp_path / "a.wav")), spk.embed(str(tmp_path / "b.wav"))
    assert ea.shape == (12,) and abs(float(np.linalg.norm(ea)) - 1) < 1e-5
    assert float(ea @ ea) > float(ea @ eb) - 1e-6
    with pytest.raises(FileNotFoundError, match="not found"):
        make_speaker(f"wavlm:{tmp_path / 'missing'}")
    with pytest.raises(ValueError, match="unknown speaker scorer"):
        make_speaker("ecapa")
