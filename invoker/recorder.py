"""Activation records to Cassandra, many to a request.

Every activation's record was written as two requests of its own, each waiting for a
commit log sync (`commitlog_sync: batch`): under load Cassandra spent more CPU on them
than any other process did on the whole invocation. Here records queue up while the
writes before them are in flight, and each writer takes what has queued into one
unlogged batch. A writer also lets records gather for a short while (the linger) before it
takes a batch: at the rates this machine sustains, batches stayed at one or two records
without it, and with 50 ms the throughput run's Cassandra CPU per invocation fell by a fifth
to a third and the invokers' by a sixth (alternating runs). The callers have their results
already (the record went to its mark first); only the message's ack waits, and the messages
an invoker holds unacknowledged are bounded (max_ack_pending), so a writer stops lingering as
soon as a quarter of a full batch has gathered: at high rates records are not held longer.

A record too big for a batch goes on its own. A failed batch fails every record in it,
and each record's writer retries (the invoker's `_until_stored`), so nothing is lost.
"""
from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from dataclasses import dataclass
from typing import Callable

from squall.store import Store

# Bytes a record adds to a batch besides its JSON (twice: it goes to two tables): keys, columns.
_OVERHEAD = 200


@dataclass
class _Pending:
    record: dict
    doc: str
    done: asyncio.Future


class Recorder:
    def __init__(self, store: Store, writers: int, max_records: int, max_bytes: int, linger_s: float = 0.0,
                 observe: Callable[[float], None] = lambda seconds: None):
        self._store = store
        self._linger_s = linger_s
        self._observe = observe   # each stored record's Cassandra write, seconds (not its wait)
        self._max_records = max_records
        self._max_bytes = max_bytes
        self._queue: deque[_Pending] = deque()
        self._ready = asyncio.Event()
        self._gather = max(max_records // 4, 1)
        self._enough = asyncio.Event()   # self._gather records queued: no lingering on
        self._writers = [asyncio.create_task(self._write_batches()) for _ in range(max(writers, 1))]

    def _size(self, doc: str) -> int:
        return 2 * len(doc) + _OVERHEAD

    async def put(self, record: dict, doc: str) -> None:
        """Store one record; returns once it is stored, raises if its batch failed."""
        if self._size(doc) > self._max_bytes:
            await self._store.put_activation(record, doc)
            return
        pending = _Pending(record, doc, asyncio.get_running_loop().create_future())
        self._queue.append(pending)
        self._ready.set()
        if len(self._queue) >= self._gather:
            self._enough.set()
        await pending.done

    def _take(self) -> list[_Pending]:
        batch, size = [], 0
        while self._queue and len(batch) < self._max_records:
            size += self._size(self._queue[0].doc)
            if batch and size > self._max_bytes:
                break
            batch.append(self._queue.popleft())
        if not self._queue:
            self._ready.clear()
        if len(self._queue) < self._gather:
            self._enough.clear()
        return batch

    async def _write_batches(self) -> None:
        while True:
            await self._ready.wait()
            if self._linger_s and not self._enough.is_set():
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(self._enough.wait(), self._linger_s)
            batch = self._take()
            if not batch:
                continue
            started = time.perf_counter()
            try:
                if len(batch) == 1:
                    await self._store.put_activation(batch[0].record, batch[0].doc)
                else:
                    await self._store.put_activations([(p.record, p.doc) for p in batch])
            except Exception as exc:
                for p in batch:
                    if not p.done.done():
                        p.done.set_exception(exc)
            else:
                seconds = time.perf_counter() - started
                for p in batch:
                    self._observe(seconds)
                    if not p.done.done():
                        p.done.set_result(None)

    async def close(self) -> None:
        for task in self._writers:
            task.cancel()
        for task in self._writers:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        for p in self._queue:
            if not p.done.done():
                p.done.set_exception(ConnectionError("recorder closed"))
        self._queue.clear()
