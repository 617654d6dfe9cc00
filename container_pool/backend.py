"""The container engine seen by the pool: one Protocol, implemented per engine."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import AsyncIterator, Protocol


class ImageUnavailable(Exception):
    """The image is neither present nor pullable: the action's fault, not the platform's."""

    def __init__(self, image: str):
        super().__init__(f"Failed to pull container image '{image}'.")
        self.image = image


@dataclass(frozen=True)
class ContainerSpec:
    image: str
    memory_mb: int
    name: str
    labels: dict[str, str] = field(default_factory=dict)
    pids_limit: int = 1024


@dataclass(frozen=True)
class ContainerHandle:
    id: str
    name: str
    address: str          # "ip:port" of the action proxy


@dataclass(frozen=True)
class LogLine:
    time: str             # RFC 3339 UTC with microseconds, when the line was read
    stream: str           # "stdout" or "stderr"
    text: str


@dataclass(frozen=True)
class ExitInfo:
    running: bool
    exit_code: int | None
    oom_killed: bool


class LogSource(Protocol):
    """A container's output, from its first line on, read a batch at a time."""

    def read(self) -> list[LogLine]:
        """The complete lines written since the last read, in order; never blocks."""

    def close(self) -> None: ...


class ContainerBackend(Protocol):
    async def create(self, spec: ContainerSpec) -> ContainerHandle:
        """Create and start a container; returns once it has an address."""

    async def pause(self, handle: ContainerHandle) -> None: ...

    async def unpause(self, handle: ContainerHandle) -> None: ...

    async def kill(self, handle: ContainerHandle) -> bool:
        """Kill the container's processes at once, if this backend can do that quickly (its memory
        is then free); False if only remove() can stop it."""

    async def remove(self, handle: ContainerHandle) -> None:
        """Remove the container, killing it if needed; removing a gone container is not an error."""

    def logs(self, handle: ContainerHandle) -> LogSource:
        """The container's output (stdout and stderr interleaved as written)."""

    async def inspect(self, handle: ContainerHandle) -> ExitInfo: ...

    def exits(self, labels: dict[str, str]) -> AsyncIterator[str]:
        """Ids of containers carrying these labels, as each one stops (for whatever reason)."""

    async def list(self, labels: dict[str, str]) -> list[ContainerHandle]:
        """Containers (running or not) carrying all these labels."""
