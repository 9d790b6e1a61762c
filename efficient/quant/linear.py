"""``QuantLinear``: a drop-in replacement for ``nn.Linear`` holding packed low-bit weights."""

from __future__ import annotations

import torch
from torch import nn

from efficient.quant import formats, native
from efficient.quant.formats import QuantResult, Scheme, parse_scheme


class QuantLinear(nn.Module):
    """y = x @ W^T + b with W stored in a low-bit format (see :mod:`efficient.quant.formats`).

    Accepts any leading batch shape and dtype; computes in float32 through the native kernels (or the
    PyTorch fallback) and returns the input's dtype. ``tables`` selects the LUT precision of the uniform
    formats: ``"int8"`` (fast), ``"float"`` (exact) or ``None`` (``MIMO_QUANT_TABLES``, default int8).
    Packed tensors are buffers, so ``state_dict`` / ``load_state_dict`` carry them
    (strict shape checks apply as for any module).
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        scheme: str | Scheme,
        bias: bool = True,
        tables: str | None = None,
    ) -> None:
        super().__init__()
        self.tables = tables  # LUT precision of the uniform formats: "int8", "float" or None (env default)
        self.in_features = in_features
        self.out_features = out_features
        self.scheme = scheme if isinstance(scheme, Scheme) else parse_scheme(scheme)
        dtypes = {"qweight": torch.uint8, "wscale": torch.float32, "scales": torch.float16}
        for name, shape in formats.expected_shapes(self.scheme, out_features, in_features).items():
            self.register_buffer(name, torch.zeros(shape, dtype=dtypes[name]))
        if bias:
            self.register_buffer("bias", torch.zeros(out_features))
        else:
            self.bias = None
        self._tl: torch.Tensor | None = None
        self._i8: torch.Tensor | None = None  # int8-kernel layout (AVX512-VNNI CPUs), derived from qweight
        self._lut: torch.Tensor | None = None  # symmetric weights' w4g{g} twin for the LUT kernels (no VNNI)

    @classmethod
    def from_linear(cls, linear: nn.Linear, scheme: str | Scheme, result: QuantResult | None = None) -> QuantLinear:
        """Quantize ``linear`` (round-to-nearest unless a precomputed ``result`` is given, e.g. from GPTQ)."""
        sch = scheme if isinstance(scheme, Scheme) else parse_scheme(scheme)
        q = cls(linear.in_features, linear.out_features, sch, bias=linear.bias is not None)
        res = result if result is not None else formats.rtn_quantize(sch, linear.weight)
        for name, t in formats.pack(sch, res, linear.out_features, linear.in_features).items():
            getattr(q, name).copy_(t)
        if linear.bias is not None:
            q.bias.copy_(linear.bias.detach().float())
        return q

    def packed(self) -> dict[str, torch.Tensor]:
        d = {name: getattr(self, name) for name in formats.expected_shapes(self.scheme, 1, 1)}
        if self.scheme.kernel == "tl":
            if self._tl is None:
                self._tl = formats.tl_layout(formats.unpack_i2s(self.qweight), self.in_features)
            d["tl"] = self._tl
        if self.scheme.kernel == "i2s" and native.int8_kernel_for("ternary"):
            if self._i8 is None:
                self._i8 = formats.int8_ternary_layout(self.qweight, self.wscale)
            d["int8"] = self._i8
        if self.scheme.kind == "uniform" and native.int8_kernel_for(self.scheme.bits):
            if self._i8 is None:
                kp = formats.padded_k(self.scheme, self.in_features)
                self._i8 = formats.int8_layout(self.qweight, self.out_features, kp, self.scheme.bits,
                                               self.scheme.group_size)
            d["int8"] = self._i8
        if self.scheme.kind == "sym" and not formats.sym_native(tables=self.tables):
            if self._lut is None:
                kp = formats.padded_k(self.scheme, self.in_features)
                self._lut = formats.sym_as_uniform(self.scheme, self.qweight, self.out_features, kp)[1]
            d["lut"] = self._lut
        return d

    def _load_from_state_dict(self, *args, **kwargs) -> None:  # noqa: ANN002, ANN003
        self._tl = self._i8 = self._lut = None  # derived layouts are rebuilt from the new codes
        super()._load_from_state_dict(*args, **kwargs)

    def dequantize(self) -> torch.Tensor:
        """The float32 weight [out, in] these codes represent."""
        return formats.dequantize(self.scheme, self.packed(), self.out_features, self.in_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        x2 = x.reshape(-1, self.in_features)
        if x2.device.type != "cpu":
            raise RuntimeError("QuantLinear runs on CPU only")
        y = formats.gemm(self.scheme, self.packed(), x2.float(), self.out_features, self.in_features,
                         tables=self.tables)
        if self.bias is not None:
            y = y + self.bias
        return y.to(x.dtype).reshape(*shape[:-1], self.out_features)

    def packed_bytes(self) -> int:
        names = [n for n in self.packed() if n not in ("tl", "int8", "lut")]  # derived layouts are not stored
        return sum(t.numel() * t.element_size() for t in (getattr(self, n) for n in names))

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, scheme={self.scheme.name}"
