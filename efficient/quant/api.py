"""``quantize(model, scheme)``: swap selected ``nn.Linear`` layers for ``QuantLinear``; packed checkpoints.

Works on any ``nn.Module``: a transformers causal LM (defaults skip ``lm_head``), or the speech LM, whose
backbone (``model.*``), local transformers (``local_transformer.*``, ``input_local_transformer.*``) and heads
are chosen with ``include`` / ``exclude`` glob patterns over qualified module names.
"""

from __future__ import annotations

import fnmatch
import json
import logging
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn

from efficient.quant import formats
from efficient.quant.embedding import replace_embedding, tied_embedding
from efficient.quant.formats import Scheme, parse_scheme
from efficient.quant.gptq import collect_hessians, gptq_quantize
from efficient.quant.layouts import Layout, get_layout, make_layout
from efficient.quant.linear import QuantLinear

log = logging.getLogger(__name__)

FORMAT_NAME = "mimo-audio-quant"
FORMAT_VERSION = 2  # 2: afpq3 stored at 3 bits (bit planes); version 1 stored it in 4-bit containers
CONFIG_FILE = "quant_config.json"
WEIGHTS_FILE = "model.safetensors"
DEFAULT_EXCLUDE = ("lm_head", "*.lm_head")


@dataclass
class LayerReport:
    name: str
    shape: tuple[int, int]
    scheme: str
    fp32_bytes: int
    packed_bytes: int
    weight_rel_err: float  # ||W - W_q||_F / ||W||_F
    output_rel_err: float | None  # sqrt(tr(dW H dW^T) / tr(W H W^T)) on calibration activations

    def row(self) -> str:
        out = "-" if self.output_rel_err is None else f"{self.output_rel_err:.4f}"
        return (f"{self.name:<48} {self.shape[0]:>6}x{self.shape[1]:<6} {self.fp32_bytes / 2**20:8.2f} "
                f"{self.packed_bytes / 2**20:8.3f} {self.weight_rel_err:10.4f} {out:>10}")


def summary_table(reports: list[LayerReport]) -> str:
    head = f"{'layer':<48} {'shape':>13} {'fp32 MiB':>8} {'q MiB':>8} {'w rel.err':>10} {'out rel.err':>10}"
    lines = [head, "-" * len(head)] + [r.row() for r in reports]
    tot32 = sum(r.fp32_bytes for r in reports)
    totq = sum(r.packed_bytes for r in reports)
    lines.append(f"{'total (' + str(len(reports)) + ' layers)':<48} {'':>13} {tot32 / 2**20:8.2f} {totq / 2**20:8.3f}"
                 f"   ({tot32 / max(totq, 1):.1f}x smaller)")
    return "\n".join(lines)


def select_linears(model: nn.Module, include: Iterable[str] | None = None,
                   exclude: Iterable[str] | None = None) -> list[tuple[str, nn.Linear]]:
    """Qualified names of the ``nn.Linear`` modules to quantize (glob patterns; a pattern ``p`` also
    matches everything below it, ``p.*``)."""
    inc = list(include) if include else ["*"]
    exc = list(exclude) if exclude is not None else list(DEFAULT_EXCLUDE)

    def match(name: str, pats: list[str]) -> bool:
        return any(fnmatch.fnmatchcase(name, p) or fnmatch.fnmatchcase(name, p + ".*") for p in pats)

    return [(n, m) for n, m in model.named_modules()
            if isinstance(m, nn.Linear) and match(n, inc) and not match(n, exc)]


def _set_module(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, new)


