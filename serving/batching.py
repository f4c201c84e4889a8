"""Adaptive batching of decoded images across concurrent requests.

Each request decodes its own uploads (so a bad file fails only that request, with a 4xx) and then
submits the uint8 pixels here. One worker thread runs one batch at a time and takes every queued
request up to ``max_batch_size`` images. Requests queue up while a batch runs, so under load batches
grow by themselves to what arrives during one inference. Before starting a batch the worker waits
(at most ``max_latency_ms`` after the oldest queued request arrived) only for requests that were
already decoding when that oldest request was queued (announced with ``expect()``): the rest of a
burst, not every later arrival. So a lone client never waits, and steady traffic is not slowed by
waiting for requests that keep arriving.
A batch only mixes requests decoded for the same model (``key``), so a hot reload never feeds one
model's input size to another. A request larger than ``max_batch_size`` runs on its own.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass
class _Item:
    key: Any
    pixels: np.ndarray
    future: Future = field(default_factory=Future)
    enqueued: float = field(default_factory=time.monotonic)


class AdaptiveBatcher:
    """``submit(key, pixels) -> Future[scores]``; ``run_batch(key, pixels) -> scores`` does the work."""

    def __init__(
        self, run_batch: Callable[[Any, np.ndarray], np.ndarray], max_batch_size: int, max_latency_ms: float
    ) -> None:
        if max_batch_size < 1:
            raise ValueError(f"max_batch_size must be >= 1, got {max_batch_size}")
        self._run_batch = run_batch
        self.max_batch_size = int(max_batch_size)
        self.max_latency = float(max_latency_ms) / 1000.0
        self._queue: deque[_Item] = deque()
        self._cond = threading.Condition()
        self._decoding: dict[int, float] = {}  # expect() token -> when that request started decoding
        self._tokens = 0
        self._closed = False
        self.batch_sizes: deque[int] = deque(maxlen=1000)  # recent batch sizes, for /info and tests
        self._thread = threading.Thread(target=self._loop, name="anomalymatch-batcher", daemon=True)
        self._thread.start()

    @contextmanager
    def expect(self) -> Iterator[None]:
        """Announce a request that is decoding and will submit soon (the batcher may wait for it)."""
        with self._cond:
            self._tokens += 1
            token = self._tokens
            self._decoding[token] = time.monotonic()
        try:
            yield
        finally:
            with self._cond:
                del self._decoding[token]
                self._cond.notify_all()

    def submit(self, key: Any, pixels: np.ndarray) -> Future:
        item = _Item(key, pixels)
        with self._cond:
            if self._closed:
                raise RuntimeError("the batcher is closed (the service is shutting down)")
            self._queue.append(item)
            self._cond.notify_all()
        return item.future

    def close(self) -> None:
        """Finish what is queued, then stop the worker."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        self._thread.join(timeout=60)

    def _take(self) -> list[_Item]:
        """Called with the lock held and a non-empty queue: the head's batch."""
        key = self._queue[0].key
        taken = [self._queue.popleft()]
        n = len(taken[0].pixels)
        while self._queue and self._queue[0].key is key and n + len(self._queue[0].pixels) <= self.max_batch_size:
            item = self._queue.popleft()
            taken.append(item)
            n += len(item.pixels)
        return taken

    def _queued_images(self) -> int:
        key = self._queue[0].key
        return sum(len(item.pixels) for item in self._queue if item.key is key)

    def _loop(self) -> None:
        while True:
            with self._cond:
                while not self._queue and not self._closed:
                    self._cond.wait()
                if not self._queue:
                    return
                head = self._queue[0].enqueued
                deadline = head + self.max_latency
                while (
                    not self._closed
                    and self._queued_images() < self.max_batch_size
                    and any(started <= head for started in self._decoding.values())
                ):
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        break
                    self._cond.wait(remaining)
                batch = self._take()
            self._run(batch)

    def _run(self, batch: list[_Item]) -> None:
        pixels = batch[0].pixels if len(batch) == 1 else np.concatenate([item.pixels for item in batch])
        self.batch_sizes.append(len(pixels))
        try:
            scores = self._run_batch(batch[0].key, pixels)
        except Exception as exc:  # the batch failed as a whole: every request in it learns why
            for item in batch:
                item.future.set_exception(exc)
            return
        start = 0
        for item in batch:
            item.future.set_result(scores[start : start + len(item.pixels)])
            start += len(item.pixels)
