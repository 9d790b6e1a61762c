"""Low-overhead inference of the speech LM: static KV caches, fused projections, one kernel call per matrix.

The reference modules (``transformers.Qwen2Model`` with a ``DynamicCache``) spend most of a 1-token step
outside the matrix products: mask and cache bookkeeping, module dispatch, separate Q/K/V and gate/up
products, ``QuantLinear``'s per-call conversions. At the patch decoder's size (1024 wide, 16 layers, 11 steps
per patch) that overhead is larger than the weights' own reading time. Here each layer step is:
RMSNorm -> one fused QKV product -> RoPE from a precomputed table -> write K/V into a preallocated cache ->
SDPA -> O product -> RMSNorm -> one fused gate/up product -> SiLU*up -> down product, all in fp32
activations on :class:`efficient.fastpath.PackedMatrix` (LUT low-bit or dense weights).

* :class:`FastLayer` - one Qwen2 decoder layer (causal with a static cache, or bidirectional).
* :class:`FastPatchDecoder` - the patch decoder (``SpeechLM.decode_patch`` for batch 1, same sampler calls).
* :class:`FastSpeechLM` - the whole LM for batch-1 generation: text embedding + patch encoder, backbone,
  text head, patch decoder; built from a :class:`SpeechLM` or (benchmarks) from random packed weights layer
  by layer, so an official-size model never exists in float.

Numerics: the same weights (codes) as ``efficient.quant.quantize`` gives the reference; activations stay fp32
where the reference may round to the model dtype, so logits agree to float tolerance (measured in the tests)
and greedy codes are identical.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F

from efficient.fastpath import PackedMatrix
from efficient.quant import native

from .modeling import SpeechLM


def _rope_table(rotary, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """cos/sin [n, head_dim] fp32 from a transformers rotary module (exactly the reference's values)."""
    dummy = torch.zeros(1, 1, dtype=torch.float32)
    cos, sin = rotary(dummy, torch.arange(n).unsqueeze(0))
    return cos[0].float().contiguous(), sin[0].float().contiguous()


def _rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x [H, M, D] with cos/sin [M, D]: x * cos + rotate_half(x) * sin."""
    half = x.shape[-1] // 2
    rot = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
    return torch.addcmul(x * cos, rot, sin)


class FastLayer:
    """One Qwen2 decoder layer over fp32 activations ``[M, D]`` (batch 1)."""

    def __init__(self, qkv: PackedMatrix, o: PackedMatrix, gate_up: PackedMatrix, down: PackedMatrix,
                 ln1: torch.Tensor, ln2: torch.Tensor, eps: float, heads: int, kv_heads: int, head_dim: int,
                 max_len: int, causal: bool = True) -> None:
        self.qkv, self.o, self.gate_up, self.down = qkv, o, gate_up, down
        self.ln1, self.ln2 = ln1.detach().float().contiguous(), ln2.detach().float().contiguous()
        self.eps, self.H, self.Hkv, self.D, self.causal = eps, heads, kv_heads, head_dim, causal
        self.dim = ln1.numel()
        self.ffn = gate_up.N // 2
        self.k = torch.zeros(1, kv_heads, max_len, head_dim)
        self.v = torch.zeros(1, kv_heads, max_len, head_dim)
        self.n = 0  # positions in the cache
        self._buf: dict[int, tuple[torch.Tensor, ...]] = {}
        self._rows: dict[int, tuple[torch.Tensor, ...]] = {}  # rows_ buffers per M
        lib = native.library()
        self._glue = lib if lib is not None and hasattr(lib, "lk_attn_step") else None
        if self._glue is not None:  # batch-1 steps: 4 kernel calls + 4 native glue calls, fixed buffers
            self._h, self._qkv1 = torch.empty(1, self.dim), torch.empty(1, qkv.N)
            self._att1, self._o1 = torch.empty(1, heads * head_dim), torch.empty(1, self.dim)
            self._gu1, self._act1 = torch.empty(1, gate_up.N), torch.empty(1, self.ffn)
            self._dn1 = torch.empty(1, self.dim)
            self._p = [t.data_ptr() for t in (self._h, self._qkv1, self._att1, self._o1, self._gu1, self._act1,
                                              self.ln1, self.ln2, self.k, self.v)]
            self._bias = qkv.bias.data_ptr() if qkv.bias is not None else None

    @classmethod
    def from_module(cls, layer, max_len: int, scheme: str | None = None, causal: bool = True) -> FastLayer:
        """From a ``Qwen2DecoderLayer`` (its linears ``nn.Linear`` or ``QuantLinear``)."""
        a, m = layer.self_attn, layer.mlp
        cfg = a.config
        qkv = PackedMatrix.from_modules([a.q_proj, a.k_proj, a.v_proj], scheme)
        o = PackedMatrix.from_modules([a.o_proj], scheme)
        gu = PackedMatrix.from_modules([m.gate_proj, m.up_proj], scheme)
        down = PackedMatrix.from_modules([m.down_proj], scheme)
        return cls(qkv, o, gu, down, layer.input_layernorm.weight, layer.post_attention_layernorm.weight,
                   layer.input_layernorm.variance_epsilon, cfg.num_attention_heads, cfg.num_key_value_heads,
                   a.head_dim, max_len, causal)

    def nbytes(self) -> int:
        return sum(m.nbytes() for m in (self.qkv, self.o, self.gate_up, self.down))

    def reset(self, n: int = 0) -> None:
        self.n = n

    def _buffers(self, M: int) -> tuple[torch.Tensor, ...]:
        b = self._buf.get(M)
        if b is None:
            b = (torch.empty(M, self.qkv.N), torch.empty(M, self.dim), torch.empty(M, self.gate_up.N),
                 torch.empty(M, self.ffn), torch.empty(M, self.dim))
            self._buf[M] = b
        return b

    def step_(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        """One position, in place: x fp32 [1, dim] contiguous becomes the layer's output (cos/sin [1, head_dim]
        contiguous). Native glue when the library has it, else :meth:`__call__`."""
        if self._glue is None:
            x.copy_(self(x, cos, sin))
            return x
        lib, (h, qkv, att, o, gu, act, ln1, ln2, kc, vc) = self._glue, self._p
        xp = x.data_ptr()
        lib.lk_add_rmsnorm(xp, None, ln1, self.eps, self.dim, h)
        self.qkv(self._h, self._qkv1, bias=False)
        if lib.lk_attn_step(qkv, self._bias, kc, vc, self.n, self.H, self.Hkv, self.D, self.k.shape[2],
                            cos.data_ptr(), sin.data_ptr(), att) != 0:
            raise ValueError(f"static cache of {self.k.shape[2]} positions is full")
        self.n += 1
        self.o(self._att1, self._o1)
        lib.lk_add_rmsnorm(xp, o, ln2, self.eps, self.dim, h)
        self.gate_up(self._h, self._gu1)
        lib.lk_silu_mul(gu, self.ffn, act)
        self.down(self._act1, self._dn1)
        return x.add_(self._dn1)

    def rows_(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        """Causal prefill of M positions, in place: x fp32 [M, dim] contiguous becomes the layer's output (cos/sin
        [M, head_dim] contiguous). One kernel call per matrix for all M rows, and per row the native glue of
        :meth:`step_` (RMSNorm + residual, RoPE + cache append + attention over the cache so far: causal by
        construction): the arithmetic of M single steps, bit-identical to them where the kernel's GEMM rows equal
        its GEMV (the int8 kernel's do). ~0.4-1 ms less per 4096-wide layer at M = 4 than :meth:`__call__`'s
        PyTorch ops (mask, RoPE, SDPA, norms). Without the glue (or for a bidirectional layer): :meth:`__call__`."""
        if self._glue is None or not self.causal:
            x.copy_(self(x, cos, sin))
            return x
        M, D, F_ = x.shape[0], self.dim, self.ffn
        if self.n + M > self.k.shape[2]:
            raise ValueError(f"static cache of {self.k.shape[2]} positions is full")
        b = self._rows.get(M)
        if b is None:
            b = self._rows[M] = tuple(torch.empty(M, n) for n in (D, self.qkv.N, self.H * self.D, D,
                                                                  self.gate_up.N, F_, D))
        h, qkv, att, o, gu, act, dn = b
        lib, (_, _, _, _, _, _, ln1, ln2, kc, vc) = self._glue, self._p
        xp, hp, qp, ap, op = (t.data_ptr() for t in (x, h, qkv, att, o))
        nq, na, Dh, cp, sp = self.qkv.N, self.H * self.D, self.D, cos.data_ptr(), sin.data_ptr()
        for i in range(M):
            lib.lk_add_rmsnorm(xp + 4 * i * D, None, ln1, self.eps, D, hp + 4 * i * D)
        self.qkv(h, qkv, bias=False)
        for i in range(M):
            lib.lk_attn_step(qp + 4 * i * nq, self._bias, kc, vc, self.n, self.H, self.Hkv, Dh, self.k.shape[2],
                             cp + 4 * i * Dh, sp + 4 * i * Dh, ap + 4 * i * na)
            self.n += 1
        self.o(att, o)
        for i in range(M):
            lib.lk_add_rmsnorm(xp + 4 * i * D, op + 4 * i * D, ln2, self.eps, D, hp + 4 * i * D)
        self.gate_up(h, gu)
        gp, actp = gu.data_ptr(), act.data_ptr()
        for i in range(M):
            lib.lk_silu_mul(gp + 8 * i * F_, F_, actp + 4 * i * F_)
        self.down(act, dn)
        return x.add_(dn)

    def blocks(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        """Independent blocks of ``G = len(cos)`` rows (the patch encoder's patches; attention within each block,
        causal if the layer is): x fp32 [N*G, dim] -> [N*G, dim], each block as :meth:`__call__` on it alone from
        an empty cache, with one kernel call per matrix for all N blocks (the cache is not used)."""
        G, H, Hkv, D = cos.shape[0], self.H, self.Hkv, self.D
        M = x.shape[0]
        N = M // G
        qkv, att_o, gu, act, dn = self._buffers(M)
        h = F.rms_norm(x, (self.dim,), self.ln1, self.eps)
        self.qkv(h, qkv)
        q = qkv[:, : H * D].view(N, G, H, D).transpose(1, 2)
        k = qkv[:, H * D : (H + Hkv) * D].view(N, G, Hkv, D).transpose(1, 2)
        v = qkv[:, (H + Hkv) * D :].view(N, G, Hkv, D).transpose(1, 2)
        att = F.scaled_dot_product_attention(_rope(q, cos, sin), _rope(k, cos, sin), v, is_causal=self.causal,
                                             enable_gqa=H != Hkv)
        self.o(att.transpose(1, 2).reshape(M, H * D), att_o)
        return self._mlp_residual(x + att_o, gu, act, dn)

    def _mlp_residual(self, x: torch.Tensor, gu: torch.Tensor, act: torch.Tensor, dn: torch.Tensor) -> torch.Tensor:
        """The MLP half of a layer with its residual, into the preallocated buffers."""
        h = F.rms_norm(x, (self.dim,), self.ln2, self.eps)
        self.gate_up(h, gu)
        torch.mul(F.silu(gu[:, : self.ffn]), gu[:, self.ffn :], out=act)
        self.down(act, dn)
        return x + dn

    def __call__(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        """x fp32 [M, dim] at positions ``n .. n+M-1`` (cos/sin [M, head_dim]); returns the new hidden [M, dim]."""
        M = x.shape[0]
        H, Hkv, D, n = self.H, self.Hkv, self.D, self.n
        if n + M > self.k.shape[2]:
            raise ValueError(f"static cache of {self.k.shape[2]} positions is full")
        qkv, att_o, gu, act, dn = self._buffers(M)
        h = F.rms_norm(x, (self.dim,), self.ln1, self.eps)
        self.qkv(h, qkv)
        q = qkv[:, : H * D].view(M, H, D).transpose(0, 1)
        k = qkv[:, H * D : (H + Hkv) * D].view(M, Hkv, D).transpose(0, 1)
        v = qkv[:, (H + Hkv) * D :].view(M, Hkv, D).transpose(0, 1)
        q = _rope(q, cos, sin)
        self.k[0, :, n : n + M] = _rope(k, cos, sin)
        self.v[0, :, n : n + M] = v
        keys, vals = self.k[:, :, : n + M], self.v[:, :, : n + M]
        mask, is_causal = None, False
        if self.causal and M > 1:
            if n == 0:
                is_causal = True
            else:  # query i sees keys up to n + i
                mask = torch.arange(n + M).unsqueeze(0) <= (n + torch.arange(M)).unsqueeze(1)
        att = F.scaled_dot_product_attention(q.unsqueeze(0), keys, vals, attn_mask=mask, is_causal=is_causal,
                                             enable_gqa=H != Hkv)
        self.n = n + M
        self.o(att[0].transpose(0, 1).reshape(M, H * D), att_o)
        return self._mlp_residual(x + att_o, gu, act, dn)


class FastPatchDecoder:
    """The patch decoder for batch 1: 11 steps of ``len(layers)`` :class:`FastLayer` over a static cache."""

    def __init__(self, layers: Sequence[FastLayer], norm: torch.Tensor, eps: float, heads: Sequence[PackedMatrix],
                 embeddings: Sequence[torch.Tensor], to_local: PackedMatrix | None, schedule, empty_ids: Sequence[int],
                 group_size: int, cos: torch.Tensor, sin: torch.Tensor) -> None:
        self.layers, self.norm, self.eps = list(layers), norm.detach().float().contiguous(), eps
        self.heads, self.to_local = list(heads), to_local
        self.emb = [e.detach().float().contiguous() for e in embeddings]
        self.schedule, self.empty_ids, self.G = schedule, list(empty_ids), group_size
        self.cos, self.sin = cos, sin
        self.dim = self.norm.numel()

    @classmethod
    def from_speech_lm(cls, lm: SpeechLM, scheme: str | None = None,
                       head_scheme: str | None = None) -> FastPatchDecoder:
        """``scheme`` quantizes the unquantized local-transformer linears (``QuantLinear`` ones keep their codes);
        ``head_scheme`` the per-channel heads (default: dense fp32)."""
        lt, cfg = lm.local_transformer, lm.config
        steps = len(lm.delay.schedule)
        layers = [FastLayer.from_module(layer, steps, scheme) for layer in lt.layers]
        cos, sin = _rope_table(lt.rotary_emb, steps)
        heads = [PackedMatrix.from_modules([h], head_scheme) for h in lm.local_transformer_lm_heads]
        to_local = (PackedMatrix.from_modules([lm.speech_embeddings_to_local])
                    if lm.speech_embeddings_to_local is not None else None)
        return cls(layers, lt.norm.weight, lt.norm.variance_epsilon, heads, [e.weight for e in lm.speech_embeddings],
                   to_local, lm.delay.schedule, cfg.speech_zeroemb_idx, cfg.group_size, cos, sin)

    def nbytes(self) -> int:
        return sum(layer.nbytes() for layer in self.layers)

    def step(self, x: torch.Tensor, t: int) -> torch.Tensor:
        """One step: x [1, dim] at position t -> normed hidden [1, dim]. ``x`` is overwritten (the residual)."""
        cos, sin = self.cos[t : t + 1], self.sin[t : t + 1]
        for layer in self.layers:
            layer.step_(x, cos, sin)
        return F.rms_norm(x, (self.dim,), self.norm, self.eps)

    @torch.no_grad()
    def decode_patch(self, local_hidden: torch.Tensor, sampler: Callable, generator=None,
                     trace: list | None = None) -> torch.Tensor:
        """``local_hidden [1, dim]`` -> codes [1, G, C], as ``SpeechLM.decode_patch`` (same sampler calls);
        ``trace`` collects the logits of every (channel, frame) emitted."""
        if local_hidden.shape[0] != 1:
            raise ValueError("FastPatchDecoder runs batch 1; use SpeechLM.decode_patch for batches")
        for layer in self.layers:
            layer.reset()
        C = len(self.emb)
        out = torch.empty(1, self.G, C, dtype=torch.long)
        x = local_hidden.reshape(1, -1).float().clone()  # the residual stream, updated in place
        last = len(self.schedule) - 1
        for t, emits in enumerate(self.schedule):
            h = self.step(x, t)
            nxt = torch.zeros(1, self.dim) if t < last else None
            for c, f in emits:
                logits = self.heads[c](h)
                if trace is not None:
                    trace.append(logits.clone())
                tok = sampler(logits, removed=(self.empty_ids[c],), generator=generator)
                out[:, f, c] = tok
                if nxt is not None:
                    e = self.emb[c][tok]
                    nxt += self.to_local(e) if self.to_local is not None else e
            x = nxt
        return out


class FastSpeechLM:
    """Batch-1 generation path of the whole speech LM (see the module docstring)."""

    def __init__(self, embed_tokens: torch.Tensor, speech_embeddings: Sequence[torch.Tensor],
                 encoder: Sequence[FastLayer], encoder_norm: torch.Tensor, group_downcast: PackedMatrix,
                 layers: Sequence[FastLayer], norm: torch.Tensor,
                 lm_head: PackedMatrix, hidden_downcast: PackedMatrix, decoder: FastPatchDecoder, eps: float,
                 empty_token_id: int, empty_ids: Sequence[int], rope: tuple[torch.Tensor, torch.Tensor],
                 enc_rope: tuple[torch.Tensor, torch.Tensor], embed_scale: torch.Tensor | None = None) -> None:
        self.embed_tokens = embed_tokens  # [vocab, hidden]; int8 rows times ``embed_scale [vocab]`` when given
        self.embed_scale = embed_scale
        self.speech_embeddings = [e.detach() for e in speech_embeddings]
        self.encoder, self.encoder_norm = list(encoder), encoder_norm.detach().float()
        self.group_downcast, self.layers, self.norm = group_downcast, list(layers), norm.detach().float()
        self.lm_head, self.hidden_downcast, self.decoder = lm_head, hidden_downcast, decoder
        self.eps, self.empty_token_id = eps, empty_token_id
        self.empty_ids = list(empty_ids)
        self.cos, self.sin = rope
        self.enc_cos, self.enc_sin = enc_rope
        self.n = 0
        self._last: torch.Tensor | None = None  # normed hidden of the last position appended
        # prefill of M > 1 positions: FastLayer.rows_ and the patch encoder over all patches at once; False = the
        # earlier path (PyTorch ops per layer, one patch at a time), kept for side-by-side timing
        self.fast_prefill = True

    @classmethod
    def from_speech_lm(cls, lm: SpeechLM, scheme: str | None = None, max_len: int = 1024,
                       head_scheme: str | None = None) -> FastSpeechLM:
        cfg = lm.config
        enc = [FastLayer.from_module(layer, cfg.group_size, scheme, causal=not cfg.input_full_attention)
               for layer in lm.input_local_transformer.layers]
        layers = [FastLayer.from_module(layer, max_len, scheme) for layer in lm.model.layers]
        group_down = PackedMatrix.from_modules([lm.speech_group_downcast], scheme)
        return cls(lm.model.embed_tokens.weight.detach(), [e.weight for e in lm.speech_embeddings], enc,
                   lm.input_local_transformer.norm.weight, group_down,
                   layers, lm.model.norm.weight, PackedMatrix.from_modules([lm.lm_head], head_scheme),
                   PackedMatrix.from_modules([lm.hidden_states_downcast], scheme),
                   FastPatchDecoder.from_speech_lm(lm, scheme), lm.model.norm.variance_epsilon, lm.empty_token_id,
                   cfg.speech_zeroemb_idx, _rope_table(lm.model.rotary_emb, max_len),
                   _rope_table(lm.input_local_transformer.rotary_emb, cfg.group_size))

    # ------------------------------------------------------------------------------------------ parts
    def backbone_nbytes(self) -> int:
        return sum(layer.nbytes() for layer in self.layers) + self.lm_head.nbytes() + self.hidden_downcast.nbytes()

    def encoder_nbytes(self) -> int:
        return sum(layer.nbytes() for layer in self.encoder) + self.group_downcast.nbytes()

    def reset(self) -> None:
        self.n = 0
        self._last = None
        for layer in self.layers:
            layer.reset()

    def choose_encoder_kernels(self, allow_requant: bool = False) -> dict[str, int]:
        """Time LUT vs dense bf16 (vs int8 with ``allow_requant``) for the patch encoder's matrices at its M (one
        patch = ``group_size`` rows) on this CPU and keep the fastest; returns how many matrices chose each."""
        from efficient.fastpath.select import choose

        M, picked = len(self.enc_cos), {}
        for layer in self.encoder:
            for name in ("qkv", "o", "gate_up", "down"):
                pm = getattr(layer, name)
                if not isinstance(pm, PackedMatrix) or pm.kind == "dense":
                    continue
                best, times = choose(pm, M, allow_requant=allow_requant)
                setattr(layer, name, best)
                kind = min(times, key=times.get)
                picked[kind] = picked.get(kind, 0) + 1
        return picked

    def encode_speech(self, codes: torch.Tensor) -> torch.Tensor:
        """Speech patches ``codes [N, C, G]`` -> backbone inputs [N, hidden] (patch encoder: all N patches in one
        pass of :meth:`FastLayer.blocks`; one patch at a time when ``fast_prefill`` is off)."""
        N, C, G = codes.shape
        mask = codes != torch.tensor(self.empty_ids[:C]).view(1, C, 1)  # empty codes add nothing
        x = torch.zeros(N, G, self.speech_embeddings[0].shape[1])
        for c in range(C):
            x += self.speech_embeddings[c][codes[:, c]].float() * mask[:, c].unsqueeze(-1)
        if self.fast_prefill:
            x = x.view(N * G, -1)
            for layer in self.encoder:
                x = layer.blocks(x, self.enc_cos, self.enc_sin)
        else:
            out = []
            for patch in x:
                for layer in self.encoder:
                    layer.reset()
                    patch = layer(patch, self.enc_cos, self.enc_sin)
                out.append(patch)
            x = torch.cat(out)
        x = F.rms_norm(x, (x.shape[1],), self.encoder_norm, self.eps)
        return self.group_downcast(x.reshape(N, -1))

    def embed(self, ids: torch.Tensor) -> torch.Tensor:
        """``ids [1, C+1, T]`` -> [T/G, hidden] fp32."""
        G = len(self.enc_cos)
        text = ids[0, 0, ::G]
        speech = text == self.empty_token_id
        rows = torch.where(speech, torch.zeros_like(text), text)
        x = self.embed_tokens[rows].float()
        if self.embed_scale is not None:
            x *= self.embed_scale[rows].unsqueeze(1)
        x[speech] = 0
        if bool(speech.any()):
            codes = ids[0, 1:].reshape(ids.shape[1] - 1, -1, G).transpose(0, 1)[speech]  # [N, C, G]
            x[speech] = self.encode_speech(codes)
        return x

    @torch.no_grad()
    def forward(self, ids: torch.Tensor, text_logits: bool = True) -> tuple[torch.Tensor | None, torch.Tensor]:
        """Append ``ids [1, C+1, T]`` to the cache; returns text logits [vocab] and patch-decoder input
        [1, local_dim] for the last position. ``text_logits=False`` skips the text head (one pass over its
        151680 rows, ~20 ms at 4 bits on one core) and returns None for it: for prompt pieces, whose last
        position is not the one generation continues from (:meth:`text_logits` gives them when it is)."""
        return self.forward_embeds(self.embed(ids), text_logits)

    @torch.no_grad()
    def forward_embeds(self, x: torch.Tensor, text_logits: bool = True) -> tuple[torch.Tensor | None, torch.Tensor]:
        """As :meth:`forward` from backbone inputs ``x [M, hidden]`` (e.g. :meth:`encode_speech`'s output)."""
        M = x.shape[0]
        cos, sin = self.cos[self.n : self.n + M], self.sin[self.n : self.n + M]
        x = x.float().clone().contiguous()  # updated in place by every layer
        if M == 1:
            for layer in self.layers:
                layer.step_(x, cos, sin)
        elif self.fast_prefill:
            for layer in self.layers:
                layer.rows_(x, cos, sin)
        else:
            for layer in self.layers:
                x = layer(x, cos, sin)
        self.n += M
        h = self._last = F.rms_norm(x[-1:], (x.shape[1],), self.norm, self.eps)
        return (self.lm_head(h)[0] if text_logits else None), self.hidden_downcast(h)

    @torch.no_grad()
    def text_logits(self) -> torch.Tensor:
        """Text logits [vocab] of the last position appended (e.g. after prompt pieces run without them)."""
        if self._last is None:
            raise ValueError("nothing appended yet")
        return self.lm_head(self._last)[0]
