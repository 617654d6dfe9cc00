"""Completions as this controller hears them: blocking callers waiting for theirs, and the
records of the last few seconds.

A waiter is registered before the activation is published, so a completion can
never arrive before someone listens for it. Records are written to Cassandra just after their
caller hears the result, so a listing made at once may miss the newest: the recent ones fill in.
"""
from __future__ import annotations

import asyncio
import collections
import json
import time
from typing import NamedTuple

RECENT_S = 10.0        # records are in Cassandra well within this, unless it is down
RECENT_MAX = 10_000


class Completed(NamedTuple):
    """An activation's record as JSON, with what its completion told of it."""
    record: bytes
    status_code: int = -1   # response.statusCode; -1: unknown (read the record)
    result_at: int = 0      # where the result begins when the record ends with it; 0: unknown

    def status(self) -> int:
        if self.status_code >= 0:
            return self.status_code
        return json.loads(self.record).get("response", {}).get("statusCode", 3)

    def result(self) -> bytes:
        """The result as JSON: sliced out when its place is known, else parsed out."""
        if self.result_at:
            return self.record[self.result_at:-2]
        return json.dumps(json.loads(self.record).get("response", {}).get("result", {}), separators=(",", ":")).encode()


class Waiters:
    def __init__(self) -> None:
        self._pending: dict[str, asyncio.Future[Completed]] = {}
        self._recent: collections.OrderedDict[str, tuple[float, bytes]] = collections.OrderedDict()

    def expect(self, activation_id: str) -> asyncio.Future[Completed]:
        fut = asyncio.get_running_loop().create_future()
        self._pending[activation_id] = fut
        return fut

    def complete(self, activation_id: str, completed: Completed) -> bool:
        self._remember(activation_id, completed.record)
        fut = self._pending.pop(activation_id, None)
        if fut is None or fut.done():
            return False
        fut.set_result(completed)
        return True

    def forget(self, activation_id: str) -> None:
        fut = self._pending.pop(activation_id, None)
        if fut is not None and not fut.done():
            fut.cancel()

    async def wait(self, activation_id: str, fut: asyncio.Future[Completed], seconds: float) -> Completed | None:
        """The activation record, or None when the wait ran out."""
        try:
            return await asyncio.wait_for(asyncio.shield(fut), seconds)
        except asyncio.TimeoutError:
            return None
        finally:
            self.forget(activation_id)

    def __len__(self) -> int:
        return len(self._pending)

    def _remember(self, activation_id: str, activation_json: bytes) -> None:
        """The first completion heard stands: a later one for the same activation (a cut-off
        invoker's, after a takeover settled it) is not its outcome."""
        now = time.monotonic()
        self._recent.setdefault(activation_id, (now, activation_json))
        while self._recent and (len(self._recent) > RECENT_MAX or next(iter(self._recent.values()))[0] < now - RECENT_S):
            self._recent.popitem(last=False)

    def recent(self, namespace: str) -> list[dict]:
        """The records of the namespace completed here in the last few seconds."""
        horizon = time.monotonic() - RECENT_S
        # Records are compact JSON: only those naming the namespace are parsed, not every one.
        needle = b'"namespace":' + json.dumps(namespace).encode()
        records = (json.loads(body) for at, body in list(self._recent.values()) if at >= horizon and needle in body)
        return [r for r in records if r.get("namespace") == namespace]