def text_calibration(model: nn.Module, tokenizer, text: str, n_tokens: int = 4096, seq_len: int = 256) -> Callable:
    """A calibration function running a transformers LM over the first ``n_tokens`` tokens of ``text``."""
    ids = tokenizer(text, return_tensors="pt").input_ids[0][:n_tokens]
    n = max(1, ids.numel() // seq_len)
    batches = ids[: n * seq_len].view(n, seq_len)

    def run(m: nn.Module) -> None:
        for i in range(0, n, 4):
            m(input_ids=batches[i : i + 4])

    return run


METHODS = ("rtn", "rtn-act", "gptq")
TRANSFORMS = (None, "awq")


@torch.no_grad()
def quantize(
    model: nn.Module,
    scheme: str | Scheme,
    method: str = "rtn",
    include: Iterable[str] | None = None,
    exclude: Iterable[str] | None = None,
    calib_fn: Callable[[nn.Module], None] | None = None,
    tokenizer=None,
    progress: bool = False,
    calib_text: str | None = None,
    overrides: dict[str, str] | None = None,
    embedding: str | None = None,
    transform: str | None = None,
    act_order: bool = False,
) -> list[LayerReport]:
    """Quantize the selected ``nn.Linear`` layers of ``model`` in place; returns a per-layer report.

    ``scheme``: one format for every layer (``w4g128``), or a mixed layout preset (``q2k-mix``, see
    :mod:`efficient.quant.layouts`) that names a scheme per tensor. ``overrides`` (``{glob: scheme}`` over
    qualified layer names, first match wins) and ``embedding`` (a scheme for a tied input embedding / output
    head, stored once as the head's packed codes) refine a single scheme into a layout.

    ``method``: ``rtn`` (round to nearest, per-group clip search), ``rtn-act`` (the same with the clip search
    weighted by each input column's mean squared activation on calibration text, i.e. the diagonal of the
    GPTQ Hessian: the codes stay round-to-nearest, the group ranges are chosen for the inputs the layer sees)
    or ``gptq`` (``act_order=True``: columns by descending activation, static groups, same stored format).
    ``transform="awq"`` first folds activation-aware per-channel scales into the RMSNorm weights and the
    preceding linears (exact in float; :mod:`efficient.quant.transforms`); it needs calibration too and a
    uniform default scheme. The calibrated methods and the transform need ``calib_fn(model)`` that runs
    forward passes, or a ``tokenizer`` and ``calib_text`` for a transformers LM, which then runs over that
    text; see :func:`text_calibration`.
    """
    layout = resolve_layout(scheme, overrides, embedding)
    if method not in METHODS:
        raise ValueError(f"unknown quantization method {method!r}: expected one of {', '.join(METHODS)}")
    targets = select_linears(model, include, exclude)
    if not targets:
        raise ValueError("no nn.Linear layer matches the include/exclude patterns")
    tied = None
    if layout.embedding:
        tied = tied_embedding(model)
        if tied is None:
            raise ValueError(f"layout {layout.name}: a low-bit embedding needs a model whose output head is tied "
                             "to its input embedding (get_input/output_embeddings share one weight)")
        targets = [(n, m) for n, m in targets if n != tied[1]]
        targets.append((tied[1], model.get_submodule(tied[1])))
    if transform not in TRANSFORMS:
        raise ValueError(f"unknown transform {transform!r}: expected one of {', '.join(map(str, TRANSFORMS))}")
    hessians: dict[str, torch.Tensor] = {}
    if (method != "rtn" or transform) and calib_fn is None:
        if tokenizer is None or calib_text is None:
            what = f"method={method!r}" if method != "rtn" else f"transform={transform!r}"
            raise ValueError(f"{what} needs calib_fn, or a tokenizer and calib_text to calibrate on")
        calib_fn = text_calibration(model, tokenizer, calib_text)
    if transform == "awq":
        from efficient.quant.transforms import awq_transform

        names = {n for n, _ in targets}
        awq_transform(model, layout.default, calib_fn, skip=tuple(
            n for n, _ in select_linears(model, None, ()) if n not in names))
    if method != "rtn":
        # the tied matrix is also the embedding table, which no activation statistic describes: RTN for it
        hessians = dict(collect_hessians(model, [t for t in targets if not tied or t[0] != tied[1]], calib_fn))
    reports = []
    it = targets
    if progress:
        from tqdm import tqdm

        it = tqdm(targets, desc=f"quantize {layout.name} ({method})", unit="layer")
    for name, lin in it:
        sch = parse_scheme(layout.embedding if tied and name == tied[1] else layout.scheme_for(name))
        w = lin.weight.detach().float()
        H = hessians.get(name)
        if H is None:
            res = formats.rtn_quantize(sch, w)
        elif method == "rtn-act":
            res = formats.rtn_quantize(sch, w, col_weight=H.diagonal())
        else:
            res = gptq_quantize(sch, w, H, act_order=act_order)
        q = QuantLinear.from_linear(lin, sch, res)
        dw = res.dequant - w
        out_err = None
        if H is not None:
            out_err = float(torch.sqrt((dw @ H * dw).sum() / (w @ H * w).sum().clamp_min(1e-30)))
        reports.append(LayerReport(name, (lin.out_features, lin.in_features), sch.name, w.numel() * 4,
                                   q.packed_bytes(), float(dw.norm() / w.norm().clamp_min(1e-30)), out_err))
        _set_module(model, name, q)
    info = {"scheme": layout.name, "method": method}
    if transform:
        info["transform"] = transform
    if act_order and method == "gptq":
        info["act_order"] = True
    if tied:
        emb = model.get_submodule(tied[0])
        replace_embedding(model, tied[0], tied[1], emb.num_embeddings, emb.embedding_dim, emb.padding_idx)
        info["embedding"] = {"module": tied[0], "head": tied[1], "num_embeddings": emb.num_embeddings,
                             "embedding_dim": emb.embedding_dim, "padding_idx": emb.padding_idx}
    model._mimo_quant = info  # noqa: SLF001 - read by save_quantized
    return reports


def resolve_layout(scheme: str | Scheme, overrides: dict[str, str] | None = None,
                   embedding: str | None = None) -> Layout:
    """A scheme name, a ``Scheme`` or a layout preset name, refined by ``overrides`` / ``embedding``."""
    if isinstance(scheme, Scheme):
        scheme = scheme.name
    preset = get_layout(scheme)
    if preset is None:
        return make_layout(parse_scheme(scheme).name, overrides, embedding)
    if overrides or embedding:
        return make_layout(preset.default, {**dict(preset.rules), **(overrides or {})},
                           embedding or preset.embedding, name=f"{preset.name}*")
    return preset


# ---------------------------------------------------------------------------------------------------------
# Checkpoints: safetensors (all parameters and buffers, packed layers included) + quant_config.json.
# ---------------------------------------------------------------------------------------------------------
def quant_layers(model: nn.Module) -> dict[str, dict]:
    return {n: {"scheme": m.scheme.name, "in_features": m.in_features, "out_features": m.out_features,
                "bias": m.bias is not None}
            for n, m in model.named_modules() if isinstance(m, QuantLinear)}


def save_quantized(model: nn.Module, out_dir: str | Path, reports: list[LayerReport] | None = None) -> Path:
    """Write ``model.safetensors`` + ``quant_config.json`` (+ the transformers config when present)."""
    from safetensors.torch import save_model

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    save_model(model, str(out / WEIGHTS_FILE))
    cfg = {"format": FORMAT_NAME, "format_version": FORMAT_VERSION, "layers": quant_layers(model),
           **getattr(model, "_mimo_quant", {})}
    if reports:
        cfg["report"] = [asdict(r) for r in reports]
    (out / CONFIG_FILE).write_text(json.dumps(cfg, indent=1))
    if hasattr(model, "config") and hasattr(model.config, "save_pretrained"):
        model.config.save_pretrained(out)
    return out


def read_quant_config(path: str | Path) -> dict:
    p = Path(path) / CONFIG_FILE
    if not p.is_file():
        raise FileNotFoundError(f"{p} not found: not a quantized checkpoint directory")
    try:
        cfg = json.loads(p.read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"{p} is not valid JSON: {exc}") from exc
    if cfg.get("format") != FORMAT_NAME:
        raise ValueError(f"{p}: format {cfg.get('format')!r} is not {FORMAT_NAME!r}")
    version = cfg.get("format_version")
    if version not in (1, FORMAT_VERSION):
        raise ValueError(f"{p}: quantized format version {version!r} is not supported "
                         f"(this build reads versions 1 and {FORMAT_VERSION})")
    if version == 1:  # identical layouts except afpq3
        old = sorted(n for n, spec in cfg.get("layers", {}).items() if spec.get("scheme", "").startswith("afpq3"))
        if old:
            raise ValueError(f"{p}: format version 1 stored afpq3 layers ({old[0]}, ...) in 4-bit containers; "
                             "this build packs them at 3 bits: quantize the model again")
    return cfg


def apply_quant_config(model: nn.Module, cfg: dict) -> None:
    """Replace the layers named in ``cfg['layers']`` by empty ``QuantLinear`` modules of the right shape."""
    for name, spec in cfg["layers"].items():
        try:
            old = model.get_submodule(name)
        except AttributeError as exc:
            raise ValueError(f"quantized layer {name!r} does not exist in this model") from exc
        if isinstance(old, nn.Linear) and (old.in_features, old.out_features) != (spec["in_features"],
                                                                                  spec["out_features"]):
            raise ValueError(f"layer {name}: checkpoint shape {spec['out_features']}x{spec['in_features']} "
                             f"does not match the model's {old.out_features}x{old.in_features}")
        _set_module(model, name, QuantLinear(spec["in_features"], spec["out_features"], spec["scheme"],
                                             bias=spec["bias"]))
    emb = cfg.get("embedding")
    if emb:  # the tied embedding reads the packed head's codes
        if emb["head"] not in cfg["layers"]:
            raise ValueError(f"quantized embedding {emb['module']!r} names head {emb['head']!r}, which is not a "
                             "quantized layer of the checkpoint")
        replace_embedding(model, emb["module"], emb["head"], emb["num_embeddings"], emb["embedding_dim"],
                          emb.get("padding_idx"))


def load_quantized(model: nn.Module, path: str | Path) -> nn.Module:
    """Load a packed checkpoint into ``model`` (an unquantized skeleton of the same architecture)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(path)
    cfg = read_quant_config(path)
    apply_quant_config(model, cfg)
    wfile = path / WEIGHTS_FILE
    if not wfile.is_file():
        raise FileNotFoundError(f"{wfile} not found")
    try:
        state = load_file(str(wfile))
    except (SafetensorError, OSError) as exc:
        raise ValueError(f"{wfile} is not a readable safetensors file (truncated or corrupt?): {exc}") from exc
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    # Tied parameters (e.g. lm_head = embed_tokens) are saved once.
    ptrs = {}
    for k, v in own.items():
        ptrs.setdefault(v.data_ptr(), []).append(k)
    missing = [k for k in missing if not any(o in state for o in ptrs[own[k].data_ptr()])]
    unexpected = [k for k in state if k not in own]
    if missing or unexpected:
        raise ValueError(f"{wfile}: missing tensors {missing[:5]}, unexpected tensors {unexpected[:5]}")
    for k, v in state.items():
        if tuple(v.shape) != tuple(own[k].shape):
            raise ValueError(f"{wfile}: tensor {k} has shape {tuple(v.shape)}, expected {tuple(own[k].shape)}")
        if v.dtype != own[k].dtype:
            raise ValueError(f"{wfile}: tensor {k} has dtype {v.dtype}, expected {own[k].dtype}")
    model.load_state_dict(state, strict=False)
    return model


def load_quantized_causal_lm(path: str | Path):
    """A transformers causal LM from a directory written by ``save_quantized`` (config.json inside)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    cfg = read_quant_config(path)
    config = AutoConfig.from_pretrained(path)
    model = AutoModelForCausalLM.from_config(config)  # random init is overwritten below
    load_quantized(model, path)
    if getattr(config, "tie_word_embeddings", False) and not cfg.get("embedding"):
        model.tie_weights()  # a quantized embedding already shares the head's codes
    return model.eval()
