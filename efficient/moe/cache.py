"""A byte-bounded LRU expert cache with background prefetch.

``get`` returns an expert: from the cache (hit), by waiting for a prefetch already in flight, or by
reading it from the store on the spot (miss, the on-demand path). ``prefetch`` queues reads on a
background thread, so that they overlap with the computation of the current layer (file reads and
torch kernels release the GIL). The cached bytes never exceed the budget: eviction happens before
every insertion. Experts being computed hold their own references, so an evicted expert stays valid
until the layer is done with it.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

import torch

from .store import Expert, ExpertKey, ExpertStore


@dataclass
class CacheStats:
    requests: int = 0
    hits: int = 0  # in the cache when asked for
    inflight_hits: int = 0  # prefetch issued, waited for the rest of the read
    misses: int = 0  # read on demand
    prefetches: int = 0
    prefetch_unused: int = 0  # evicted before anyone asked for it
    bytes_read: int = 0
    time_blocked: float = 0.0  # seconds the compute thread waited for expert reads
    peak_bytes: int = 0
    evictions: int = 0

    @property
    def hit_rate(self) -> float:
        return (self.hits + self.inflight_hits) / self.requests if self.requests else float("nan")


class ExpertCache:
    def __init__(
        self,
        store: ExpertStore,
        budget_bytes: int,
        device: str | torch.device = "cpu",
        prefetch_threads: int = 1,
    ) -> None:
        largest = max(store.expert_bytes(k) for k in store.keys)
        if budget_bytes < largest:
            raise ValueError(f"expert cache budget {budget_bytes} B is smaller than one expert ({largest} B)")
        self.store, self.budget, self.device = store, int(budget_bytes), torch.device(device)
        self._lru: OrderedDict[ExpertKey, Expert] = OrderedDict()
        self._unused: set[ExpertKey] = set()  # prefetched, not yet requested
        self._inflight: dict[ExpertKey, Future] = {}
        self._bytes = 0
        self._lock = threading.Lock()
        self._pool = ThreadPoolExecutor(max_workers=prefetch_threads, thread_name_prefix="expert-prefetch")
        self.stats = CacheStats()

    # -- state -----------------------------------------------------------------------------------------
    @property
    def cached_bytes(self) -> int:
        return self._bytes

    def __contains__(self, key: ExpertKey) -> bool:
        return key in self._lru

    def available(self, key: ExpertKey) -> bool:
        """Cached or being read in the background (a request would not start a new read)."""
        return key in self._lru or key in self._inflight

    def reset_stats(self) -> None:
        self.stats = CacheStats()

    def clear(self) -> None:
        self.wait_idle()
        with self._lock:
            self._lru.clear()
            self._unused.clear()
            self._bytes = 0

    def wait_idle(self) -> None:
        for fut in list(self._inflight.values()):
            fut.result()

    def close(self) -> None:
        self._pool.shutdown(wait=True)

    # -- reads ------------------------------------------------------------------------------------------
    def _fetch(self, key: ExpertKey) -> Expert:
        expert = self.store.read(key)
        if self.device.type == "cuda":
            stream = torch.cuda.Stream(device=self.device)
            with torch.cuda.stream(stream):
                expert = tuple(t.to(self.device, non_blocking=True) for t in expert)
            stream.synchronize()
        elif expert[0].device != self.device:
            expert = tuple(t.to(self.device) for t in expert)
        return expert

    def _insert(self, key: ExpertKey, expert: Expert, prefetched: bool) -> None:
        size = sum(t.numel() * t.element_size() for t in expert)
        with self._lock:
            self.stats.bytes_read += size
            if key in self._lru:
                return
            while self._bytes + size > self.budget and self._lru:
                old, val = self._lru.popitem(last=False)
                self._bytes -= sum(t.numel() * t.element_size() for t in val)
                self.stats.evictions += 1
                if old in self._unused:
                    self._unused.discard(old)
                    self.stats.prefetch_unused += 1
            self._lru[key] = expert
            self._bytes += size
            if prefetched:
                self._unused.add(key)
            self.stats.peak_bytes = max(self.stats.peak_bytes, self._bytes)

    def _prefetch_job(self, key: ExpertKey) -> Expert:
        try:
            expert = self._fetch(key)
            self._insert(key, expert, prefetched=True)
            return expert
        finally:
            with self._lock:
                self._inflight.pop(key, None)

    def prefetch(self, keys: list[ExpertKey]) -> None:
        """Queue background reads of the experts that are neither cached nor already in flight."""
        with self._lock:
            todo = [k for k in keys if k not in self._lru and k not in self._inflight]
            for k in todo:
                self._inflight[k] = self._pool.submit(self._prefetch_job, k)
            self.stats.prefetches += len(todo)

    def get(self, key: ExpertKey) -> Expert:
        with self._lock:
            self.stats.requests += 1
            expert = self._lru.get(key)
            if expert is not None:
                self._lru.move_to_end(key)
                self._unused.discard(key)
                self.stats.hits += 1
                return expert
            fut = self._inflight.get(key)
        t0 = time.perf_counter()
        if fut is not None:
            expert = fut.result()
            with self._lock:
                self._unused.discard(key)
                self.stats.inflight_hits += 1
        else:
            expert = self._fetch(key)
            self._insert(key, expert, prefetched=False)
            with self._lock:
                self.stats.misses += 1
        self.stats.time_blocked += time.perf_counter() - t0
        return expert
