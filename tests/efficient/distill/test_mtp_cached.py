"""MTP heads from cached rollouts: the data equals a teacher-forced pass, training on it lowers the loss and
raises acceptance, the drafter with its restricted vocabulary stays exactly greedy-lossless."""

from __future__ import annotations

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from efficient.distill import hidden_and_logits, sample_continuations
from efficient.distill.mtp_cached import CachedMTPTrainer, cached_head_losses, frequent_vocab
from efficient.distill.mtp_data import generate_rollout_shards, load_rollout_shards, rollouts_with_hidden
from efficient.spec import CausalLMTarget, MTPConfig, MTPDrafter, SpeculativeDecoder, generate_plain, load_mtp

VOCAB = 96


def tiny(seed: int = 0, rule: bool = False) -> LlamaForCausalLM:
    """A tiny random Llama; ``rule``: its greedy next token is a fixed permutation of the last token (the blocks
    are damped and the LM head set to match), so that its continuations are learnable from a few thousand
    positions, as a real LM's are from many more."""
    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                      tie_word_embeddings=False, initializer_range=0.2)
    model = LlamaForCausalLM(cfg).eval()
    with torch.no_grad():
        if rule:
            for layer in model.model.layers:
                layer.self_attn.o_proj.weight.mul_(0.05)
                layer.mlp.down_proj.weight.mul_(0.05)
            emb = model.model.embed_tokens.weight
            perm = torch.randperm(VOCAB, generator=torch.Generator().manual_seed(seed + 7))
            model.lm_head.weight[perm] = 10 * emb / emb.norm(dim=-1, keepdim=True)
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def prompts(n: int, length: int, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, VOCAB, (n, length), generator=torch.Generator().manual_seed(seed))


def drafter_for(model, heads: int = 2) -> MTPDrafter:
    torch.manual_seed(3)
    cfg = MTPConfig.from_target(model.config, num_heads=heads, sliding_window=32, draft_slack=8)
    d = MTPDrafter(cfg, model.get_input_embeddings(), model.model.norm, model.lm_head)
    d.init_from_target(model.model.layers[-1])
    return d


def test_rollouts_keep_the_teacher_forced_hidden_states_and_greedy_labels():
    model = tiny()
    p = prompts(3, 6)
    data = rollouts_with_hidden(model, p, 10)
    assert data["tokens"].shape == data["labels"].shape == (3, 16)
    assert torch.equal(data["tokens"].long(), sample_continuations(model, p, 10, temperature=0.0))
    hidden, logits = hidden_and_logits(model, data["tokens"].long())
    torch.testing.assert_close(data["hidden"], hidden, atol=1e-4, rtol=1e-4)
    assert torch.equal(data["labels"].long(), logits.argmax(-1))
    # on the generated part the label is the next token (the target's own greedy choice)
    assert torch.equal(data["labels"][:, 5:-1], data["tokens"][:, 6:])


def test_shards_resume_and_load(tmp_path):
    model = tiny()
    p = prompts(5, 4)
    first = generate_rollout_shards(model, p[:2], 6, tmp_path, batch=2, dtype=None, progress=False)
    assert first["shards"] == 1
    again = generate_rollout_shards(model, p, 6, tmp_path, batch=2, dtype=None, progress=False)
    assert again["shards"] == 2 and again["generated_tokens"] == 3 * 6  # shard 0 kept, 1 and 2 written
    assert again["rows"] == 3  # the last shard holds one row
    data = load_rollout_shards(tmp_path)
    assert data["tokens"].shape == (5, 10) and data["hidden"].shape == (5, 10, 64)
    assert torch.equal(data["tokens"].long(), sample_continuations(model, p, 6, temperature=0.0))
    assert load_rollout_shards(tmp_path, max_rows=3)["labels"].shape == (3, 10)
    with pytest.raises(FileNotFoundError, match="no rollouts"):
        load_rollout_shards(tmp_path / "empty")
    generate_rollout_shards(model, p[:2], 3, tmp_path / "mixed", batch=2, dtype=None, progress=False)
    generate_rollout_shards(model, p, 6, tmp_path / "mixed", batch=2, dtype=None, progress=False)
    with pytest.raises(ValueError, match="another prompt/generation length"):  # a resume with another --gen-len
        load_rollout_shards(tmp_path / "mixed")


def test_frequent_vocab_and_restricted_loss():
    labels = torch.tensor([[5, 5, 5, 7, 7, 9]])
    vocab, cover = frequent_vocab(labels, 2)
    assert vocab.tolist() == [5, 7] and cover == pytest.approx(5 / 6)
    model = tiny()
    d = drafter_for(model)
    data = rollouts_with_hidden(model, prompts(2, 4), 8)
    full, _ = cached_head_losses(d, data["tokens"], data["hidden"], data["labels"])
    every = torch.arange(VOCAB)  # the whole vocabulary as the draft vocabulary: the same loss
    same, _ = cached_head_losses(d, data["tokens"], data["hidden"], data["labels"], every)
    for a, b in zip(full, same):
        torch.testing.assert_close(a, b)


def test_cached_training_lowers_loss_raises_acceptance_and_stays_greedy_exact(tmp_path):
    model = tiny(rule=True)
    target = CausalLMTarget(model)
    data = rollouts_with_hidden(model, prompts(48, 8), 40)
    d = drafter_for(model)
    held = prompts(4, 8, seed=99).tolist()  # prompts never rolled out for training

    def acceptance() -> float:
        rounds = toks = 0
        for p in held:
            ref, _ = generate_plain(target, p, 30)
            out, st = SpeculativeDecoder(target, d.eval(), max_draft=2, adaptive=False).generate(p, 30)
            assert out == ref  # lossless: restricted draft vocabulary and all
            rounds, toks = rounds + st.draft_rounds, toks + st.draft_round_tokens
        return toks / rounds

    before = acceptance()
    t = CachedMTPTrainer(d, data, lr=3e-3, batch=8, steps=120, warmup=5, vocab_size=64, holdout=8)
    assert d.draft_vocab is not None and d.draft_vocab.numel() <= 64
    start = t.evaluate()
    t.run(60, save_dir=tmp_path, progress=False)
    t2 = CachedMTPTrainer(d, data, lr=3e-3, batch=8, steps=120, warmup=5, vocab_size=64, holdout=8)
    assert t2.load(tmp_path) == 60
    t2.run(progress=False)
    end = t2.evaluate()
    assert end["loss"] < 0.7 * start["loss"]
    assert end["agree1"] > start["agree1"] + 0.2
    for p in d.parameters():
        p.requires_grad_(False)
    after = acceptance()
    assert after > before + 0.3
    d.save(tmp_path)
    loaded = load_mtp(tmp_path, target)
    assert torch.equal(loaded.draft_vocab, d.draft_vocab)
    target.close()
