"""efficient.distill on tiny real transformers models: losses, parameter selection, resume, re-packing."""

from __future__ import annotations

import copy

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from efficient.attention import apply_attention
from efficient.distill import (
    DistillConfig,
    Distiller,
    HealableQuantLinear,
    MTPSelfDistiller,
    attach_quant_adapters,
    attention_parameters,
    forward_kl,
    kl_report,
    repack,
    reverse_kl,
    sample_continuations,
    target_rollouts,
)
from efficient.quant import QuantLinear, quantize

VOCAB = 96


def tiny(seed: int = 0, layers: int = 4) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=layers,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                      tie_word_embeddings=True, initializer_range=0.2)
    return LlamaForCausalLM(cfg).eval()


def data(n: int = 8, length: int = 40, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, VOCAB, (n, length), generator=g), torch.randint(0, VOCAB, (600,), generator=g)


def converted(teacher):
    return apply_attention(teacher, "FSSF", inplace=False, window=8, block_size=8, top_k=2)


def test_losses_zero_on_equal_and_positive_otherwise():
    a, b = torch.randn(3, 5, 11), torch.randn(3, 5, 11)
    assert float(reverse_kl(a, a)) == pytest.approx(0.0, abs=1e-6)
    assert float(forward_kl(a, a)) == pytest.approx(0.0, abs=1e-6)
    assert float(reverse_kl(a, b)) > 0.01 and float(forward_kl(a, b)) > 0.01
    assert float(reverse_kl(a, b)) != pytest.approx(float(forward_kl(a, b)))


def test_on_policy_loss_and_gradient_vanish_when_student_is_teacher():
    teacher = tiny()
    student = copy.deepcopy(teacher)
    prompts, text = data()
    params = [(n, p) for n, p in student.named_parameters()]
    d = Distiller(student, teacher, params, prompts=prompts, text=text,
                  config=DistillConfig(batch=2, prompt_len=8, gen_len=6, mix=0.5, text_len=32, lr=1e-2))
    m = d.train_step()
    assert m["rev_kl_on_policy"] == pytest.approx(0.0, abs=1e-6)
    assert m["fwd_kl_on_policy"] == pytest.approx(0.0, abs=1e-6)
    assert m["fwd_kl_text"] == pytest.approx(0.0, abs=1e-6)
    assert m["grad_norm"] < 1e-5  # (AdamW would still move by ~lr: it normalises even a zero-ish gradient)


def test_sparse_healing_trains_only_selected_parameters():
    teacher = tiny()
    student = converted(teacher)
    prompts, _ = data()
    params = attention_parameters(student, "sparse")
    names = {n for n, _ in params}
    assert any("gate_swa" in n for n in names) and any("q_proj" in n for n in names)
    assert not any(".layers.0." in n or ".layers.3." in n for n in names)  # full layers stay as they were
    frozen = {n: p.detach().clone() for n, p in student.named_parameters() if n not in names}
    t_before = {n: p.detach().clone() for n, p in teacher.named_parameters()}
    d = Distiller(student, teacher, params, prompts=prompts,
                  config=DistillConfig(batch=2, prompt_len=12, gen_len=6, lr=1e-3, steps=3, warmup=1))
    d.train_step()
    for n, p in student.named_parameters():
        assert (p.grad is not None) == (n in names), n
    d.run(progress=False)
    assert all(torch.equal(frozen[n], p) for n, p in student.named_parameters() if n in frozen)
    assert all(torch.equal(t_before[n], p) for n, p in teacher.named_parameters())
    assert all(p.requires_grad for _, p in params)
    d.close()
    assert all(p.requires_grad for p in student.parameters())  # the flags the model had before


def test_on_policy_healing_recovers_perturbed_sinks_and_gates():
    """Teacher: a converted model; student: the same with its sinks and gates disturbed. On-policy reverse
    KL on the student's own samples must bring the held-out divergence down."""
    teacher = converted(tiny())
    student = copy.deepcopy(teacher)
    params = attention_parameters(student, "gates")
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for _, p in params:
            p.add_(torch.randn(p.shape, generator=g) * 0.5)
    prompts, text = data()
    held_out = data(seed=7)[0].flatten()
    before = kl_report(student, teacher, held_out, seq_len=32, windows=4)
    d = Distiller(student, teacher, params, prompts=prompts,
                  config=DistillConfig(batch=4, prompt_len=12, gen_len=16, lr=0.1, steps=30, warmup=1))
    hist = d.run(progress=False)
    after = kl_report(student, teacher, held_out, seq_len=32, windows=4)
    assert after["rev_kl"] < 0.4 * before["rev_kl"] and after["fwd_kl"] < 0.4 * before["fwd_kl"]
    assert sum(h["rev_kl_on_policy"] for h in hist[-5:]) < 0.5 * sum(h["rev_kl_on_policy"] for h in hist[:5])


