"""``AudioTokenizer``: the user-facing tokenizer (audio in, 25 Hz codes out, and back).

Keeps everything that is not the network here: input loading and validation, resampling, the mel
front-end, cutting long audio into 60 s segments (each encoded as if alone, without the official batch
padding quirk), batching clips, device/dtype handling, checkpoints and streaming decoders.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn as nn

from tokenizer import checkpoint, defaults, silence
from tokenizer.audio import AudioInput, prepare_waveform
from tokenizer.codes import check_codes
from tokenizer.config import TokenizerConfig
from tokenizer.mel import LogMel
from tokenizer.model import MiMoAudioTokenizerModel
from tokenizer.modules.prepack import is_released, prepack_linears
from tokenizer.streaming import StreamDecoder

log = logging.getLogger(__name__)

ENCODE_SEGMENT_MEL_FRAMES = 6000  # 60 s, as the official demo wrapper
DECODE_SEGMENT_FRAMES = 1500  # 60 s of codes, as the official demo wrapper
MAX_MEL_FRAMES_PER_CALL = 12000  # bounds activation memory when batching many segments

_DTYPES = {"fp32": torch.float32, "float32": torch.float32, "bf16": torch.bfloat16, "bfloat16": torch.bfloat16,
           "fp16": torch.float16, "float16": torch.float16}


def resolve_dtype(dtype: torch.dtype | str | None) -> torch.dtype:
    if dtype is None:
        return torch.float32
    if isinstance(dtype, torch.dtype):
        if dtype not in (torch.float32, torch.bfloat16, torch.float16):
            raise ValueError(f"unsupported model dtype {dtype}; use float32 or bfloat16")
        return dtype
    if dtype not in _DTYPES:
        raise ValueError(f"unsupported model dtype {dtype!r}; use fp32 or bf16")
    return _DTYPES[dtype]


def resolve_device(device: torch.device | str | None) -> torch.device:
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def _progress(total: int, enabled: bool | None, desc: str):
    """tqdm bar over segments; ``enabled=None`` shows it only on a terminal."""
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="seg", disable=None if enabled is None else not enabled, leave=False)


class AudioTokenizer:
    """MiMo-Audio tokenizer: ``encode`` audio to codes [n_q, T] at 25 Hz, ``decode`` codes to 24 kHz audio."""

    def __init__(self, model: MiMoAudioTokenizerModel, device: torch.device | str | None = None,
                 dtype: torch.dtype | str | None = None) -> None:
        self.model = model.eval()
        self._to(resolve_device(device), resolve_dtype(dtype))
        cfg = model.config
        self.mel_frontend = LogMel(cfg.sampling_rate, cfg.nfft, cfg.window_size, cfg.hop_length, cfg.n_mels,
                                   cfg.fmin, cfg.fmax).to(self.device)

    def _to(self, device: torch.device, dtype: torch.dtype) -> None:
        # The quantizer and the iSTFT window stay fp32 whatever the model dtype (never rounded through bf16).
        enc, head = self.model.encoder, self.model.decoder.vocoder.head
        quantizer, istft = enc.quantizer, head.istft
        enc.quantizer, head.istft = None, None
        try:
            self.model.to(device=device, dtype=dtype)
        finally:
            enc.quantizer, head.istft = quantizer.to(device, torch.float32), istft.to(device, torch.float32)
        self.device, self.dtype = device, dtype
        packed = prepack_linears(self.model, enable=dtype == torch.bfloat16 and device.type == "cpu")
        if packed:
            log.debug("pre-packed %d bf16 linear layers for oneDNN", packed)

    def pack_weights(self) -> int:
        """Keep only oneDNN pre-packed copies of the bf16 linear weights (bf16 model on CPU): outputs unchanged,
        faster small products, and none of the memory a second copy costs. The tokenizer can then no longer be
        saved or moved to another device. Returns the number of packed linears (0 where unsupported)."""
        if self.dtype != torch.bfloat16 or self.device.type != "cpu":
            return 0
        return prepack_linears(self.model, enable=True, release_plain=True)

    # ---- construction ---------------------------------------------------------------------------
    @classmethod
    def from_pretrained(cls, path: str | Path | None = None, device: torch.device | str | None = None,
                        dtype: torch.dtype | str | None = None) -> AudioTokenizer:
        """Load a local directory in the official layout (config.json + model.safetensors or shards).

        ``path=None`` loads the embedded default tokenizer shipped with the package
        (:func:`tokenizer.default_tokenizer_dir`).
        """
        if path is None:
            path = defaults.default_tokenizer_dir()
            log.info("audio tokenizer: %s", defaults.describe(path, "audio tokenizer"))
        path = Path(path)
        files = checkpoint.weight_files(path)  # clear errors for a missing dir or missing weights first
        cfg = TokenizerConfig.from_json(path / checkpoint.CONFIG)
        with torch.device("meta"):
            model = MiMoAudioTokenizerModel(cfg)
        checkpoint.load_into(model, checkpoint.read_state_dict(path))
        log.info("loaded tokenizer from %s (%d file(s), %.1f M params)", path, len(files), _params(model) / 1e6)
        return cls(model, device, dtype)

    @classmethod
    def from_config(cls, config: TokenizerConfig, seed: int = 0, device: torch.device | str | None = None,
                    dtype: torch.dtype | str | None = None) -> AudioTokenizer:
        """A tokenizer with random weights (deterministic in ``seed``): for tests and benchmarks only."""
        with torch.device("meta"):
            model = MiMoAudioTokenizerModel(config)
        empty = {k: torch.empty(v.shape, dtype=v.dtype) for k, v in model.state_dict().items()}
        model.load_state_dict(empty, assign=True)
        init_random(model, seed)
        return cls(model, device, dtype)

    def save_pretrained(self, path: str | Path, max_shard_bytes: int | None = None) -> None:
        """Write config.json + model.safetensors (official names; shards + index with ``max_shard_bytes``)."""
        if any(isinstance(m, nn.Linear) and is_released(m) for m in self.model.modules()):
            raise ValueError("this tokenizer keeps only pre-packed weights (pack_weights): it cannot be saved")
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        self.config.save_json(path / checkpoint.CONFIG)
        checkpoint.save(self.model, path, max_shard_bytes)

    # ---- properties -----------------------------------------------------------------------------
    @property
    def config(self) -> TokenizerConfig:
        return self.model.config

    @property
    def sample_rate(self) -> int:
        return self.config.sampling_rate

    @property
    def samples_per_frame(self) -> int:
        return self.config.samples_per_frame

    @property
    def frame_rate(self) -> int | float:
        rate = self.config.frame_rate
        return int(rate) if float(rate).is_integer() else rate

    @property
    def num_quantizers(self) -> int:
        return self.config.num_quantizers

    def code_frames(self, num_samples: int) -> int:
        """Code frames for ``num_samples`` samples at 24 kHz (segmented exactly as :meth:`encode` does)."""
        mel = self.config.mel_frames(num_samples)
        full, rest = divmod(mel, ENCODE_SEGMENT_MEL_FRAMES)
        n = full * self.config.code_frames_from_mel(ENCODE_SEGMENT_MEL_FRAMES)
        return n + (self.config.code_frames_from_mel(rest) if rest else 0)

    # ---- encode ---------------------------------------------------------------------------------
    def mel(self, wav: AudioInput, sample_rate: int | None = None) -> torch.Tensor:
        """Log-mel features [n_mels, frames] of the whole input (resampled to 24 kHz, mono)."""
        x = prepare_waveform(wav, sample_rate, self.sample_rate)
        return self.mel_frontend(x.to(self.device))

    def _check_n_q(self, n_q: int) -> int:
        if not isinstance(n_q, int) or not 1 <= n_q <= self.num_quantizers:
            raise ValueError(f"n_q must be an integer in 1..{self.num_quantizers}, got {n_q!r}")
        return n_q

    @torch.inference_mode()
    def encode(self, wav: AudioInput, sample_rate: int | None = None, n_q: int = 8,
               progress: bool | None = None) -> torch.Tensor:
        """Audio (path, numpy or torch; any rate; mono or multi-channel; int16/int32/uint8/float) -> codes
        LongTensor [n_q, T] at 25 Hz. Audio longer than 60 s is encoded in independent 60 s segments."""
        return self.encode_batch([wav], sample_rate, n_q, progress)[0]

    @torch.inference_mode()
    def encode_batch(self, wavs: Sequence[AudioInput], sample_rate: int | None = None, n_q: int = 8,
                     progress: bool | None = None) -> list[torch.Tensor]:
        """Several clips of any lengths in one call; each result equals ``encode`` of that clip alone."""
        n_q = self._check_n_q(n_q)
        if isinstance(wavs, (str, Path, torch.Tensor)) or hasattr(wavs, "dtype"):
            raise ValueError("encode_batch expects a list of clips; use encode for a single clip")
        mels = [self.mel(w, sample_rate) for w in wavs]
        segments, owner = [], []
        for i, mel in enumerate(mels):
            for seg in mel.split(ENCODE_SEGMENT_MEL_FRAMES, dim=1):
                segments.append(seg)
                owner.append(i)
        groups, cur, size = [], [], 0
        for j, seg in enumerate(segments):
            if cur and size + seg.shape[1] > MAX_MEL_FRAMES_PER_CALL:
                groups.append(cur)
                cur, size = [], 0
            cur.append(j)
            size += seg.shape[1]
        if cur:
            groups.append(cur)
        codes_of: list[list[torch.Tensor]] = [[] for _ in mels]
        with _progress(len(segments), progress if len(segments) > 1 else False, "encode") as bar:
            for group in groups:
                for j, c in zip(group, self.model.encode([segments[j] for j in group], n_q)):
                    codes_of[owner[j]].append(c.cpu())
                bar.update(len(group))
        return [torch.cat(c, dim=1) for c in codes_of]

    # ---- decode ---------------------------------------------------------------------------------
    @torch.inference_mode()
    def silence_code(self) -> int:
        """The first-codebook code this tokenizer gives digital silence (found once, by encoding 1 s of zeros)."""
        if getattr(self, "_silence_code", None) is None:
            zeros = torch.zeros(int(self.sample_rate))
            self._silence_code = silence.silence_code(self.encode(zeros, self.sample_rate, n_q=1))
        return self._silence_code

    def decode(self, codes: torch.Tensor, causal_norm: bool = False, progress: bool | None = None,
               gate_silence: bool = True) -> torch.Tensor:
        """Codes [n_q, T] (the first n_q codebooks) -> float32 waveform [960 * T] at 24 kHz.

        Codes longer than 60 s (1500 frames) are decoded in independent 1500-frame segments, as the
        official wrapper does. ``causal_norm=True`` gives the output of a :meth:`stream_decoder` (which
        does not gate). ``gate_silence``: runs of the code of digital silence decode to digital silence
        instead of the vocoder's noise floor (:mod:`tokenizer.silence`).
        """
        codes = check_codes(codes, self.config)
        if codes.shape[1] == 0:
            raise ValueError("codes have 0 frames: nothing to decode")
        codes = codes.to(self.device)
        parts = codes.split(DECODE_SEGMENT_FRAMES, dim=1)
        out = []
        with _progress(len(parts), progress if len(parts) > 1 else False, "decode") as bar:
            for part in parts:
                out.append(self.model.decode(part, causal_norm).float().cpu())
                bar.update(1)
        wav = torch.cat(out)
        if gate_silence:
            mask = silence.silent_frames(codes[0].cpu(), self.silence_code())
            if bool(mask.any()):
                hop = wav.numel() // codes.shape[1]
                wav = wav * silence.gate_gain(mask, hop, int(silence.FADE_SECONDS * self.sample_rate))
        return wav

    def stream_decoder(self, lookahead: int | None = None) -> StreamDecoder:
        """Incremental decoder: ``push(codes [n_q, t]) -> audio``, ``flush() -> audio``.

        ``lookahead`` (code frames, 25 Hz): ``None`` = the vocoder's full right receptive field (exact:
        equals ``decode(codes, causal_norm=True)``); smaller values trade exactness for latency.
        """
        return StreamDecoder(self.model, lookahead, DECODE_SEGMENT_FRAMES)

    def __repr__(self) -> str:
        return (f"AudioTokenizer({_params(self.model) / 1e6:.1f} M params, d_model={self.config.d_model}, "
                f"device={self.device}, dtype={self.dtype})")


def _params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@torch.no_grad()
def init_random(model: MiMoAudioTokenizerModel, seed: int) -> None:
    """Deterministic random weights with sane scales (unit-variance activations, unit-scale codebooks)."""
    g = torch.Generator().manual_seed(int(seed))
    for name, p in model.named_parameters():
        if name.endswith("norm.weight") or name.endswith("layer_norm.weight"):
            p.fill_(1.0)
        elif p.dim() == 1:
            p.zero_()
        else:
            fan_in = p.shape[0] if ".dconv" in name and name.endswith("conv.weight") else p[0].numel()
            p.normal_(0.0, fan_in**-0.5, generator=g)
    init_random_buffers(model, g)


@torch.no_grad()
def init_random_buffers(model: MiMoAudioTokenizerModel, g: torch.Generator) -> None:
    """The buffers and output scale of :func:`init_random` (also used by benchmarks that fill weights faster)."""
    for name, b in model.named_buffers():
        if name.endswith("_codebook.embed"):  # shrinking scales, like the residuals they quantise
            layer = int(name.split(".layers.")[1].split(".")[0])
            b.normal_(0.0, 0.6**layer, generator=g)
        elif name.endswith("istft.window"):
            b.copy_(torch.hann_window(b.shape[0]))
        else:
            b.zero_()
    # A small output head keeps random-weight audio in a sensible range.
    model.decoder.vocoder.head.out.weight.mul_(0.1)
