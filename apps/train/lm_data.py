"""Speech-LM training examples from the corpus, rendered in the official prompt formats.

Each example is ``(ids [9, T], target [T/4])``: the prompt patches are context, the answer patches are
learned. Tasks (weights in :data:`TASK_WEIGHTS`):

- ``tts``: instruct-model TTS prompt -> the answer as a stream segment (text chunks interleaved with speech);
- ``asr``: instruct-model ASR prompt (speech + instruction) -> transcript + ``<|im_end|>``;
- ``continuation``: base-model ``<Spe>:`` + first part of an utterance -> the rest as a stream;
- ``fewshot``: one in-context pair (voice, speed, denoise or whisper, from the corpus' parallel groups) +
  a query -> the query's counterpart as a stream, converted the way the example is (same output voice,
  same speed direction), so the prompt determines the answer;
- ``text``: the transcript alone, every token learned (keeps the text ability).
"""

from __future__ import annotations

import bisect
import hashlib
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from apps.train.data import corpus_rows, read_wav
from mimo_audio import formats
from mimo_audio.prompts import PromptRenderer, Stream, Text

log = logging.getLogger("mimo-audio.train")

TASK_WEIGHTS = {"tts": 0.3, "asr": 0.3, "continuation": 0.1, "fewshot": 0.2, "text": 0.1}


def parse_task_weights(spec: str) -> dict[str, float] | None:
    """``"asr=0.5,tts=0.3"`` -> the task weights, unnamed tasks keeping :data:`TASK_WEIGHTS` (empty: None)."""
    if not spec.strip():
        return None
    weights = dict(TASK_WEIGHTS)
    for part in spec.split(","):
        name, sep, value = part.partition("=")
        name = name.strip()
        if not sep or name not in TASK_WEIGHTS:
            raise ValueError(f"task weight {part!r}: expected NAME=WEIGHT with NAME in {sorted(TASK_WEIGHTS)}")
        try:
            weights[name] = float(value)
        except ValueError:
            raise ValueError(f"task weight {part!r}: {value!r} is not a number") from None
        if weights[name] < 0:
            raise ValueError(f"task weight {part!r} is negative")
    if sum(weights.values()) <= 0:
        raise ValueError(f"task weights {spec!r} sum to 0")
    return weights


def bpe_training_texts(seed: int = 0) -> list[str]:
    """Text to train the BPE vocabulary on: every corpus-source sentence that the corpus puts in its training
    split (the same seeded hash as :func:`apps.corpus.plan.split_sentences`, so no validation or test sentence
    is seen), in both cases the models read (as written, and case-normalised as in TTS streams), plus the
    English prompt templates."""
    from apps.corpus.plan import stable_hash
    from apps.corpus.text import load_sentences

    texts = []
    for sentence in load_sentences():
        if stable_hash(seed, "split", sentence.key) % 100 >= 10:  # < 5: test, < 10: validation
            texts += [sentence.text, formats.normalize_case(sentence.text)]
    templates = [formats.ASR_INSTRUCTION["en"], formats.TTS_INSTRUCTION["en"], formats.THINK_HINT,
                 formats.ICL_PREFIX, formats.SPEECH_ONLY_PREFIX, formats.DIALOGUE_VOICE_SYSTEM, "user", "assistant"]
    return texts + templates * 50


def select_sentences(rows: list[dict], max_sentences: int | None, seed: int = 0) -> list[dict]:
    """The rows of at most ``max_sentences`` sentences (every voice and style of each, so parallel groups stay
    whole), chosen by a seeded hash of the sentence id: the same subset on every machine."""
    if not max_sentences:
        return rows
    ids = sorted({r["text_id"] for r in rows}, key=lambda t: hashlib.sha1(f"{seed}:{t}".encode()).hexdigest())
    keep = set(ids[:max_sentences])
    return [r for r in rows if r["text_id"] in keep]


@torch.no_grad()
def encode_corpus(tokenizer, corpus: str | Path, split: str, cache: Path | None, n_q: int,
                  progress: bool = True, max_sentences: int | None = None) -> dict[str, torch.Tensor]:
    """Codes [n_q, T] of the utterances of ``split`` (of at most ``max_sentences`` sentences), keyed by row id.

    The cache (safetensors keyed by row id) is extended, not rebuilt, when the corpus grows: only utterances
    it lacks are encoded. Caches of older runs (keyed by row index) are read when their row count matches."""
    rows = select_sentences(corpus_rows(corpus, split), max_sentences)
    codes: dict[str, torch.Tensor] = {}
    if cache is not None and cache.is_file():
        stored = load_file(str(cache))
        if stored and all(k.isdigit() for k in stored):  # index-keyed (older runs)
            stored = {rows[int(k)]["id"]: v for k, v in stored.items()} if len(stored) == len(rows) else {}
        codes = {r["id"]: stored[r["id"]] for r in rows if r["id"] in stored}
    missing = [r for r in rows if r["id"] not in codes]
    if not missing:
        return codes
    from tqdm import tqdm

    for r in tqdm(missing, desc=f"encode {split}", disable=not progress):
        wav = read_wav(corpus, r, tokenizer.sample_rate)
        codes[r["id"]] = tokenizer.encode(wav, tokenizer.sample_rate, n_q=n_q, progress=False).cpu().contiguous()
    if cache is not None:
        save_file(codes, str(cache))
    log.info("encoded %d %s utterances (%d from the cache)", len(missing), split, len(rows) - len(missing))
    return codes


