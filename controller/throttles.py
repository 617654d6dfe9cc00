"""Per-namespace throttles: invocations per minute, concurrent activations, trigger fires per
minute, as OpenWhisk's controller enforces them, refusing with 429 before anything is queued.

Counts are kept by this controller (a sliding minute of one-second buckets, and the set of its
activations in flight); with several controllers each enforces its share.
"""
from __future__ import annotations

import collections
import time
from dataclasses import dataclass

from squall.config import LimitsConfig
from squall.errors import BadRequest, TooManyRequests


@dataclass(frozen=True)
class NamespaceLimits:
    invocations_per_minute: int
    concurrent: int
    fires_per_minute: int


class _Minute:
    """Events in the last 60 seconds, in one-second buckets."""

    def __init__(self) -> None:
        self._buckets: collections.deque[list[int]] = collections.deque()

    def count(self, now: int) -> int:
        while self._buckets and self._buckets[0][0] <= now - 60:
            self._buckets.popleft()
        return sum(b[1] for b in self._buckets)

    def add(self, now: int) -> None:
        if self._buckets and self._buckets[-1][0] == now:
            self._buckets[-1][1] += 1
        else:
            self._buckets.append([now, 1])


class Throttles:
    def __init__(self, cfg: LimitsConfig):
        self._default = NamespaceLimits(cfg.invocations_per_minute, cfg.concurrent_invocations, cfg.fires_per_minute)
        self._limits = dict(_overrides(cfg.namespace_overrides))
        self._invokes: dict[str, _Minute] = collections.defaultdict(_Minute)
        self._fires: dict[str, _Minute] = collections.defaultdict(_Minute)
        # activation id -> (namespace, when to stop counting it: a completion may never come
        # if its invoker died, and a lost count must not throttle the namespace for ever)
        self._in_flight: dict[str, tuple[str, float]] = {}
        self._expiry_s = cfg.timeout_max_ms / 1000 + 120
        self._next_purge = 0.0
        self._concurrent: collections.Counter[str] = collections.Counter()

    def limits(self, namespace: str) -> NamespaceLimits:
        return self._limits.get(namespace, self._default)

    def set_limits(self, namespace: str, limits: NamespaceLimits) -> None:
        self._limits[namespace] = limits

    def admit_invoke(self, namespace: str) -> None:
        limits = self.limits(namespace)
        now = self._check_minute(self._invokes[namespace], limits.invocations_per_minute)
        if self._concurrent[namespace] >= limits.concurrent:
            raise TooManyRequests(f"Too many concurrent requests in flight (count: {self._concurrent[namespace] + 1}, "
                                  f"allowed: {limits.concurrent}).")
        self._invokes[namespace].add(now)

    def admit_fire(self, namespace: str) -> None:
        minute = self._fires[namespace]
        minute.add(self._check_minute(minute, self.limits(namespace).fires_per_minute))

    @staticmethod
    def _check_minute(minute: _Minute, allowed: int) -> int:
        """Refuse if the last minute already holds `allowed` events; returns the current second."""
        now = int(time.monotonic())
        count = minute.count(now)
        if count >= allowed:
            raise TooManyRequests(f"Too many requests in the last minute (count: {count + 1}, allowed: {allowed}).")
        return now

    def started(self, namespace: str, activation_id: str) -> None:
        now = time.monotonic()
        self._in_flight[activation_id] = (namespace, now + self._expiry_s)
        self._concurrent[namespace] += 1
        if now > self._next_purge:
            self._next_purge = now + 10
            for aid, (_, until) in list(self._in_flight.items()):
                if until < now:
                    self.finished(aid)

    def finished(self, activation_id: str) -> None:
        entry = self._in_flight.pop(activation_id, None)
        if entry is not None:
            self._concurrent[entry[0]] -= 1


def _overrides(items: tuple[str, ...]):
    for item in items:
        try:
            namespace, values = item.split("=", 1)
            invokes, concurrent, fires = (int(v) for v in values.split("/"))
        except ValueError:
            raise BadRequest(f"SQUALL_LIMITS_NAMESPACE_OVERRIDES item {item!r} is not ns=invokes/concurrent/fires") from None
        yield namespace, NamespaceLimits(invokes, concurrent, fires)
