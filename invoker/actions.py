"""The actions an invoker keeps between runs: each at its latest revision seen, with its /init
request encoded once (every warm run used to encode the code again: 3 ms for 1 MB of it), the
most recently used within a byte budget."""
from __future__ import annotations

import json
from typing import NamedTuple, Protocol

from squall.store import revision as revision_of

BUDGET_BYTES = 256 * 1024 * 1024   # an action's code counts twice: in its doc and its /init


class Loaded(NamedTuple):
    revision: str
    doc: dict
    init_body: bytes   # the /init request, sent once per container

    @classmethod
    def of(cls, name: str, doc: dict) -> "Loaded":
        exec_ = doc["exec"]
        init = {"value": {"name": name, "main": exec_.get("main", "main"), "code": exec_.get("code", ""),
                          "binary": exec_.get("binary", False), "env": {}}}
        return cls(revision_of(doc), doc, json.dumps(init).encode())

    @property
    def size(self) -> int:
        return 2 * len(self.init_body)


class ActionReader(Protocol):
    async def get_entity(self, namespace: str, collection: str, name: str) -> dict | None: ...


class ActionCache:
    def __init__(self, store: ActionReader, budget_bytes: int = BUDGET_BYTES):
        self._store = store
        self._budget = budget_bytes
        self._loaded: dict[tuple[str, str], Loaded] = {}   # least recently used first
        self._bytes = 0

    async def get(self, namespace: str, name: str, revision: str) -> Loaded | None:
        """The action at that revision (read again when the cache holds another), or None if it
        does not exist."""
        key = (namespace, name)
        cached = self._loaded.get(key)
        if cached and cached.revision == revision:
            self._loaded[key] = self._loaded.pop(key)   # to the end: the most recently used
            return cached
        doc = await self._store.get_entity(namespace, "actions", name)
        if doc is None:
            return None
        loaded = Loaded.of(name, doc)
        replaced = self._loaded.pop(key, None)   # an older revision, or what a concurrent read put
        self._bytes += loaded.size - (replaced.size if replaced else 0)
        self._loaded[key] = loaded
        while self._bytes > self._budget and len(self._loaded) > 1:
            self._bytes -= self._loaded.pop(next(iter(self._loaded))).size
        return loaded

    def __len__(self) -> int:
        return len(self._loaded)
