"""ContainerBackend over the Docker Engine API (Docker, or Podman's compatible service).

The docker SDK is blocking, so each call runs in a worker thread.
"""
from __future__ import annotations

import asyncio
import contextlib
import threading
from typing import AsyncIterator
import logging

import docker
from docker.errors import APIError, ImageNotFound, NotFound
from docker.models.containers import Container


from container_pool.backend import ContainerHandle, ContainerSpec, ExitInfo, ImageUnavailable, LogSource
from container_pool.freezer import CgroupFreezer
from container_pool.logs import open_log_source
from container_pool.runtimes import PROXY_PORT

log = logging.getLogger(__name__)


def default_network(client: docker.DockerClient) -> str:
    """Podman's default network is "podman", Docker's "bridge"."""
    components = client.version().get("Components", [])
    return "podman" if any("podman" in c.get("Name", "").lower() for c in components) else "bridge"


class DockerBackend:
    def __init__(self, client: docker.DockerClient, network: str, freeze_directly: bool = True):
        self._client = client
        self._network = network
        self._freeze_directly = freeze_directly
        self._freezers: dict[str, CgroupFreezer] = {}   # container id -> its freezer, when writable
        self._log_paths: dict[str, str] = {}   # container id -> engine log file, until logs() asks

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
        self._log_paths[container.id] = container.attrs.get("LogPath") or ""
        if self._freeze_directly:
            freezer = CgroupFreezer.for_pid(container.attrs.get("State", {}).get("Pid") or 0)
            if freezer is not None:
                self._freezers[container.id] = freezer
        networks = container.attrs.get("NetworkSettings", {}).get("Networks", {}) or {}
        ip = next((n.get("IPAddress") for n in networks.values() if n.get("IPAddress")), None)
        if not ip:
            container.remove(force=True)
            raise RuntimeError(f"container {spec.name} got no IP address on network {self._network}")
        return ContainerHandle(container.id, spec.name, f"{ip}:{PROXY_PORT}")

    async def pause(self, handle: ContainerHandle) -> None:
        freezer = self._freezers.get(handle.id)
        if freezer is not None:
            await freezer.freeze()
        else:
            await asyncio.to_thread(self._client.api.pause, handle.id)

    async def unpause(self, handle: ContainerHandle) -> None:
        freezer = self._freezers.get(handle.id)
        if freezer is not None:
            freezer.thaw()
        else:
            await asyncio.to_thread(self._client.api.unpause, handle.id)

    async def remove(self, handle: ContainerHandle) -> None:
        freezer = self._freezers.pop(handle.id, None)
        if freezer is not None and freezer.frozen:
            with contextlib.suppress(OSError):   # already gone with its cgroup
                freezer.thaw()

        def remove() -> None:
            try:
                self._client.api.remove_container(handle.id, force=True)
            except NotFound:
                pass
            except APIError as exc:
                if exc.status_code != 404 and "no such container" not in str(exc).lower():
                    raise
        await asyncio.to_thread(remove)

    def logs(self, handle: ContainerHandle) -> LogSource:
        def streams(stream: str):
            return self._client.api.logs(handle.id, stdout=stream == "stdout", stderr=stream == "stderr",
                                         stream=True, follow=True)
        return open_log_source(self._log_paths.pop(handle.id, None), streams, handle.name)

    async def inspect(self, handle: ContainerHandle) -> ExitInfo:
        def inspect() -> ExitInfo:
            try:
                state = self._client.api.inspect_container(handle.id)["State"]
            except NotFound:
                return ExitInfo(False, None, False)
            return ExitInfo(bool(state.get("Running")), state.get("ExitCode"), bool(state.get("OOMKilled")))
        return await asyncio.to_thread(inspect)

    async def exits(self, labels: dict[str, str]) -> AsyncIterator[str]:
        # The engine's event stream, read in a thread; reconnects if the engine restarts.
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[str] = asyncio.Queue()
        stopped = threading.Event()

        def pump() -> None:
            # Filtered by label only: Podman names the event "died" in filters (Docker "die")
            # and ignores an event filter combined with labels; the action is checked here.
            filters = {"type": ["container"], "label": [f"{k}={v}" for k, v in labels.items()]}
            while not stopped.is_set():
                try:
                    for event in self._client.api.events(filters=filters, decode=True):
                        if stopped.is_set():
                            return
                        cid = event.get("id") or event.get("Actor", {}).get("ID")
                        if cid and (event.get("Action") or event.get("status")) == "die":
                            loop.call_soon_threadsafe(queue.put_nowait, cid)
                except Exception as exc:
                    log.debug("event stream ended, reconnecting: %s", exc)
                    stopped.wait(1.0)

        threading.Thread(target=pump, name="engine-events", daemon=True).start()
        try:
            while True:
                yield await queue.get()
        finally:
            stopped.set()

    async def list(self, labels: dict[str, str]) -> list[ContainerHandle]:
        def list_() -> list[ContainerHandle]:
            filters = {"label": [f"{k}={v}" for k, v in labels.items()]}
            return [ContainerHandle(c["Id"], (c.get("Names") or [""])[0].lstrip("/"), "")
                    for c in self._client.api.containers(all=True, filters=filters)]
        return await asyncio.to_thread(list_)
