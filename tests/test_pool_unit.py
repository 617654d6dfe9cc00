"""Pool logic against an IN-MEMORY FAKE backend (not a container engine).

The fake creates no containers: every "container" is a tiny aiohttp server in
this process speaking the /init + /run protocol, so the pool's real HTTP client
is exercised while capacity, reuse, pause and eviction are checked quickly.
The same behaviours run against the real engine in the stack tests.
"""
from __future__ import annotations

import asyncio
import json

import pytest
from aiohttp import web

from container_pool.backend import ContainerHandle, ContainerSpec, ExitInfo, LogLine
from container_pool.container import ActionKey, State
from container_pool.pool import ContainerPool, Job
from container_pool.proxy_client import ProxyClient
from squall.config import PoolConfig

pytestmark = pytest.mark.asyncio


class FakeProxy:
    def __init__(self, delay: float):
        self.delay = delay
        self.inits = 0
        self.lines: list[LogLine] = []
        self.runner: web.AppRunner | None = None

    async def start(self) -> str:
        app = web.Application()
        app.router.add_post("/init", self.init)
        app.router.add_post("/run", self.run)
        self.runner = web.AppRunner(app)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]
        return f"127.0.0.1:{port}"

    async def init(self, request: web.Request) -> web.Response:
        self.inits += 1
        return web.json_response({"ok": True})

    async def run(self, request: web.Request) -> web.Response:
        body = await request.json()
        await asyncio.sleep(body["value"].get("sleep", self.delay))
        for stream in ("stdout", "stderr"):
            self.lines.append(LogLine("2026-01-01T00:00:00.000001Z", stream, f"ran on {stream}"))
            self.lines.append(LogLine("2026-01-01T00:00:00.000002Z", stream, "XXX_THE_END_OF_A_WHISK_ACTIVATION_XXX"))
        return web.json_response({"echo": body["value"]})


class FakeLogSource:
    def __init__(self, proxy: FakeProxy):
        self.proxy = proxy

    def read(self):
        lines, self.proxy.lines = self.proxy.lines, []
        return lines

    def close(self):
        pass


class InMemoryBackend:
    """A fake ContainerBackend for unit tests only."""

    def __init__(self, delay: float = 0.0):
        self.delay = delay
        self.proxies: dict[str, FakeProxy] = {}
        self.events: list[tuple[str, str]] = []

    async def create(self, spec: ContainerSpec) -> ContainerHandle:
        proxy = FakeProxy(self.delay)
        address = await proxy.start()
        self.proxies[spec.name] = proxy
        self.events.append(("create", spec.name))
        return ContainerHandle(spec.name, spec.name, address)

    async def pause(self, handle):
        self.events.append(("pause", handle.name))

    async def unpause(self, handle):
        self.events.append(("unpause", handle.name))

    async def kill(self, handle):
        return False

    async def remove(self, handle):
        self.events.append(("remove", handle.name))
        proxy = self.proxies.pop(handle.name, None)
        if proxy and proxy.runner:
            await proxy.runner.cleanup()

    def logs(self, handle):
        return FakeLogSource(self.proxies[handle.name])

    async def inspect(self, handle):
        return ExitInfo(True, None, False)

    async def list(self, labels):
        return []

    async def exits(self, labels):
        self.died: asyncio.Queue[str] = asyncio.Queue()
        while True:
            yield await self.died.get()


def job(name: str, memory: int = 256, revision: str = "1", **value) -> Job:
    return Job(key=ActionKey("ns", name, revision, memory), kind="python:3.11", image="fake",
               init_body=b'{"value": {}}', run_body=json.dumps({"value": value}).encode(), timeout_s=5)


async def make_pool(backend, memory=512, grace=-1.0, idle=600.0, prewarm=(), **extra) -> ContainerPool:
    config = PoolConfig(pause_grace_s=grace, idle_timeout_s=idle, log_wait_s=0.2, prewarm=prewarm, **extra)
    pool = ContainerPool(backend, ProxyClient(1 << 20), config, user_memory_mb=memory, invoker_id=99)
    await pool.start()
    return pool


async def test_warm_reuse_and_new_revision():
    backend = InMemoryBackend()
    pool = await make_pool(backend)
    first = await pool.run(job("a"))
    second = await pool.run(job("a"))
    assert (first.start, second.start) == ("cold", "warm")
    assert first.init_ms is not None and second.init_ms is None
    assert json.loads(second.run_reply.body) == {"echo": {}}
    assert second.logs == ["2026-01-01T00:00:00.000001Z stdout: ran on stdout",
                           "2026-01-01T00:00:00.000001Z stderr: ran on stderr"]
    third = await pool.run(job("a", revision="2"))
    assert third.start == "cold"   # a new revision never reuses the old container
    await pool.stop()


