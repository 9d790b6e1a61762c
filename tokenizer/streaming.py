"""Incremental decoding: codes in, audio out, O(chunk) work per chunk.

Every stage keeps the state it needs (moshi-style) instead of re-decoding overlapping windows:

- dequantizer: none (frame-wise);
- ``dconv1`` / ``dconv2``: the previous input frame and the running GroupNorm statistics;
- decoder transformer (causal): a key/value cache per layer;
- vocoder transformer (window left 40 / right 10): per layer, the keys/values of the last ``left`` frames and
  the frames still waiting for their right context; with full lookahead each layer delays by ``right`` frames;
- iSTFT: the overlap-add tail.

With full lookahead the output equals :meth:`MiMoAudioTokenizerModel.decode` with ``causal_norm=True`` for any
chunking. (The official decoder normalises with whole-sequence GroupNorm statistics, which a stream cannot
know; see :mod:`tokenizer.modules.conv`.) A smaller ``lookahead`` shortens each vocoder layer's right context.
"""

from __future__ import annotations

import torch

from tokenizer.codes import check_codes
from tokenizer.model import MiMoAudioTokenizerModel, d_head
from tokenizer.modules.conv import StreamingConvTranspose
from tokenizer.modules.istft import StreamingISTFT
from tokenizer.modules.transformer import TransformerLayer, local_attention, rope_cos_sin


