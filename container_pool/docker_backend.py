"""ContainerBackend over the Docker Engine API (Docker, or Podman's compatible service).

The docker SDK is blocking, so each call runs in a worker thread.
"""
from __future__ import annotations

import asyncio
import logging
import re
from datetime import datetime, timezone

import docker
from docker.errors import APIError, NotFound
from docker.models.containers import Container

from container_pool.backend import ContainerHandle, ContainerSpec, ExitInfo, LogLine
from container_pool.runtimes import PROXY_PORT

log = logging.getLogger(__name__)


def default_network(client: docker.DockerClient) -> str:
    """Podman's default network is "podman", Docker's "bridge"."""
    components = client.version().get("Components", [])
    return "podman" if any("podman" in c.get("Name", "").lower() for c in components) else "bridge"


class DockerBackend:
    def __init__(self, client: docker.DockerClient, network: str):
        self._client = client
        self._network = network

    async def create(self, spec: ContainerSpec) -> ContainerHandle:
        return await asyncio.to_thread(self._create, spec)

    def _create(self, spec: ContainerSpec) -> ContainerHandle:
        container: Container = self._client.containers.run(
            spec.image,
            name=spec.name,
            detach=True,
            init=True,                       # a proper PID 1: signals and zombies handled
            mem_limit=f"{spec.memory_mb}m",
            memswap_limit=f"{spec.memory_mb}m",
            pids_limit=spec.pids_limit,
            labels=spec.labels,
            network=self._network,
            security_opt=["no-new-privileges"],
        )
        container.reload()
        networks = container.attrs.get("NetworkSettings", {}).get("Networks", {}) or {}
        ip = next((n.get("IPAddress") for n in networks.values() if n.get("IPAddress")), None)
        if not ip:
            container.remove(force=True)
            raise RuntimeError(f"container {spec.name} got no IP address on network {self._network}")
        return ContainerHandle(container.id, spec.name, f"{ip}:{PROXY_PORT}")

    async def pause(self, handle: ContainerHandle) -> None:
        await asyncio.to_thread(self._client.api.pause, handle.id)

    async def unpause(self, handle: ContainerHandle) -> None:
        await asyncio.to_thread(self._client.api.unpause, handle.id)

    async def remove(self, handle: ContainerHandle) -> None:
        def remove() -> None:
            try:
                self._client.api.remove_container(handle.id, force=True)
            except NotFound:
                pass
            except APIError as exc:
                if exc.status_code != 404 and "no such container" not in str(exc).lower():
                    raise
        await asyncio.to_thread(remove)

    async def logs(self, handle: ContainerHandle, since: str | None) -> list[LogLine]:
        since_ts = _to_epoch(since) if since else None

        def read(stream: str) -> list[LogLine]:
            raw = self._client.api.logs(handle.id, stdout=stream == "stdout", stderr=stream == "stderr",
                                        timestamps=True, since=since_ts)
            out = []
            for line in raw.decode("utf-8", "replace").splitlines():
                stamp, _, text = line.partition(" ")
                stamp = normalize_stamp(stamp)
                if since is None or stamp > since:
                    out.append(LogLine(stamp, stream, text))
            return out

        stdout, stderr = await asyncio.gather(asyncio.to_thread(read, "stdout"), asyncio.to_thread(read, "stderr"))
        return sorted(stdout + stderr, key=lambda line: line.time)

    async def inspect(self, handle: ContainerHandle) -> ExitInfo:
        def inspect() -> ExitInfo:
            try:
                state = self._client.api.inspect_container(handle.id)["State"]
            except NotFound:
                return ExitInfo(False, None, False)
            return ExitInfo(bool(state.get("Running")), state.get("ExitCode"), bool(state.get("OOMKilled")))
        return await asyncio.to_thread(inspect)

    async def list(self, labels: dict[str, str]) -> list[ContainerHandle]:
        def list_() -> list[ContainerHandle]:
            filters = {"label": [f"{k}={v}" for k, v in labels.items()]}
            return [ContainerHandle(c["Id"], (c.get("Names") or [""])[0].lstrip("/"), "")
                    for c in self._client.api.containers(all=True, filters=filters)]
        return await asyncio.to_thread(list_)


_STAMP = re.compile(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.(\d+))?(Z|[+-]\d\d:\d\d)?")


def normalize_stamp(stamp: str) -> str:
    """An engine's RFC 3339 stamp as UTC with exactly 9 fraction digits, so stamps order as text."""
    m = _STAMP.match(stamp)
    if not m:
        return stamp
    head, frac, zone = m.group(1), (m.group(2) or "")[:9].ljust(9, "0"), m.group(3) or "Z"
    if zone != "Z":
        moment = datetime.fromisoformat(head + zone).astimezone(timezone.utc)
        head = moment.strftime("%Y-%m-%dT%H:%M:%S")
    return f"{head}.{frac}Z"


def _to_epoch(stamp: str) -> float:
    """An RFC 3339 stamp with nanoseconds as epoch seconds, rounded down to microseconds."""
    head, _, frac = stamp.rstrip("Z").partition(".")
    base = datetime.strptime(head, "%Y-%m-%dT%H:%M:%S").replace(tzinfo=timezone.utc).timestamp()
    return base + float("0." + (frac[:6] or "0"))
