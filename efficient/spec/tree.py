"""Tree speculative decoding (greedy) with chained MTP heads: several candidates per draft depth, one verify pass.

A round drafts a tree instead of a chain: head 1 proposes its top ``b_1`` tokens after ``x_m``; for each of
them head 2 proposes its top ``b_2`` (it reads head 1's output and that branch's token), and so on, a product
tree of ``b_1 + b_1 b_2 + ...`` nodes (``tree=(1, 1, 1)`` is the chain). The target verifies the root ``x_m``
and every node in ONE forward pass: node tokens sit at position ``n0 + depth``, and a 4D attention mask lets
each node see the committed cache plus its own ancestors only. Greedy acceptance walks from the root, moving
to the child whose token is the target's argmax at the current node; the target's argmax where the walk stops
is the bonus token. The target's KV cache then keeps only the accepted path (its entries are gathered into
consecutive slots), so the next round is an ordinary continuation and the output equals plain greedy exactly.

MTP head caches hold only positions whose inputs are all committed (the "trunk"); each round the heads catch
up on the trunk once, and the per-branch positions run batched (one row per node) against a read-only view of
that cache, so no branch state survives a round.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Collection, Sequence
from dataclasses import dataclass

import torch

from .decoder import SpecStats, SpeculativeDecoder, _History, _stop_set, trim_head_caches
from .mtp import HeadKVCache
from .sampling import SamplingParams
from .target import CropCache

log = logging.getLogger(__name__)


def parse_tree(spec: str | Sequence[int]) -> tuple[int, ...]:
    """``"3,2,2"`` (or a sequence) -> branching per depth; each >= 1, at least one depth."""
    try:
        tree = tuple(int(x) for x in (spec.replace("x", ",").split(",") if isinstance(spec, str) else spec))
    except ValueError:
        raise ValueError(f"tree must be comma-separated branching factors such as 3,2,2, got {spec!r}") from None
    if not tree or any(b < 1 for b in tree):
        raise ValueError(f"tree must list one branching factor >= 1 per draft depth, got {spec!r}")
    return tree


def tree_nodes(tree: Sequence[int]) -> int:
    """Draft nodes of a product tree (the root, the last committed token, not counted)."""
    n, width = 0, 1
    for b in tree:
        width *= b
        n += width
    return n


@dataclass
class DraftTree:
    """Nodes in breadth-first order; index 0 is the root (the last committed token, not a draft)."""

    tokens: list[int]
    parents: list[int]  # parent index per node, -1 for the root
    depths: list[int]

    def children(self) -> list[dict[int, int]]:
        """Per node: token -> child index (the first child proposing a token wins; later duplicates are moot)."""
        out: list[dict[int, int]] = [{} for _ in self.tokens]
        for i, p in enumerate(self.parents):
            if p >= 0:
                out[p].setdefault(self.tokens[i], i)
        return out

    def ancestors(self) -> torch.Tensor:
        """[n, n] bool: ``a[i, j]`` when node j is node i or one of its ancestors."""
        n = len(self.tokens)
        anc = torch.eye(n, dtype=torch.bool)
        for i, p in enumerate(self.parents):
            if p >= 0:  # breadth-first order: the parent's row is complete already
                anc[i] |= anc[p]
        return anc


def tree_attention_mask(tree: DraftTree, past: int) -> torch.Tensor:
    """Boolean 4D mask [1, 1, n, past + n] (True: attend): each node sees the ``past`` cached positions and its
    ancestors (itself included)."""
    allowed = torch.cat([torch.ones(len(tree.tokens), past, dtype=torch.bool), tree.ancestors()], dim=1)
    return allowed[None, None]


def greedy_tree_accept(tree: DraftTree, target_argmax: Sequence[int]) -> tuple[list[int], int]:
    """The accepted path (node indices from the root) and the bonus token (the target's argmax where it stops)."""
    kids = tree.children()
    path = [0]
    while (child := kids[path[-1]].get(int(target_argmax[path[-1]]))) is not None:
        path.append(child)
    return path, int(target_argmax[path[-1]])


def prune_tree(tree: DraftTree, scores: Sequence[float], max_nodes: int) -> DraftTree:
    """The root and the ``max_nodes`` draft nodes of highest ``scores`` (cumulative log-probabilities, so a
    node never outscores its parent; ties go to the earlier node), re-indexed in breadth-first order."""
    if not max_nodes or len(tree.tokens) - 1 <= max_nodes:
        return tree
    order = sorted(range(1, len(tree.tokens)), key=lambda i: (-scores[i], i))[:max_nodes]
    keep = [0] + sorted(order)
    new_index = {old: new for new, old in enumerate(keep)}
    if any(tree.parents[i] not in new_index for i in keep[1:]):
        raise ValueError("tree scores must not increase from a node to its children")
    return DraftTree([tree.tokens[i] for i in keep], [new_index.get(tree.parents[i], -1) for i in keep],
                     [tree.depths[i] for i in keep])


def keep_cache_positions(cache: CropCache, start: int, keep: torch.Tensor) -> None:
    """Keep positions ``[0, start)`` and ``start + keep`` (in that order) of a transformers dynamic cache."""
    if hasattr(cache, "keep_positions"):  # a backend cache that knows how
        cache.keep_positions(start, keep)
        return
    idx = torch.cat([torch.arange(start), start + keep.cpu()])

    def gather(t: torch.Tensor) -> torch.Tensor:
        return t.index_select(-2, idx.to(t.device))

    layers = getattr(cache, "layers", None)
    if layers is not None and all(type(layer).__name__ == "DynamicLayer" for layer in layers):
        for layer in layers:
            if layer.keys is not None and layer.keys.numel():
                layer.keys, layer.values = gather(layer.keys), gather(layer.values)
        return
    if isinstance(getattr(cache, "key_cache", None), list):  # transformers 4.x DynamicCache
        cache.key_cache = [gather(t) for t in cache.key_cache]
        cache.value_cache = [gather(t) for t in cache.value_cache]
        return
    raise ValueError(f"{type(cache).__name__}: tree verification needs a full-attention dynamic cache (or a cache "
                     "with keep_positions); use chain drafting with this cache")


class TreeSpeculativeDecoder(SpeculativeDecoder):
    """Greedy, lossless speculative decoding with a product draft tree (``tree=(4, 3, 2)``: 40 draft nodes).

    ``max_nodes`` > 0 verifies only that many draft nodes each round: those of highest cumulative draft
    probability (the product of the heads' probabilities along the path, as in EAGLE-2), which keeps the
    verify pass short while the heads still explore the whole product tree. The defaults are the best measured
    trade-off on SmolLM2-135M (docs/healing.md): acceptance 2.86 at about the speed of plain greedy on a 2-core
    CPU, where the 40-node tree accepts 2.99 but decodes slower.

    The target must implement ``forward_tree`` (:class:`~.target.CausalLMTarget` does) and its cache must let
    the accepted path be gathered (transformers' dynamic full-attention cache).
    """

    def __init__(self, target, drafter, tree: str | Sequence[int] = (4, 3, 2), max_nodes: int = 16,
                 before_verify=None) -> None:
        self.tree = parse_tree(tree)
        if max_nodes < 0:
            raise ValueError(f"max_nodes must be >= 0 (0: the whole tree), got {max_nodes}")
        self.max_nodes = max_nodes
        super().__init__(target, drafter, max_draft=len(self.tree), adaptive=False, before_verify=before_verify)
        if not hasattr(target, "forward_tree"):
            raise ValueError(f"{type(target).__name__} has no forward_tree: tree verification is not available")
        if drafter.cfg.sliding_window <= len(self.tree):
            raise ValueError(f"tree depth {len(self.tree)} needs MTP heads with a sliding window above it")

    # -- drafting ---------------------------------------------------------------------------------------
    @staticmethod
    def _branch_hidden(d: int, caches: list[HeadKVCache], prev: torch.Tensor, parents: torch.Tensor, lo: int,
                       m: int) -> torch.Tensor:
        """Head ``d``'s (d >= 1) hidden inputs at positions [lo, m) for each node: the trunk (committed) part from
        head d-1's cache, the rest from the parents' branch outputs ``prev`` [n_{d-1}, positions, hidden]."""
        t_end = m - prev.shape[1]  # head d-1's branch positions are [t_end, m), its trunk ends there
        parts = []
        if t_end > lo:
            parts.append(caches[d - 1].output_at(lo, t_end).expand(parents.numel(), -1, -1))
        parts.append(prev[parents][:, max(lo - t_end, 0):])
        return torch.cat(parts, dim=1)

    @torch.no_grad()
    def _draft_tree(self, tree: Sequence[int], toks: list[int], hist: _History,
                    caches: list[HeadKVCache]) -> DraftTree:
        m = len(toks) - 1
        window = self.drafter.cfg.sliding_window
        tokens, parents, depths, scores = [toks[-1]], [-1], [0], [0.0]
        level = [0]  # node indices of the current depth
        paths: list[list[int]] = [[]]  # draft tokens from the root to each node of the current depth
        prev = torch.zeros(1, 0, self.drafter.cfg.hidden_size)  # branch outputs of the previous depth
        prev_level = level
        for d, width in enumerate(tree):
            cache = caches[d]
            src_offset = hist.offset if d == 0 else caches[d - 1].offset
            lo = max(cache.get_seq_length(), src_offset, m - window)
            if lo > cache.get_seq_length():
                cache.reset(lo)  # a skipped or new depth restarts inside the window
            trunk_end = max(m - d, lo)  # inputs of positions < m - d are all committed tokens
            head = self.drafter.head_for_depth(d)
            if trunk_end > lo:  # catch up once on the trunk (appended to the head cache)
                hidden = hist.slice(lo, trunk_end) if d == 0 else caches[d - 1].output_at(lo, trunk_end)
                ids = torch.tensor([toks[j + d + 1] for j in range(lo, trunk_end)])
                head(self.drafter.embed(ids)[None], hidden, torch.arange(lo, trunk_end), cache)
            b0 = trunk_end
            if b0 < m:  # per-node positions [b0, m): a read-only, batch-expanded view of the trunk cache
                n = len(level)
                ids = torch.tensor([[(toks + paths[i])[j + d + 1] for j in range(b0, m)] for i in range(n)])
                # row of each node's parent in ``prev`` (levels are in increasing node order)
                par = torch.searchsorted(torch.tensor(prev_level), torch.tensor([parents[i] for i in level]))
                hidden = self._branch_hidden(d, caches, prev, par, b0, m)
                view = HeadKVCache(cache.window, cache.slack, cache.offset)
                if cache.keys is not None:
                    view.keys, view.values = cache.keys.expand(n, -1, -1, -1), cache.values.expand(n, -1, -1, -1)
                    view.outputs, view._len = cache.outputs.expand(n, -1, -1), cache.get_seq_length()
                out = head(self.drafter.embed(ids), hidden, torch.arange(b0, m), view)
                last = out[:, -1]
            else:  # depth 0: the root's last position is in the trunk
                out = torch.zeros(len(level), 0, self.drafter.cfg.hidden_size)
                last = cache.output_at(m - 1, m)[:, -1]
            logp = torch.log_softmax(self.drafter.logits(d, last).float(), dim=-1)
            top = logp.topk(width, dim=-1)  # [n, width]
            new_level, new_paths = [], []
            for i, node in enumerate(level):
                for t, lp in zip(top.indices[i].tolist(), top.values[i].tolist()):
                    tokens.append(int(t))
                    parents.append(node)
                    depths.append(d + 1)
                    scores.append(scores[node] + lp)
                    new_level.append(len(tokens) - 1)
                    new_paths.append(paths[i] + [int(t)])
            prev, prev_level, level, paths = out, level, new_level, new_paths
        trim_head_caches(caches[: len(tree)], m)
        return prune_tree(DraftTree(tokens, parents, depths), scores, self.max_nodes)

    # -- generation ---------------------------------------------------------------------------------
    @torch.no_grad()
    def generate(
        self,
        prompt_ids: list[int] | torch.Tensor,
        max_new_tokens: int,
        sampling: SamplingParams | None = None,
        generator: torch.Generator | None = None,
        eos_token_id: int | Collection[int] | None = None,
    ) -> tuple[list[int], SpecStats]:
        """Greedy decoding of up to ``max_new_tokens``; ``eos_token_id`` may be one id or several."""
        if sampling is not None and not sampling.greedy:
            raise ValueError("tree drafting verifies greedily only; use chain drafting (no tree) to sample")
        stops = _stop_set(eos_token_id)
        K = len(self.tree)
        t_start = time.perf_counter()
        prompt, stats, cache, hist, logits = self._prefill(prompt_ids, K)
        tok = int(logits[-1].argmax())
        toks, out = prompt + [tok], [tok]
        stats.time_prefill = time.perf_counter() - t_start
        caches = self.drafter.new_caches(K)
        while len(out) < max_new_tokens and tok not in stops:
            tree = self.tree[: max_new_tokens - len(out) - 1]
            n0 = cache.get_seq_length()
            t0 = time.perf_counter()
            draft = self._draft_tree(tree, toks, hist, caches) if tree else DraftTree([tok], [-1], [0])
            t1 = time.perf_counter()
            ids = torch.tensor([draft.tokens])
            if self.before_verify is not None and tree:
                self.before_verify(ids)
            pos = n0 + torch.tensor(draft.depths)
            logits, h = self.target.forward_tree(ids, cache, pos, tree_attention_mask(draft, n0))
            t2 = time.perf_counter()
            stats.target_forwards += 1
            path, nxt = greedy_tree_accept(draft, logits.argmax(-1).tolist())
            a = len(path) - 1
            if len(draft.tokens) > a + 1:
                keep_cache_positions(cache, n0, torch.tensor(path))
            hist.append(h[path])
            new = [draft.tokens[i] for i in path[1:]] + [nxt]
            hit = next((i for i, t in enumerate(new) if t in stops), None)  # a stop token ends decoding there
            if hit is not None:
                new = new[: hit + 1]
            toks.extend(new)
            out.extend(new)
            tok = new[-1]
            stats.time_draft += t1 - t0
            stats.time_verify += t2 - t1
            if tree:
                stats.draft_rounds += 1
                stats.draft_round_tokens += a + 1
                for i in range(min(a + 1, len(tree))):
                    stats.proposed[i] += 1
                    stats.accepted[i] += int(i < a)
            else:
                stats.plain_steps += 1
        out = out[:max_new_tokens]
        stats.new_tokens = len(out)
        stats.time_total = time.perf_counter() - t_start
        return out, stats
