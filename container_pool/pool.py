"""The container pool: runs jobs in containers, reusing warm ones, within a memory budget.

A job asks for a container that serves its ActionKey. In order of preference it
gets a warm one (idle, or paused and then unpaused), else a prewarmed stem cell
of its runtime kind and memory (initialized with its code now), else a new one
(cold) if the budget allows, else the least recently used idle containers of
other actions are removed to make room, else it waits until a container is
released.

Stem cells are kept per (kind, memory) at a target count: the configured one at
first; every cold start of that kind and memory raises it by one (up to
prewarm_max) and a stem cell unused for prewarm_ttl_s lowers it again. A taken
stem cell is replaced at once: up to the configured count by evicting idle warm
containers if memory is short, beyond it only from free memory. Jobs evict warm
containers before stem cells.
Memory of a container counts from the moment it is planned until its removal
has finished, so the budget is never exceeded, even for a moment.

Outcomes are reported, not interpreted: the invoker turns them into OpenWhisk's
activation responses.
"""
from __future__ import annotations

import asyncio
import itertools
import logging
import secrets
import time
from dataclasses import dataclass, field

from container_pool.backend import ContainerBackend, ContainerSpec
from container_pool.container import ActionKey, PooledContainer, State
from container_pool.proxy_client import ProxyClient, ProxyRefused, ProxyReply, ProxyTimeout, ProxyUnreachable
from container_pool.runtimes import LOG_SENTINEL, resolve
from squall.config import PoolConfig

log = logging.getLogger(__name__)

MANAGED_LABEL = "squall.managed"
INVOKER_LABEL = "squall.invoker"


@dataclass(frozen=True)
class Job:
    key: ActionKey
    kind: str               # what a container must have been started for (runtime kind or image)
    image: str
    init_body: bytes        # the /init request, sent once per container
    run_body: bytes         # the /run request
    timeout_s: float        # the action's time limit (init and run each)
    concurrency: int = 1    # activations one container may run at once
    log_limit_bytes: int = 10 * 1024 * 1024


@dataclass
class Outcome:
    start: str                      # "cold", "prewarmed", "warm" or "unpaused"
    error: str | None = None        # None, "init_failed", "timeout", "oom", "crashed", "refused"
    init_ms: int | None = None      # present when the code was initialized for this job
    init_reply: ProxyReply | None = None
    run_reply: ProxyReply | None = None
    run_start_ms: int = 0           # epoch ms
    run_end_ms: int = 0
    logs: list[str] = field(default_factory=list)
    detail: str = ""
    timings: dict[str, float] = field(default_factory=dict)   # seconds: container, init, run, logs


def _now_ms() -> int:
    return int(time.time() * 1000)


