"""ContainerBackend over the Docker Engine API (Docker, or Podman's compatible service).

The docker SDK is blocking, so each call runs in a worker thread.
"""
from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
import threading
from pathlib import Path
from typing import AsyncIterator
import logging

import docker
from docker.errors import APIError, ImageNotFound


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
        self._pids: dict[str, int] = {}        # container id -> its init's pid on this host
        self._killed: set[str] = set()         # killed here; the engine's removal can wait
        self._creating = 0
        self._no_creates = asyncio.Event()
        self._no_creates.set()

    async def create(self, spec: ContainerSpec) -> ContainerHandle:
        self._creating += 1
        self._no_creates.clear()
        try:
            return await asyncio.to_thread(self._create, spec)
        finally:
            self._creating -= 1
            if not self._creating:
                self._no_creates.set()

    def _create(self, spec: ContainerSpec) -> ContainerHandle:
        try:
            return self._run(spec)
        except ImageNotFound as exc:
            raise ImageUnavailable(spec.image) from exc

    def _run(self, spec: ContainerSpec) -> ContainerHandle:
        # The low-level calls: create, start, one inspect (containers.run inspects twice more).
        api = self._client.api
        config = api.create_container(
            spec.image, name=spec.name, detach=True, labels=spec.labels,
            host_config=api.create_host_config(
                init=True,                       # a proper PID 1: signals and zombies handled
                mem_limit=f"{spec.memory_mb}m",
                memswap_limit=f"{spec.memory_mb}m",
                pids_limit=spec.pids_limit,
                network_mode=self._network,
                security_opt=["no-new-privileges"],
            ))
        container_id = config["Id"]
        try:
            api.start(container_id)
            attrs = api.inspect_container(container_id)
        except Exception:
            api.remove_container(container_id, force=True)
            raise
        self._log_paths[container_id] = attrs.get("LogPath") or ""
        pid = attrs.get("State", {}).get("Pid") or 0
        if pid:
            self._pids[container_id] = pid
        if self._freeze_directly:
            freezer = CgroupFreezer.for_pid(pid)
            if freezer is not None:
                self._freezers[container_id] = freezer
        networks = attrs.get("NetworkSettings", {}).get("Networks", {}) or {}
        ip = next((n.get("IPAddress") for n in networks.values() if n.get("IPAddress")), None)
        if not ip:
            api.remove_container(container_id, force=True)
            raise RuntimeError(f"container {spec.name} got no IP address on network {self._network}")
        return ContainerHandle(container_id, spec.name, f"{ip}:{PROXY_PORT}")

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

    async def kill(self, handle: ContainerHandle) -> bool:
        # SIGKILL to the container's init, from this host: its pid namespace dies with it, in
        # well under a millisecond, where the engine's kill or forced removal takes 100-300 ms.
        pid = self._pids.pop(handle.id, 0)
        try:
            if not pid or handle.id not in Path(f"/proc/{pid}/cgroup").read_text():
                return False   # not local, or the pid is no longer the container's
            self._thaw(handle)  # a frozen process cannot die
            os.kill(pid, signal.SIGKILL)
            self._killed.add(handle.id)
            return True
        except OSError:
            return False

    def _thaw(self, handle: ContainerHandle) -> None:
        freezer = self._freezers.pop(handle.id, None)
        if freezer is not None and freezer.frozen:
            with contextlib.suppress(OSError):   # already gone with its cgroup
                freezer.thaw()

    async def remove(self, handle: ContainerHandle) -> None:
        self._pids.pop(handle.id, None)
        self._thaw(handle)
        killed_here = handle.id in self._killed
        if killed_here:
            # Already dead and its memory free: the engine's removal competes with container
            # starts for the engine's locks and the CPU, and a start is on someone's critical
            # path, so let starts under way finish first (for at most 2 s).
            self._killed.discard(handle.id)
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._no_creates.wait(), 2.0)

        def remove() -> None:
            if not killed_here:
                # Podman's forced removal first asks the container to stop and waits its stop
                # timeout (10 s), and a container frozen behind the engine's back (an orphan of
                # a crashed invoker, say) cannot stop at all: thaw it, then SIGKILL it.
                with contextlib.suppress(APIError, OSError, KeyError):
                    pid = self._client.api.inspect_container(handle.id)["State"].get("Pid") or 0
                    freezer = CgroupFreezer.for_pid(pid) if pid else None
                    if freezer is not None:
                        freezer.thaw()
                    self._client.api.kill(handle.id)
            for attempt in range(5):
                try:
                    self._client.api.remove_container(handle.id, force=True)
                    return
                except APIError as exc:
                    text = str(exc).lower()
                    if exc.status_code == 404 or "no such container" in text:
                        return
                    # Podman, racing its own notice of a kill: "container state improper".
                    if attempt == 4 or "state improper" not in text:
                        raise
                    time.sleep(0.05 * (attempt + 1))
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
            except APIError as exc:   # gone (Podman says so with a 500 while removing it)
                if exc.status_code == 404 or "no such container" in str(exc).lower():
                    return ExitInfo(False, None, False)
                raise
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
