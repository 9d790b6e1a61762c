"""What trains when a conversion is healed, per conversion; everything else stays frozen.

- Sparse attention (``efficient.attention``): ``"gates"`` = the sinks and gates the conversion added;
  ``"sparse"`` = those plus the q/k/v/o projections of the converted (S, R, W) layers, which is what
  lets a sparse layer's queries learn to read the K/V it borrows from its full layer.
- Low-bit weights (``efficient.quant``): :func:`attach_quant_adapters` turns every ``QuantLinear`` into a
  :class:`HealableQuantLinear` that keeps the codes frozen and trains either the per-group scales and
  mins (``"scales"``) or a low-rank adapter (``"lora"``), which for the uniform formats is group-wise
  (QA-LoRA: constant inside each quantization group, so it folds exactly into the groups' mins; for other
  formats it is merged and re-quantized), or (``"ste"``) latent float codes (in units of each group's step,
  starting at the codes) rounded every forward with a straight-through gradient, together with the group
  scales and mins, so codes can move. :func:`repack` turns them back into ``QuantLinear`` (for ``"ste"``: the
  codes the last forward rounded to, exactly), so the healed model runs on the same LUT kernels.
"""

from __future__ import annotations

import logging
import math

import torch
import torch.nn.functional as F
from torch import nn

log = logging.getLogger(__name__)

ATTENTION_SELECTIONS = ("gates", "sparse")
QUANT_MODES = ("scales", "lora", "ste")


def _set_module(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, new)


def attention_parameters(model: nn.Module, what: str = "sparse") -> list[tuple[str, nn.Parameter]]:
    """Parameters of converted attention layers: ``"gates"`` (sinks + gates) or ``"sparse"`` (+ q/k/v/o)."""
    from efficient.attention import EfficientAttention

    if what not in ATTENTION_SELECTIONS:
        raise ValueError(f"unknown attention selection {what!r}; expected one of {ATTENTION_SELECTIONS}")
    out = []
    for name, module in model.named_modules():
        if not isinstance(module, EfficientAttention) or module.kind == "F":
            continue
        params = dict(module.named_parameters())
        names = module.new_parameter_names()
        if what == "sparse":
            names += [n for n in params if n.split(".")[0] in ("q_proj", "k_proj", "v_proj", "o_proj")
                      and n not in names]
        out += [(f"{name}.{n}", params[n]) for n in names]
    return out


