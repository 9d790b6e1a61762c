"""Mixed layouts: one scheme per tensor, chosen by name, instead of one scheme for every layer.

``q2k-mix`` reproduces the bit allocation llama.cpp's ``Q2_K`` file type actually gets on a model whose hidden
size is not a multiple of its 256-wide k-quant super-block (SmolLM2-135M: 576). There the 576-input tensors
(attention q/k/v/o, MLP gate/up) cannot be k-quants and fall back to ``Q4_0`` (4-bit, group 32), ``ffn_down``
(1536 inputs) becomes ``Q3_K`` and the tied token embedding ``Q8_0``: no tensor is 2-bit. The layout maps these
onto the project's formats: 4-bit group 32 for the fallback tensors, 3-bit group 64 for ``down_proj`` (3.5 bits
per weight with its fp16 scale and min, ``Q3_K`` 3.44), and the tied embedding / output head stored once at
4-bit group 32 (our 4-bit g32 carries a min as well as a scale, 5.0 bits per weight against ``Q4_0``'s 4.5, so
an 8-bit embedding would not fit the ``Q2_K`` file's size). SmolLM2-135M: 75.5 MiB against llama.cpp's 84.1.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass

from efficient.quant.formats import parse_scheme


@dataclass(frozen=True)
class Layout:
    """Per-tensor schemes: the first rule whose glob matches a layer's qualified name wins, else ``default``.

    ``embedding``: the scheme of the tied input embedding and output head (stored once, as the head's packed
    codes), or ``None`` to leave them in float.
    """

    name: str
    default: str
    rules: tuple[tuple[str, str], ...] = ()
    embedding: str | None = None

    def scheme_for(self, module_name: str) -> str:
        for pattern, scheme in self.rules:
            if fnmatch.fnmatchcase(module_name, pattern):
                return scheme
        return self.default

    def schemes(self) -> list[str]:
        names = [self.default] + [s for _, s in self.rules] + ([self.embedding] if self.embedding else [])
        return list(dict.fromkeys(names))


LAYOUTS: dict[str, Layout] = {
    "q2k-mix": Layout("q2k-mix", default="w4g32", rules=(("*down_proj", "w3g64"),), embedding="w4g32"),
}


def get_layout(name: str) -> Layout | None:
    """The preset of that name (case-insensitive), or ``None`` when ``name`` is not a layout."""
    return LAYOUTS.get(name.strip().lower())


def make_layout(default: str, overrides: dict[str, str] | None = None, embedding: str | None = None,
                name: str | None = None) -> Layout:
    """A layout from a default scheme plus ``{glob: scheme}`` overrides (every scheme name is checked)."""
    rules = tuple((overrides or {}).items())
    for s in [default] + [s for _, s in rules] + ([embedding] if embedding else []):
        parse_scheme(s)
    label = name or default + "".join(f"+{p}={s}" for p, s in rules) + (f"+embedding={embedding}" if embedding else "")
    return Layout(label, default, rules, embedding)


def layer_bytes(scheme: str, out_features: int, in_features: int) -> int:
    """Bytes of one packed layer's stored tensors (what a checkpoint holds for it, bias excluded)."""
    from efficient.quant import formats

    sch = parse_scheme(scheme)
    shapes = formats.expected_shapes(sch, out_features, in_features)
    size = {"qweight": 1, "wscale": 4, "scales": 2}
    total = 0
    for name, shape in shapes.items():
        n = 1
        for d in shape:
            n *= d
        total += n * size[name]
    return total


def layout_bytes(layout: Layout, linears: dict[str, tuple[int, int]], head: str | None = None) -> int:
    """Packed bytes of ``linears`` (``{name: (out, in)}``) under ``layout``; ``head`` names the tied head,
    which takes the layout's embedding scheme (and is the only copy of the embedding)."""
    return sum(layer_bytes(layout.embedding if name == head and layout.embedding else layout.scheme_for(name), *s)
               for name, s in linears.items())