def test_resume_reproduces_an_uninterrupted_run(tmp_path):
    teacher = tiny()
    prompts, text = data()
    cfg = DistillConfig(batch=2, prompt_len=8, gen_len=6, mix=0.3, text_len=24, lr=5e-3, steps=4, warmup=2)

    def fresh():
        s = converted(teacher)
        return s, Distiller(s, teacher, attention_parameters(s, "gates"), prompts=prompts, text=text, config=cfg)

    s1, d1 = fresh()
    d1.run(progress=False)
    s2, d2 = fresh()
    d2.run(2, save_dir=tmp_path, progress=False)
    s3, d3 = fresh()
    assert d3.load(tmp_path) == 2
    d3.run(progress=False)
    for (n, a), (_, b) in zip(d1.params, d3.params):
        assert torch.allclose(a, b, atol=1e-6), n
    assert [h["loss"] for h in d1.history] == pytest.approx([h["loss"] for h in d3.history], abs=1e-6)


def test_multi_teacher_round_robin_and_domain_check():
    t_a, t_b = tiny(0), tiny(5)
    prompts, _ = data()
    s = copy.deepcopy(t_a)
    params = [(n, p) for n, p in s.named_parameters() if "lm_head" not in n and "norm" in n]
    with pytest.raises(ValueError, match="domain"):
        Distiller(s, {"a": t_a, "b": t_b}, params, prompts={"a": prompts}, config=DistillConfig(prompt_len=8))
    d = Distiller(s, {"a": t_a, "b": t_b}, params, prompts={"a": prompts, "b": prompts},
                  config=DistillConfig(batch=2, prompt_len=8, gen_len=4))
    m0, m1 = d.train_step(), d.train_step()
    assert (m0["domain"], m1["domain"]) == (0, 1)
    assert m0["rev_kl_on_policy"] == pytest.approx(0.0, abs=1e-6) and m1["rev_kl_on_policy"] > 1e-3


def test_batched_sampling_with_cache_matches_no_cache_greedy():
    model = converted(tiny())
    prompts, _ = data(3, 10)
    out = sample_continuations(model, prompts, 5, temperature=0.0)
    ids = prompts.clone()
    for _ in range(5):
        with torch.no_grad():
            nxt = model(input_ids=ids, use_cache=False).logits[:, -1].argmax(-1)
        ids = torch.cat([ids, nxt[:, None]], 1)
    assert torch.equal(out, ids)


def _quantized(teacher, scheme="w4g32"):
    q = copy.deepcopy(teacher)
    quantize(q, scheme)
    return q


def _float_tables(model):
    for m in model.modules():
        if isinstance(m, QuantLinear):
            m.tables = "float"


