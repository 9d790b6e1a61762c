"""Layer layouts and the attention config.

A layout is one letter per decoder layer:

- ``F`` full attention with a full-length KV cache. In HySparse it also emits block-max scores and picks
  the top-k blocks for the sparse layers after it.
- ``S`` HySparse sparse layer: no long KV of its own; attends to the selected blocks of the nearest preceding
  ``F`` layer's KV, plus its own sliding-window branch (own small KV), mixed by two sigmoid gates, with sinks.
- ``R`` HySparse re-selecting sparse layer (TidalDecode-style): like ``S``, but scores the borrowed keys with
  its own queries and picks fresh blocks, which the ``S`` layers after it then use. No extra KV memory; it
  costs one scan of the borrowed keys.
- ``W`` sliding-window attention with a learnable per-head sink (MiMo-V2-Flash hybrid SWA).
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field

KINDS = "FSRW"


def hysparse_layout(num_layers: int, sparse_per_full: int = 3, reselect_every: int | None = None) -> str:
    """``[1 full + M sparse]`` repeated, the last layer full.

    Full layers sit at ``0, M+1, 2(M+1), ...`` and at the last layer; a trailing block that would keep fewer
    than half of M sparse layers is merged into the one before it (30 layers, 1:3 -> 8 full layers, not 9).
    ``reselect_every=r`` turns every r-th sparse layer of a run into an ``R`` layer.
    """
    if num_layers < 2:
        raise ValueError(f"HySparse needs at least 2 layers (a full layer first and last); got {num_layers}")
    if sparse_per_full < 1:
        raise ValueError(f"sparse_per_full must be >= 1, got {sparse_per_full}")
    starts = list(range(0, num_layers - 1, sparse_per_full + 1))
    if len(starts) > 1 and (num_layers - 1 - starts[-1] - 1) < sparse_per_full / 2:
        starts.pop()
    kinds = ["S"] * num_layers
    for i in starts + [num_layers - 1]:
        kinds[i] = "F"
    if reselect_every:
        run = 0
        for i, kind in enumerate(kinds):
            run = run + 1 if kind == "S" else 0
            if kind == "S" and run > 1 and (run - 1) % reselect_every == 0:
                kinds[i] = "R"
    return "".join(kinds)


def hybrid_swa_layout(num_layers: int, swa_per_full: int = 5) -> str:
    """MiMo-V2-Flash: blocks of ``[N SWA + 1 full]`` with the first layer full too (48 layers, 5:1 -> 9 full)."""
    if swa_per_full < 1:
        raise ValueError(f"swa_per_full must be >= 1, got {swa_per_full}")
    return "".join("F" if i == 0 or (i + 1) % (swa_per_full + 1) == 0 else "W" for i in range(num_layers))


_PRESET = re.compile(r"^(hysparse|swa)-(\d+):(\d+)$")


def resolve_layout(spec: str, num_layers: int) -> str:
    """A layout string from a preset name or an explicit per-layer string, validated.

    Presets: ``full``, ``hysparse-1:M``, ``hysparse-sparsest`` (full first and last layers only),
    ``hysparse-sparsest-reselect`` (the same with an ``R`` layer every 4 sparse layers), ``swa-N:1``.
    """
    name = spec.strip()
    if name == "full":
        layout = "F" * num_layers
    elif name == "hysparse-sparsest":
        layout = hysparse_layout(num_layers, max(1, num_layers - 2))
    elif name == "hysparse-sparsest-reselect":
        layout = hysparse_layout(num_layers, max(1, num_layers - 2), reselect_every=4)
    elif m := _PRESET.match(name):
        kind, a, b = m.group(1), int(m.group(2)), int(m.group(3))
        if kind == "hysparse":
            if a != 1:
                raise ValueError(f"HySparse presets are written 'hysparse-1:M' (1 full per M sparse); got {spec!r}")
            layout = hysparse_layout(num_layers, b)
        else:
            if b != 1:
                raise ValueError(f"SWA presets are written 'swa-N:1' (N window layers per full); got {spec!r}")
            layout = hybrid_swa_layout(num_layers, a)
    else:
        layout = name.upper()
    validate_layout(layout, num_layers)
    return layout


def validate_layout(layout: str, num_layers: int) -> None:
    if len(layout) != num_layers:
        raise ValueError(f"layout {layout!r} has {len(layout)} letters but the model has {num_layers} layers")
    bad = sorted(set(layout) - set(KINDS))
    if bad:
        raise ValueError(f"layout {layout!r} has unknown layer kinds {bad}; use F (full), S, R (HySparse), W (SWA)")
    if ("S" in layout or "R" in layout) and layout[0] != "F":
        raise ValueError(f"layout {layout!r}: a HySparse layout must start with a full layer (F)")
    if ("S" in layout or "R" in layout) and layout[-1] != "F":
        raise ValueError(f"layout {layout!r}: the last layer of a HySparse layout must be full (F)")


def kv_sources(layout: str) -> list[int | None]:
    """For each layer, the full layer whose KV a sparse layer borrows (None for F and W layers)."""
    out, last_full = [], None
    for i, kind in enumerate(layout):
        if kind == "F":
            last_full = i
        out.append(last_full if kind in "SR" else None)
    return out


def selection_sources(layout: str) -> list[int | None]:
    """For each S/R layer, the layer whose block selection it uses (an R layer uses its own)."""
    out, last = [], None
    for i, kind in enumerate(layout):
        if kind in "FR":
            last = i
        out.append(last if kind in "SR" else None)
    return out


@dataclass
class AttentionConfig:
    """How each layer attends. Named presets: :meth:`hysparse`, :meth:`hybrid_swa`, :meth:`full`."""

    layout: str
    window: int = 128  # SWA window (W layers and the S/R layers' local branch)
    block_size: int = 64  # HySparse key block
    top_k: int = 16  # HySparse blocks per query and KV group (16 x 64 = 1024 tokens)
    rollback_slack: int = 16  # extra ring-buffer slots: the most tokens `cache.crop` can take back
    full_sink: bool = False  # per-head sink on full layers too (MiMo-V2-Flash keeps it off)
    sparse_skip_window: bool = False  # sparse branch skips keys the window branch covers (set by conversion)
    # S/R layers get their own query projection and a per-head value map for the borrowed K/V (converted
    # pretrained models: the full layer's keys and values live in another layer's space; see .reconstruct)
    sparse_adapter: bool = False
    extra: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name in ("window", "block_size", "top_k"):
            if getattr(self, name) < 1:
                raise ValueError(f"AttentionConfig.{name} must be >= 1, got {getattr(self, name)}")
        if self.rollback_slack < 0:
            raise ValueError(f"AttentionConfig.rollback_slack must be >= 0, got {self.rollback_slack}")
        bad = sorted(set(self.layout) - set(KINDS))
        if bad:
            raise ValueError(f"layout {self.layout!r} has unknown layer kinds {bad}")

    @classmethod
    def hysparse(cls, num_layers: int, sparse_per_full: int = 3, **kw) -> AttentionConfig:
        return cls(layout=hysparse_layout(num_layers, sparse_per_full, kw.pop("reselect_every", None)), **kw)

    @classmethod
    def hybrid_swa(cls, num_layers: int, swa_per_full: int = 5, **kw) -> AttentionConfig:
        return cls(layout=hybrid_swa_layout(num_layers, swa_per_full), **kw)

    @classmethod
    def full(cls, num_layers: int, **kw) -> AttentionConfig:
        return cls(layout="F" * num_layers, **kw)

    @property
    def ring_capacity(self) -> int:
        return self.window + self.rollback_slack

    def to_dict(self) -> dict:
        return asdict(self)
