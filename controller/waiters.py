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

RECENT_S = 10.0        # records are in Cassandra well within this, unless it is down
RECENT_MAX = 10_000


class Waiters:
    def __init__(self) -> None:
        self._pending: dict[str, asyncio.Future[bytes]] = {}
        self._recent: collections.OrderedDict[str, tuple[float, bytes]] = collections.OrderedDict()

    def expect(self, activation_id: str) -> asyncio.Future[bytes]:
        fut = asyncio.get_running_loop().create_future()
        self._pending[activation_id] = fut
        return fut

    def complete(self, activation_id: str, activation_json: bytes) -> bool:
        self._remember(activation_id, activation_json)
        fut = self._pending.pop(activation_id, None)
        if fut is None or fut.done():
            return False
        fut.set_result(activation_json)
        return True

    def forget(self, activation_id: str) -> None:
        fut = self._pending.pop(activation_id, None)
        if fut is not None and not fut.done():
            fut.cancel()

    async def wait(self, activation_id: str, fut: asyncio.Future[bytes], seconds: float) -> bytes | None:
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
        now = time.monotonic()
        self._recent[activation_id] = (now, activation_json)
        while self._recent and (len(self._recent) > RECENT_MAX or next(iter(self._recent.values()))[0] < now - RECENT_S):
            self._recent.popitem(last=False)

    def recent(self, namespace: str) -> list[dict]:
        """The records of the namespace completed here in the last few seconds."""
        horizon = time.monotonic() - RECENT_S
        # Records are compact JSON: only those naming the namespace are parsed, not every one.
        needle = b'"namespace":' + json.dumps(namespace).encode()
        records = (json.loads(body) for at, body in list(self._recent.values()) if at >= horizon and needle in body)
        return [r for r in records if r.get("namespace") == namespace]