@pytest.mark.parametrize("mode,scheme", [("scales", "w2g32"), ("lora", "w4g32")])
def test_low_bit_healing_grads_and_repack(mode, scheme):
    teacher = tiny()
    student = _quantized(teacher, scheme)
    codes_before = {n: m.qweight.clone() for n, m in student.named_modules() if isinstance(m, QuantLinear)}
    prompts, text = data()
    params = attach_quant_adapters(student, mode, rank=4)
    assert all(n.endswith(("d_scale", "d_min")) if mode == "scales" else "lora_" in n for n, _ in params)
    d = Distiller(student, teacher, params, prompts=prompts, text=text,
                  config=DistillConfig(batch=4, prompt_len=8, gen_len=8, mix=0.5, text_len=32, steps=8, warmup=1,
                                       lr=0.05))
    d.train_step()
    trained = {id(p) for _, p in params}
    for n, p in student.named_parameters():
        assert (p.grad is not None) == (id(p) in trained), n
    d.run(progress=False)
    x = text[:48][None]
    with torch.no_grad():
        healed = student(input_ids=x).logits
        ref = teacher(input_ids=x).logits
    layers = [m for m in student.modules() if isinstance(m, HealableQuantLinear)]
    assert repack(student) == len(layers) == len(codes_before)
    _float_tables(student)
    with torch.no_grad():
        packed = student(input_ids=x).logits
    # exact re-pack (same codes, trained group parameters): the kernels compute what training computed
    assert float((packed - healed).abs().max()) < 1e-3
    assert float((healed - ref).abs().max()) > 1e-2  # (and the healed model is not the float one)
    if True:
        for n, m in student.named_modules():
            if isinstance(m, QuantLinear):
                from efficient.quant import formats

                kp = formats.padded_k(m.scheme, m.in_features)
                bits = m.scheme.bits
                a = formats.unpack_uniform(m.qweight, m.out_features, kp, bits, 32)[0]
                q0 = QuantLinear(m.in_features, m.out_features, m.scheme, bias=m.bias is not None)
                q0.qweight.copy_(codes_before[n])
                b = formats.unpack_uniform(q0.qweight, m.out_features, kp, bits, 32)[0]
                assert torch.equal(a, b), n  # only the group parameters moved


def test_scale_healing_recovers_disturbed_group_parameters():
    """Teacher: a w4 model; student: the same codes with disturbed group scales and mins."""
    teacher = _quantized(tiny(), "w4g32")
    _float_tables(teacher)
    student = copy.deepcopy(teacher)
    params = attach_quant_adapters(student, "scales")
    g = torch.Generator().manual_seed(4)
    with torch.no_grad():
        for _, p in params:
            p.add_(torch.randn(p.shape, generator=g) * 0.1)
    prompts, text = data()
    held_out = data(seed=7)[0].flatten()
    before = kl_report(student, teacher, held_out, seq_len=32, windows=4)
    d = Distiller(student, teacher, params, prompts=prompts, text=text,
                  config=DistillConfig(batch=4, prompt_len=8, gen_len=16, mix=0.5, text_len=32, steps=30, warmup=1,
                                       lr=0.03))
    d.run(progress=False)
    after = kl_report(student, teacher, held_out, seq_len=32, windows=4)
    assert after["fwd_kl"] < 0.75 * before["fwd_kl"], (before, after)


def test_scale_mode_refuses_non_uniform_formats():
    student = _quantized(tiny(), "afpq4g64")
    with pytest.raises(ValueError, match="uniform"):
        attach_quant_adapters(student, "scales")


def test_mtp_self_distillation_on_target_rollouts(tmp_path):
    from efficient.spec import MTPConfig, MTPDrafter

    model = tiny()
    for p in model.parameters():
        p.requires_grad_(False)
    prompts, _ = data(6, 8)
    seqs = target_rollouts(model, prompts, 24, batch=3)
    assert seqs.shape == (6, 32)
    assert torch.equal(seqs[:, :8], prompts)
    cfg = MTPConfig.from_target(model.config, num_heads=2, sliding_window=16, draft_slack=8)
    drafter = MTPDrafter(cfg, model.get_input_embeddings(), model.model.norm, model.lm_head)
    drafter.init_from_target(model.model.layers[-1])
    t = MTPSelfDistiller(model, drafter, seqs, lr=3e-3, batch=3, steps=30, warmup=1)
    t.run(15, save_dir=tmp_path, progress=False)
    t2 = MTPSelfDistiller(model, drafter, seqs, lr=3e-3, batch=3, steps=30, warmup=1)
    assert t2.load(tmp_path) == 15
    t2.run(progress=False)
    first, last = t.history[0]["loss"], t2.history[-1]["loss"]
    assert last < 0.6 * first
    assert t2.history[-1]["agree1"] > t.history[0]["agree1"]


def test_bad_settings_fail_clearly():
    teacher = tiny()
    with pytest.raises(ValueError, match="mix"):
        DistillConfig(mix=1.5)
    with pytest.raises(ValueError, match="prompts"):
        Distiller(copy.deepcopy(teacher), teacher, list(teacher.named_parameters())[:1], config=DistillConfig())
    with pytest.raises(ValueError, match="nothing to train"):
        Distiller(copy.deepcopy(teacher), teacher, [], prompts=data()[0])
    with pytest.raises(ValueError, match="QuantLinear"):
        attach_quant_adapters(copy.deepcopy(teacher), "scales")
