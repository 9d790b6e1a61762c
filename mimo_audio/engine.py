"""The serving engine: one loaded model, many requests, continuous batching at patch granularity.

``engine.submit(job)`` queues a prepared :class:`~mimo_audio.tasks.Job` (bounded queue: a full queue raises
:class:`QueueFull` at once). A scheduler thread admits queued requests between patch steps, prefills them
(arrivals of one step together) and merges them into the running batch; every step samples one patch per
row, each row with its own sampler, stop tokens, length limit and random stream, then feeds the patches of
the rows that go on back through the model. Rows leave when they stop, hit their limit, are cancelled or
time out; their slot is free at the next step.

KV cache. The batch keeps one left-padded ``DynamicCache`` ``[B, heads, P, dim]`` plus a patch mask
``[B, P]`` (positions follow the mask, so padding never shifts a row). When the membership changes, one
rebuild (:func:`rebuild`) writes the rows that go on and the newcomers' prefill caches right-aligned into new
tensors as long as the longest row (columns that became padding for all rows disappear). Rows that finish
stay in the cache until the next rebuild, so a step where rows both leave and join copies once; a plain step
copies nothing. The rebuild's cost is in :meth:`Engine.stats` (``merge_ms``).

Per request, the consumer's thread (the one iterating the :class:`RequestHandle`) turns patches into text
deltas (:class:`~mimo_audio.postprocess.OutputParser`) and audio chunks (the audio tokenizer's streaming
decoder), so the scheduler thread only runs the LM. Greedy output of a request is the same alone or batched
(rows are independent: left padding is masked and positions restart per row).

Speculative (MTP) jobs run alone, between two batch steps. A backbone whose attention was converted by
``efficient.attention`` (``--sparse``) uses a ring/hybrid cache that rows cannot be merged into; the engine
then serves one request at a time (``max_batch`` is forced to 1, with a log line).
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from .batch_cache import BatchState, rebuild
from .generation import SpeechTally, left_pad, removed_tokens, speak_instead_of_stopping
from .sampling import code_chooser
from .tasks import Job

if TYPE_CHECKING:
    from .api import ChatResult, MimoAudio, StreamEvent

logger = logging.getLogger(__name__)


class EngineError(RuntimeError):
    """A request could not be served (the subclasses say why)."""


class QueueFull(EngineError):
    """The request queue is full: retry later."""


class RequestTimeout(EngineError, TimeoutError):
    """The request ran past its time limit."""


class Cancelled(EngineError):
    """The request was cancelled."""


class EngineStopped(EngineError):
    """The engine stopped before the request finished."""


class PromptTooLong(ValueError):
    """The prompt (text plus input audio) is longer than the engine accepts."""


@dataclass
class EngineConfig:
    max_batch: int = 8  # rows generated together
    max_queue: int = 64  # waiting requests beyond the batch; more are refused with QueueFull
    request_timeout_s: float | None = 300.0  # from submission to the last patch (None: no limit)
    max_new_patches: int | None = None  # cap on every request's max_new_patches (None: the job's own)
    max_prompt_patches: int | None = None  # refuse longer prompts (None: the model's context)
    max_audio_seconds: float = 300.0  # input audio limit, checked by the callers that decode uploads
    max_upload_bytes: int = 25 * 2**20  # upload size limit, checked by the callers that receive uploads
    stream_lookahead: int | None = None  # streaming audio decoder lookahead in code frames (None: exact)
    # Threads doing per-request Python work at once (stream parsing and audio decoding here, request
    # preparation in the server): more only add GIL contention and slow the batch loop down.
    worker_slots: int = 2

    def __post_init__(self) -> None:
        if self.max_batch < 1 or self.max_queue < 0:
            raise ValueError(f"max_batch must be >= 1 and max_queue >= 0, got {self.max_batch}, {self.max_queue}")


class _Request:
    def __init__(self, rid: int, job: Job, max_new: int, deadline: float | None, empty_id: int):
        self.id = rid
        self.job = job
        self.config = job.config
        self.max_new = max_new
        self.deadline = deadline
        self.submitted = time.monotonic()
        self.first_patch: float | None = None
        self.n = 0  # patches generated
        self.speech = SpeechTally.for_prompt(job.prompt, empty_id, job.config.stream_marks)  # min_speech_patches
        # A seeded row has its own random stream (same draws alone or batched); others use the global one.
        self.generator = torch.Generator().manual_seed(self.config.seed) if self.config.seed is not None else None
        self.events: queue.SimpleQueue = queue.SimpleQueue()
        self.done = threading.Event()
        self.cancelled = False

    def seeded(self, sampler) -> bool:
        return self.generator is not None and sampler.do_sample

    def end(self, item: tuple) -> None:
        if not self.done.is_set():
            self.events.put(item)
            self.done.set()


class RequestHandle:
    """A submitted request: iterate it for :class:`~mimo_audio.api.StreamEvent` s, or wait for :meth:`result`.

    The last event carries ``.result`` (a :class:`~mimo_audio.api.ChatResult`). Leaving the loop early does
    not stop generation; call :meth:`cancel` (or ``close()`` the iterator) for that.
    """

    def __init__(self, engine: Engine, req: _Request):
        self._engine = engine
        self._req = req
        self._stream = self._consume()
        self._result: ChatResult | None = None

    @property
    def id(self) -> int:
        return self._req.id

    @property
    def done(self) -> bool:
        return self._req.done.is_set()

    def cancel(self) -> None:
        """Stop generating; the slot is freed at the next step and the stream ends with :class:`Cancelled`."""
        self._engine._cancel(self._req)

    def __iter__(self) -> Iterator[StreamEvent]:
        return self._stream

    def result(self, timeout: float | None = None) -> ChatResult:
        """Wait for the whole reply. Raises :class:`RequestTimeout`, :class:`Cancelled`, ... on failure."""
        if self._result is not None:
            return self._result
        if not self._req.done.wait(timeout):
            raise TimeoutError(f"request {self.id} did not finish within {timeout} s")
        for _ in self._stream:
            pass
        if self._result is None:  # the stream was closed before its end
            raise Cancelled(f"request {self.id} was cancelled")
        return self._result

    def _consume(self) -> Iterator[StreamEvent]:
        from .api import StreamEvent

        m = self._engine.model
        req, job = self._req, self._req.job
        parser = m._parser(job.prompt)
        decoder = None
        if job.decode_audio and m.audio_tokenizer is not None:
            decoder = m.audio_tokenizer.stream_decoder(self._engine.config.stream_lookahead)
        audio_parts: list[torch.Tensor] = []
        first_audio = True

        def emit(deltas: list) -> StreamEvent:
            """One event for the patches that arrived together (a consumer that fell behind catches up in
            one decoder call, not one per patch)."""
            nonlocal first_audio
            codes = [d.codes for d in deltas if d.codes is not None]
            ev = StreamEvent(text="".join(d.text for d in deltas), thinking="".join(d.thinking for d in deltas),
                             codes=torch.cat(codes, dim=1) if codes else None)
            if decoder is not None and ev.codes is not None:
                ev.audio = decoder.push(ev.codes.to(m.lm.device)).float().cpu()
                audio_parts.append(ev.audio)
                if first_audio and ev.audio.numel():
                    first_audio = False
                    self._engine._note_ttfa(time.monotonic() - req.submitted)
            return ev

        try:
            while True:
                items = [req.events.get()]
                while items[-1][0] == "patch":  # take whatever else is already there
                    try:
                        items.append(req.events.get_nowait())
                    except queue.Empty:
                        break
                last = items[-1]
                if last[0] == "error":
                    raise last[1]
                with self._engine.work_slot():  # parsing and audio decoding: a few threads at a time
                    deltas = [parser.push(it[1], it[2], is_stop=it[3]) for it in items if it[0] == "patch"]
                    if last[0] == "patch":
                        ev = emit(deltas)
                    else:  # ("end", stop_reason, n)
                        ev = emit(deltas + [parser.finish()])
                        result = m._result(parser, last[1], last[2], job.prompt, decode=False)
                        if decoder is not None:
                            tail = decoder.flush().float().cpu()
                            ev.audio = tail if ev.audio is None else torch.cat([ev.audio, tail])
                            audio_parts.append(tail)
                            result.audio = torch.cat(audio_parts) if audio_parts else torch.zeros(0)
                            if first_audio and tail.numel():
                                self._engine._note_ttfa(time.monotonic() - req.submitted)
                        job.finish(result)
                        self._result = result
                        ev.result = result
                if ev.result is not None:
                    yield ev
                    return
                if ev.text or ev.thinking or ev.codes is not None:
                    yield ev
        finally:
            if not req.done.is_set():  # the consumer went away (iterator closed): free the slot
                self.cancel()


class Engine:
    """Serve many requests with one :class:`~mimo_audio.api.MimoAudio` (see the module docstring)."""

    def __init__(self, model: MimoAudio, config: EngineConfig | None = None):
        self.model = model
        self.config = config or EngineConfig()
        self.max_batch = self.config.max_batch
        if getattr(model.lm.model, "_efficient_attention_config", None) is not None and self.max_batch > 1:
            logger.info("converted attention (hybrid KV cache): rows cannot share a batch; serving one at a time")
            self.max_batch = 1
        self._lock = threading.Condition()
        self._work = threading.BoundedSemaphore(max(1, self.config.worker_slots))
        self._pending: deque[_Request] = deque()
        self._batch: BatchState | None = None
        self._admitting: list[_Request] = []  # popped from the queue, not yet in the batch (prefill)
        self._thread: threading.Thread | None = None
        self._running = False
        self._next_id = 0
        self._started = time.monotonic()
        self._counters = dict(submitted=0, completed=0, failed=0, cancelled=0, timed_out=0, rejected=0,
                              patches=0, steps=0, rows_stepped=0)
        self._step_s = 0.0
        self._merge_s = 0.0
        self._merges = 0
        self._recent_patches: deque[tuple[float, int]] = deque()  # (time, patches) of recent steps
        self._ttfa: deque[float] = deque(maxlen=256)
        self._ttfp: deque[float] = deque(maxlen=256)

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> Engine:
        with self._lock:
            if self._running:
                return self
            self._running = True
        self._thread = threading.Thread(target=self._loop, name="mimo-audio-engine", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout: float | None = 10.0) -> None:
        """Stop the scheduler; requests still queued or running end with :class:`EngineStopped`."""
        with self._lock:
            self._running = False
            self._lock.notify_all()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None
        with self._lock:
            rows = list(self._pending) + (self._batch.rows if self._batch is not None else []) + self._admitting
            self._pending.clear()
            self._admitting = []
            self._batch = None
        for r in rows:
            r.end(("error", EngineStopped("the engine stopped")))

    def __enter__(self) -> Engine:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def work_slot(self) -> threading.BoundedSemaphore:
        """Hold this around per-request CPU work (``with engine.work_slot(): ...``); see ``worker_slots``."""
        return self._work

    @property
    def running(self) -> bool:
        return self._running

    # ------------------------------------------------------------------ requests
    def submit(self, job: Job) -> RequestHandle:
        """Queue a job; raises :class:`QueueFull` at once when the queue is full, ValueError for a bad job."""
        lm = self.model.lm
        prompt_patches = job.prompt.shape[1] // lm.config.group_size
        limit = min(self.config.max_prompt_patches or lm.max_patches, lm.max_patches - 1)
        if prompt_patches > limit:
            raise PromptTooLong(f"prompt of {prompt_patches} patches exceeds the limit of {limit} patches "
                             "(audio costs 6.25 patches per second)")
        if job.config.speculative and self.model.special.empty not in job.config.suppress_tokens:
            raise ValueError("speculative decoding covers text-only outputs; this task generates speech")
        max_new = min(job.config.max_new_patches, lm.max_patches - prompt_patches)
        if self.config.max_new_patches:
            max_new = min(max_new, self.config.max_new_patches)
        timeout = self.config.request_timeout_s
        with self._lock:
            if not self._running:
                raise EngineStopped("the engine is not running (call start())")
            if len(self._pending) >= self.config.max_queue:
                self._counters["rejected"] += 1
                raise QueueFull(f"the request queue is full ({self.config.max_queue} waiting); retry later")
            self._next_id += 1
            req = _Request(self._next_id, job, max_new, time.monotonic() + timeout if timeout else None,
                           lm.empty_token_id)
            self._pending.append(req)
            self._counters["submitted"] += 1
            self._lock.notify_all()
        return RequestHandle(self, req)

    def _cancel(self, req: _Request) -> None:
        with self._lock:
            req.cancelled = True
            if req in self._pending:  # never started: end it now
                self._pending.remove(req)
                self._finish(req, ("error", Cancelled(f"request {req.id} was cancelled")), "cancelled")
            self._lock.notify_all()

    # ------------------------------------------------------------------ stats
    def _note_ttfa(self, seconds: float) -> None:
        self._ttfa.append(seconds)

    def stats(self) -> dict[str, Any]:
        """Queue depth, active rows, throughput and latency figures (for /metrics and the demo)."""
        now = time.monotonic()
        with self._lock:
            while self._recent_patches and now - self._recent_patches[0][0] > 10.0:
                self._recent_patches.popleft()
            window = min(10.0, now - self._started) or 1e-9
            c = dict(self._counters)
            out: dict[str, Any] = {
                "queue_depth": len(self._pending),
                "active": sum(not r.done.is_set() for r in self._batch.rows) if self._batch is not None else 0,
                "max_batch": self.max_batch,
                "max_queue": self.config.max_queue,
                "patches_per_s": sum(n for _, n in self._recent_patches) / window,
                "mean_step_ms": 1000 * self._step_s / c["steps"] if c["steps"] else 0.0,
                "mean_batch": c["rows_stepped"] / c["steps"] if c["steps"] else 0.0,
                "merge_ms": 1000 * self._merge_s / self._merges if self._merges else 0.0,
                "uptime_s": now - self._started,
            }
        out.update(c)
        for name, values in (("ttfa", list(self._ttfa)), ("first_patch", list(self._ttfp))):
            values.sort()
            out[f"{name}_s_p50"] = values[len(values) // 2] if values else None
            out[f"{name}_s_max"] = values[-1] if values else None
        return out

    # ------------------------------------------------------------------ scheduler
    def _finish(self, req: _Request, item: tuple, counter: str) -> None:
        self._counters[counter] += 1
        req.end(item)

    def _loop(self) -> None:
        while True:
            with self._lock:
                while self._running and not self._pending and self._batch is None:
                    self._lock.wait(0.5)
                if not self._running:
                    return
            try:
                self._step()
            except Exception as exc:  # never let one bad step kill the server: fail the rows in flight
                logger.exception("engine step failed")
                with self._lock:
                    rows = (self._batch.rows if self._batch is not None else []) + self._admitting
                    self._batch = None
                    self._admitting = []
                    for r in rows:
                        self._finish(r, ("error", EngineError(f"generation failed: {exc}")), "failed")

    def _live_rows(self) -> list[int]:
        """End cancelled and timed-out requests (queued or running); the batch rows still generating."""
        now = time.monotonic()
        with self._lock:
            for r in list(self._pending):
                if r.deadline is not None and now > r.deadline:
                    self._pending.remove(r)
                    self._finish(r, ("error", RequestTimeout(f"request {r.id} timed out in the queue")), "timed_out")
            keep = []
            for i, r in enumerate(self._batch.rows if self._batch is not None else []):
                if r.done.is_set():  # finished last step (still in the cache until this rebuild)
                    continue
                if r.cancelled:
                    self._finish(r, ("error", Cancelled(f"request {r.id} was cancelled")), "cancelled")
                elif r.deadline is not None and now > r.deadline:
                    self._finish(r, ("error", RequestTimeout(f"request {r.id} timed out after {r.n} patches")),
                                 "timed_out")
                else:
                    keep.append(i)
            return keep

    def _admit(self, live: int) -> list[_Request]:
        with self._lock:
            room = self.max_batch - live
            new = []
            while room > 0 and self._pending:
                r = self._pending.popleft()
                if r.job.config.speculative:
                    if new or live:  # runs alone: wait for the batch to drain
                        self._pending.appendleft(r)
                        break
                    return [r]
                new.append(r)
                room -= 1
            return new

    def _prefill(self, new: list[_Request]) -> BatchState:
        lm = self.model.lm
        pad = new[0].config.stop_tokens[0] if new[0].config.stop_tokens else 0
        ids, mask = left_pad([r.job.prompt for r in new], pad_text_id=pad, empty_ids=lm.empty_ids)
        mask = mask.to(lm.device)
        out = lm(ids.to(lm.device), attention_mask=mask, use_cache=True, logits_to_keep=1)
        return BatchState(new, out.past_key_values, mask, out.text_logits[:, -1], out.local_hidden[:, -1])

    @torch.no_grad()
    def _step(self) -> None:
        """Membership changes (one cache rebuild at most), then one patch for every row, then its forward.

        Rows that finish in a step stay in the cache through that step's forward and leave at the next
        rebuild, so a step where some rows leave and others join copies the cache once, not twice.
        """
        keep = self._live_rows()
        new = self._admit(len(keep))
        if new and new[0].job.config.speculative:
            self._drop_batch()
            self._run_speculative(new[0])
            return
        fresh = None
        if new:
            self._admitting = new
            fresh = self._prefill(new)
        if fresh is not None or self._batch is None or len(keep) != len(self._batch.rows):
            t0 = time.perf_counter()
            with self._lock:
                rows_before = len(self._batch.rows) if self._batch is not None else 0
                self._batch = rebuild(self._batch, keep, fresh)
                self._admitting = []
            if rows_before and self._batch is not None:  # a real rebuild, not a first batch or an empty one
                self._merge_s += time.perf_counter() - t0
                self._merges += 1
        batch = self._batch
        if batch is None:
            return
        t0 = time.perf_counter()
        text, codes = self._sample(batch)
        now = time.monotonic()
        alive = 0
        for i, r in enumerate(batch.rows):
            tok = int(text[i])
            r.speech.push(tok)
            stopped = tok in r.config.stop_tokens
            if r.first_patch is None:
                r.first_patch = now
                self._ttfp.append(now - r.submitted)
            r.events.put(("patch", tok, codes[i].cpu(), stopped))
            r.n += 1
            if stopped or r.n >= r.max_new:
                with self._lock:
                    self._finish(r, ("end", "stop_token" if stopped else "max_length", r.n), "completed")
            else:
                alive += 1
        with self._lock:
            self._counters["patches"] += len(batch.rows)
            self._recent_patches.append((now, len(batch.rows)))
            while self._recent_patches and now - self._recent_patches[0][0] > 10.0:
                self._recent_patches.popleft()
        if not alive:
            self._drop_batch()
        elif batch.mask.shape[1] + 1 > self.model.lm.max_patches:  # no room for finished rows: drop them now
            with self._lock:
                self._batch = rebuild(batch, [i for i, r in enumerate(batch.rows) if not r.done.is_set()], None)
            live = [i for i, r in enumerate(batch.rows) if not r.done.is_set()]
            self._forward(self._batch, text[live], codes[live])
        else:  # every row, finished ones included (their output is ignored; they leave at the next rebuild)
            self._forward(batch, text, codes)
        with self._lock:
            self._counters["steps"] += 1
            self._counters["rows_stepped"] += len(text)
            self._step_s += time.perf_counter() - t0

    def _drop_batch(self) -> None:
        with self._lock:
            self._batch = None

    def _sample(self, batch: BatchState) -> tuple[torch.Tensor, torch.Tensor]:
        """One patch per row, each row with its own settings.

        Rows sharing a sampler (and removed tokens) are sampled in one call. A seeded row draws from its own
        generator, text token first, then its codes: the order of :func:`mimo_audio.generation.sample_patch`,
        so it samples as it would alone; unseeded rows share the global random stream, as alone.
        """
        lm = self.model.lm
        B = len(batch.rows)
        G, C = lm.config.group_size, lm.config.audio_channels
        text = torch.empty(B, dtype=torch.long)
        groups: dict[Any, list[int]] = {}
        for i, r in enumerate(batch.rows):
            cfg = r.config
            removed = removed_tokens(cfg, r.n)
            groups.setdefault((cfg.text_sampler, removed, r.seeded(cfg.text_sampler)), []).append(i)
        for (sampler, removed, _), rows in groups.items():
            gens = [batch.rows[i].generator for i in rows] if batch.rows[rows[0]].seeded(sampler) else None
            logits = batch.text_logits[rows] if len(rows) < B else batch.text_logits
            text[rows] = sampler(logits, removed=list(removed), generator=gens).cpu()
        for i, r in enumerate(batch.rows):  # the speech floor (min_speech_patches): speak instead of ending
            text[i : i + 1] = speak_instead_of_stopping(r.config, text[i : i + 1], [r.speech.toward_floor],
                                                       lm.empty_token_id)
        codes = lm.empty_ids.cpu().view(1, 1, C).expand(B, G, C).clone()
        groups = {}
        for i, r in enumerate(batch.rows):
            if int(text[i]) == lm.empty_token_id:
                groups.setdefault((r.config.audio_sampler, r.seeded(r.config.audio_sampler)), []).append(i)
        for (sampler, seeded), rows in groups.items():
            gens = [batch.rows[i].generator for i in rows] if seeded else None
            hidden = batch.local_hidden[rows] if len(rows) < B else batch.local_hidden
            choose = code_chooser(sampler, lm.config.speech_zeroemb_idx, gens)
            codes[rows] = lm.decode_patch(hidden, choose).cpu()
        return text, codes

    def _forward(self, batch: BatchState, text: torch.Tensor, codes: torch.Tensor) -> None:
        lm = self.model.lm
        B, G, _ = codes.shape
        dev = lm.device
        patch = torch.cat([text.view(B, 1, 1).expand(B, 1, G), codes.transpose(1, 2)], dim=1).to(dev)
        mask = torch.cat([batch.mask, torch.ones(B, 1, dtype=batch.mask.dtype, device=batch.mask.device)], dim=1)
        # One new query per row: its mask is the row's patch mask. Passing it ready-made as [B, 1, 1, P]
        # (with explicit positions) skips transformers' padded-mask construction, ~12 ms a step at B=16.
        positions = mask.sum(-1, keepdim=True) - 1
        out = lm(patch, attention_mask=mask.bool()[:, None, None, :], position_ids=positions,
                 past_key_values=batch.cache, use_cache=True, logits_to_keep=1)
        with self._lock:
            batch.mask, batch.text_logits, batch.local_hidden = mask, out.text_logits[:, -1], out.local_hidden[:, -1]

    def _run_speculative(self, r: _Request) -> None:
        cfg = r.config.with_(max_new_patches=r.max_new, min_new_patches=min(r.config.min_new_patches, r.max_new))
        try:
            out = self.model._speculative_run([r.job.prompt], cfg)[0]
        except Exception as exc:  # e.g. no MTP heads beside the LM
            with self._lock:
                self._finish(r, ("error", EngineError(f"speculative decoding failed: {exc}")), "failed")
            return
        for i, (t, c) in enumerate(zip(out.text_ids, out.codes)):
            last = i == out.num_patches - 1
            r.events.put(("patch", t, c, last and out.stop_reason == "stop_token"))
        now = time.monotonic()
        with self._lock:
            self._counters["patches"] += out.num_patches
            self._recent_patches.append((now, out.num_patches))
            self._ttfp.append(now - r.submitted)
            self._finish(r, ("end", out.stop_reason, out.num_patches), "completed")
