"""Encoder/decoder behaviour on the tiny random model: lengths, batching, segmenting, dtypes, attention, RVQ."""

import numpy as np
import pytest
import torch

import tokenizer.api as api
from tokenizer.modules import transformer
from tokenizer.modules.rvq import EuclideanCodebook
from tokenizer.modules.transformer import local_attention


@pytest.mark.parametrize("seconds", [0.03, 0.5, 1.0, 2.37])
def test_encode_decode_lengths(tok, signal, seconds):
    x = signal(seconds)
    codes = tok.encode(x, 24000)
    assert codes.dtype == torch.long and codes.shape == (8, tok.config.code_frames(len(x)))
    assert codes.shape[1] == tok.code_frames(len(x))
    wav = tok.decode(codes)
    assert wav.dtype == torch.float32 and wav.shape == (codes.shape[1] * tok.samples_per_frame,)
    assert torch.isfinite(wav).all()


def test_properties(tok):
    assert (tok.sample_rate, tok.frame_rate, tok.samples_per_frame) == (24000, 25, 960)
    assert tok.config.d_model == 32


def test_n_q_selects_leading_codebooks(tok, signal):
    x = signal(0.6)
    full = tok.encode(x, 24000, n_q=tok.num_quantizers)
    assert full.shape[0] == 10
    assert torch.equal(tok.encode(x, 24000, n_q=3), full[:3])
    for i, size in enumerate(tok.config.codebook_size):
        assert int(full[i].max()) < size
    with pytest.raises(ValueError, match="n_q"):
        tok.encode(x, 24000, n_q=11)


def test_input_rate_and_layout_are_handled(tok, signal):
    x = signal(1.0, sr=16000)
    a = tok.encode(x, 16000)
    assert a.shape[1] == tok.code_frames(24000)
    pcm = (x * 32767).astype(np.int16)
    assert torch.equal(tok.encode(np.stack([pcm, pcm]), 16000), tok.encode(pcm, 16000))
    assert torch.equal(tok.encode(torch.from_numpy(pcm)[:, None], 16000), tok.encode(pcm, 16000))


def test_batch_equals_single(tok, signal):
    clips = [signal(1.3, seed=1), signal(0.41, seed=2), signal(2.02, seed=3)[:48100], signal(0.04, seed=4)]
    batch = tok.encode_batch(clips, 24000)
    for clip, codes in zip(clips, batch):
        assert torch.equal(codes, tok.encode(clip, 24000))


def test_long_audio_is_encoded_in_independent_segments(tok, signal, monkeypatch):
    monkeypatch.setattr(api, "ENCODE_SEGMENT_MEL_FRAMES", 101)  # 1 s segments instead of 60 s
    x = signal(3.5)
    codes = tok.encode(x, 24000)
    mel = tok.mel(x, 24000)
    parts = [tok.model.encode([seg], 8)[0] for seg in mel.split(101, dim=1)]
    assert torch.equal(codes, torch.cat(parts, dim=1))
    assert codes.shape[1] == tok.code_frames(len(x)) == 3 * 26 + tok.config.code_frames_from_mel(350 - 303 + 1)


def test_long_codes_are_decoded_in_independent_segments(tok, signal, monkeypatch):
    codes = tok.encode(signal(1.2), 24000)
    whole = tok.decode(codes)
    monkeypatch.setattr(api, "DECODE_SEGMENT_FRAMES", 10)
    parts = torch.cat([tok.model.decode(c) for c in codes.split(10, dim=1)])
    assert torch.allclose(tok.decode(codes), parts, atol=1e-6)
    assert not torch.allclose(whole, parts, atol=1e-4)


def test_silence_gives_valid_deterministic_codes(tok):
    a = tok.encode(np.zeros(24000, np.float32), 24000)
    b = tok.encode(np.zeros(12000, np.int16), 12000)
    assert a.shape == (8, 26) and torch.equal(a, b)
    # the log-mel floor is constant in time, so every frame away from the edges gets the same codes
    assert (a[:, 2:-2] == a[:, 2:3]).all()
    assert torch.isfinite(tok.decode(a)).all()


@pytest.mark.parametrize("bad, message", [(np.zeros(1, np.float32), "too short"), (np.zeros(0), "empty")])
def test_too_short_input(tok, bad, message):
    with pytest.raises(ValueError, match=message):
        tok.encode(bad, 24000)


@pytest.mark.parametrize(
    "codes, message",
    [
        (torch.zeros(8, dtype=torch.long), "2-D"),
        (torch.zeros(8, 3), "integers"),
        (torch.zeros(11, 3, dtype=torch.long), "codebooks"),
        (torch.full((3, 4), 128, dtype=torch.long), "codebook 2"),
        (torch.full((1, 4), -1, dtype=torch.long), "codebook 0"),
        (torch.zeros(8, 0, dtype=torch.long), "0 frames"),
    ],
)
def test_bad_codes_are_named(tok, codes, message):
    with pytest.raises(ValueError, match=message):
        tok.decode(codes)


def test_bf16_runs_and_stays_close(signal):
    from tokenizer import AudioTokenizer, TokenizerConfig

    cfg = TokenizerConfig.preset("tiny")
    fp32 = AudioTokenizer.from_config(cfg, seed=0)
    bf16 = AudioTokenizer.from_config(cfg, seed=0, dtype="bf16")
    assert bf16.model.encoder.layers[0].fc1.weight.dtype == torch.bfloat16
    assert bf16.model.quantizer.codebook(0).embed.dtype == torch.float32  # RVQ stays fp32
    x = signal(1.0)
    c32, c16 = fp32.encode(x, 24000), bf16.encode(x, 24000)
    assert c16.shape == c32.shape and (c16[0] == c32[0]).float().mean() > 0.5
    w32, w16 = fp32.decode(c32), bf16.decode(c32)
    assert w16.dtype == torch.float32 and torch.isfinite(w16).all()
    assert (w16 - w32).abs().max() < 0.1 * w32.abs().max() + 1e-3
    with pytest.raises(ValueError, match="dtype"):
        AudioTokenizer.from_config(cfg, dtype="int8")


