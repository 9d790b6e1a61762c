"""The attention interface against its eager references and closed forms."""

from __future__ import annotations

import math

import pytest
import torch

from efficient.attention.kernels import (
    attend,
    attend_blocks,
    attend_blocks_eager,
    attend_decode,
    attend_eager,
    block_max_eager,
    blocks_to_key_mask,
    gather_blocks,
    select_blocks,
)

torch.manual_seed(0)


def _qkv(b=2, hq=6, hkv=2, t=37, s=37, dk=16, dv=16, dtype=torch.float64):
    return (torch.randn(b, hq, t, dk, dtype=dtype), torch.randn(b, hkv, s, dk, dtype=dtype),
            torch.randn(b, hkv, s, dv, dtype=dtype))


@pytest.mark.parametrize("window", [None, 8])
@pytest.mark.parametrize("with_sink", [False, True])
@pytest.mark.parametrize("dv", [16, 24])
def test_attend_matches_eager(window, with_sink, dv):
    q, k, v = _qkv(dv=dv)
    pos = torch.arange(37)
    sink = torch.randn(6, dtype=torch.float64) if with_sink else None
    got = attend(q, k, v, pos, pos, window=window, sink=sink)
    ref, _ = attend_eager(q, k, v, pos, pos, window=window, sink=sink)
    torch.testing.assert_close(got.out, ref)


def test_decode_rows_and_out_of_order_keys():
    """Queries at the end of a longer history; keys stored out of order with empty slots (a ring buffer)."""
    q, k, v = _qkv(t=3, s=20)
    q_pos = torch.tensor([40, 41, 42])
    k_pos = torch.randperm(20) + 25
    k_pos[[3, 7]] = -1  # empty slots
    sink = torch.randn(6, dtype=torch.float64)
    got = attend(q, k, v, q_pos, k_pos, window=10, sink=sink).out
    ref = attend_eager(q, k, v, q_pos, k_pos, window=10, sink=sink)[0]
    torch.testing.assert_close(got, ref)


def test_sink_closed_form():
    """p_j = exp(a_j) / (exp(sink) + sum exp(a)) and o = sum p_j v_j; also o_sink = o * sigmoid(lse - sink)."""
    q = torch.randn(1, 1, 1, 4, dtype=torch.float64)
    k = torch.randn(1, 1, 5, 4, dtype=torch.float64)
    v = torch.randn(1, 1, 5, 3, dtype=torch.float64)
    pos_q, pos_k = torch.tensor([4]), torch.arange(5)
    sink = torch.tensor([0.7], dtype=torch.float64)
    a = (q[0, 0, 0] @ k[0, 0].T) / 2.0
    p = torch.exp(a) / (math.exp(0.7) + torch.exp(a).sum())
    expected = p @ v[0, 0]
    got = attend(q, k, v, pos_q, pos_k, sink=sink)
    torch.testing.assert_close(got.out[0, 0, 0], expected)
    plain = attend(q, k, v, pos_q, pos_k, sink=torch.tensor([-math.inf], dtype=torch.float64))
    torch.testing.assert_close(got.out, plain.out * torch.sigmoid(plain.lse - 0.7)[..., None])
    # a very negative sink is no sink; a very positive one silences the head
    torch.testing.assert_close(attend(q, k, v, pos_q, pos_k, sink=torch.tensor([-1e4], dtype=torch.float64)).out,
                               attend(q, k, v, pos_q, pos_k).out)
    assert attend(q, k, v, pos_q, pos_k, sink=torch.tensor([1e4], dtype=torch.float64)).out.abs().max() < 1e-12


@pytest.mark.parametrize("with_sink", [False, True])
def test_block_max_matches_eager(with_sink):
    q, k, v = _qkv(t=70, s=70)
    pos = torch.arange(70)
    sink = torch.randn(6, dtype=torch.float64) if with_sink else None
    got = attend(q, k, v, pos, pos, sink=sink, block_size=16)
    out, probs = attend_eager(q, k, v, pos, pos, sink=sink)
    torch.testing.assert_close(got.out, out)
    torch.testing.assert_close(got.block_max, block_max_eager(probs, 2, 16))
    assert got.block_max.shape == (2, 2, 70, 5)


def test_scores_only_mode_and_chunking_agree(monkeypatch):
    import efficient.attention.kernels as kernels

    q, k, v = _qkv(t=50, s=50)
    pos = torch.arange(50)
    whole = attend(q, k, None, pos, pos, block_size=8)
    assert whole.out is None
    monkeypatch.setattr(kernels, "_CHUNK_ELEMENTS", 2 * 6 * 50 * 7)  # 7-row chunks
    chunked = attend(q, k, v, pos, pos, block_size=8)
    torch.testing.assert_close(chunked.block_max, whole.block_max)
    torch.testing.assert_close(chunked.out, attend_eager(q, k, v, pos, pos)[0])


