"""STE healing (``quant_train="ste"``): codes move, and the re-packed model is exactly what training computed."""

from __future__ import annotations

import copy

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from efficient.distill import DistillConfig, Distiller, HealableQuantLinear, attach_quant_adapters, repack
from efficient.quant import QuantLinear, formats, quantize


def _tiny() -> LlamaForCausalLM:
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=96, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                      tie_word_embeddings=True, initializer_range=0.2)
    return LlamaForCausalLM(cfg).eval()


def _codes(model) -> dict[str, torch.Tensor]:
    out = {}
    for n, m in model.named_modules():
        if isinstance(m, QuantLinear):
            kp = formats.padded_k(m.scheme, m.in_features)
            out[n] = formats.unpack_uniform(m.qweight, m.out_features, kp, m.scheme.bits, m.scheme.group_size)[0]
    return out


def _float_tables(model) -> None:
    for m in model.modules():
        if isinstance(m, QuantLinear):
            m.tables = "float"  # the kernel's arithmetic without activation rounding


def test_ste_healing_moves_codes_and_repacks_exactly():
    teacher = _tiny()
    student = copy.deepcopy(teacher)
    quantize(student, "w2g32")
    before = _codes(student)
    g = torch.Generator().manual_seed(1)
    text = torch.randint(0, 96, (400,), generator=g)
    prompts = text[:128].view(16, 8)
    x = text[-48:][None]
    _float_tables(student)
    with torch.no_grad():
        packed0 = student(input_ids=x).logits
    params = attach_quant_adapters(student, "ste")
    assert {n.rsplit(".", 1)[1] for n, _ in params} == {"d_scale", "d_min", "latent"}
    with torch.no_grad():  # before training the latent codes round to the packed codes
        torch.testing.assert_close(student(input_ids=x).logits, packed0, rtol=0, atol=1e-4)
    cfg = DistillConfig(batch=4, prompt_len=8, gen_len=8, mix=1.0, text_len=32, steps=12, warmup=1, lr=0.05,
                        lr_multipliers={"latent": 10.0})
    d = Distiller(student, teacher, params, prompts=prompts, text=text, config=cfg)
    d.run(progress=False)
    with torch.no_grad():
        healed = student(input_ids=x).logits
    n_layers = sum(isinstance(m, HealableQuantLinear) for m in student.modules())
    assert repack(student) == n_layers == len(before)
    _float_tables(student)
    with torch.no_grad():
        packed = student(input_ids=x).logits
    assert float((packed - healed).abs().max()) < 1e-3  # exact re-pack: the kernels compute what training did
    after = _codes(student)
    moved = sum(int((after[n] != before[n]).sum()) for n in before)
    assert moved > 0  # codes moved (scale healing alone never changes them)
    assert all(int(c.max()) <= 3 for c in after.values())  # still 2-bit codes


def test_ste_needs_a_uniform_format():
    student = _tiny()
    quantize(student, "afpq4g64")
    with pytest.raises(ValueError, match="ste healing supports the uniform"):
        attach_quant_adapters(student, "ste")
