"""Ring buffers, rollback and memory accounting of the hybrid cache."""

from __future__ import annotations

import pytest
import torch

from efficient.attention import AttentionConfig, HybridAttentionCache, kv_cache_bytes
from efficient.attention.cache import FullKVLayer, RingKVLayer
from efficient.attention.kernels import attend, attend_eager


def _kv(t, h=2, d=4, start=0):
    # values encode their position so the ring's content is easy to check
    pos = torch.arange(start, start + t, dtype=torch.float32)
    k = pos.view(1, 1, t, 1).expand(1, h, t, d).clone()
    return k, -k


def test_ring_wraps_around_and_keeps_the_last_capacity_positions():
    ring = RingKVLayer(window=8, capacity=10)
    seen = 0
    for chunk in (3, 1, 1, 9, 1, 25, 1):  # prefill chunks longer than the ring, then single tokens
        k, v = _kv(chunk, start=seen)
        ring.write(k, v, torch.arange(seen, seen + chunk))
        seen += chunk
        keys, values, pos = ring.contents()
        held = sorted(p for p in pos.tolist() if p >= 0)
        assert held == list(range(max(0, seen - 10), seen))
        valid = pos >= 0
        assert torch.equal(keys[0, 0, valid, 0], pos[valid].float())
        assert torch.equal(values[0, 0, valid, 0], -pos[valid].float())
    assert ring.get_seq_length() == seen


def test_window_attention_over_ring_equals_attention_over_full_history():
    torch.manual_seed(0)
    window, cap, n = 8, 11, 40
    q = torch.randn(1, 4, n, 8, dtype=torch.float64)
    k = torch.randn(1, 2, n, 8, dtype=torch.float64)
    v = torch.randn(1, 2, n, 8, dtype=torch.float64)
    sink = torch.randn(4, dtype=torch.float64)
    pos = torch.arange(n)
    ref = attend_eager(q, k, v, pos, pos, window=window, sink=sink)[0]
    ring = RingKVLayer(window, cap)
    outs, t = [], 0
    for chunk in (13, 1, 1, 1, 20, 1, 1, 1, 1):
        p = pos[t : t + chunk]
        old = ring.contents()
        keys = k[:, :, t : t + chunk] if old is None else torch.cat([old[0], k[:, :, t : t + chunk]], 2)
        values = v[:, :, t : t + chunk] if old is None else torch.cat([old[1], v[:, :, t : t + chunk]], 2)
        k_pos = p if old is None else torch.cat([old[2], p])
        outs.append(attend(q[:, :, t : t + chunk], keys, values, p, k_pos, window=window, sink=sink).out)
        ring.write(k[:, :, t : t + chunk], v[:, :, t : t + chunk], p)
        t += chunk
    torch.testing.assert_close(torch.cat(outs, 2), ref)


def test_ring_crop_within_and_beyond_the_slack():
    ring = RingKVLayer(window=8, capacity=12)  # slack 4: up to 5 tokens of rollback
    k, v = _kv(30)
    ring.write(k, v, torch.arange(30))
    assert ring.max_rollback == 5
    ring.crop(25)
    assert ring.get_seq_length() == 25
    assert sorted(p for p in ring.positions.tolist() if p >= 0)[-1] == 24
    with pytest.raises(ValueError, match="max rollback"):
        ring.crop(10)


def test_full_layer_crop_and_growth_in_blocks():
    layer = FullKVLayer(block_size=16)
    k, v = _kv(20)
    layer.update(k, v, {"cache_position": torch.arange(20)})
    assert layer.capacity % 16 == 0 and layer.capacity >= 20
    layer.crop(5)
    assert layer.get_seq_length() == 5
    k, v = _kv(3, start=5)
    keys, _ = layer.update(k, v, {"cache_position": torch.arange(5, 8)})
    assert keys[0, 0, :, 0].tolist() == list(range(8))
    with pytest.raises(ValueError, match="position"):
        layer.update(k, v, {"cache_position": torch.arange(20, 23)})


@pytest.mark.parametrize("layout", ["FFFF", "FSRF", "FWWF"])
def test_memory_accounting_matches_formula_and_allocation(layout):
    cfg = AttentionConfig(layout=layout, window=16, block_size=8, rollback_slack=4)
    cache = HybridAttentionCache(cfg)
    b, h, dk, dv, n = 2, 3, 8, 6, 45
    for i, kind in enumerate(layout):
        k, v = torch.randn(b, h, n, dk), torch.randn(b, h, n, dv)
        if kind == "F":
            cache.layers[i].update(k, v, {"cache_position": torch.arange(n)})
        else:
            cache.layers[i].write(k, v, torch.arange(n))
    mem = cache.memory()
    assert mem.tokens == n
    assert mem.kv_bytes == kv_cache_bytes(cfg, n, h, dk, dv, batch=b, dtype_bytes=4)
    assert mem.bytes_per_token == layout.count("F") * b * h * (dk + dv) * 4
    # everything the cache holds, counted independently of memory()
    held = 0
    for layer in cache.layers:
        held += layer.keys.nbytes + layer.values.nbytes
        if isinstance(layer, RingKVLayer):
            held += layer.positions.nbytes
    assert mem.allocated_bytes == held
    full_capacity = [layer.capacity for layer in cache.layers if isinstance(layer, FullKVLayer)]
    assert all(c >= n for c in full_capacity)
    assert mem.allocated_bytes >= mem.kv_bytes


def test_kv_formula_reproduces_spec_numbers():
    # spec 1.6: HySparse2's table, 5 full layers x 4 KV heads x (192+128) x 2^20 tokens x 1 byte = 6.71 GB
    cfg = AttentionConfig(layout="F" + "S" * 11 + "F" + "S" * 11 + "F" + "S" * 11 + "F" + "S" * 11 + "F")
    full_part = kv_cache_bytes(AttentionConfig(layout="F" * 5), 2**20, 4, 192, 128, dtype_bytes=1)
    assert round(full_part / 1e9, 2) == 6.71
    assert kv_cache_bytes(cfg, 2**20, 4, 192, 128, dtype_bytes=1) > full_part
    # spec 2.4: 9 GA layers x 4 x 320 elements/token in BF16 = 22.5 KiB/token
    assert kv_cache_bytes(AttentionConfig(layout="F" * 9), 1, 4, 192, 128) == 22.5 * 1024