def dense_reference(q, k, v, left, right, q_start=0):
    scores = torch.einsum("htd,hsd->hts", q, k) / q.shape[-1] ** 0.5
    qi = torch.arange(q.shape[1])[:, None] + q_start
    kj = torch.arange(k.shape[1])[None, :]
    allowed = torch.ones(q.shape[1], k.shape[1], dtype=torch.bool)
    if left >= 0:
        allowed &= kj >= qi - left
    if right >= 0:
        allowed &= kj <= qi + right
    scores = scores.masked_fill(~allowed, float("-inf"))
    return torch.einsum("hts,hsd->htd", scores.softmax(-1), v)


@pytest.mark.parametrize("left, right", [(-1, -1), (-1, 0), (40, 10), (3, 0), (5, -1), (0, 0), (7, 2)])
def test_windowed_attention_matches_dense_masks(left, right, monkeypatch):
    monkeypatch.setattr(transformer, "ATTN_BLOCK", 16)  # exercise the blockwise path
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 53, 8, generator=g) for _ in range(3))
    ours = local_attention(q, k, v, left, right)
    assert torch.allclose(ours, dense_reference(q, k, v, left, right), atol=1e-5)
    # a chunk of queries against a cache of keys (the streaming case)
    part = local_attention(q[:, 30:], k, v, left, right, q_start=30)
    assert torch.allclose(part, dense_reference(q[:, 30:], k, v, left, right, q_start=30), atol=1e-5)


def test_rvq_nearest_codeword_ties_go_to_lowest_index():
    book = EuclideanCodebook(dim=2, size=4)
    book.embed.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0], [0.0, 1.0]]))
    x = torch.tensor([[0.9, 0.1], [0.1, 0.9], [0.5, 0.5], [3.0, 0.0]])
    assert book.encode(x).tolist() == [0, 1, 0, 0]


def test_rvq_encode_is_greedy_nearest_and_decode_sums(tok):
    q = tok.model.quantizer
    x = torch.randn(50, tok.config.d_model, generator=torch.Generator().manual_seed(1))
    codes = q.encode(x, 10)
    residual = x.clone()
    for i in range(10):
        embed = q.codebook(i).embed
        assert torch.equal(codes[i], torch.cdist(residual, embed).argmin(1))
        residual = residual - embed[codes[i]]
    manual = sum(q.codebook(i).embed[codes[i]] for i in range(10))
    assert torch.allclose(q.decode(codes), manual, atol=1e-6)
    assert torch.allclose(x - q.decode(codes), residual, atol=1e-5)


def test_bf16_keeps_exact_fp32_codebooks():
    from tokenizer import AudioTokenizer, TokenizerConfig

    cfg = TokenizerConfig.preset("tiny")
    a = AudioTokenizer.from_config(cfg, seed=0)
    b = AudioTokenizer.from_config(cfg, seed=0, dtype="bf16")
    assert torch.equal(a.model.quantizer.codebook(2).embed, b.model.quantizer.codebook(2).embed)
    assert torch.equal(a.model.decoder.vocoder.head.istft.window, b.model.decoder.vocoder.head.istft.window)


def test_bf16_prepacked_linears_are_bit_identical(signal):
    from tokenizer import AudioTokenizer, TokenizerConfig
    from tokenizer.modules.prepack import prepack_linears

    tok = AudioTokenizer.from_config(TokenizerConfig.preset("tiny"), seed=0, dtype="bf16")
    x = signal(0.8)
    codes, wav = tok.encode(x, 24000), tok.decode(torch.zeros(8, 6, dtype=torch.long))
    prepack_linears(tok.model, enable=False)
    assert not any("forward" in m.__dict__ for m in tok.model.modules())
    assert torch.equal(tok.encode(x, 24000), codes)
    assert torch.equal(tok.decode(torch.zeros(8, 6, dtype=torch.long)), wav)


def test_pack_weights_keeps_outputs_and_frees_the_plain_copies(signal, tmp_path):
    from tokenizer import AudioTokenizer, TokenizerConfig
    from tokenizer.modules.prepack import _available

    if not _available():
        pytest.skip("oneDNN bf16 pre-packing is not available on this CPU")
    cfg = TokenizerConfig.preset("tiny")
    plain = AudioTokenizer.from_config(cfg, seed=0, dtype="bf16")
    packed = AudioTokenizer.from_config(cfg, seed=0, dtype="bf16")
    n = packed.pack_weights()
    linears = [m for m in packed.model.modules() if isinstance(m, torch.nn.Linear)]
    assert n == len(linears) and all(m.weight.is_meta for m in linears)
    x = signal(0.8)
    codes = plain.encode(x, 24000)
    assert torch.equal(packed.encode(x, 24000), codes)
    assert torch.equal(packed.decode(codes), plain.decode(codes))
    a, b = plain.stream_decoder(2), packed.stream_decoder(2)
    assert torch.equal(torch.cat([a.push(codes), a.flush()]), torch.cat([b.push(codes), b.flush()]))
    assert packed.pack_weights() == n  # idempotent
    with pytest.raises(ValueError, match="cannot be saved"):
        packed.save_pretrained(tmp_path / "t")
    assert not (tmp_path / "t").exists()
    assert AudioTokenizer.from_config(cfg, seed=0).pack_weights() == 0  # fp32: nothing to pack