def test_topk_covering_all_blocks_equals_dense_over_full_kv():
    """The sparse branch with every block selected is dense causal attention over the full layer's KV."""
    q, k, v = _qkv(t=50, s=64, dv=24)
    q_pos = torch.arange(14, 64)
    blocks = select_blocks(torch.rand(2, 2, 50, 4), 16, q_pos, 16)
    assert blocks.shape[-1] == 4
    sink = torch.randn(6, dtype=torch.float64)
    got = attend_blocks(q, k, v, q_pos, 64, blocks, block_size=16, sink=sink, rows=9).out
    dense = attend_eager(q, k, v, q_pos, torch.arange(64), sink=sink)[0]
    torch.testing.assert_close(got, dense)


@pytest.mark.parametrize("exclude_window", [None, 10])
@pytest.mark.parametrize("t", [30, 1])
def test_block_reads_match_eager(exclude_window, t):
    q, k, v = _qkv(t=t, s=128)
    q_pos = torch.arange(100 - t, 100)
    n_valid = 100
    scores = torch.rand(2, 2, t, 8)
    blocks = select_blocks(scores, 3, q_pos, 16)
    sink = torch.randn(6, dtype=torch.float64)
    got = attend_blocks(q, k, v, q_pos, n_valid, blocks, block_size=16, sink=sink, exclude_window=exclude_window)
    ref = attend_blocks_eager(q, k, v, q_pos, n_valid, blocks, block_size=16, sink=sink, exclude_window=exclude_window)
    torch.testing.assert_close(got.out, ref)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("with_sink", [False, True])
def test_decode_fast_path_matches_eager(dtype, with_sink):
    """attend_decode (fused CPU kernel, or logits path with block scores) against the eager reference."""
    q, k, v = _qkv(t=1, s=128, dtype=dtype)
    n = 100  # a preallocated buffer: keys 100..127 are not written yet
    sink = torch.randn(6, dtype=dtype) if with_sink else None
    ref, probs = attend_eager(q, k[:, :, :n], v[:, :, :n], torch.tensor([n - 1]), torch.arange(n), sink=sink)
    scale = 16**-0.5
    fast = attend_decode(q, k[:, :, :n], v[:, :, :n], scale=scale, sink=sink)
    scored = attend_decode(q, k, v, scale=scale, sink=sink, n_valid=n, block_size=16)
    tol = {} if dtype == torch.float64 else dict(atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(fast.out, ref, **tol)
    torch.testing.assert_close(scored.out, ref, **tol)
    expected_bm = block_max_eager(torch.nn.functional.pad(probs, (0, 28)), 2, 16)
    torch.testing.assert_close(scored.block_max, expected_bm, **tol)
    # a bias that hides every key: the head attends to nothing (zeros), on both paths
    hide = torch.full((1, 1, 1, n), float("-inf"), dtype=dtype)
    assert attend_decode(q, k[:, :, :n], v[:, :, :n], scale=scale, sink=sink, bias=hide).out.abs().max() == 0
    hide_all = torch.nn.functional.pad(hide, (0, 28), value=float("-inf"))
    assert attend_decode(q, k, v, scale=scale, sink=sink, bias=hide_all, block_size=16).out.abs().max() == 0


@pytest.mark.parametrize("exclude_window", [None, 10])
def test_gathered_blocks_equal_the_eager_block_read(exclude_window):
    q, k, v = _qkv(t=1, s=128, dv=24)
    q_pos, n_valid = 99, 100
    blocks = select_blocks(torch.rand(2, 2, 1, 8), 3, torch.tensor([q_pos]), 16)
    sink = torch.randn(6, dtype=torch.float64)
    g = gather_blocks(k, v, blocks, q_pos, n_valid, block_size=16, exclude_window=exclude_window)
    for bi in range(2):  # every gathered slab is the block it names
        for h in range(2):
            for j, blk in enumerate(blocks[bi, h, 0].tolist()):
                assert torch.equal(g.keys[bi, h, j * 16 : (j + 1) * 16], k[bi, h, blk * 16 : (blk + 1) * 16])
    got = attend_decode(q, g.keys, g.values, scale=16**-0.5, sink=sink, bias=g.bias).out
    ref = attend_blocks_eager(q, k, v, torch.tensor([q_pos]), n_valid, blocks, block_size=16, sink=sink,
                              exclude_window=exclude_window)
    torch.testing.assert_close(got, ref)
    visible = (g.bias == 0).sum()
    expected = blocks_to_key_mask(blocks, n_valid, 16).sum() if exclude_window is None else visible
    assert visible == expected  # keys past n_valid (the tail of the last block) are hidden


def test_select_blocks_prefers_visible_and_skips_window():
    scores = torch.zeros(1, 1, 1, 6)
    scores[..., 5] = 1.0  # a future block with a high score must not win
    scores[..., 0] = 0.5
    idx = select_blocks(scores, 2, torch.tensor([40]), 16)
    assert idx.tolist() == [[[[0, 2]]]]
    idx = select_blocks(scores, 2, torch.tensor([95]), 16, skip_window=40)  # blocks 4 (64..79) and 5 in window
    assert 4 not in idx.flatten().tolist() and 5 not in idx.flatten().tolist()


def test_shape_errors_are_clear():
    q, k, v = _qkv()
    with pytest.raises(ValueError, match="head dims"):
        attend(q[..., :8], k, v, torch.arange(37), torch.arange(37))
    with pytest.raises(ValueError, match="multiple"):
        attend(q[:, :5], k, v, torch.arange(37), torch.arange(37))
