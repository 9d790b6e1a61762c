"""The slow tier: where the experts live when they are not in the expert cache.

- :class:`DiskExpertStore` reads expert tensors straight out of safetensors files (a transformers
  checkpoint directory as it is, or a file we wrote) with positioned reads at the offsets in the
  safetensors header. Nothing is memory-mapped into the process, so resident memory stays bounded by
  the cache budget; reads hit the page cache unless ``direct_io`` bypasses it (O_DIRECT, Linux).
- :class:`MemoryExpertStore` keeps experts in host memory (the slow tier when computing on a GPU; pin
  it for asynchronous copies).

An expert is the triple (gate [I, d], up [I, d], down [d, I]) of a SwiGLU FFN.
"""

from __future__ import annotations

import json
import mmap
import os
import re
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

ExpertKey = tuple[int, int]  # (moe layer index, expert index)
Expert = tuple[torch.Tensor, torch.Tensor, torch.Tensor]  # gate, up, down

_DTYPES = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16, "F64": torch.float64}
# transformers naming of routed experts: Qwen2/3-MoE, OLMoE (mlp.experts.E.{gate,up,down}_proj),
# Mixtral (block_sparse_moe.experts.E.{w1,w3,w2}), MoEfied models (mlp.experts.E.*)
_EXPERT_KEY = re.compile(
    r"^(?:model\.)?layers\.(\d+)\.(?:mlp|block_sparse_moe)\.experts\.(\d+)\.(gate_proj|up_proj|down_proj|w1|w3|w2)\.weight$"
)
_ROLE = {"gate_proj": 0, "w1": 0, "up_proj": 1, "w3": 1, "down_proj": 2, "w2": 2}


@dataclass(frozen=True)
class _Loc:
    file: int
    offset: int
    nbytes: int
    shape: tuple[int, ...]
    dtype: torch.dtype


def read_safetensors_header(path: Path) -> tuple[dict, int]:
    """(header dict, byte offset of the data section)."""
    with open(path, "rb") as fh:
        raw = fh.read(8)
        if len(raw) != 8:
            raise ValueError(f"{path}: not a safetensors file (too short)")
        (n,) = struct.unpack("<Q", raw)
        if n > 100 * 2**20:
            raise ValueError(f"{path}: implausible safetensors header length {n}")
        header = json.loads(fh.read(n))
    return header, 8 + n


def is_expert_key(name: str) -> bool:
    return _EXPERT_KEY.match(name) is not None


class ExpertStore:
    """Interface: ``read(key) -> Expert`` (fresh tensors), ``expert_bytes(key)``, ``keys``."""

    keys: list[ExpertKey]

    def read(self, key: ExpertKey) -> Expert:
        raise NotImplementedError

    def expert_bytes(self, key: ExpertKey) -> int:
        raise NotImplementedError

    def close(self) -> None:
        pass


class DiskExpertStore(ExpertStore):
    """Experts read on demand from safetensors files by positioned reads (thread-safe)."""

    def __init__(self, files: list[Path], direct_io: bool = False) -> None:
        self.files = [Path(f) for f in files]
        self.direct_io = direct_io and hasattr(os, "O_DIRECT")
        self._fds = []
        self._locs: dict[ExpertKey, list[_Loc | None]] = {}
        moe_layers: dict[int, int] = {}
        for i, f in enumerate(self.files):
            header, data_start = read_safetensors_header(f)
            flags = os.O_RDONLY | (os.O_DIRECT if self.direct_io else 0)
            self._fds.append(os.open(f, flags))
            for name, info in header.items():
                m = _EXPERT_KEY.match(name)
                if not m:
                    continue
                if info["dtype"] not in _DTYPES:
                    raise ValueError(f"{f}: expert tensor {name} has unsupported dtype {info['dtype']}")
                layer, expert, role = int(m.group(1)), int(m.group(2)), _ROLE[m.group(3)]
                moe_layers[layer] = 1
                start, end = info["data_offsets"]
                loc = _Loc(i, data_start + start, end - start, tuple(info["shape"]), _DTYPES[info["dtype"]])
                self._locs.setdefault((layer, expert), [None, None, None])[role] = loc
        if not self._locs:
            raise FileNotFoundError(f"no expert tensors (layers.N.mlp.experts.E.*) in {[str(f) for f in files]}")
        # decoder layer index -> dense MoE layer index (0..L-1), in order
        self.layer_ids = sorted(moe_layers)
        remap = {lid: j for j, lid in enumerate(self.layer_ids)}
        self._locs = {(remap[lay], e): v for (lay, e), v in self._locs.items()}
        for key, locs in self._locs.items():
            if any(x is None for x in locs):
                raise ValueError(f"expert {key} is missing one of gate/up/down in the checkpoint")
        self.keys = sorted(self._locs)

    @classmethod
    def from_directory(cls, directory: str | Path, direct_io: bool = False) -> DiskExpertStore:
        directory = Path(directory)
        index = directory / "model.safetensors.index.json"
        if index.is_file():
            files = sorted({directory / f for f in json.loads(index.read_text())["weight_map"].values()})
        else:
            files = sorted(directory.glob("*.safetensors"))
        if not files:
            raise FileNotFoundError(f"{directory}: no safetensors files")
        return cls(files, direct_io=direct_io)

    def expert_bytes(self, key: ExpertKey) -> int:
        return sum(loc.nbytes for loc in self._locs[key])

    def _read_tensor(self, loc: _Loc) -> torch.Tensor:
        fd = self._fds[loc.file]
        if not self.direct_io:
            buf = np.empty(loc.nbytes, dtype=np.uint8)
            got = os.preadv(fd, [buf], loc.offset)
        else:  # O_DIRECT needs block-aligned offsets, sizes and buffers
            align = 4096
            start = loc.offset - loc.offset % align
            length = -(-(loc.offset + loc.nbytes - start) // align) * align
            raw = mmap.mmap(-1, length)  # page-aligned anonymous buffer
            try:
                os.preadv(fd, [raw], start)
                buf = np.frombuffer(raw, dtype=np.uint8)[loc.offset - start : loc.offset - start + loc.nbytes].copy()
            finally:
                raw.close()
            got = loc.nbytes
        if got != loc.nbytes:
            raise OSError(f"short read from {self.files[loc.file]}: {got} of {loc.nbytes} bytes")
        return torch.from_numpy(buf).view(loc.dtype).reshape(loc.shape)

    def read(self, key: ExpertKey) -> Expert:
        if key not in self._locs:
            raise KeyError(f"expert {key} is not in the store")
        g, u, d = (self._read_tensor(loc) for loc in self._locs[key])
        return g, u, d

    def close(self) -> None:
        for fd in self._fds:
            os.close(fd)
        self._fds = []


class MemoryExpertStore(ExpertStore):
    """Experts held in host memory; ``read`` returns them (optionally pinned for async GPU copies)."""

    def __init__(self, experts: dict[ExpertKey, Expert], pin: bool = False) -> None:
        if pin and torch.cuda.is_available():
            experts = {k: tuple(t.pin_memory() for t in v) for k, v in experts.items()}
        self._experts = experts
        self.keys = sorted(experts)

    def expert_bytes(self, key: ExpertKey) -> int:
        return sum(t.numel() * t.element_size() for t in self._experts[key])

    def read(self, key: ExpertKey) -> Expert:
        return self._experts[key]
