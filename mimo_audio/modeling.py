"""The MiMo-Audio patch speech LM in one file: patch encoder -> Qwen2 backbone -> patch decoder.

Data layout: the model reads ``ids [B, 9, T]`` with ``T % 4 == 0``. Row 0 is text, rows 1-8 the 8 RVQ
channels; one group of 4 columns is one *patch* = one backbone position. Only the first column of each
group is read on the text row. A patch is either a text patch (text id, audio rows = per-channel empty
ids) or a speech patch (text id = ``<|empty|>``, 4 frames of codes).

* input side: per-channel speech embeddings summed per frame, a small bidirectional transformer over the
  4 frames of each patch (``input_local_transformer``), frame-major concat and a linear "group downcast"
  to the backbone width; text patches use the backbone's token embedding.
* backbone: ``transformers.Qwen2Model`` (MiMo-7B), so anything that plugs into a transformers text model
  (kernels, quantised linears, attention backends) plugs in here the same way.
* output side: ``lm_head`` gives the next text token; ``hidden_states_downcast`` feeds the patch decoder
  (``local_transformer``), which emits the 4x8 codes of the next patch in 11 steps following the delay
  pattern (:mod:`mimo_audio.delay_pattern`), one linear head per channel.

Parameter names equal the official checkpoint's, so ``from_pretrained`` loads it strictly.

bf16 speech buffer. The official code sums the speech embeddings into a buffer that is bf16 even when the
model runs in fp32. ``SpeechLM.speech_buffer_dtype`` reproduces that by default (``torch.bfloat16``), so
fp32 runs give the same numbers as the official fp32 runs; set it to ``None`` to sum in the model dtype
(measured effect on the tiny model: relative embedding change ~2e-3, text logits ~2e-3). In a bf16 model
the two settings are identical.
"""

from __future__ import annotations

import inspect
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn
from transformers import DynamicCache, Qwen2Model
from transformers.models.qwen2.modeling_qwen2 import Qwen2RotaryEmbedding

from .config import SpeechLMConfig
from .delay_pattern import DelayPattern
from .errors import UserError
from .sampling import CodeChooser, Sampler, code_chooser

logger = logging.getLogger(__name__)

WEIGHTS_NAME = "model.safetensors"
WEIGHTS_INDEX_NAME = "model.safetensors.index.json"
# transformers 5 renamed the stacks' ``past_key_values`` argument to ``cache`` (4.x: the old name).
_CACHE_KW = "cache" if "cache" in inspect.signature(Qwen2Model.forward).parameters else "past_key_values"
# Non-persistent buffers that some exports still contain; recomputed here, so ignored when present.
_IGNORED_KEY_SUFFIXES = ("rotary_emb.inv_freq",)


@dataclass
class SpeechLMOutput:
    text_logits: torch.Tensor  # [B, K, vocab] for the last K patch positions (K = logits_to_keep or all)
    local_hidden: torch.Tensor  # [B, K, local_dim]: input of the patch decoder for the next patch
    past_key_values: DynamicCache | None


def _headless_qwen2(config) -> Qwen2Model:
    """A Qwen2 stack fed with ``inputs_embeds`` only (the official local stacks have no token embedding)."""
    model = Qwen2Model(config)
    model.embed_tokens = None
    return model


