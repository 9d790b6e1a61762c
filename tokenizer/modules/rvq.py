"""Residual vector quantizer with the official module tree (``vq.layers.N._codebook.embed``).

Always computed in fp32. Nearest codeword by the expanded squared distance; ties go to the lowest index.
The training-only EMA buffers (``inited``, ``cluster_size``, ``embed_avg``) are kept so checkpoints
round-trip, but only ``embed`` is used.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


class EuclideanCodebook(nn.Module):
    def __init__(self, dim: int, size: int) -> None:
        super().__init__()
        self.register_buffer("inited", torch.zeros(1))
        self.register_buffer("cluster_size", torch.zeros(size))
        self.register_buffer("embed", torch.zeros(size, dim))
        self.register_buffer("embed_avg", torch.zeros(size, dim))

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        embed_t = self.embed.t()
        dist = -(x.pow(2).sum(1, keepdim=True) - 2 * x @ embed_t + embed_t.pow(2).sum(0, keepdim=True))
        return dist.max(dim=-1).indices  # first maximum = lowest index on ties

    def decode(self, indices: torch.Tensor) -> torch.Tensor:
        return F.embedding(indices, self.embed)


class VectorQuantization(nn.Module):
    def __init__(self, dim: int, size: int) -> None:
        super().__init__()
        self._codebook = EuclideanCodebook(dim, size)


class ResidualVectorQuantization(nn.Module):
    def __init__(self, dim: int, sizes: list[int]) -> None:
        super().__init__()
        self.layers = nn.ModuleList([VectorQuantization(dim, k) for k in sizes])


class ResidualVectorQuantizer(nn.Module):
    def __init__(self, dim: int, sizes: list[int]) -> None:
        super().__init__()
        self.vq = ResidualVectorQuantization(dim, sizes)
        self.sizes = list(sizes)

    @property
    def n_q(self) -> int:
        return len(self.sizes)

    def codebook(self, i: int) -> EuclideanCodebook:
        return self.vq.layers[i]._codebook

    @torch.no_grad()
    def encode(self, x: torch.Tensor, n_q: int) -> torch.Tensor:
        """x [N, D] -> codes [n_q, N] (int64)."""
        residual = x.float()
        codes = []
        for i in range(n_q):
            book = self.codebook(i)
            idx = book.encode(residual)
            residual = residual - book.decode(idx)
            codes.append(idx)
        return torch.stack(codes) if codes else torch.zeros(0, x.shape[0], dtype=torch.long)

    @torch.no_grad()
    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """codes [n_q, N] -> sum of the codewords [N, D] (fp32), layer 0 first."""
        out = torch.zeros((), device=codes.device)
        for i, idx in enumerate(codes):
            out = out + self.codebook(i).decode(idx)
        return out