async def test_pause_after_grace_and_unpause_on_reuse():
    backend = InMemoryBackend()
    pool = await make_pool(backend, grace=0.05)
    await pool.run(job("a"))
    await asyncio.sleep(0.2)
    assert pool.snapshot() == {"paused": 1}
    again = await pool.run(job("a"))
    assert again.start == "unpaused"
    kinds = [e[0] for e in backend.events]
    assert kinds[:3] == ["create", "pause", "unpause"]
    await pool.stop()


async def test_capacity_evicts_idle_lru_and_queues_when_full():
    backend = InMemoryBackend()
    pool = await make_pool(backend, memory=512)
    await pool.run(job("a"))
    await pool.run(job("b"))
    assert pool.used_mb() == 512
    await pool.run(job("c"))          # evicts "a", the least recently used
    removed = [name for kind, name in backend.events if kind == "remove"]
    assert len(removed) == 1 and pool.used_mb() <= 512
    # Two long runs fill the budget; a third job waits instead of exceeding it.
    slow = [asyncio.create_task(pool.run(job(n, sleep=0.3))) for n in ("d", "e")]
    await asyncio.sleep(0.1)
    waiting = asyncio.create_task(pool.run(job("f")))
    await asyncio.sleep(0.1)
    assert not waiting.done() and pool.used_mb() <= 512
    await asyncio.gather(*slow)
    assert (await waiting).start == "cold"
    assert pool.used_mb() <= 512
    await pool.stop()


async def test_idle_containers_are_removed_after_timeout():
    backend = InMemoryBackend()
    pool = await make_pool(backend, idle=0.2)
    await pool.run(job("a"))
    await asyncio.sleep(0.5)
    assert pool.snapshot() == {}
    await pool.stop()


async def test_timeout_destroys_the_container():
    backend = InMemoryBackend()
    pool = await make_pool(backend)
    j = job("slow", sleep=1.0)
    j = Job(key=j.key, kind=j.kind, image=j.image, init_body=j.init_body, run_body=j.run_body, timeout_s=0.2)
    outcome = await pool.run(j)
    assert outcome.error == "timeout"
    await asyncio.sleep(0.05)
    assert ("remove", backend.events[0][1]) in backend.events
    assert all(c.state is not State.IDLE for c in pool._containers)
    await pool.stop()


async def settle(pool, state="prewarmed", count=1, timeout=2.0):
    for _ in range(int(timeout / 0.02)):
        if pool.snapshot().get(state, 0) >= count:
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"pool never reached {count} {state}: {pool.snapshot()}")


async def test_stem_cell_is_used_then_refilled():
    backend = InMemoryBackend()
    pool = await make_pool(backend, memory=1024, prewarm=("python:3@256=1",))
    await settle(pool)
    first = await pool.run(job("a"))
    assert first.start == "prewarmed" and first.init_ms is not None
    await settle(pool)                                   # a new stem cell replaces the used one
    assert pool.snapshot() == {"idle": 1, "prewarmed": 1}
    other = await pool.run(job("b", memory=384))         # no stem cell of that size: cold
    assert other.start == "cold"
    await pool.stop()


async def test_cold_starts_grow_stem_cells_and_unused_ones_shrink():
    backend = InMemoryBackend()
    pool = await make_pool(backend, memory=2048, prewarm=("python:3.11@256=1",), prewarm_max=2, prewarm_ttl_s=0.3)
    await settle(pool)
    # Two at once: one takes the stem cell, the other starts cold and raises the target to 2.
    outcomes = await asyncio.gather(pool.run(job("a", sleep=0.1)), pool.run(job("b", sleep=0.1)))
    assert sorted(o.start for o in outcomes) == ["cold", "prewarmed"]
    await settle(pool, count=2)
    await asyncio.sleep(0.8)                              # unused past the ttl: back to the floor of 1
    assert pool.snapshot().get("prewarmed") == 1
    await pool.stop()


async def test_warm_containers_are_evicted_before_stem_cells_which_come_back():
    backend = InMemoryBackend()
    pool = await make_pool(backend, memory=768, prewarm=("python:3.11@256=1",))
    await settle(pool)
    await pool.run(job("a"))                              # takes the stem cell; a new one is started
    await settle(pool)
    cold = await pool.run(job("b", memory=384))           # needs room: "a" goes, the stem cell stays
    assert cold.start == "cold"
    assert pool.snapshot() == {"idle": 1, "prewarmed": 1}
    await pool.run(job("c", memory=384))                  # full of warm and a stem cell: "b" goes
    assert (await pool.run(job("d"))).start == "prewarmed"
    await settle(pool)                                    # the floor's stem cell displaces idle "c"
    assert pool.snapshot() == {"idle": 1, "prewarmed": 1}
    await pool.stop()


