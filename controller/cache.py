"""Entity documents read on the invocation path, cached for a moment.

Every invoke needs its action (and package) document; reading Cassandra for each costs more than
the rest of the controller's work. This controller's own writes invalidate at once; another
controller's writes are seen within ttl_s (OpenWhisk's controllers likewise cache entities and
invalidate across instances). Misses are not cached: a newly created entity is found at once.
"""
from __future__ import annotations

import time

from squall.store import Store


class EntityCache:
    def __init__(self, store: Store, ttl_s: float = 2.0, max_entries: int = 10_000):
        self._store = store
        self._ttl = ttl_s
        self._max = max_entries
        self._docs: dict[tuple[str, str, str], tuple[float, dict]] = {}

    async def get(self, namespace: str, collection: str, name: str) -> dict | None:
        key = (namespace, collection, name)
        hit = self._docs.get(key)
        now = time.monotonic()
        if hit is not None and hit[0] > now:
            return hit[1]
        doc = await self._store.get_entity(namespace, collection, name)
        if doc is not None:
            if len(self._docs) >= self._max:
                self._docs.clear()
            self._docs[key] = (now + self._ttl, doc)
        return doc

    def invalidate(self, namespace: str, collection: str, name: str) -> None:
        self._docs.pop((namespace, collection, name), None)
