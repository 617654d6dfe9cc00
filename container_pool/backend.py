"""The container engine seen by the pool: one Protocol, implemented per engine."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Protocol


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


class ContainerBackend(Protocol):
    async def create(self, spec: ContainerSpec) -> ContainerHandle:
        """Create and start a container; returns once it has an address."""

    async def pause(self, handle: ContainerHandle) -> None: ...

    async def unpause(self, handle: ContainerHandle) -> None: ...

    async def remove(self, handle: ContainerHandle) -> None:
        """Remove the container, killing it if needed; removing a gone container is not an error."""

    def follow_logs(self, handle: ContainerHandle, sink: Callable[[LogLine], None]) -> None:
        """From now until the container is removed, call sink (on the event loop) with each line
        the container writes, from its very first one."""

    async def inspect(self, handle: ContainerHandle) -> ExitInfo: ...

    async def list(self, labels: dict[str, str]) -> list[ContainerHandle]:
        """Containers (running or not) carrying all these labels."""
