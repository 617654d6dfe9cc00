"""Choosing the invoker for an activation: OpenWhisk's sharding balancer, with health.

Algorithm (as OpenWhisk's ShardingContainerPoolBalancer):
  * Every action has a home invoker, hash(namespace/action) mod N, so its repeated invocations
    land where its warm containers are.
  * From home, the search steps through the other invokers with a step size co-prime to N
    (also chosen by the hash), so every invoker is visited once and different actions overflow
    to different invokers instead of all piling onto home+1.
  * The first invoker on that walk that is healthy and has free memory for the action's memory
    limit gets it. The controller counts, per invoker, the memory of the activations it sent
    there and has not yet seen complete (an invoker's own heartbeat caps that at its capacity).
  * If every healthy invoker is full, a random healthy one is chosen: the activation waits in
    that invoker's JetStream subject until capacity frees (nothing is dropped).
  * With no healthy invoker at all, the activation is refused (503) before anything is queued.

Health: every invoker sends a heartbeat (NATS, every second) with its capacity and load. One not
heard from for `unresponsive_after_s` is unresponsive and gets no work; after `takeover_after_s`
the controller takes over what waits in its subject (see failover.py). An invoker whose
activations end in whisk internal errors several times in a row is unhealthy: it gets no work
until a health-test activation sent to it succeeds.
"""
from __future__ import annotations

import math
import random
import time
import zlib
from dataclasses import dataclass, field

HEALTHY, UNHEALTHY, UNRESPONSIVE, OFFLINE = "healthy", "unhealthy", "unresponsive", "offline"
FAILURES_TO_UNHEALTHY = 3


@dataclass
class InvokerState:
    id: int
    capacity_mb: int = 0               # from its heartbeat
    used_mb: int = 0                   # the pool's own count, from its heartbeat
    in_flight: int = 0
    containers: dict[str, int] = field(default_factory=dict)   # its pool's containers by state
    last_seen: float = 0.0             # monotonic time of the last heartbeat
    failures: int = 0                  # whisk internal errors in a row
    sent_mb: dict[str, int] = field(default_factory=dict)   # activation id -> memory, until completion

    @property
    def reserved_mb(self) -> int:
        return sum(self.sent_mb.values())


def _step_sizes(n: int) -> list[int]:
    """Step sizes co-prime to n (1 included), so a walk visits every invoker exactly once."""
    return [s for s in range(1, n + 1) if math.gcd(s, n) == 1] or [1]


class Balancer:
    def __init__(self, invokers: int, unresponsive_after_s: float = 3.0, offline_after_s: float = 30.0):
        if invokers < 1:
            raise ValueError("at least one invoker is needed")
        self._n = invokers
        self._steps = _step_sizes(invokers)
        self._unresponsive_after = unresponsive_after_s
        self._offline_after = offline_after_s
        self.invokers = [InvokerState(i) for i in range(invokers)]
        self._born = time.monotonic()
        self._placed: dict[str, int] = {}    # activation id -> invoker

    # Health

    def heartbeat(self, invoker: int, capacity_mb: int, used_mb: int, in_flight: int,
                  containers: dict[str, int] | None = None) -> None:
        if 0 <= invoker < self._n:
            state = self.invokers[invoker]
            state.capacity_mb, state.used_mb, state.in_flight = capacity_mb, used_mb, in_flight
            state.containers = containers or {}
            state.last_seen = time.monotonic()

    def status(self, invoker: int) -> str:
        state = self.invokers[invoker]
        silent = time.monotonic() - state.last_seen
        if state.last_seen == 0 or silent > self._offline_after:
            return OFFLINE
        if silent > self._unresponsive_after:
            return UNRESPONSIVE
        return UNHEALTHY if state.failures >= FAILURES_TO_UNHEALTHY else HEALTHY

    def silent_for(self, invoker: int) -> float:
        """Seconds since its last heartbeat (or since this controller started, if none yet)."""
        state = self.invokers[invoker]
        return time.monotonic() - (state.last_seen or self._born)

    def completed(self, activation_id: str, invoker: int, status_code: int) -> None:
        placed = self._placed.pop(activation_id, invoker)
        if 0 <= placed < self._n:
            self.invokers[placed].sent_mb.pop(activation_id, None)
        if 0 <= invoker < self._n:
            state = self.invokers[invoker]
            state.failures = state.failures + 1 if status_code == 3 else 0

    # Placement

    def home(self, namespace: str, name: str) -> int:
        return zlib.crc32(f"{namespace}/{name}".encode()) % self._n

    def choose(self, namespace: str, name: str, memory_mb: int = 0) -> int | None:
        """The invoker for one activation of namespace/name, or None when none is healthy."""
        digest = zlib.crc32(f"{namespace}/{name}".encode())
        home, step = digest % self._n, self._steps[digest % len(self._steps)]
        healthy = []
        for k in range(self._n):
            candidate = (home + k * step) % self._n
            if self.status(candidate) != HEALTHY:
                continue
            healthy.append(candidate)
            state = self.invokers[candidate]
            if state.reserved_mb + memory_mb <= state.capacity_mb:
                return candidate
        return random.choice(healthy) if healthy else None

    def placed(self, activation_id: str, invoker: int, memory_mb: int) -> None:
        self._placed[activation_id] = invoker
        self.invokers[invoker].sent_mb[activation_id] = memory_mb

    def unplaced(self, activation_id: str) -> None:
        """It was never sent after all (its publish failed)."""
        placed = self._placed.pop(activation_id, -1)
        if 0 <= placed < self._n:
            self.invokers[placed].sent_mb.pop(activation_id, None)

    def forget_invoker_work(self, invoker: int) -> None:
        """Its work is being taken over: stop counting it against that invoker."""
        for activation_id in list(self.invokers[invoker].sent_mb):
            self._placed.pop(activation_id, None)
        self.invokers[invoker].sent_mb.clear()

    def snapshot(self) -> list[dict]:
        return [{"id": s.id, "status": self.status(s.id), "capacityMB": s.capacity_mb, "usedMB": s.used_mb,
                 "reservedMB": s.reserved_mb, "inFlight": s.in_flight, "containers": s.containers,
                 "lastSeenSecondsAgo": None if s.last_seen == 0 else round(time.monotonic() - s.last_seen, 1)}
                for s in self.invokers]
