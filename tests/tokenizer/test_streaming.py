"""Streaming decode: exact and chunk-size independent with full lookahead; bounded deviation otherwise."""

import pytest
import torch

import tokenizer.api as api
from tokenizer.streaming import split_lookahead


def stream(tok, codes, chunk, lookahead=None):
    dec = tok.stream_decoder(lookahead=lookahead)
    outs = [dec.push(codes[:, i : i + chunk]) for i in range(0, codes.shape[1], chunk)]
    outs.append(dec.flush())
    return torch.cat(outs), outs


@pytest.fixture(scope="module")
def codes(tok, signal):
    return tok.encode(signal(1.0), 24000)  # 26 frames


@pytest.mark.parametrize("chunk", [1, 3, 8, 26])
def test_full_lookahead_equals_offline(tok, codes, chunk):
    offline = tok.decode(codes, causal_norm=True)
    out, _ = stream(tok, codes, chunk)
    assert out.shape == offline.shape
    assert (out - offline).abs().max() < 1e-4


def test_output_is_incremental(tok, codes):
    dec = tok.stream_decoder()
    lat = dec.full_lookahead
    got = [dec.push(codes[:, i : i + 1]).numel() for i in range(codes.shape[1])]
    # nothing until the vocoder's right context is complete, then one frame's worth per pushed frame
    assert got[: lat - 1] == [0] * (lat - 1)
    assert all(n == tok.samples_per_frame for n in got[lat + 1 :])
    assert sum(got) + dec.flush().numel() == codes.shape[1] * tok.samples_per_frame


@pytest.mark.parametrize("lookahead", [0, 2])
def test_smaller_lookahead_is_chunk_independent_and_close(tok, codes, lookahead):
    offline = tok.decode(codes, causal_norm=True)
    a, outs = stream(tok, codes, 1, lookahead)
    b, _ = stream(tok, codes, 7, lookahead)  # 7 does not divide 26: uneven last chunk
    assert torch.allclose(a, b, atol=1e-5)
    assert a.shape == offline.shape
    err = (a - offline).abs().max()
    assert 0 < err < 2 * offline.abs().max()
    # audio starts after at most `lookahead` frames (+ the iSTFT overlap)
    first = next(i for i, o in enumerate(outs) if o.numel())
    assert first <= lookahead + 1


def test_segments_reset_like_offline(tok, codes, monkeypatch):
    monkeypatch.setattr(api, "DECODE_SEGMENT_FRAMES", 11)
    offline = tok.decode(codes, causal_norm=True)
    out, _ = stream(tok, codes, 5)
    assert (out - offline).abs().max() < 1e-4


def test_causal_norm_only_changes_the_normalisation(tok, codes):
    official = tok.decode(codes)
    causal = tok.decode(codes, causal_norm=True)
    assert official.shape == causal.shape and not torch.allclose(official, causal)


def test_stream_errors_and_reuse(tok, codes):
    dec = tok.stream_decoder()
    with pytest.raises(ValueError, match="n_q"):
        dec.push(codes[:, :3].reshape(-1))
    dec.push(codes[:, :4])
    with pytest.raises(ValueError, match="started with 8 codebooks"):
        dec.push(codes[:4, 4:8])
    assert dec.push(codes[:, 4:4]).numel() == 0
    dec.flush()
    # a flushed decoder starts a new stream from scratch
    again = torch.cat([dec.push(codes[:, :9]), dec.push(codes[:, 9:]), dec.flush()])
    fresh, _ = stream(tok, codes, 9)
    assert again.shape == fresh.shape and (again - fresh).abs().max() < 1e-5
    with pytest.raises(ValueError, match="lookahead"):
        tok.stream_decoder(lookahead=-1)


def test_split_lookahead():
    assert split_lookahead(160, 16, 10) == [10] * 16
    assert split_lookahead(8, 16, 10) == [1] * 8 + [0] * 8
    assert sum(split_lookahead(37, 16, 10)) == 37


@pytest.mark.parametrize("lookahead", [0, 2, 4, None])
def test_frames_to_first_audio_is_exact(tok, codes, lookahead):
    dec = tok.stream_decoder(lookahead=lookahead)
    need = dec.frames_to_first_audio()
    assert need >= 1
    got = [dec.push(codes[:, i : i + 1]).numel() for i in range(need)]
    # silent until exactly the announced frame, which brings audio; then nothing more to wait for
    assert got[:-1] == [0] * (need - 1) and got[-1] > 0
    assert dec.frames_to_first_audio() == 0
    # one push of all but the last of them: still silent, one frame to go
    held = tok.stream_decoder(lookahead=lookahead)
    assert held.push(codes[:, : need - 1]).numel() == 0 and held.frames_to_first_audio() == 1
