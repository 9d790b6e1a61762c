"""Sparse-layer adapters (``sparse_adapter``): the joint-softmax merge, decode = prefill, the fit, save/load."""

from __future__ import annotations

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from efficient._hf import cache_kwargs
from efficient.attention import HybridAttentionCache, apply_attention, load_converted, save_converted
from efficient.attention.kernels import attend, attend_blocks, attend_window
from efficient.attention.reconstruct import fit_sparse_adapters, retrieval_sequences

SMALL = dict(vocab_size=97, hidden_size=32, intermediate_size=64, num_hidden_layers=6, num_attention_heads=4,
             num_key_value_heads=2, max_position_embeddings=1024)
ATTN = dict(window=16, block_size=8, top_k=3, rollback_slack=4)


def _model():
    torch.manual_seed(0)
    return LlamaForCausalLM(LlamaConfig(**SMALL)).eval()


def _ids(n=90, seed=1):
    return torch.randint(0, 97, (1, n), generator=torch.Generator().manual_seed(seed))


def test_joint_softmax_merge_of_the_branches_is_full_attention():
    """Window branch + every block beyond it, merged by their log-denominators, = attention over all keys."""
    torch.manual_seed(0)
    q, k, v = torch.randn(1, 4, 70, 8), torch.randn(1, 2, 70, 8), torch.randn(1, 2, 70, 8)
    pos = torch.arange(70)
    nb = 9  # 70 keys in blocks of 8
    blocks = torch.arange(nb).expand(1, 2, 70, nb)
    kp = torch.nn.functional.pad(k, (0, 0, 0, 2))
    vp = torch.nn.functional.pad(v, (0, 0, 0, 2))
    far = attend_blocks(q, kp, vp, pos, 70, blocks, block_size=8, exclude_window=16)
    near, lse_near = attend_window(q, None, k, v, pos, window=16, return_lse=True)
    share = torch.sigmoid(far.lse - lse_near).unsqueeze(-1)
    merged = share * far.out + (1 - share) * near
    torch.testing.assert_close(merged, attend(q, k, v, pos, pos).out, atol=1e-5, rtol=1e-5)


def test_adapter_decode_matches_prefill():
    model = apply_attention(_model(), "FSRSSF", inplace=False, sparse_adapter=True, **ATTN)
    torch.manual_seed(3)
    with torch.no_grad():
        for m in model.model.layers:
            if m.self_attn.kind in "SR":
                m.self_attn.q_sparse.weight.normal_(std=0.2)
                m.self_attn.v_sparse.add_(0.1 * torch.randn_like(m.self_attn.v_sparse))
        ids = _ids()
        ref = model(ids).logits
        cache = HybridAttentionCache.for_model(model)
        outs = [model(ids[:, :50], **cache_kwargs(model, cache)).logits]
        for t in range(50, ids.shape[1]):
            outs.append(model(ids[:, t : t + 1], **cache_kwargs(model, cache)).logits)
    torch.testing.assert_close(torch.cat(outs, 1), ref, atol=2e-4, rtol=2e-4)


def test_fit_lowers_the_attention_kl_and_only_touches_the_sparse_layers(tmp_path):
    teacher = _model()
    student = apply_attention(teacher, "FSSSSF", inplace=False, sparse_adapter=True, **ATTN)
    full_before = {n: p.clone() for n, p in student.named_parameters() if ".layers.0." in n or "q_proj" in n}
    report = fit_sparse_adapters(student, teacher, [_ids(96, 1), _ids(96, 2)], tails=[4, 0], steps=15, rows=48)
    assert sorted(report) == [1, 2, 3, 4]
    assert all(after < before for before, after in report.values()), report
    for n, p in student.named_parameters():
        if n in full_before:
            assert torch.equal(p, full_before[n]), n  # the original projections and full layers stay as they were
    save_converted(student, tmp_path / "m")
    loaded = load_converted(tmp_path / "m")
    ids = _ids(60, 5)
    with torch.no_grad():
        torch.testing.assert_close(loaded(ids).logits, student(ids).logits)


def test_retrieval_curriculum_hides_a_key_and_answers_it():
    class Tok:  # characters as tokens
        def __call__(self, text, add_special_tokens=False):
            return type("E", (), {"input_ids": [ord(c) % 97 for c in text]})()

    seqs = retrieval_sequences(Tok(), "lorem ipsum dolor sit amet " * 40, 300, 3, seed=0)
    assert len(seqs) == 3
    for ids, tail in seqs:
        assert ids.shape == (1, 300) and 2 < tail < 10
