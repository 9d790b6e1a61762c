"""Mixed low-bit layouts (``q2k-mix``): the scheme each tensor is packed with, the tied embedding stored once
low-bit, the file-size accounting (and that the preset fits llama.cpp Q2_K's SmolLM2 file), a checkpoint
round trip, and healing through the shared embedding."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from efficient.distill.params import HealableQuantLinear, attach_quant_adapters, repack
from efficient.quant import QuantLinear, load_quantized_causal_lm, quantize, save_quantized
from efficient.quant.api import CONFIG_FILE, WEIGHTS_FILE
from efficient.quant.embedding import QuantEmbedding
from efficient.quant.layouts import LAYOUTS, get_layout, layer_bytes, layout_bytes, make_layout


def tiny_llama(tied: bool = True, seed: int = 0) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=96, hidden_size=64, intermediate_size=160, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                      tie_word_embeddings=tied)
    return LlamaForCausalLM(cfg).eval()


def test_q2k_mix_packs_each_tensor_with_the_scheme_its_rule_names():
    model = tiny_llama()
    reports = quantize(model, "q2k-mix")
    got = {r.name: r.scheme for r in reports}
    for name, mod in model.named_modules():
        if isinstance(mod, QuantLinear):
            want = "w3g64" if name.endswith("down_proj") else "w4g32"
            assert mod.scheme.name == want == got[name], name
    assert got["lm_head"] == "w4g32"  # the tied matrix, packed once
    assert len(got) == 2 * 7 + 1
    emb = model.get_input_embeddings()
    assert isinstance(emb, QuantEmbedding)
    # the lookup reads the packed head: rows of the dequantized head weight
    ids = torch.tensor([[3, 17, 95]])
    assert torch.equal(emb(ids)[0], model.lm_head.dequantize()[ids[0]])
    # no float copy of the 96 x 64 matrix is left in the state
    keys = model.state_dict().keys()
    assert "lm_head.qweight" in keys and not any(k.endswith("embed_tokens.weight") or k == "lm_head.weight"
                                                 for k in keys)


def test_overrides_refine_a_single_scheme_and_bad_names_fail():
    model = tiny_llama()
    quantize(model, "w4g64", overrides={"*.self_attn.*": "w2g32"})
    assert model.model.layers[1].self_attn.o_proj.scheme.name == "w2g32"
    assert model.model.layers[1].mlp.up_proj.scheme.name == "w4g64"
    assert isinstance(model.lm_head, torch.nn.Linear)  # no embedding scheme: head and embedding stay float
    with pytest.raises(ValueError, match="unknown quantization scheme"):
        quantize(tiny_llama(), "w4g64", overrides={"*": "w9g7"})
    with pytest.raises(ValueError, match="tied"):  # an untied model has no shared matrix to pack once
        quantize(tiny_llama(tied=False), "q2k-mix")


def test_file_size_accounting_matches_the_checkpoint(tmp_path):
    model = tiny_llama()
    linears = {n: (m.out_features, m.in_features) for n, m in model.named_modules()
               if isinstance(m, torch.nn.Linear)}
    predicted = layout_bytes(LAYOUTS["q2k-mix"], linears, head="lm_head")
    reports = quantize(model, "q2k-mix")
    assert predicted == sum(r.packed_bytes for r in reports)
    save_quantized(model, tmp_path)
    floats = sum(t.numel() * t.element_size() for k, t in model.state_dict().items() if not k.endswith("qweight"))
    size = (tmp_path / WEIGHTS_FILE).stat().st_size
    assert predicted + floats < size < predicted + floats + 8192  # + the safetensors header, nothing else
    # uniform formats: bits + 32 / group bits per weight (fp16 scale and min per group) on 16-row blocks
    assert layer_bytes("w4g32", 64, 576) == 64 * 576 * 5 // 8
    assert layer_bytes("w3g128", 576, 1536) == 576 * 1536 * 13 // 32


def test_q2k_mix_fits_llama_cpp_q2k_file_size_on_smollm2_shapes():
    """SmolLM2-135M: 30 layers, hidden 576 (not a multiple of 256), MLP 1536, 3 KV heads of 64, tied 49152
    vocab. llama.cpp's Q2_K file of it is 84.1 MiB (Q4_0 / Q3_K / Q8_0 fallbacks)."""
    shapes = {"q_proj": (576, 576), "k_proj": (192, 576), "v_proj": (192, 576), "o_proj": (576, 576),
              "gate_proj": (1536, 576), "up_proj": (1536, 576), "down_proj": (576, 1536)}
    linears = {f"model.layers.{i}.x.{k}": s for i in range(30) for k, s in shapes.items()}
    linears["lm_head"] = (49152, 576)
    packed = layout_bytes(get_layout("q2k-mix"), linears, head="lm_head")
    norms = (2 * 30 + 1) * 576 * 4
    assert 75.4 < (packed + norms) / 2**20 < 75.6 < 84.1