async def test_stem_cells_refill_when_memory_frees_and_do_not_spin_on_failure():
    backend = InMemoryBackend()
    pool = await make_pool(backend, memory=512, prewarm=("python:3.11@256=1",), idle=0.3)
    await settle(pool)
    await pool.run(job("a"))                    # takes the stem cell; the refill fills the budget
    await pool.run(job("b"))                    # evicts that stem cell
    await asyncio.sleep(1.0)                    # "a" and "b" idle out: memory frees, the stem cell returns
    assert pool.snapshot() == {"prewarmed": 1}
    await pool.stop()

    failing = InMemoryBackend()
    creates = 0

    async def broken(spec):
        nonlocal creates
        creates += 1
        raise RuntimeError("no such image")
    failing.create = broken
    pool = await make_pool(failing, prewarm=("python:3.11@256=1",))
    await asyncio.sleep(0.3)
    assert creates == 1 and pool.snapshot() == {}
    await pool.stop()


async def test_stem_cells_come_back_after_a_burst_filled_the_pool_with_idle_containers():
    """A burst took every megabyte, the stem cell's too (its cold start finding the target at its
    maximum already), and left idle containers behind; with nothing else happening, the floor's
    stem cell displaces one of them again."""
    backend = InMemoryBackend()
    pool = await make_pool(backend, memory=512, prewarm=("python:3.11@256=1",), prewarm_max=1, prewarm_ttl_s=0.4)
    await settle(pool)
    await asyncio.gather(*(pool.run(job(name, sleep=0.1)) for name in ("a", "b", "c")))
    await settle(pool, timeout=3.0)                             # back, with no further job
    assert pool.snapshot() == {"idle": 1, "prewarmed": 1}
    await pool.stop()


async def test_proxy_client_reads_every_reply_framing_and_reuses_only_clean_connections():
    """The proxy client against a local peer (not a container) answering with Content-Length,
    chunked, until close, and too large: whole bodies, the limit plus one byte at most, and a
    kept-alive connection only after a complete reply."""
    from container_pool.proxy_client import ProxyClient, ProxyRefused, ProxyTimeout, ProxyUnreachable
    replies = {
        b"/length": b"HTTP/1.1 200 OK\r\nContent-Length: 11\r\n\r\n{\"a\": true}",
        b"/chunked": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n4\r\n{\"a\"\r\n7\r\n: true}\r\n0\r\n\r\n",
        b"/close": b"HTTP/1.1 502 Bad Gateway\r\nConnection: close\r\n\r\n{\"error\": \"x\"}",
        b"/big": b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n" + b"x" * 100,
        b"/garbage": b"SSH-2.0-nope\r\n\r\n",
    }
    connections = 0

    async def serve(reader, writer):
        nonlocal connections
        connections += 1
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = int(head.split(b"Content-Length: ")[1].split(b"\r\n")[0])
                await reader.readexactly(length)
                path = head.split(b" ")[1]
                if path == b"/slow":
                    await asyncio.sleep(5)
                writer.write(replies[path])
                await writer.drain()
                if path in (b"/close", b"/garbage"):
                    break
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    address = "127.0.0.1:%d" % server.sockets[0].getsockname()[1]
    client = ProxyClient(max_body=50)
    try:
        for _ in range(2):
            assert (await client.post(address, "/length", b"{}", 5)).body == b'{"a": true}'
            assert (await client.post(address, "/chunked", b"{}", 5)).body == b'{"a": true}'
        assert connections == 1                                   # kept alive throughout
        reply = await client.post(address, "/close", b"{}", 5)
        assert (reply.status, reply.body) == (502, b'{"error": "x"}')
        assert len((await client.post(address, "/big", b"{}", 5)).body) == 51    # the limit plus one
        assert connections == 2                                   # the first, closed by the peer
        assert (await client.post(address, "/length", b"{}", 5)).status == 200
        assert connections == 3                                   # the one cut short was not kept
        with pytest.raises(ProxyUnreachable):
            await client.post(address, "/garbage", b"{}", 5)
        with pytest.raises(ProxyTimeout):
            await client.post(address, "/slow", b"{}", 0.2)
        assert (await client.post(address, "/length", b"{}", 5)).status == 200   # a fresh connection
        server.close()
        await server.wait_closed()
        await client.close()
        with pytest.raises(ProxyRefused):
            await client.post(address, "/length", b"{}", 5)
    finally:
        server.close()
        await client.close()