class KVCache:
    """Growable key/value buffer [H, capacity, Dh] (amortised O(1) append)."""

    def __init__(self) -> None:
        self.k: torch.Tensor | None = None
        self.v: torch.Tensor | None = None
        self.n = 0

    def append(self, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        t = k.shape[1]
        if self.k is None or self.n + t > self.k.shape[1]:
            cap = max(64, 2 * (self.n + t))
            nk, nv = k.new_empty(k.shape[0], cap, k.shape[2]), v.new_empty(v.shape[0], cap, v.shape[2])
            if self.k is not None:
                nk[:, : self.n], nv[:, : self.n] = self.k[:, : self.n], self.v[:, : self.n]
            self.k, self.v = nk, nv
        self.k[:, self.n : self.n + t], self.v[:, self.n : self.n + t] = k, v
        self.n += t
        return self.k[:, : self.n], self.v[:, : self.n]


class _WindowedLayerState:
    """One vocoder layer: emits frame i once frames up to i + lookahead have arrived."""

    def __init__(self, layer: TransformerLayer, left: int, right: int, lookahead: int) -> None:
        self.layer, self.left, self.right, self.lookahead = layer, left, right, lookahead
        self.n_in = 0  # frames received
        self.n_out = 0  # frames emitted
        self.k_start = 0  # absolute position of k[:, 0]
        self.k = self.v = None
        self.x = self.q = None  # residual input / queries of frames not emitted yet

    def step(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, final: bool) -> torch.Tensor:
        if x.shape[0]:
            q, k, v = self.layer.qkv(x, cos, sin)
            cat = lambda a, b, d: b if a is None else torch.cat([a, b], d)
            self.k, self.v = cat(self.k, k, 1), cat(self.v, v, 1)
            self.q, self.x = cat(self.q, q, 1), cat(self.x, x, 0)
            self.n_in += x.shape[0]
        upto = self.n_in if final else self.n_in - self.lookahead
        t = upto - self.n_out
        if t <= 0 or self.x is None:
            return cos.new_zeros(0, self.layer.fc2.out_features).to(x.dtype)
        right = self.right if final else self.lookahead
        attn = local_attention(self.q[:, :t], self.k, self.v, self.left, right, q_start=self.n_out,
                               k_start=self.k_start)
        out = self.layer.post_attention(self.x[:t], attn)
        self.q, self.x = self.q[:, t:], self.x[t:]
        self.n_out = upto
        if self.left >= 0:  # keys older than the next query's window are never needed again
            drop = max(0, self.n_out - self.left - self.k_start)
            self.k, self.v = self.k[:, drop:], self.v[:, drop:]
            self.k_start += drop
        return out


def split_lookahead(total: int, layers: int, right: int) -> list[int]:
    """Spread ``total`` frames of right context over ``layers`` layers (each at most ``right``)."""
    base, extra = divmod(total, layers)
    return [min(right, base + (1 if i < extra else 0)) for i in range(layers)]


class StreamDecoder:
    """Push code chunks [n_q, t], get waveform chunks back; call :meth:`flush` at the end of the stream.

    ``lookahead`` is in code frames (25 Hz). ``None`` or anything >= :attr:`full_lookahead` is exact;
    smaller values cut latency by ``(full - lookahead) * 40 ms`` at some deviation from the offline output.
    The stream is cut into independent segments of ``segment_frames`` code frames, as offline decoding is.
    """

    def __init__(self, model: MiMoAudioTokenizerModel, lookahead: int | None = None, segment_frames: int = 1500):
        self.model = model
        cfg = model.config
        voc = model.decoder.vocoder
        self.left, self.right = voc.window
        self.voc_per_code = cfg.avg_pooler * cfg.decoder_stride_size
        if self.right < 0:
            raise ValueError("streaming needs a bounded vocoder right window")
        self.full_lookahead = -(-self.right * cfg.vocoder_num_layers // self.voc_per_code)
        if lookahead is not None and lookahead < 0:
            raise ValueError(f"lookahead must be >= 0 code frames, got {lookahead}")
        self.lookahead = self.full_lookahead if lookahead is None else min(int(lookahead), self.full_lookahead)
        per_layer_total = self.lookahead * self.voc_per_code
        if self.lookahead == self.full_lookahead:
            per_layer_total = self.right * cfg.vocoder_num_layers
        self.layer_lookahead = split_lookahead(per_layer_total, cfg.vocoder_num_layers, self.right)
        self.segment_frames = int(segment_frames)
        self.n_q: int | None = None
        self._reset_segment()

    @property
    def exact(self) -> bool:
        return self.lookahead == self.full_lookahead

    def frames_to_first_audio(self) -> int:
        """Code frames still to push before :meth:`push` returns audio (0 once the segment's audio has begun).

        With lookahead ``L`` the vocoder holds back ``L`` code frames and the iSTFT its overlap: pushing the
        first patch alone may return nothing yet and cost a pass over the decoder's weights for no audio."""
        if self.istft.emitted:
            return 0
        held = sum(self.layer_lookahead)  # vocoder frames held back for right context
        ist = self.istft.m
        need_voc = held + ist.pad // ist.hop_length + 1  # + frames the overlap-add needs before a sample is final
        return max(0, -(-need_voc // self.voc_per_code) - self.frames_in_segment)

    def _reset_segment(self) -> None:
        dec = self.model.decoder
        self.frames_in_segment = 0
        self.dconv1 = StreamingConvTranspose(dec.dconv1) if dec.dconv1 is not None else None
        self.dconv2 = StreamingConvTranspose(dec.dconv2)
        self.kv = [KVCache() for _ in dec.layers]
        self.dec_pos = 0
        self.voc_pos = 0
        self.voc_layers = [
            _WindowedLayerState(layer, self.left, self.right, la)
            for layer, la in zip(dec.vocoder.layers, self.layer_lookahead)
        ]
        self.istft = StreamingISTFT(dec.vocoder.head.istft)

    @torch.no_grad()
    def _decoder_step(self, codes: torch.Tensor) -> torch.Tensor:
        """Code frames -> vocoder input frames (coarse mel), all final immediately (causal)."""
        dec, cfg = self.model.decoder, self.model.config
        h = self.model.quantizer.decode(codes).to(dec.layer_norm.weight.dtype)
        if self.dconv1 is not None:
            h = self.dconv1.step(h)
        t = h.shape[0]
        pos = torch.arange(self.dec_pos, self.dec_pos + t, device=h.device)
        cos, sin = rope_cos_sin(pos, d_head(cfg, "decoder"), cfg.rope_theta, h.dtype)
        left, _ = dec.window
        for layer, cache in zip(dec.layers, self.kv):
            q, k, v = layer.qkv(h, cos, sin)
            keys, values = cache.append(k, v)
            h = layer.post_attention(h, local_attention(q, keys, values, left, 0, q_start=self.dec_pos))
        self.dec_pos += t
        return self.dconv2.step(dec.layer_norm(h))

    @torch.no_grad()
    def _vocoder_step(self, mel: torch.Tensor, final: bool) -> torch.Tensor:
        voc = self.model.decoder.vocoder
        x = voc.embeddings(mel.to(voc.embeddings.weight.dtype))
        for state in self.voc_layers:
            start = state.n_in
            cos, sin = voc.rope(start, x.shape[0], x.device, x.dtype)
            x = state.step(x, cos, sin, final)
        if x.shape[0]:
            spec = voc.head.spectrum(voc.layer_norm(x))
            out = self.istft.step(spec)
        else:
            out = self.istft.step(torch.zeros(voc.head.istft.n_fft // 2 + 1, 0, dtype=torch.complex64))
        if final:
            out = torch.cat([out, self.istft.flush()])
        return out

    def _validate(self, codes: torch.Tensor) -> torch.Tensor:
        if not isinstance(codes, torch.Tensor):
            codes = torch.as_tensor(codes)
        if codes.dim() != 2:
            raise ValueError(f"codes must be [n_q, frames], got shape {tuple(codes.shape)}")
        if self.n_q is None:
            self.n_q = codes.shape[0]
        elif codes.shape[0] != self.n_q:
            raise ValueError(f"this stream started with {self.n_q} codebooks, got a chunk with {codes.shape[0]}")
        return check_codes(codes, self.model.config)

    def push(self, codes: torch.Tensor) -> torch.Tensor:
        """Decode the next chunk of codes [n_q, t]; returns the audio that became final (may be empty)."""
        codes = self._validate(codes).to(self.model.decoder.layer_norm.weight.device)
        outs = []
        while codes.shape[1]:
            room = self.segment_frames - self.frames_in_segment
            part, codes = codes[:, :room], codes[:, room:]
            self.frames_in_segment += part.shape[1]
            end_of_segment = self.frames_in_segment == self.segment_frames
            outs.append(self._vocoder_step(self._decoder_step(part), final=end_of_segment))
            if end_of_segment:
                self._reset_segment()
        return torch.cat(outs).float().cpu() if outs else torch.zeros(0)

    def flush(self) -> torch.Tensor:
        """End of stream: emit the audio still held for lookahead; the decoder is then ready for a new stream."""
        if self.frames_in_segment == 0:
            out = torch.zeros(0)
        else:
            mel = torch.zeros(0, self.model.config.n_mels, device=self.model.decoder.layer_norm.weight.device)
            out = self._vocoder_step(mel, final=True).float().cpu()
        self._reset_segment()
        self.n_q = None
        return out
