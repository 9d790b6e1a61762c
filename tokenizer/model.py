"""The MiMo-Audio tokenizer networks: encoder (+RVQ), causal decoder and Vocos-style vocoder.

Module and parameter names reproduce the official state_dict exactly (``encoder.layers.N.self_attn.q_proj``,
``decoder.vocoder.head.out``, ...), so official checkpoints load without renaming. These classes are the
network only; audio I/O, long-audio segmentation and batching live in :mod:`tokenizer.api`.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from tokenizer.config import TokenizerConfig
from tokenizer.modules.conv import CausalConvTranspose1d
from tokenizer.modules.istft import ISTFTHead
from tokenizer.modules.rvq import ResidualVectorQuantizer
from tokenizer.modules.transformer import TransformerLayer, effective_window, make_norm, rope_cos_sin


def _positions(lengths: list[int], device: torch.device) -> torch.Tensor:
    return torch.cat([torch.arange(n, device=device) for n in lengths])


def _bounds(lengths: list[int]) -> list[tuple[int, int]]:
    out, s = [], 0
    for n in lengths:
        out.append((s, s + n))
        s += n
    return out


class AudioEncoder(nn.Module):
    """log-mel [n_mels, T_mel] per sequence -> 25 Hz latents; ``quantizer`` turns them into codes."""

    def __init__(self, cfg: TokenizerConfig) -> None:
        super().__init__()
        self.cfg = cfg
        d = cfg.d_model
        self.conv1 = nn.Conv1d(cfg.n_mels, d, kernel_size=cfg.kernel_size, padding=1)
        self.conv2 = nn.Conv1d(d, d, kernel_size=cfg.kernel_size, stride=cfg.stride_size, padding=1)
        self.layers = nn.ModuleList(
            [
                TransformerLayer(d, cfg.encoder_attention_heads, cfg.encoder_ffn_dim, cfg.ln_type)
                for _ in range(cfg.encoder_layers)
            ]
        )
        self.layer_norm = make_norm(cfg.ln_type, d)
        if cfg.avg_pooler != 1:
            self.down_sample_layer = nn.Sequential(
                nn.Conv1d(d, d, cfg.avg_pooler, cfg.avg_pooler, bias=False), nn.GELU()
            )
            self.down_sample_norm = make_norm(cfg.ln_type, d)
        else:
            self.down_sample_layer = None
        self.quantizer = ResidualVectorQuantizer(d, cfg.codebook_size) if cfg.num_quantizers else None

    @property
    def dtype(self) -> torch.dtype:
        return self.conv1.weight.dtype

    def forward(self, mels: list[torch.Tensor]) -> tuple[torch.Tensor, list[int]]:
        """Independent sequences (each as if encoded alone) -> packed latents [sum L25, D], lengths."""
        cfg, dtype = self.cfg, self.dtype
        # Convolutions per sequence: each sees its own zero padding, never a neighbour's frames.
        xs = []
        for mel in mels:
            x = F.gelu(self.conv1(mel.to(dtype)[None]))
            x = F.gelu(self.conv2(x))
            xs.append(x[0].transpose(0, 1))
        lengths = [x.shape[0] for x in xs]
        h = torch.cat(xs) if len(xs) > 1 else xs[0]
        cos, sin = rope_cos_sin(_positions(lengths, h.device), d_head(cfg, "encoder"), cfg.rope_theta, dtype)
        left, right = effective_window(cfg.encoder_attn_window_size, cfg.encoder_causal)
        bounds = _bounds(lengths)
        skip = None
        for i, layer in enumerate(self.layers):
            h = layer(h, cos, sin, bounds, left, right)
            if cfg.encoder_skip_layer_id is not None and i == cfg.encoder_skip_layer_id - 1:
                skip = h
        if skip is not None:
            h = h + skip
        h = self.layer_norm(h)
        if self.down_sample_layer is None:
            return h, lengths
        p = cfg.avg_pooler
        outs = []
        for s, e in bounds:
            x = h[s:e]
            if x.shape[0] % p:  # this sequence's own zero padding, as when it is encoded alone
                x = F.pad(x, (0, 0, 0, p - x.shape[0] % p))
            outs.append(self.down_sample_layer(x.transpose(0, 1)[None])[0].transpose(0, 1))
        lengths = [x.shape[0] for x in outs]
        h = self.down_sample_norm(torch.cat(outs) if len(outs) > 1 else outs[0])
        return h, lengths


class TransformerVocos(nn.Module):
    """Coarse mel [T100, n_mels] -> waveform [hop * T100] (windowed-attention transformer + iSTFT head)."""

    def __init__(self, cfg: TokenizerConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.embeddings = nn.Linear(cfg.n_mels, cfg.vocoder_dim, bias=False)
        self.layers = nn.ModuleList(
            [
                TransformerLayer(
                    cfg.vocoder_dim, cfg.vocoder_attention_heads, cfg.vocoder_intermediate_dim, cfg.ln_type
                )
                for _ in range(cfg.vocoder_num_layers)
            ]
        )
        self.layer_norm = make_norm(cfg.ln_type, cfg.vocoder_dim)
        self.head = ISTFTHead(cfg.vocoder_dim, cfg.nfft, cfg.hop_length)

    @property
    def window(self) -> tuple[int, int]:
        return effective_window(self.cfg.vocoder_attn_window_size, False)

    def rope(self, start: int, n: int, device: torch.device, dtype: torch.dtype) -> tuple[torch.Tensor, ...]:
        pos = torch.arange(start, start + n, device=device)
        return rope_cos_sin(pos, d_head(self.cfg, "vocoder"), self.cfg.rope_theta, dtype)

    def forward(self, mel: torch.Tensor) -> torch.Tensor:
        x = self.embeddings(mel.to(self.embeddings.weight.dtype))
        cos, sin = self.rope(0, x.shape[0], x.device, x.dtype)
        left, right = self.window
        for layer in self.layers:
            x = layer(x, cos, sin, [(0, x.shape[0])], left, right)
        return self.head(self.layer_norm(x))


class AudioDecoder(nn.Module):
    """25 Hz latents [T, D] -> waveform [samples_per_frame * T] (one sequence)."""

    def __init__(self, cfg: TokenizerConfig) -> None:
        super().__init__()
        self.cfg = cfg
        d = cfg.d_model
        self.dconv1 = CausalConvTranspose1d(d, d, cfg.avg_pooler, cfg.avg_pooler) if cfg.avg_pooler != 1 else None
        self.layers = nn.ModuleList(
            [
                TransformerLayer(d, cfg.decoder_attention_heads, cfg.decoder_ffn_dim, cfg.ln_type)
                for _ in range(cfg.decoder_layers)
            ]
        )
        self.layer_norm = make_norm(cfg.ln_type, d)
        self.dconv2 = CausalConvTranspose1d(d, cfg.n_mels, cfg.decoder_kernel_size, cfg.decoder_stride_size)
        self.vocoder = TransformerVocos(cfg)

    @property
    def window(self) -> tuple[int, int]:
        return effective_window(self.cfg.decoder_attn_window_size, self.cfg.decoder_causal)

    def coarse_mel(self, latents: torch.Tensor, causal_norm: bool = False) -> torch.Tensor:
        cfg = self.cfg
        h = latents.to(self.layer_norm.weight.dtype)
        if self.dconv1 is not None:
            h = self.dconv1(h, causal_norm)
        cos, sin = rope_cos_sin(torch.arange(h.shape[0], device=h.device), d_head(cfg, "decoder"), cfg.rope_theta,
                                h.dtype)
        left, right = self.window
        for layer in self.layers:
            h = layer(h, cos, sin, [(0, h.shape[0])], left, right)
        return self.dconv2(self.layer_norm(h), causal_norm)

    def forward(self, latents: torch.Tensor, causal_norm: bool = False) -> torch.Tensor:
        return self.vocoder(self.coarse_mel(latents, causal_norm))


def d_head(cfg: TokenizerConfig, stack: str) -> int:
    if stack == "vocoder":
        return cfg.vocoder_dim // cfg.vocoder_attention_heads
    heads = cfg.encoder_attention_heads if stack == "encoder" else cfg.decoder_attention_heads
    return cfg.d_model // heads


class MiMoAudioTokenizerModel(nn.Module):
    """``encoder`` (with ``encoder.quantizer``) + ``decoder``: the official module tree."""

    def __init__(self, cfg: TokenizerConfig) -> None:
        super().__init__()
        if not cfg.num_quantizers:
            raise ValueError("a tokenizer needs num_quantizers > 0")
        self.config = cfg
        self.encoder = AudioEncoder(cfg)
        self.decoder = AudioDecoder(cfg)

    @property
    def quantizer(self) -> ResidualVectorQuantizer:
        return self.encoder.quantizer

    @torch.no_grad()
    def encode(self, mels: list[torch.Tensor], n_q: int) -> list[torch.Tensor]:
        """Independent mel sequences -> codes [n_q, T_i] each."""
        h, lengths = self.encoder(mels)
        codes = self.quantizer.encode(h.float(), n_q)
        return list(codes.split(lengths, dim=1))

    @torch.no_grad()
    def decode(self, codes: torch.Tensor, causal_norm: bool = False) -> torch.Tensor:
        """codes [n_q, T] (one sequence) -> waveform [samples_per_frame * T] fp32."""
        return self.decoder(self.quantizer.decode(codes), causal_norm)