class ContainerPool:
    def __init__(self, backend: ContainerBackend, client: ProxyClient, config: PoolConfig,
                 user_memory_mb: int, invoker_id: int):
        self._backend = backend
        self._client = client
        self._config = config
        self._capacity = user_memory_mb
        self._invoker = str(invoker_id)
        self._containers: list[PooledContainer] = []
        self._changed = asyncio.Condition()
        self._names = itertools.count()
        self._tasks: set[asyncio.Task] = set()
        self._reaper: asyncio.Task | None = None
        self._watcher: asyncio.Task | None = None
        self._pauser: asyncio.Task | None = None
        self._went_idle = asyncio.Event()   # wakes the pauser when it has nothing to wait for
        # Stem cells wanted per (kind, memory): configured floor and current target.
        self._stem_floor: dict[tuple[str, int], int] = {}
        for cells in config.stem_cells():
            runtime = resolve(cells.kind)
            if runtime is None:
                raise ValueError(f"prewarm: unknown runtime kind {cells.kind!r}")
            self._stem_floor[(runtime.kind, cells.memory_mb)] = cells.count
        self._stem_target = dict(self._stem_floor)
        self._waiting = 0          # jobs waiting for memory: they come before stem cells
        self._stem_failed: dict[tuple[str, int], float] = {}   # when a stem cell last failed to start
        self._stopping = False

    @property
    def labels(self) -> dict[str, str]:
        return {MANAGED_LABEL: "true", INVOKER_LABEL: self._invoker}

    # Life of the pool

    async def start(self) -> None:
        """Remove orphans a crashed predecessor with this invoker id left behind."""
        orphans = await self._backend.list(self.labels)
        if orphans:
            log.info("removing %d orphaned containers", len(orphans))
            await asyncio.gather(*(self._backend.remove(h) for h in orphans), return_exceptions=True)
        self._reaper = asyncio.create_task(self._reap_idle())
        self._watcher = asyncio.create_task(self._watch_exits())
        if self._config.pause_grace_s >= 0:
            self._pauser = asyncio.create_task(self._pause_idle())
        async with self._changed:
            self._refill()

    async def stop(self) -> None:
        self._stopping = True
        for task in (self._reaper, self._watcher, self._pauser):
            if task:
                task.cancel()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*(self._remove(c) for c in list(self._containers)), return_exceptions=True)
        await self._client.close()

    def used_mb(self) -> int:
        return sum(c.memory_mb for c in self._containers)

    def busy(self) -> int:
        return sum(c.active for c in self._containers)

    def snapshot(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for c in self._containers:
            counts[c.state.value] = counts.get(c.state.value, 0) + 1
        return counts

    # Running a job

    async def run(self, job: Job) -> Outcome:
        began = time.perf_counter()
        container, start = await self._acquire(job)
        outcome = Outcome(start=start)
        outcome.timings["container"] = time.perf_counter() - began
        try:
            if container.state is State.INITIALIZING:
                if not await self._initialize(container, job, outcome):
                    return outcome
            await self._run(container, job, outcome)
        finally:
            await self._release(container, healthy=outcome.error is None)
        if outcome.error == "refused" and start in ("warm", "unpaused"):
            # A warm container that died while idle never got the request: nothing ran, so
            # run it once more on another container rather than fail the activation.
            log.warning("container %s was gone; running on another one", container.name)
            outcome = await self.run(job)
        return outcome

    async def _acquire(self, job: Job) -> tuple[PooledContainer, str]:
        async with self._changed:
            while True:
                warm = self._find_warm(job.key)
                if warm is not None:
                    start = "unpaused" if warm.state is State.PAUSED else "warm"
                    was_paused = warm.state is State.PAUSED
                    if warm.state is not State.BUSY:
                        warm.move(State.BUSY)
                    warm.active += 1
                    warm.last_used = time.monotonic()
                    break
                stem = self._find_stem_cell(job)
                if stem is not None:
                    warm, start, was_paused = stem, "prewarmed", False
                    stem.stem_cell = False
                    stem.max_concurrent = job.concurrency
                    stem.move(State.INITIALIZING)
                    self._refill()
                    break
                if self._make_room(job.key.memory_mb):
                    warm = PooledContainer(kind=job.kind, memory_mb=job.key.memory_mb, max_concurrent=job.concurrency)
                    self._containers.append(warm)
                    start, was_paused = "cold", False
                    self._demand_grows(job)
                    self._refill()   # stem cells it displaced, now that it no longer waits
                    break
                self._waiting += 1
                try:
                    await self._changed.wait()
                finally:
                    self._waiting -= 1
        if was_paused:
            async with warm.lock:
                await self._backend.unpause(warm.handle)
        elif start == "cold":
            await self._start(warm, job)
        return warm, start

    def _find_warm(self, key: ActionKey) -> PooledContainer | None:
        candidates = [c for c in self._containers if c.action == key and c.can_take_more]
        # Prefer a running container over a paused one, then the most recently used.
        return max(candidates, key=lambda c: (c.state is not State.PAUSED, c.last_used), default=None)

    def _find_stem_cell(self, job: Job) -> PooledContainer | None:
        return next((c for c in self._containers if c.stem_cell and c.state is State.PREWARMED
                     and c.kind == job.kind and c.memory_mb == job.key.memory_mb), None)

    def _make_room(self, memory_mb: int, stem_cells_too: bool = True) -> bool:
        """True if memory_mb fits now, after removing least recently used idle containers if needed."""
        free = self._capacity - self.used_mb()
        if free >= memory_mb:
            return True
        # Warm ones go first, least recently used first; stem cells (the configured floor, which
        # serves every new action of its kind) only when nothing else frees enough.
        idle = sorted((c for c in self._containers if c.state in (State.IDLE, State.PAUSED)
                       or (stem_cells_too and c.state is State.PREWARMED)),
                      key=lambda c: (c.stem_cell, c.last_used))
        reclaimable = sum(c.memory_mb for c in idle)
        if free + reclaimable < memory_mb:
            return False
        for victim in idle:
            if free >= memory_mb:
                break
            victim.move(State.REMOVING)
            free += victim.memory_mb
            self._spawn(self._remove(victim))
        return False   # the memory frees when the removals finish; the waiter is then woken

    async def _start(self, container: PooledContainer, job: Job) -> None:
        await self._create(container, job.image)
        container.move(State.INITIALIZING)

    async def _create(self, container: PooledContainer, image: str) -> None:
        name = f"squall-{self._invoker}-{next(self._names)}-{secrets.token_hex(3)}"
        try:
            container.handle = await self._backend.create(ContainerSpec(
                image=image, memory_mb=container.memory_mb, name=name,
                labels=self.labels, pids_limit=self._config.pids_limit))
        except Exception:
            if container.stem_cell:   # before _forget, which refills: do not retry at once
                self._stem_failed[(container.kind, container.memory_mb)] = time.monotonic()
            container.move(State.REMOVING)
            await self._forget(container)
            raise
        container.log_source = self._backend.logs(container.handle)

    # Stem cells

    def _refill(self) -> None:
        """Start the stem cells missing from each target, as far as free memory allows and no
        job waits for it. Called with self._changed held."""
        if self._waiting or self._stopping:
            return
        now = time.monotonic()
        for (kind, memory_mb), target in self._stem_target.items():
            if now - self._stem_failed.get((kind, memory_mb), -60.0) < 5.0:
                continue   # its image or engine just failed: do not spin
            have = sum(1 for c in self._containers if c.stem_cell and c.kind == kind and c.memory_mb == memory_mb)
            for n in range(have, target):
                # Up to the configured count, stem cells displace idle warm containers; the
                # reactive extras only take free memory.
                if not self._make_room(memory_mb, stem_cells_too=False) if n < self._stem_floor[(kind, memory_mb)] \
                        else self._capacity - self.used_mb() < memory_mb:
                    return   # (a removal under way frees the memory; _forget calls back here)
                cell = PooledContainer(kind=kind, memory_mb=memory_mb, stem_cell=True)
                self._containers.append(cell)
                self._spawn(self._start_stem_cell(cell))

    async def _start_stem_cell(self, cell: PooledContainer) -> None:
        runtime = resolve(cell.kind)
        try:
            await self._create(cell, runtime.image)
        except Exception as exc:
            log.warning("prewarming a %s container failed: %s", cell.kind, exc)
            return   # the next use or cold start of this kind tries again
        async with self._changed:
            if cell.state is State.STARTING:
                cell.move(State.PREWARMED)
                cell.last_used = time.monotonic()
                self._changed.notify_all()

    def _demand_grows(self, job: Job) -> None:
        """A cold start of a prewarmed kind and memory: keep one more stem cell of it."""
        key = (job.kind, job.key.memory_mb)
        if key in self._stem_target and self._stem_target[key] < self._config.prewarm_max:
            self._stem_target[key] += 1
            self._refill()

    async def _post(self, container: PooledContainer, path: str, body: bytes, timeout_s: float,
                    connect_retry_s: float = 0.0) -> ProxyReply:
        """POST to the container's proxy, but give up as soon as the container is reported gone:
        a dead container's address may swallow packets until the action's timeout."""
        request = asyncio.ensure_future(self._client.post(container.handle.address, path, body, timeout_s,
                                                          connect_retry_s=connect_retry_s))
        exited = asyncio.ensure_future(container.exited.wait())
        try:
            await asyncio.wait((request, exited), return_when=asyncio.FIRST_COMPLETED)
        finally:
            exited.cancel()
        if request.done():
            return request.result()
        request.cancel()
        raise ProxyUnreachable("the container stopped")

    async def _initialize(self, container: PooledContainer, job: Job, outcome: Outcome) -> bool:
        started = time.monotonic()
        try:
            reply = await self._post(container, "/init", job.init_body,
                                     timeout_s=max(job.timeout_s, self._config.start_timeout_s),
                                     connect_retry_s=self._config.start_timeout_s)
        except ProxyTimeout:
            outcome.error, outcome.detail = "timeout", "init"
        except ProxyUnreachable as exc:
            outcome.error, outcome.detail = await self._diagnose(container), str(exc)
        else:
            outcome.timings["init"] = time.monotonic() - started
            outcome.init_ms = int(outcome.timings["init"] * 1000)
            if reply.status == 200:
                container.action = job.key
                container.move(State.BUSY)
                container.active = 1
                return True
            outcome.error, outcome.init_reply = "init_failed", reply
        outcome.init_ms = int((time.monotonic() - started) * 1000)
        outcome.logs = await self._collect_logs(container, job, wait_for_sentinels=False)
        return False

    async def _run(self, container: PooledContainer, job: Job, outcome: Outcome) -> None:
        outcome.run_start_ms = _now_ms()
        began = time.perf_counter()
        try:
            outcome.run_reply = await self._post(container, "/run", job.run_body, job.timeout_s)
        except ProxyTimeout:
            outcome.error = "timeout"
        except ProxyRefused as exc:
            outcome.error, outcome.detail = "refused", str(exc)
            return
        except ProxyUnreachable as exc:
            outcome.error, outcome.detail = await self._diagnose(container), str(exc)
        outcome.run_end_ms = _now_ms()
        ran = time.perf_counter()
        outcome.timings["run"] = ran - began
        outcome.logs = await self._collect_logs(container, job, wait_for_sentinels=outcome.error is None)
        outcome.timings["logs"] = time.perf_counter() - ran

    async def _diagnose(self, container: PooledContainer) -> str:
        # The proxy's connection drops a moment before the container's init exits: give it time.
        for _ in range(20):
            info = await self._backend.inspect(container.handle)
            if not info.running:
                break
            await asyncio.sleep(0.05)
        # The OOMKilled flag is not reliable on every engine; exit 137 (SIGKILL) is.
        return "oom" if info.oom_killed or info.exit_code == 137 else "crashed"

    async def _collect_logs(self, container: PooledContainer, job: Job, wait_for_sentinels: bool) -> list[str]:
        """This activation's log lines: those before its two sentinels (stdout's and stderr's).

        The proxy writes both sentinels before it answers, so they are usually there at the
        first read; the engine may still be copying them, hence short growing waits. Sentinels
        are counted, not matched per stream, so that activations running together in one
        container (concurrency > 1) each take two and none waits for ever; their lines may
        interleave, as in OpenWhisk."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + (self._config.log_wait_s if wait_for_sentinels else 0.05)
        pending, source = container.unclaimed, container.log_source
        lines: list[str] = []
        sentinels = 0
        size, truncated, pause = 0, False, 0.0002
        while sentinels < 2:
            if not pending:
                pending.extend(source.read() if source else ())
            if not pending:
                if loop.time() >= deadline:
                    break
                await asyncio.sleep(pause)
                pause = min(pause * 2, 0.001)
                continue
            line = pending.popleft()
            if line.text == LOG_SENTINEL:
                sentinels += 1
                continue
            entry = f"{line.time} {line.stream}: {line.text}"
            size += len(entry)
            if size > job.log_limit_bytes:
                truncated = True
                continue
            lines.append(entry)
        if truncated:
            lines.append(f"Logs were truncated because the total bytes size exceeds the limit of {job.log_limit_bytes} bytes.")
        return lines

    async def _release(self, container: PooledContainer, healthy: bool) -> None:
        async with self._changed:
            container.active = max(container.active - 1, 0)
            if not healthy or container.action is None:
                if container.state not in (State.REMOVING, State.REMOVED):
                    container.move(State.REMOVING)
                    self._spawn(self._remove(container))
            elif container.active == 0 and container.state is State.BUSY:
                container.move(State.IDLE)
                container.last_used = time.monotonic()
                self._went_idle.set()
            self._changed.notify_all()

    async def _pause_idle(self) -> None:
        """Pause each container idle for the grace period: one loop for the pool rather than a
        timer per release (at hundreds of releases a second, those cost more than the pausing).
        It sleeps until the next one is due, or, with none idle, until one goes idle."""
        grace = self._config.pause_grace_s
        while True:
            self._went_idle.clear()
            now = time.monotonic()
            due = [(c, c.last_used) for c in self._containers if c.state is State.IDLE and c.last_used <= now - grace]
            for container, used in due:
                await self._pause(container, used)
            next_at = min((c.last_used + grace for c in self._containers if c.state is State.IDLE), default=None)
            if next_at is None:
                await self._went_idle.wait()
            else:
                await asyncio.sleep(max(next_at - time.monotonic(), 0.001))

    async def _pause(self, container: PooledContainer, used: float) -> None:
        async with container.lock:
            if container.state is not State.IDLE or container.last_used != used:
                return   # taken again meanwhile
            container.move(State.PAUSED)
            try:
                await self._backend.pause(container.handle)
            except Exception as exc:
                log.warning("pause of %s failed, removing it: %s", container.name, exc)
                container.move(State.REMOVING)
                self._spawn(self._remove(container))

    async def _remove(self, container: PooledContainer) -> None:
        if container.state is not State.REMOVING:
            container.move(State.REMOVING)
        if container.log_source is not None:
            container.log_source.close()
        forgotten = False
        if container.handle is not None:
            async with container.lock:
                try:
                    if await self._backend.kill(container.handle):
                        # Its processes are gone, and their memory with them: hand the memory on
                        # now; the engine's bookkeeping (removal) follows in the background.
                        await self._forget(container)
                        forgotten = True
                    await self._backend.remove(container.handle)
                except Exception as exc:
                    log.warning("removal of %s failed: %s", container.name, exc)
        if not forgotten:
            await self._forget(container)

    async def _forget(self, container: PooledContainer) -> None:
        async with self._changed:
            container.move(State.REMOVED)
            if container in self._containers:
                self._containers.remove(container)
            self._changed.notify_all()
            self._refill()   # memory was freed: stem cells missing for lack of it may fit now

    async def _watch_exits(self) -> None:
        """A container that stops while nobody uses it is dropped at once, so that no activation
        is sent to it; one that stops while busy ends its runs at once (see _post)."""
        async for container_id in self._backend.exits(self.labels):
            async with self._changed:
                for c in self._containers:
                    if c.handle is None or c.handle.id != container_id:
                        continue
                    c.exited.set()
                    if c.state in (State.IDLE, State.PAUSED, State.PREWARMED):
                        log.warning("container %s stopped while %s: replacing it", c.name, c.state.value)
                        c.move(State.REMOVING)
                        self._spawn(self._remove(c))

    async def _reap_idle(self) -> None:
        while True:
            shortest = min(self._config.idle_timeout_s, self._config.prewarm_ttl_s)
            await asyncio.sleep(min(max(shortest / 4, 0.1), 10))
            now = time.monotonic()
            async with self._changed:
                for c in list(self._containers):
                    if c.state in (State.IDLE, State.PAUSED) and c.last_used < now - self._config.idle_timeout_s:
                        c.move(State.REMOVING)
                        self._spawn(self._remove(c))
                    elif (c.stem_cell and c.state is State.PREWARMED
                          and c.last_used < now - self._config.prewarm_ttl_s):
                        key = (c.kind, c.memory_mb)
                        if self._stem_target.get(key, 0) > self._stem_floor.get(key, 0):
                            self._stem_target[key] -= 1
                            c.move(State.REMOVING)
                            self._spawn(self._remove(c))
                        else:
                            c.last_used = now   # a floor cell stays; look again after another ttl
                # Stem cells missing since a burst took their memory, or since a failed start:
                # back as soon as idle containers can make way for them.
                self._refill()

    def _spawn(self, coro) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
