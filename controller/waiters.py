"""Blocking callers waiting for their activation's completion.

A waiter is registered before the activation is published, so a completion can
never arrive before someone listens for it.
"""
from __future__ import annotations

import asyncio


class Waiters:
    def __init__(self) -> None:
        self._pending: dict[str, asyncio.Future[bytes]] = {}

    def expect(self, activation_id: str) -> asyncio.Future[bytes]:
        fut = asyncio.get_running_loop().create_future()
        self._pending[activation_id] = fut
        return fut

    def complete(self, activation_id: str, activation_json: bytes) -> bool:
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
