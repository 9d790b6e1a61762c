"""Healing the composed (LUT + sparse) embedded speech LM by distillation on its text head and patch decoder."""

from __future__ import annotations

import shutil
import subprocess

import pytest
import torch

from efficient.distill import DistillConfig, Distiller, repack
from efficient.quant import QuantLinear
from mimo_audio import formats
from mimo_audio.api import MimoAudio
from mimo_audio.distill import composed_student, speech_kl
from mimo_audio.prompts import Speech, Text

SENTENCES = ["The quick brown fox jumps over the lazy dog.", "A small boat drifts slowly down the quiet river."]


@pytest.fixture(scope="module")
def items(tmp_path_factory):
    if shutil.which("flite") is None:
        pytest.skip("flite is not installed (real speech for the test)")
    m = MimoAudio.from_pretrained()
    out = []
    for i, s in enumerate(SENTENCES):
        wav = tmp_path_factory.mktemp("wav") / f"{i}.wav"
        subprocess.run(["flite", "-voice", "slt", "-t", s, "-o", str(wav)], check=True)
        codes = m.encode_audio(str(wav))
        out.append(m.renderer.render(formats.tts(s) + [Speech(codes)]))  # speech targets: patch decoder
        out.append(m.renderer.render(formats.asr(codes) + [Text(s), Text(formats.IM_END)]))  # text targets
    for p in m.lm.parameters():
        p.requires_grad_(False)
    return m.lm, out


def test_speech_kl_is_zero_against_itself_and_positive_for_the_composed_backbone(items):
    lm, ids = items
    fwd, rev = speech_kl(lm, lm, ids[0][None])
    assert float(fwd) == pytest.approx(0.0, abs=1e-6) and float(rev) == pytest.approx(0.0, abs=1e-6)
    student, _ = composed_student(lm, window=16, block_size=8, top_k=2)
    fwd, rev = speech_kl(student, lm, ids[0][None])
    assert float(fwd) > 1e-3 and float(rev) > 1e-3


def test_healing_the_composed_speech_lm_lowers_its_divergence_and_repacks(items):
    lm, ids = items
    student, params = composed_student(lm, window=16, block_size=8, top_k=2)
    names = {n for n, _ in params}
    assert any("gate_swa" in n for n in names) and any(n.endswith("d_scale") for n in names)
    before = [float(speech_kl(student, lm, x[None])[0]) for x in ids]
    d = Distiller(student, lm, params, text=list(ids), offpolicy_fn=speech_kl,
                  config=DistillConfig(batch=1, mix=1.0, steps=12, lr=3e-3, warmup=1,
                                       lr_multipliers={"_proj.weight": 0.02, "_proj.bias": 0.02}))
    d.train_step()
    trained = {id(p) for _, p in params}
    for n, p in student.named_parameters():
        assert (p.grad is not None) == (id(p) in trained), n
    d.run(progress=False)
    d.close()
    after = [float(speech_kl(student, lm, x[None])[0]) for x in ids]
    assert sum(after) < 0.8 * sum(before), (before, after)
    with torch.no_grad():
        healed = student(ids[1][None]).text_logits
    assert repack(student) > 0
    for m in student.modules():
        if isinstance(m, QuantLinear):
            m.tables = "float"
    with torch.no_grad():
        packed = student(ids[1][None]).text_logits
    assert float((packed - healed).abs().max()) < 1e-3
