"""Tree speculative decoding: mask and positions, greedy losslessness, the chain as a special tree."""

from __future__ import annotations

import importlib.util
import random
from pathlib import Path

import pytest
import torch

from efficient.spec import CausalLMTarget, SamplingParams, SpeculativeDecoder, generate_plain
from efficient.spec.tree import (
    DraftTree,
    TreeSpeculativeDecoder,
    greedy_tree_accept,
    keep_cache_positions,
    parse_tree,
    prune_tree,
    tree_attention_mask,
    tree_nodes,
)

_helpers_spec = importlib.util.spec_from_file_location("spec_helpers", Path(__file__).with_name("helpers.py"))
helpers = importlib.util.module_from_spec(_helpers_spec)
_helpers_spec.loader.exec_module(helpers)

PROMPTS = [[1, 5, 9, 13], [7], list(range(10, 40))]


@pytest.fixture(scope="module")
def target():
    return CausalLMTarget(helpers.tiny_llama(tied=False))


def _greedy_next(model, ids: list[int]) -> int:
    return int(model(torch.tensor([ids])).logits[0, -1].argmax())


class OracleTree(TreeSpeculativeDecoder):
    """Runs the real heads, then plants the target's greedy continuation at a random child slot of each node on
    the true path, with probability 1 - ``corrupt`` per depth; every other node gets a random token. Every
    acceptance length and every accepted-path shape (not just the first branch) occurs."""

    def __init__(self, *args, corrupt: float = 0.3, seed: int = 0, **kw) -> None:
        super().__init__(*args, **kw)
        self.corrupt, self.rng = corrupt, random.Random(seed)

    def _draft_tree(self, tree, toks, hist, caches):
        draft = super()._draft_tree(tree, toks, hist, caches)
        if self.max_nodes:
            assert len(draft.tokens) == 1 + min(self.max_nodes, tree_nodes(tree))
        model, vocab = self.target.model, self.target.config.vocab_size
        tokens = [draft.tokens[0]] + [self.rng.randrange(vocab) for _ in draft.tokens[1:]]
        node, ext = 0, list(toks)
        while node is not None:
            kids = [i for i, p in enumerate(draft.parents) if p == node]
            if not kids or self.rng.random() < self.corrupt:
                break
            pick = self.rng.choice(kids)
            tokens[pick] = _greedy_next(model, ext)
            for k in kids:  # no sibling may carry the same token (the first would win)
                if k != pick and tokens[k] == tokens[pick]:
                    tokens[k] = (tokens[k] + 1) % vocab
            ext.append(tokens[pick])
            node = pick
        return DraftTree(tokens, draft.parents, draft.depths)


def test_parse_tree_and_sizes():
    assert parse_tree("3,2,2") == (3, 2, 2) == parse_tree("3x2x2") == parse_tree([3, 2, 2])
    assert tree_nodes((3, 2, 2)) == 3 + 6 + 12 and tree_nodes((1, 1, 1)) == 3
    for bad in ("", "3,0", "a,b", "-1"):
        with pytest.raises(ValueError, match="tree"):
            parse_tree(bad)


def test_mask_and_acceptance_on_a_hand_made_tree():
    #        0 (root)
    #      /   \
    #    1:a    2:b
    #   /  \      \
    # 3:c  4:d    5:e
    tree = DraftTree(tokens=[9, 1, 2, 3, 4, 5], parents=[-1, 0, 0, 1, 1, 2], depths=[0, 1, 1, 2, 2, 2])
    mask = tree_attention_mask(tree, past=2)[0, 0]
    assert mask.shape == (6, 8) and mask[:, :2].all()
    expect = {0: {0}, 1: {0, 1}, 2: {0, 2}, 3: {0, 1, 3}, 4: {0, 1, 4}, 5: {0, 2, 5}}
    for i, anc in expect.items():
        assert {j for j in range(6) if mask[i, 2 + j]} == anc
    # target argmax per node: root -> 2 (node 2), node 2 -> 5 (node 5), node 5 -> 7 (bonus)
    assert greedy_tree_accept(tree, [2, 0, 5, 0, 0, 7]) == ([0, 2, 5], 7)
    assert greedy_tree_accept(tree, [8, 0, 0, 0, 0, 0]) == ([0], 8)
    assert greedy_tree_accept(tree, [1, 4, 0, 0, 6, 0]) == ([0, 1, 4], 6)


def test_prune_keeps_the_most_probable_nodes_with_their_ancestors():
    tree = DraftTree(tokens=[9, 1, 2, 3, 4, 5], parents=[-1, 0, 0, 1, 1, 2], depths=[0, 1, 1, 2, 2, 2])
    scores = [0.0, -0.1, -1.0, -0.5, -3.0, -1.2]
    small = prune_tree(tree, scores, 3)  # nodes 1, 3, 2 (node 5 would need its parent 2 first)
    assert (small.tokens, small.parents, small.depths) == ([9, 1, 2, 3], [-1, 0, 0, 1], [0, 1, 1, 2])
    assert prune_tree(tree, scores, 5) is tree and prune_tree(tree, scores, 0) is tree
    with pytest.raises(ValueError, match="increase"):
        prune_tree(tree, [0.0, -2.0, -1.0, -0.1, -3.0, -3.0], 1)