class HealableQuantLinear(nn.Module):
    """A ``QuantLinear`` opened for healing: frozen codes, trainable group scales/mins or a LoRA adapter.

    The forward runs in float (``x @ W^T``, W rebuilt from codes and parameters) so gradients flow; with
    ``mode="scales"`` the parameters are rounded to the fp16 they are stored in (straight-through), so
    :meth:`to_quant_linear` reproduces this forward up to the kernel's arithmetic.
    """

    def __init__(self, q: nn.Module, mode: str = "scales", rank: int = 8, alpha: float | None = None) -> None:
        from efficient.quant import formats

        super().__init__()
        if mode not in QUANT_MODES:
            raise ValueError(f"unknown low-bit healing mode {mode!r}; expected one of {QUANT_MODES}")
        self.mode, self.scheme = mode, q.scheme
        self.in_features, self.out_features = q.in_features, q.out_features
        self.tables = q.tables
        sch = q.scheme
        if mode in ("scales", "ste") and sch.kind != "uniform":
            raise ValueError(f"{sch.name}: {mode} healing supports the uniform w<bits>g<group> formats; use 'lora'")
        bias = None if q.bias is None else q.bias.detach().clone()
        self.register_buffer("bias", bias)
        if sch.kind == "uniform":
            kp = formats.padded_k(sch, q.in_features)
            codes, scale, mn = formats.unpack_uniform(q.qweight, q.out_features, kp, sch.bits, sch.group_size)
            self.register_buffer("codes", codes.clone())
            self.register_buffer("scale0", scale.clone())
            self.register_buffer("mn0", mn.clone())
            # trained in units of each group's step: scale = scale0 * (1 + d_scale), min = min0 + scale0 * d_min
            self.d_scale = nn.Parameter(torch.zeros_like(scale), requires_grad=mode in ("scales", "ste"))
            self.d_min = nn.Parameter(torch.zeros_like(mn), requires_grad=mode in ("scales", "ste"))
            if mode == "ste":  # latent codes in units of the group step, starting at the codes themselves
                self.latent = nn.Parameter(codes.float().clone())
            self.register_buffer("base_weight", None)
        else:  # any other format: a frozen float copy of what the codes represent
            self.register_buffer("codes", None)
            self.d_scale = self.d_min = None
            self.register_buffer("base_weight", q.dequantize().clone())
        if mode == "lora":
            # uniform formats: a group-wise (QA-LoRA) adapter, constant inside each group, so it merges
            # exactly into the groups' mins; other formats: an ordinary adapter, re-quantized when merged
            cols = self.scale0.shape[1] if self.codes is not None else q.in_features
            self.rank = rank
            self.lora_scale = (alpha if alpha is not None else rank) / rank
            self.lora_a = nn.Parameter(torch.randn(rank, cols) / math.sqrt(cols))
            self.lora_b = nn.Parameter(torch.zeros(q.out_features, rank))

    def group_params(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(scale, min) per group [out, groups] as trained (before fp16 rounding), adapter merged."""
        d_min = self.d_min
        if self.mode == "lora":
            d_min = d_min + self.lora_scale * (self.lora_b @ self.lora_a)
        return self.scale0 * (1 + self.d_scale), self.mn0 + self.scale0 * d_min

    def weight(self) -> torch.Tensor:
        """The float weight [out, in] this layer computes with (fp16-rounded group parameters)."""
        if self.codes is None:
            w = self.base_weight
            if self.mode == "lora":
                w = w + self.lora_scale * (self.lora_b @ self.lora_a)
            return w
        g = self.scheme.group_size
        n, kp = self.codes.shape

        def fp16(t: torch.Tensor) -> torch.Tensor:  # stored precision, gradient passed straight through
            return t + (t.detach().half().float() - t.detach())

        scale, mn = self.group_params()
        scale, mn = fp16(scale).unsqueeze(-1), fp16(mn).unsqueeze(-1)
        if self.mode == "ste":
            w = self.ste_codes() * scale + mn
        else:
            w = self.codes.float().view(n, kp // g, g) * scale + mn
        return w.view(n, kp)[:, : self.in_features]

    def ste_codes(self) -> torch.Tensor:
        """Codes [out, groups, g] of the latent codes: rounded with the gradient passed straight through,
        clamped to the grid (a latent pushed past either end stops there)."""
        g = self.scheme.group_size
        n, kp = self.latent.shape
        t = self.latent.view(n, kp // g, g)
        t = t + (t.detach().round() - t.detach())
        return t.clamp(0, (1 << self.scheme.bits) - 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.is_grad_enabled():
            w = self.weight()
        else:  # sampling: rebuild the weight only when a trained tensor changed since the last call
            key = tuple(p._version for _, p in self.trainable())
            if getattr(self, "_cached", None) is None or self._cached[0] != key:
                self._cached = (key, self.weight().detach())
            w = self._cached[1]
        return F.linear(x, w.to(x.dtype), None if self.bias is None else self.bias.to(x.dtype))

    def trainable(self) -> list[tuple[str, nn.Parameter]]:
        if self.mode == "scales":
            return [("d_scale", self.d_scale), ("d_min", self.d_min)]
        if self.mode == "ste":
            return [("d_scale", self.d_scale), ("d_min", self.d_min), ("latent", self.latent)]
        return [("lora_a", self.lora_a), ("lora_b", self.lora_b)]

    @torch.no_grad()
    def to_quant_linear(self) -> nn.Module:
        """Back to a packed ``QuantLinear``: uniform formats re-pack exactly (same codes, trained group
        parameters); other formats (LoRA only) are merged and re-quantized (round to nearest)."""
        from efficient.quant import QuantLinear, formats

        sch = self.scheme
        if self.codes is not None:  # exact: same (ste: re-rounded) codes, trained group parameters
            scale, mn = (t.detach().half().float() for t in self.group_params())
            codes = self.codes
            if self.mode == "ste":
                codes = self.ste_codes().detach().reshape(codes.shape).to(codes.dtype)
            res = formats.QuantResult(codes, (scale, mn), self.weight().detach())
        else:
            res = formats.rtn_quantize(sch, self.weight().detach())
        packed = formats.pack(sch, res, self.out_features, self.in_features)
        q = QuantLinear(self.in_features, self.out_features, sch, bias=self.bias is not None, tables=self.tables)
        for name, t in packed.items():
            getattr(q, name).copy_(t)
        if self.bias is not None:
            q.bias.copy_(self.bias)
        return q


def attach_quant_adapters(model: nn.Module, mode: str = "scales", rank: int = 8) -> list[tuple[str, nn.Parameter]]:
    """Replace every ``QuantLinear`` of ``model`` by a :class:`HealableQuantLinear`; returns the trainables."""
    from efficient.quant import QuantLinear

    targets = [(n, m) for n, m in model.named_modules() if isinstance(m, QuantLinear)]
    if not targets:
        raise ValueError("the model has no QuantLinear layers: quantize it first (efficient.quant.quantize)")
    out = []
    for name, q in targets:
        h = HealableQuantLinear(q, mode, rank).to(q.bias.device if q.bias is not None else "cpu")
        _set_module(model, name, h)
        out += [(f"{name}.{n}", p) for n, p in h.trainable()]
    log.info("opened %d low-bit layers for %s healing (%d tensors)", len(targets), mode, len(out))
    return out


def repack(model: nn.Module) -> int:
    """Turn every :class:`HealableQuantLinear` back into a packed ``QuantLinear``; returns how many."""
    targets = [(n, m) for n, m in model.named_modules() if isinstance(m, HealableQuantLinear)]
    for name, h in targets:
        _set_module(model, name, h.to_quant_linear())
    return len(targets)


def freeze_all_but(model: nn.Module, params: list[tuple[str, nn.Parameter]]) -> dict[str, bool]:
    """Only ``params`` require gradients; returns the previous flags (for :func:`restore_grad_flags`)."""
    keep = {id(p) for _, p in params}
    saved = {n: p.requires_grad for n, p in model.named_parameters()}
    for p in model.parameters():
        p.requires_grad_(id(p) in keep)
    return saved


def restore_grad_flags(model: nn.Module, saved: dict[str, bool]) -> None:
    for n, p in model.named_parameters():
        if n in saved:
            p.requires_grad_(saved[n])
