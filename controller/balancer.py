"""Choosing the invoker for an activation.

Each action has a home invoker, chosen by a stable hash of its namespace and
name, so repeated invocations land where its warm containers are. (Health,
capacity and the co-prime overflow step come with several invokers.)
"""
from __future__ import annotations

import zlib


class Balancer:
    def __init__(self, invokers: int):
        if invokers < 1:
            raise ValueError("at least one invoker is needed")
        self._invokers = invokers

    def home(self, namespace: str, name: str) -> int:
        return zlib.crc32(f"{namespace}/{name}".encode()) % self._invokers

    def choose(self, namespace: str, name: str) -> int:
        return self.home(namespace, name)
