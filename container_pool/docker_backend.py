"""ContainerBackend over the Docker Engine API (Docker, or Podman's compatible service).

The docker SDK is blocking, so each call runs in a worker thread.
"""
from __future__ import annotations

import asyncio
import logging
import threading
from datetime import datetime, timezone

import docker
from docker.errors import APIError, ImageNotFound, NotFound
from docker.models.containers import Container

from typing import Callable

from container_pool.backend import ContainerHandle, ContainerSpec, ExitInfo, ImageUnavailable, LogLine
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
        try:
            return self._run(spec)
        except ImageNotFound as exc:
            raise ImageUnavailable(spec.image) from exc

    def _run(self, spec: ContainerSpec) -> ContainerHandle:
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

    def follow_logs(self, handle: ContainerHandle, sink: Callable[[LogLine], None]) -> None:
        # One follow stream per output stream, each read by a thread: the engine pushes lines as
        # they are written, so collecting an activation's logs needs no polling. (Podman stamps
        # lines only to the second and its attach cannot demultiplex, so read time is the stamp.)
        loop = asyncio.get_running_loop()
        for stream in ("stdout", "stderr"):
            threading.Thread(target=self._pump, args=(handle.id, stream, loop, sink),
                             name=f"logs-{handle.name}-{stream}", daemon=True).start()

    def _pump(self, container_id: str, stream: str, loop: asyncio.AbstractEventLoop,
              sink: Callable[[LogLine], None]) -> None:
        pending = b""
        try:
            chunks = self._client.api.logs(container_id, stdout=stream == "stdout", stderr=stream == "stderr",
                                           stream=True, follow=True)
            for chunk in chunks:
                pending += chunk
                while b"\n" in pending:
                    line, pending = pending.split(b"\n", 1)
                    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
                    loop.call_soon_threadsafe(sink, LogLine(stamp, stream, line.decode("utf-8", "replace")))
        except Exception as exc:   # the container is gone, or the engine restarted
            log.debug("log stream of %s ended: %s", container_id[:12], exc)
        except BaseException:
            pass

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
