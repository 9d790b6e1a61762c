"""A tied input embedding stored low-bit: the output head's packed codes serve the token lookup too.

A causal LM with tied embeddings (``lm_head.weight is embed_tokens.weight``) keeps one vocab x hidden matrix,
by far the largest tensor of a small model (SmolLM2-135M: 49152 x 576, 113 MB in fp32). Here the head becomes
a ``QuantLinear`` (it runs on the LUT kernels) and the embedding a :class:`QuantEmbedding` that holds no tensor
of its own: it looks rows up in the head's dequantized weight, so the checkpoint stores the matrix once, packed.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class QuantEmbedding(nn.Module):
    """``nn.Embedding`` whose table is the weight of the (packed) head ``head_name`` of ``root``.

    The head is looked up by name at every call, so it may be swapped (healing opens it as a trainable layer,
    :func:`efficient.distill.repack` packs it again) and the lookup follows. With gradients enabled the rows
    come from the head's differentiable weight (healing trains the shared group scales through both uses);
    otherwise from a dequantized copy, rebuilt only when the head's tensors change.
    """

    def __init__(self, root: nn.Module, head_name: str, num_embeddings: int, embedding_dim: int,
                 padding_idx: int | None = None) -> None:
        super().__init__()
        self._root = [root]  # a list, so the root is not registered as a submodule (no cycle in state_dict)
        self.head_name = head_name
        self.num_embeddings, self.embedding_dim, self.padding_idx = num_embeddings, embedding_dim, padding_idx
        self._cache: tuple | None = None

    def head(self) -> nn.Module:
        return self._root[0].get_submodule(self.head_name)

    def table(self) -> torch.Tensor:
        """The float [vocab, hidden] table the head's codes represent."""
        head = self.head()
        trainable = getattr(head, "trainable", None)  # a healing layer (efficient.distill.HealableQuantLinear)
        if trainable is not None:
            if torch.is_grad_enabled():
                return head.weight()
            key = ("heal", id(head), tuple(p._version for _, p in trainable()))
        else:
            key = ("packed", id(head), head.qweight._version, head.qweight.data_ptr())
        if self._cache is None or self._cache[0] != key:
            self._cache = None  # drop the old table before building the new one
            with torch.no_grad():
                w = head.weight() if trainable is not None else head.dequantize()
            self._cache = (key, w.detach())
        return self._cache[1]

    @property
    def weight(self) -> torch.Tensor:
        """Read-only float view (for code that inspects ``embed_tokens.weight``, e.g. its dtype or device)."""
        return self.table()

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return F.embedding(ids, self.table(), self.padding_idx)

    def extra_repr(self) -> str:
        return f"{self.num_embeddings}, {self.embedding_dim}, table=packed {self.head_name}"

    def __deepcopy__(self, memo: dict) -> QuantEmbedding:
        # the root is copied by whoever copies the model (it is in memo then); never copy the cached table
        new = QuantEmbedding.__new__(QuantEmbedding)
        memo[id(self)] = new
        nn.Module.__init__(new)
        new._root = [memo.get(id(self._root[0]), self._root[0])]
        new.head_name = self.head_name
        new.num_embeddings, new.embedding_dim, new.padding_idx = (self.num_embeddings, self.embedding_dim,
                                                                 self.padding_idx)
        new._cache = None
        new.training = self.training
        return new


def tied_embedding(model: nn.Module) -> tuple[str, str] | None:
    """``(embedding module name, head module name)`` when the model ties its output head to its input
    embedding (the same Parameter), else ``None``."""
    get_in = getattr(model, "get_input_embeddings", None)
    get_out = getattr(model, "get_output_embeddings", None)
    if get_in is None or get_out is None:
        return None
    emb, head = get_in(), get_out()
    if not isinstance(emb, nn.Embedding) or not isinstance(head, nn.Linear) or emb.weight is not head.weight:
        return None
    names = {id(m): n for n, m in model.named_modules(remove_duplicate=False)}
    return names[id(emb)], names[id(head)]


def replace_embedding(model: nn.Module, emb_name: str, head_name: str, num: int, dim: int,
                      padding_idx: int | None = None) -> QuantEmbedding:
    new = QuantEmbedding(model, head_name, num, dim, padding_idx)
    parent_name, _, child = emb_name.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, child, new)
    return new