def test_round_trip_through_a_checkpoint(tmp_path):
    model = tiny_llama()
    quantize(model, "q2k-mix")
    ids = torch.randint(0, 96, (2, 12), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        want = model(input_ids=ids).logits
    save_quantized(model, tmp_path)
    cfg = json.loads((tmp_path / CONFIG_FILE).read_text())
    assert cfg["scheme"] == "q2k-mix" and cfg["embedding"]["head"] == "lm_head"
    assert cfg["layers"]["model.layers.0.mlp.down_proj"]["scheme"] == "w3g64"
    back = load_quantized_causal_lm(tmp_path)
    assert isinstance(back.get_input_embeddings(), QuantEmbedding)
    with torch.no_grad():
        assert torch.equal(back(input_ids=ids).logits, want)
    # a copy of the model reads its own head, not the original's
    twin = copy.deepcopy(back)
    assert twin.get_input_embeddings().head() is twin.lm_head


def test_healing_trains_the_shared_embedding_and_repacks_exactly():
    model = tiny_llama()
    quantize(model, "q2k-mix")
    params = attach_quant_adapters(model, "scales")
    assert isinstance(model.lm_head, HealableQuantLinear)
    assert any(n.startswith("lm_head.") for n, _ in params)
    ids = torch.randint(0, 96, (1, 10), generator=torch.Generator().manual_seed(2))
    # the head's scales get a gradient through the embedding lookup alone
    model.get_input_embeddings()(ids).pow(2).sum().backward()
    assert model.lm_head.d_scale.grad.abs().sum() > 0
    with torch.no_grad():
        model.lm_head.d_min.add_(0.05)
        healed = model(input_ids=ids).logits
    repack(model)
    assert isinstance(model.lm_head, QuantLinear)
    with torch.no_grad():
        packed = model(input_ids=ids).logits
    assert torch.allclose(packed, healed, atol=2e-2, rtol=1e-2)


def test_make_layout_names_its_rules():
    lay = make_layout("w4g128", {"*down_proj": "w3g64"}, embedding="w4g32")
    assert lay.scheme_for("model.layers.3.mlp.down_proj") == "w3g64"
    assert lay.scheme_for("model.layers.3.mlp.up_proj") == "w4g128"
    assert "down_proj=w3g64" in lay.name and lay.schemes() == ["w4g128", "w3g64", "w4g32"]


def test_heal_recipe_accepts_the_layout():
    from efficient.distill.recipes import convert_student, parse_conversion

    assert parse_conversion("q2k-mix").quant == "q2k-mix"
    with pytest.raises(ValueError, match="q2k-mix"):  # the error lists the layouts
        parse_conversion("q9k-mix")
    teacher = tiny_llama()
    student, params = convert_student(teacher, "q2k-mix", quant_train="scales")
    names = {n.rsplit(".", 1)[0] for n, _ in params}
    assert "lm_head" in names and "model.layers.1.mlp.down_proj" in names
    assert isinstance(teacher.lm_head, torch.nn.Linear)  # the teacher is untouched
    assert student.get_input_embeddings().head() is student.lm_head
