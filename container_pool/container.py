"""A pooled container's life, as one explicit state machine.

    STARTING ──> PREWARMED ──> INITIALIZING ──> BUSY <──> IDLE <──> PAUSED
        │            │               │            │         │          │
        └────────────┴───────────────┴────────────┴─────────┴──────────┴──> REMOVING ──> REMOVED

STARTING      the engine is creating and starting it
PREWARMED     a stem cell: started, no action code yet
INITIALIZING  /init with an action's code is under way (or about to be)
BUSY          running one or more activations (`active` counts them)
IDLE          warm: initialized, nothing running
PAUSED        warm but frozen by the engine, to cost no CPU while idle
REMOVING      being removed; never handed out again
REMOVED       gone

Every change goes through `move`, which refuses a transition not in the table,
so a bug shows up as an error instead of a container in two places at once.
"""
from __future__ import annotations

import asyncio
import collections
import enum
import time
from dataclasses import dataclass, field

from container_pool.backend import ContainerHandle, LogLine, LogSource


class State(enum.Enum):
    STARTING = "starting"
    PREWARMED = "prewarmed"
    INITIALIZING = "initializing"
    BUSY = "busy"
    IDLE = "idle"
    PAUSED = "paused"
    REMOVING = "removing"
    REMOVED = "removed"


TRANSITIONS: dict[State, frozenset[State]] = {
    State.STARTING: frozenset({State.PREWARMED, State.INITIALIZING, State.REMOVING}),
    State.PREWARMED: frozenset({State.INITIALIZING, State.REMOVING}),
    State.INITIALIZING: frozenset({State.BUSY, State.REMOVING}),
    State.BUSY: frozenset({State.IDLE, State.REMOVING}),
    State.IDLE: frozenset({State.BUSY, State.PAUSED, State.REMOVING}),
    State.PAUSED: frozenset({State.BUSY, State.REMOVING}),
    State.REMOVING: frozenset({State.REMOVED}),
    State.REMOVED: frozenset(),
}


class InvalidTransition(RuntimeError):
    pass


@dataclass(frozen=True)
class ActionKey:
    """What a warm container can serve: a new revision never runs on an old container."""
    namespace: str
    name: str
    revision: str
    memory_mb: int


@dataclass(eq=False)
class PooledContainer:
    kind: str                       # runtime kind (or image for blackbox) it was started for
    memory_mb: int
    state: State = State.STARTING
    handle: ContainerHandle | None = None
    action: ActionKey | None = None  # set once initialized
    active: int = 0                  # activations running in it now
    max_concurrent: int = 1
    stem_cell: bool = False          # started ahead of demand, not yet given to an action
    last_used: float = field(default_factory=time.monotonic)
    # The container's output, and lines read from it that no activation has claimed yet.
    log_source: LogSource | None = None
    unclaimed: collections.deque[LogLine] = field(default_factory=collections.deque)
    # Set when the engine reports the container stopped, so a run waiting on it ends at once.
    exited: asyncio.Event = field(default_factory=asyncio.Event)
    # Serializes engine operations (pause/unpause/remove) on this container.
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    def move(self, to: State) -> None:
        if to not in TRANSITIONS[self.state]:
            raise InvalidTransition(f"container {self.name}: {self.state.value} -> {to.value}")
        self.state = to

    @property
    def name(self) -> str:
        return self.handle.name if self.handle else "<starting>"

    @property
    def can_take_more(self) -> bool:
        return self.state in (State.IDLE, State.PAUSED) or (
            self.state is State.BUSY and self.active < self.max_concurrent)