def test_tree_forward_matches_sequential_forwards(target):
    """Each node's logits and hidden state under the tree mask and per-node positions equal a plain forward of
    the committed prefix followed by the node's own path; the gathered cache equals the accepted path's."""
    prompt = PROMPTS[2]
    tree = DraftTree(tokens=[7, 11, 12, 13, 14, 15, 16], parents=[-1, 0, 0, 1, 1, 2, 4],
                     depths=[0, 1, 1, 2, 2, 2, 3])
    cache = target.new_cache()
    target.forward(torch.tensor([prompt]), cache)
    n0 = cache.get_seq_length()
    logits, hidden = target.forward_tree(torch.tensor([tree.tokens]), cache, n0 + torch.tensor(tree.depths),
                                         tree_attention_mask(tree, n0))
    for i in range(len(tree.tokens)):
        path, j = [], i
        while j >= 0:
            path.insert(0, tree.tokens[j])
            j = tree.parents[j]
        ref_cache = target.new_cache()
        ref_logits, ref_hidden = target.forward(torch.tensor([prompt + path]), ref_cache)
        torch.testing.assert_close(logits[i], ref_logits[-1], atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(hidden[i], ref_hidden[-1], atol=1e-4, rtol=1e-4)
    keep_cache_positions(cache, n0, torch.tensor([0, 1, 4, 6]))
    ref_cache = target.new_cache()
    target.forward(torch.tensor([prompt + [7, 11, 14, 16]]), ref_cache)
    assert cache.get_seq_length() == ref_cache.get_seq_length() == n0 + 4
    for a, b in zip(cache.layers, ref_cache.layers):
        torch.testing.assert_close(a.keys, b.keys, atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(a.values, b.values, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("tree,max_nodes", [((3, 2, 2), 0), ((2, 1, 3), 0), ((4,), 0), ((1, 1, 1), 0),
                                            ((4, 3, 2), 9)])
def test_tree_greedy_equals_plain_greedy(target, tree, max_nodes):
    drafter = helpers.drafter_for(target, heads=3)
    for i, prompt in enumerate(PROMPTS):
        ref, _ = generate_plain(target, prompt, 18)
        out, stats = TreeSpeculativeDecoder(target, drafter, tree, max_nodes=max_nodes).generate(prompt, 18)
        assert out == ref
        dec = OracleTree(target, drafter, tree=tree, max_nodes=max_nodes, corrupt=0.25, seed=i)
        out, stats = dec.generate(prompt, 18)
        assert out == ref
        assert stats.new_tokens == 18 and stats.draft_rounds > 0
        assert stats.acceptance_length > 1.2  # the planted paths are accepted (through any branch)


def test_perfect_tree_commits_depth_plus_one(target):
    drafter = helpers.drafter_for(target, heads=3)
    out, stats = OracleTree(target, drafter, tree=(3, 2, 2), max_nodes=0, corrupt=0.0).generate(PROMPTS[0], 21)
    assert out == generate_plain(target, PROMPTS[0], 21)[0]
    assert stats.acceptance_per_position == [1.0, 1.0, 1.0] and stats.acceptance_length == 4.0
    assert stats.target_forwards == 1 + 5


def _planted(model, toks: list[int], k: int, round_idx: int) -> list[int]:
    """The target's greedy continuation for the first ``round_idx % (k + 1)`` drafts, then a wrong token."""
    good, ext = round_idx % (k + 1), list(toks)
    for i in range(k):
        nxt = _greedy_next(model, ext)
        ext.append(nxt if i < good else (nxt + 1) % model.config.vocab_size)
    return ext[len(toks):]


def test_chain_tree_is_the_chain(target):
    """Tree (1, 1, 1) drafts exactly what the chain decoder drafts, round by round, with real heads; the heads'
    proposals are recorded, then replaced by planted drafts so that every acceptance length (and so every head
    cache state) occurs in both."""
    drafter = helpers.drafter_for(target, heads=3)
    model = target.model
    chain_rec: list[list[int]] = []
    tree_rec: list[list[int]] = []

    class Chain(SpeculativeDecoder):
        def _draft(self, k, toks, hist, caches, params, gen):
            drafts, q = super()._draft(k, toks, hist, caches, params, gen)
            chain_rec.append(list(drafts))
            return _planted(model, toks, k, len(chain_rec)), q

    class Tree(TreeSpeculativeDecoder):
        def _draft_tree(self, tree, toks, hist, caches):
            draft = super()._draft_tree(tree, toks, hist, caches)
            tree_rec.append(draft.tokens[1:])
            return DraftTree([draft.tokens[0]] + _planted(model, toks, len(tree), len(tree_rec)), draft.parents,
                             draft.depths)

    for prompt in PROMPTS:
        a, sa = Chain(target, drafter, max_draft=3, adaptive=False).generate(prompt, 30)
        b, sb = Tree(target, drafter, (1, 1, 1)).generate(prompt, 30)
        assert a == b == generate_plain(target, prompt, 30)[0]
        assert (sa.proposed, sa.accepted, sa.target_forwards) == (sb.proposed, sb.accepted, sb.target_forwards)
        assert 0 < sb.accepted[2] < sb.proposed[0]
    assert chain_rec == tree_rec and len(chain_rec) > 20


def test_tree_errors(target):
    drafter = helpers.drafter_for(target, heads=2)
    with pytest.raises(ValueError, match="greedily"):
        TreeSpeculativeDecoder(target, drafter, (2, 2)).generate(PROMPTS[0], 4, sampling=SamplingParams(1.0))
    sliding = CausalLMTarget(helpers.tiny_mistral(window=64))
    with pytest.raises(ValueError, match="full-attention dynamic cache"):
        TreeSpeculativeDecoder(sliding, helpers.drafter_for(sliding, heads=2), (2, 2)).generate(PROMPTS[2], 8)
