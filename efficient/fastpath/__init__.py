"""Low-overhead building blocks for batch-1 generation: fused packed matrices, one kernel call each, and the
run-time kernel choice per (bits, shape, CPU). Imports nothing of the project outside ``efficient``."""

from efficient.fastpath.matrix import PackedMatrix, random_packed
from efficient.fastpath.select import Int8Matrix, choose

__all__ = ["Int8Matrix", "PackedMatrix", "choose", "random_packed"]