class LMExamples:
    """Samples rendered training examples for one split of the corpus."""

    def __init__(self, corpus: str | Path, split: str, codes: dict[str, torch.Tensor], renderer: PromptRenderer,
                 max_patches: int = 256, weights: dict[str, float] | None = None):
        from mimo_audio.corpus import PAIR_TASKS, parallel_pairs

        self.rows = [r for r in corpus_rows(corpus, split) if r["id"] in codes]
        self.codes, self.renderer, self.max_patches = codes, renderer, max_patches
        self.plain = [r for r in self.rows if r["style"] == "plain"] or self.rows
        self.pairs = {t: p for t in PAIR_TASKS if (p := parallel_pairs(self.rows, t))}
        self._by_direction: dict[str, dict[str, list]] = {}
        for t, pairs in self.pairs.items():
            groups = self._by_direction.setdefault(t, {})
            for pair in pairs:
                groups.setdefault(self._direction(t, pair), []).append(pair)
        weights = dict(weights or TASK_WEIGHTS)
        if not self.pairs:
            weights.pop("fewshot", None)
        self.tasks = sorted(weights)
        w = np.array([weights[t] for t in self.tasks], dtype=np.float64)
        self.probs = w / w.sum()
        # Curriculum: utterances of at most `max_frames` frames (None: all); rows sorted by length to pick from.
        self.max_frames: int | None = None
        self._by_length = {name: sorted(rs, key=lambda r: self.codes[r["id"]].shape[1])
                           for name, rs in (("plain", self.plain), ("all", self.rows))}
        self._lengths = {name: [self.codes[r["id"]].shape[1] for r in rs] for name, rs in self._by_length.items()}
        # Share of the teacher-forced speech patches of a TTS answer whose input codes are blanked (targets kept).
        self.patch_dropout = 0.0
        # CTC targets from a transcript (None: the text vocabulary's token ids).
        self.ctc_labeler: Callable[[str], list[int]] | None = None

    @staticmethod
    def _direction(task: str, pair: tuple[dict, dict]) -> str:
        """What the example teaches: the output voice (voice), slow or fast (speed); denoise/whisper: one kind."""
        out = pair[1]
        return out["speaker_id"] if task == "voice" else out["style"]

    def fewshot_pairs(self, gen: np.random.Generator) -> tuple[tuple[dict, dict], tuple[dict, dict]]:
        """(example pair, query pair) of one few-shot task. The query is converted the way the example is:
        same output voice for voice conversion (so the target voice can only come from the example), same
        direction for speed; another sentence when there is one."""
        pick = lambda seq: seq[int(gen.integers(0, len(seq)))]  # noqa: E731
        task = pick(sorted(self.pairs))
        ex = pick(self.pairs[task])
        same = self._by_direction[task][self._direction(task, ex)]
        others = [p for p in same if p[1]["text_id"] != ex[1]["text_id"]]
        return ex, pick(others or same)

    def _render(self, prompt: list, answer: list) -> tuple[torch.Tensor, torch.Tensor]:
        """Prompt patches are context; so is the ``<|sostm|>`` that opens a stream answer (the official
        prompts end with it), everything after is learned."""
        G = self.renderer.group_size
        skip = 1 if isinstance(answer[0], Stream) else 0
        head = self.renderer.render(prompt)
        ids = torch.cat([head, self.renderer.render(answer)], dim=1)
        target = torch.zeros(ids.shape[1] // G, dtype=torch.bool)
        target[head.shape[1] // G + skip :] = True
        return ids[:, : self.max_patches * G], target[: self.max_patches]

    def _pick_row(self, task: str, gen: np.random.Generator) -> dict:
        """A random utterance for a single-utterance task, no longer than the curriculum allows."""
        name = "all" if task == "asr" else "plain"
        rows, lengths = self._by_length[name], self._lengths[name]
        n = len(rows) if self.max_frames is None else max(1, bisect.bisect_right(lengths, self.max_frames))
        return rows[int(gen.integers(0, n))]

    def example(self, task: str, gen: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        ids, target, _ = self._example(task, gen)
        return ids, target

    def _example(self, task: str, gen: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor, dict | None]:
        """(ids, target, the utterance row for tts/asr examples, else None)."""
        if task == "fewshot":
            (ex_in, ex_out), (q_in, q_out) = self.fewshot_pairs(gen)
            c = self.codes
            prompt = formats.in_context_s2s([formats.SpeechPair(c[ex_in["id"]], c[ex_out["id"]], ex_out["text"])],
                                            c[q_in["id"]])
            return (*self._render(prompt[:-1], [Stream(q_out["text"], c[q_out["id"]]), Text(formats.IM_END)]), None)
        row = self._pick_row(task, gen)
        codes, text = self.codes[row["id"]], row["text"]
        if task == "tts":
            prompt = formats.tts(text)  # ends with <|sostm|>: the stream segment starts with it
            return (*self._render(prompt[:-1], [Stream(formats.normalize_case(text), codes), Text(formats.IM_END)]),
                    row)
        if task == "asr":
            return (*self._render(formats.asr(codes), [Text(text), Text(formats.IM_END)]), row)
        if task == "continuation":
            cut = max(4, int(codes.shape[1] * gen.uniform(0.3, 0.6))) // 4 * 4
            cut = min(cut, codes.shape[1] - 1)
            prompt = formats.speech_continuation(codes[:, :cut])
            return (*self._render(prompt[:-1], [Stream("", codes[:, cut:])]), None)
        if task == "text":
            ids = self.renderer.render([Text(text + "\n")])
            return ids[:, : self.max_patches * self.renderer.group_size], torch.ones(
                min(ids.shape[1] // self.renderer.group_size, self.max_patches), dtype=torch.bool), None
        raise ValueError(f"unknown LM training task {task!r}")

    def batch(self, batch_size: int, gen: np.random.Generator, pad_id: int):
        """Left-padded batch: ids [B, 9, T], target [B, T/4], attention_mask [B, T/4], task names."""
        b = self.training_batch(batch_size, gen, pad_id)
        return b.ids, b.target, b.mask, b.tasks

    def training_batch(self, batch_size: int, gen: np.random.Generator, pad_id: int) -> LMBatch:
        """:meth:`batch` plus what the training-only losses need: the inputs with patch dropout applied and, for
        the tts/asr items whose whole utterance fits, the transcript's token ids (CTC targets)."""
        tasks = [self.tasks[int(i)] for i in gen.choice(len(self.tasks), size=batch_size, p=self.probs)]
        items = [self._example(t, gen) for t in tasks]
        G = self.renderer.group_size
        n = max(t.shape[0] for _, t, _ in items)
        pad = self.renderer.text_patches([pad_id])
        ids = pad.repeat(1, n)[None].repeat(batch_size, 1, 1)
        target = torch.zeros(batch_size, n, dtype=torch.bool)
        mask = torch.zeros(batch_size, n, dtype=torch.long)
        ctc: list[list[int] | None] = []
        for b, (x, t, row) in enumerate(items):
            k = t.shape[0]
            ids[b, :, (n - k) * G :] = x
            target[b, n - k :] = t
            mask[b, n - k :] = 1
            ctc.append(self._ctc_labels(x, row))
        inputs = ids
        if self.patch_dropout > 0:
            inputs = ids.clone()
            empty = self.renderer.special.empty
            for b, task in enumerate(tasks):
                if task != "tts":
                    continue
                speech = (ids[b, 0, ::G] == empty) & target[b]
                drop = speech & torch.from_numpy(gen.random(n) < self.patch_dropout)
                for p in torch.nonzero(drop).flatten().tolist():
                    inputs[b, 1:, p * G : (p + 1) * G] = self.renderer.empty_ids[:, None]
        return LMBatch(ids, inputs, target, mask, tasks, ctc)

    def _ctc_labels(self, x: torch.Tensor, row: dict | None) -> list[int] | None:
        """Token ids of the utterance's transcript when all of its speech is in ``x`` (not truncated)."""
        if row is None:
            return None
        G = self.renderer.group_size
        frames = self.codes[row["id"]].shape[1]
        speech_patches = int((x[0, ::G] == self.renderer.special.empty).sum())
        if speech_patches != -(-frames // G):
            return None
        text = formats.normalize_case(row["text"])
        return self.ctc_labeler(text) if self.ctc_labeler is not None else self.renderer.tokenize(text)


@dataclass
class LMBatch:
    ids: torch.Tensor  # [B, 9, T]: the targets (and the inputs, when no patch dropout)
    inputs: torch.Tensor  # [B, 9, T]: what the model reads (speech patches blanked by patch dropout)
    target: torch.Tensor  # [B, T/4] bool: patches to learn
    mask: torch.Tensor  # [B, T/4] long: real patches (1) vs left padding (0)
    tasks: list[str]
    ctc: list[list[int] | None]  # transcript token ids per item (tts/asr with the whole utterance) or None