class SpeechLM(nn.Module):
    def __init__(self, config: SpeechLMConfig, empty_token_id: int):
        super().__init__()
        self.config = config
        self.empty_token_id = int(empty_token_id)
        self.delay = DelayPattern(tuple(config.delay_pattern), config.group_size)
        # Sum the speech embeddings in bf16 like the official code (see module docstring); None = model dtype.
        self.speech_buffer_dtype: torch.dtype | None = torch.bfloat16

        self.model = Qwen2Model(config.backbone_config())
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.local_transformer = _headless_qwen2(config.local_config())
        self.input_local_transformer = _headless_qwen2(config.input_local_config())
        self.local_transformer_lm_heads = nn.ModuleList(
            nn.Linear(config.local_dim, v, bias=False) for v in config.speech_vocab_size
        )
        self.speech_embeddings = nn.ModuleList(
            nn.Embedding(v, config.input_local_dim, padding_idx=e)
            for v, e in zip(config.speech_vocab_size, config.speech_zeroemb_idx)
        )
        if config.input_local_dim != config.local_dim:
            self.speech_embeddings_to_local = nn.Linear(config.input_local_dim, config.local_dim, bias=False)
        else:
            self.speech_embeddings_to_local = None
        self.speech_group_downcast = nn.Linear(
            config.input_local_dim * config.group_size, config.hidden_size, bias=False
        )
        self.hidden_states_downcast = nn.Linear(config.hidden_size, config.local_dim, bias=False)
        self.register_buffer(
            "empty_ids", torch.tensor(config.speech_zeroemb_idx, dtype=torch.long), persistent=False
        )

    # ------------------------------------------------------------------ properties
    @property
    def device(self) -> torch.device:
        return self.lm_head.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.lm_head.weight.dtype

    @property
    def max_patches(self) -> int:
        return self.config.max_position_embeddings

    # ------------------------------------------------------------------ input side
    def embed(self, ids: torch.Tensor) -> torch.Tensor:
        """``ids [B, 9, T]`` -> backbone input embeddings ``[B, T/4, hidden]``."""
        cfg = self.config
        G, C = cfg.group_size, cfg.audio_channels
        B, rows, T = ids.shape
        if rows != C + 1 or T % G:
            raise ValueError(f"ids must be [B, {C + 1}, T] with T % {G} == 0, got {tuple(ids.shape)}")
        Tg = T // G
        text = ids[:, 0, ::G]
        is_speech = text == self.empty_token_id  # [B, Tg]
        text_embeds = self.model.embed_tokens(torch.where(is_speech, torch.zeros_like(text), text))
        text_embeds = text_embeds * (~is_speech).unsqueeze(-1).to(text_embeds.dtype)
        if not bool(is_speech.any()):
            return text_embeds

        # Only the speech patches go through the patch encoder (patches are independent of each other).
        speech = ids[:, 1:, :].reshape(B, C, Tg, G).transpose(1, 2)[is_speech]  # [N, C, G]
        buf_dtype = self.speech_buffer_dtype or self.dtype
        buf = torch.zeros(speech.shape[0], G, cfg.input_local_dim, dtype=buf_dtype, device=ids.device)
        for c in range(C):
            codes = speech[:, c, :]
            if bool(((codes < 0) | (codes >= cfg.speech_vocab_size[c])).any()):
                raise ValueError(f"audio channel {c} holds codes outside [0, {cfg.speech_vocab_size[c]})")
            e = self.speech_embeddings[c](codes)
            e = e * (codes != cfg.speech_zeroemb_idx[c]).unsqueeze(-1).to(e.dtype)
            buf += e  # in-place: summed in the wider dtype, rounded once into the buffer (as officially)
        enc = self._patch_encoder(buf)  # [N, G, D]
        speech_embeds = self.speech_group_downcast(enc.reshape(enc.shape[0], G * cfg.input_local_dim))
        out = text_embeds.clone()
        out[is_speech] = speech_embeds.to(out.dtype)
        return out

    def _patch_encoder(self, frames: torch.Tensor) -> torch.Tensor:
        """Run the patch encoder over ``[N, G, D]`` frame embeddings, attention bidirectional within a patch."""
        N, G, _ = frames.shape
        pos = torch.arange(G, device=frames.device).unsqueeze(0).expand(N, G)
        if self.config.input_full_attention:
            # No mask at all (a pre-built mask dict stops transformers from making a causal one) and
            # is_causal=False: every backend attends both ways; SDPA gets exactly the official call.
            out = self.input_local_transformer(
                inputs_embeds=frames, attention_mask={"full_attention": None}, position_ids=pos, use_cache=False,
                is_causal=False,
            )
        else:
            out = self.input_local_transformer(inputs_embeds=frames, position_ids=pos, use_cache=False)
        return out.last_hidden_state

    # ------------------------------------------------------------------ backbone
    def forward(
        self,
        ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        past_key_values: DynamicCache | None = None,
        use_cache: bool = False,
        logits_to_keep: int = 0,
    ) -> SpeechLMOutput:
        """Run the backbone over ``ids [B, 9, T]`` (appended to ``past_key_values`` when given).

        ``attention_mask [B, past + T/4]`` marks real patches (1) vs left padding (0); ``position_ids``
        default to ``cumsum(mask) - 1``. Returns text logits and patch-decoder inputs for the last
        ``logits_to_keep`` positions (0 = every position).
        """
        embeds = self.embed(ids)
        B, Tg, _ = embeds.shape
        past = past_key_values.get_seq_length() if past_key_values is not None else 0
        if past + Tg > self.max_patches:
            raise ValueError(
                f"sequence of {past + Tg} patches exceeds the model's context of {self.max_patches} patches"
            )
        if attention_mask is None:
            attention_mask = torch.ones(B, past + Tg, dtype=torch.long, device=embeds.device)
        if position_ids is None:
            position_ids = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)[:, past:]
        if use_cache and past_key_values is None:
            past_key_values = self.new_cache()
        out = self.model(
            inputs_embeds=embeds,
            attention_mask=attention_mask,
            position_ids=position_ids,
            use_cache=use_cache,
            **{_CACHE_KW: past_key_values},
        )
        h = out.last_hidden_state
        if logits_to_keep:
            h = h[:, -logits_to_keep:]
        return SpeechLMOutput(
            text_logits=self.lm_head(h),
            local_hidden=self.hidden_states_downcast(h),
            past_key_values=past_key_values if use_cache else None,
        )

    def new_cache(self):
        """An empty KV cache for the backbone: a ``DynamicCache``, or, when the backbone's attention was
        converted by ``efficient.attention.apply_attention``, the hybrid cache it needs (otherwise the
        converted backbone would swap in its own cache and the caller's would stay empty)."""
        if getattr(self.model, "_efficient_attention_config", None) is not None:
            from efficient.attention import HybridAttentionCache

            return HybridAttentionCache.for_model(self.model)
        return DynamicCache()

    # ------------------------------------------------------------------ patch decoder
    def speech_embed_local(self, channel: int, codes: torch.Tensor) -> torch.Tensor:
        e = self.speech_embeddings[channel](codes)
        if self.speech_embeddings_to_local is not None:
            e = self.speech_embeddings_to_local(e)
        return e

    @torch.no_grad()
    def decode_patch(
        self,
        local_hidden: torch.Tensor,
        choose: CodeChooser | Sampler,
        generator: torch.Generator | Sequence[torch.Generator] | None = None,
    ) -> torch.Tensor:
        """One patch from the patch decoder: ``local_hidden [B, local_dim]`` -> codes ``[B, 4, 8]``.

        Step ``t`` emits the (channel, frame) pairs of ``self.delay.schedule[t]``; the next step's input
        is the sum of the embeddings of the codes just emitted. The model only computes logits:
        ``choose(logits [B, vocab_c], c) -> ids [B]`` picks channel ``c``'s codes (generation builds it with
        :func:`~mimo_audio.sampling.code_chooser`, which never picks a channel's empty id). A
        :class:`~mimo_audio.sampling.Sampler` (with ``generator``: one, or one per row) is accepted too and
        wrapped that way.
        """
        if isinstance(choose, Sampler):
            choose = code_chooser(choose, self.config.speech_zeroemb_idx, generator)
        cfg = self.config
        B = local_hidden.shape[0]
        out = torch.empty(B, cfg.group_size, cfg.audio_channels, dtype=torch.long, device=local_hidden.device)
        cache = DynamicCache()
        x = local_hidden.reshape(B, 1, -1).to(self.local_transformer.norm.weight.dtype)
        steps = self.delay.schedule
        for t, emits in enumerate(steps):
            pos = torch.full((B, 1), t, dtype=torch.long, device=x.device)
            h = self.local_transformer(inputs_embeds=x, position_ids=pos, use_cache=True, **{_CACHE_KW: cache})
            h = h.last_hidden_state[:, -1]
            nxt = torch.zeros_like(x[:, 0])
            for c, f in emits:
                tok = choose(self.local_transformer_lm_heads[c](h), c)
                out[:, f, c] = tok
                if t + 1 < len(steps):
                    nxt = nxt + self.speech_embed_local(c, tok).to(nxt.dtype)
            x = nxt.unsqueeze(1)
        return out

    def patch_decoder_logits(self, local_hidden: torch.Tensor, codes: torch.Tensor) -> list[torch.Tensor]:
        """Teacher-forced patch decoder (for training and scoring): all 11 steps in one causal pass.

        ``local_hidden [N, local_dim]`` (from :meth:`forward`, the position *before* each patch) and the
        patches' true codes ``[N, 4, 8]`` -> per channel ``c`` logits ``[N, 4, vocab_c]`` for its 4 frames.
        Feeding back the argmax reproduces :meth:`decode_patch` under greedy decoding.
        """
        N = local_hidden.shape[0]
        steps = self.delay.schedule
        dtype = self.local_transformer.norm.weight.dtype
        inputs = [local_hidden.to(dtype)]
        for emits in steps[:-1]:
            x = torch.zeros_like(inputs[0])
            for c, f in emits:
                x = x + self.speech_embed_local(c, codes[:, f, c]).to(dtype)
            inputs.append(x)
        x = torch.stack(inputs, dim=1)  # [N, 11, local_dim]
        pos = torch.arange(len(steps), device=x.device).unsqueeze(0).expand(N, -1)
        h = self.local_transformer(inputs_embeds=x, position_ids=pos, use_cache=False).last_hidden_state
        out = []
        for c, d in enumerate(self.delay.delays):
            out.append(self.local_transformer_lm_heads[c](h[:, d : d + self.config.group_size]))
        return out

    # ------------------------------------------------------------------ checkpoints
    @classmethod
    def from_pretrained(
        cls,
        path: str | Path,
        device: str | torch.device | None = None,
        dtype: torch.dtype | None = None,
        empty_token_id: int | None = None,
    ) -> SpeechLM:
        """Load a MiMo-Audio LM directory (``config.json`` + ``model.safetensors`` or a sharded index).

        Strict: a missing, unexpected or wrongly shaped tensor is an error that names it. ``dtype=None``
        keeps the checkpoint's dtype. ``empty_token_id=None`` looks up ``<|empty|>`` in the directory's
        text tokenizer.
        """
        path = Path(path)
        config = SpeechLMConfig.from_json_file(path / "config.json")
        if empty_token_id is None:
            from .text_tokenizer import SpecialTokens, load_text_tokenizer

            empty_token_id = SpecialTokens.from_tokenizer(load_text_tokenizer(path)).empty
        device = torch.device(device) if device is not None else torch.device("cpu")
        with torch.device("meta"):
            model = cls(config, empty_token_id)
        expected = {k: v for k, v in model.state_dict().items()}
        try:
            state = _read_safetensors(path, expected, dtype, device)
        except (ValueError, OSError):
            raise
        except Exception as exc:  # safetensors raises SafetensorError for a truncated or corrupt file
            raise UserError(f"could not read the speech-LM weights in {path} as safetensors ({exc}): the file is "
                            "truncated or corrupt; copy or download it again") from exc
        model.load_state_dict(state, strict=True, assign=True)
        model._materialize_buffers(device)
        model.eval()
        logger.info("loaded speech LM from %s (%.1f M params, %s)", path, model.num_parameters() / 1e6, model.dtype)
        return model

    def _materialize_buffers(self, device: torch.device) -> None:
        """Recreate the non-persistent buffers (RoPE tables, empty ids) after a meta-device build."""
        for stack in (self.model, self.local_transformer, self.input_local_transformer):
            # a device context rather than ``device=``: transformers 5 dropped that argument
            with torch.device(device):
                stack.rotary_emb = Qwen2RotaryEmbedding(stack.config)
        self.empty_ids = torch.tensor(self.config.speech_zeroemb_idx, dtype=torch.long, device=device)

    @torch.no_grad()
    def init_weights(self, std: float = 0.02, seed: int | None = None) -> SpeechLM:
        """Fresh weights for training from scratch: every linear and embedding N(0, std), RMSNorm weights 1,
        the empty-id rows of the speech embeddings 0 (their ``padding_idx``)."""
        gen = torch.Generator(device=self.device).manual_seed(seed) if seed is not None else None
        for module in self.modules():
            if isinstance(module, (nn.Linear, nn.Embedding)):
                module.weight.normal_(0.0, std, generator=gen)
                if getattr(module, "bias", None) is not None:
                    module.bias.zero_()
            elif hasattr(module, "variance_epsilon") and hasattr(module, "weight"):  # Qwen2RMSNorm
                module.weight.fill_(1.0)
        for c, e in enumerate(self.config.speech_zeroemb_idx):
            self.speech_embeddings[c].weight[e].zero_()
        return self

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def save_pretrained(self, path: str | Path, max_shard_bytes: int | None = None) -> None:
        """Write ``config.json`` and the weights in the official layout (sharded if ``max_shard_bytes``)."""
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        self.config.to_json_file(path / "config.json")
        state = {k: v.detach().contiguous().cpu() for k, v in self.state_dict().items()}
        meta = {"format": "pt"}
        total = sum(t.numel() * t.element_size() for t in state.values())
        if max_shard_bytes is None or total <= max_shard_bytes:
            save_file(state, str(path / WEIGHTS_NAME), metadata=meta)
            return
        shards: list[dict[str, torch.Tensor]] = [{}]
        size = 0
        for k, t in state.items():
            nbytes = t.numel() * t.element_size()
            if shards[-1] and size + nbytes > max_shard_bytes:
                shards.append({})
                size = 0
            shards[-1][k] = t
            size += nbytes
        n = len(shards)
        weight_map = {}
        for i, shard in enumerate(shards):
            name = f"model-{i + 1:05d}-of-{n:05d}.safetensors"
            save_file(shard, str(path / name), metadata=meta)
            weight_map.update(dict.fromkeys(shard, name))
        index = {"metadata": {"total_size": total}, "weight_map": weight_map}
        (path / WEIGHTS_INDEX_NAME).write_text(json.dumps(index, indent=2) + "\n", encoding="utf-8")


def _read_safetensors(
    path: Path, expected: dict[str, torch.Tensor], dtype: torch.dtype | None, device: torch.device
) -> dict[str, torch.Tensor]:
    """Read every tensor of ``expected`` from the checkpoint files, checking names and shapes."""
    if (path / WEIGHTS_INDEX_NAME).is_file():
        try:
            index = json.loads((path / WEIGHTS_INDEX_NAME).read_text(encoding="utf-8"))
            weight_map: dict[str, str] = index["weight_map"]
        except (json.JSONDecodeError, KeyError) as exc:
            raise ValueError(f"{path / WEIGHTS_INDEX_NAME} is not a valid safetensors index: {exc}") from exc
    elif (path / WEIGHTS_NAME).is_file():
        weight_map = None  # type: ignore[assignment]
    else:
        raise FileNotFoundError(f"no {WEIGHTS_NAME} or {WEIGHTS_INDEX_NAME} in {path}")

    files: dict[str, list[str]] = {}
    if weight_map is None:
        with safe_open(str(path / WEIGHTS_NAME), framework="pt") as f:
            files[WEIGHTS_NAME] = list(f.keys())
    else:
        for key, fname in weight_map.items():
            files.setdefault(fname, []).append(key)
        for fname in files:
            if not (path / fname).is_file():
                raise FileNotFoundError(f"shard {fname} listed in {WEIGHTS_INDEX_NAME} is missing from {path}")

    present = {k for keys in files.values() for k in keys if not k.endswith(_IGNORED_KEY_SUFFIXES)}
    missing = sorted(set(expected) - present)
    unexpected = sorted(present - set(expected))
    if missing:
        raise ValueError(f"checkpoint {path} is missing {len(missing)} tensor(s): {_short_list(missing)}")
    if unexpected:
        raise ValueError(f"checkpoint {path} has {len(unexpected)} unexpected tensor(s): {_short_list(unexpected)}")

    state: dict[str, torch.Tensor] = {}
    for fname, keys in files.items():
        with safe_open(str(path / fname), framework="pt") as f:
            for key in keys:
                if key not in expected:
                    continue
                shape = tuple(f.get_slice(key).get_shape())
                want = tuple(expected[key].shape)
                if shape != want:
                    raise ValueError(f"tensor {key!r} in {path / fname} has shape {shape}, the config expects {want}")
                t = f.get_tensor(key)
                if dtype is not None and t.is_floating_point():
                    t = t.to(dtype)
                state[key] = t.to(device)
    return state


def _short_list(names: list[str], limit: int = 8) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f", ... ({len(names) - limit} more)" if len(names) > limit else "")


__all__ = ["SpeechLM", "SpeechLMOutput", "SpeechLMConfig"]
