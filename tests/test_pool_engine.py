"""The container pool against the REAL container engine (Podman's Docker API here, Docker elsewhere).

Each test runs its own ContainerPool with an invoker id of its own, beside the running stack's
invoker, on the same engine and runtime images the stack uses.
"""
from __future__ import annotations

import asyncio
import json
import os
import secrets
import time

import docker
import pytest

from container_pool.container import ActionKey, State
from container_pool.docker_backend import DockerBackend, default_network
from container_pool.freezer import CgroupFreezer
from container_pool.pool import INVOKER_LABEL, MANAGED_LABEL, ContainerPool, Job
from container_pool.proxy_client import ProxyClient
from container_pool.runtimes import resolve
from squall.config import PoolConfig

pytestmark = pytest.mark.stack

PY_ECHO = """
import os, socket, time
def main(args):
    time.sleep(args.get("sleep", 0))
    if args.get("allocate_mb"):
        hog = bytearray(args["allocate_mb"] * 1024 * 1024)
        for i in range(0, len(hog), 4096):
            hog[i] = 1
    if args.get("crash"):
        os._exit(3)
    for i in range(args.get("lines", 0)):
        print("line", i, "x" * 100)
    return {"host": socket.gethostname(), "args": args}
"""

JS_ECHO = """
const os = require('os');
function main(args) {
  return new Promise((resolve) => setTimeout(() => resolve({host: os.hostname(), args}), args.sleep_ms || 0));
}
"""


@pytest.fixture(scope="module")
def engine(stack):
    host = stack.cfg.invoker.docker_host or os.environ.get("DOCKER_HOST") or \
        f"unix://{stack.cfg.paths.state / 'run' / 'podman.sock'}"
    client = docker.DockerClient(base_url=host, timeout=120)
    yield client, default_network(client)
    client.close()


class Pools:
    """Makes pools with unique invoker ids and always stops them."""

    def __init__(self, engine):
        self.client, self.network = engine
        self.made: list[ContainerPool] = []

    async def make(self, memory=1024, **config) -> ContainerPool:
        config = {"pause_grace_s": -1.0, "prewarm": (), "log_wait_s": 2.0, **config}
        invoker_id = 9000 + secrets.randbelow(1000)
        pool = ContainerPool(DockerBackend(self.client, self.network), ProxyClient(1 << 20),
                             PoolConfig(**config), user_memory_mb=memory, invoker_id=invoker_id)
        await pool.start()
        self.made.append(pool)
        return pool


@pytest.fixture()
async def pools(engine):
    made = Pools(engine)
    yield made
    for pool in made.made:
        await pool.stop()


def job(name: str, memory: int = 128, revision: str = "1", kind: str = "python:3", code: str = PY_ECHO,
        timeout_s: float = 10, concurrency: int = 1, log_limit_bytes: int = 1 << 20, **params) -> Job:
    runtime = resolve(kind)
    return Job(key=ActionKey("test", name, revision, memory), kind=runtime.kind, image=runtime.image,
               init_body=json.dumps({"value": {"name": name, "main": "main", "code": code, "binary": False}}).encode(),
               run_body=json.dumps({"value": params, "namespace": "test", "action_name": f"/test/{name}",
                                    "activation_id": secrets.token_hex(16), "deadline": "0"}).encode(),
               timeout_s=timeout_s, concurrency=concurrency, log_limit_bytes=log_limit_bytes)


def result(outcome) -> dict:
    assert outcome.error is None, (outcome.error, outcome.detail, outcome.logs)
    assert outcome.run_reply.status == 200, outcome.run_reply.body
    return json.loads(outcome.run_reply.body)


def engine_state(engine, host: str) -> str | None:
    """The engine's view, except that a container frozen through its cgroup reads "paused"."""
    client, _ = engine
    try:
        state = client.api.inspect_container(host)["State"]
    except docker.errors.APIError as exc:   # Podman answers 500 while a removal is under way
        if exc.status_code == 404 or "no such container" in str(exc):
            return None
        raise
    freezer = CgroupFreezer.for_pid(state.get("Pid") or 0)
    if state["Status"] == "running" and freezer is not None and freezer.is_frozen():
        return "paused"
    return state["Status"]


async def test_warm_reuse_and_a_new_revision_gets_a_new_container(pools):
    pool = await pools.make()
    first = await pool.run(job("a"))
    second = await pool.run(job("a"))
    assert (first.start, second.start) == ("cold", "warm")
    assert first.init_ms is not None and second.init_ms is None
    assert result(first)["host"] == result(second)["host"]
    third = await pool.run(job("a", revision="2"))
    assert third.start == "cold" and result(third)["host"] != result(first)["host"]


async def test_prewarmed_stem_cell_serves_the_first_invocation(pools):
    pool = await pools.make(prewarm=("python:3@128=1",))
    for _ in range(100):
        if pool.snapshot().get("prewarmed"):
            break
        await asyncio.sleep(0.05)
    outcome = await pool.run(job("p"))
    assert outcome.start == "prewarmed" and outcome.init_ms is not None
    assert result(outcome)["args"] == {}
    for _ in range(100):           # refilled behind it
        if pool.snapshot().get("prewarmed"):
            break
        await asyncio.sleep(0.05)
    assert pool.snapshot() == {"idle": 1, "prewarmed": 1}


@pytest.mark.parametrize("freeze_directly", [True, False], ids=["cgroup-freezer", "engine-api"])
async def test_pause_after_grace_and_unpause_on_reuse(pools, engine, freeze_directly):
    pool = await pools.make(pause_grace_s=0.05)
    pool._backend._freeze_directly = freeze_directly
    host = result(await pool.run(job("z")))["host"]
    await asyncio.sleep(0.5)
    assert engine_state(engine, host) == "paused"
    again = await pool.run(job("z"))
    assert again.start == "unpaused" and result(again)["host"] == host
    assert engine_state(engine, host) == "running"
    await asyncio.sleep(0.5)
    assert engine_state(engine, host) == "paused"   # removal of a paused container works too


async def test_idle_containers_are_removed_after_the_idle_timeout(pools, engine):
    pool = await pools.make(idle_timeout_s=0.5)
    host = result(await pool.run(job("idle")))["host"]
    for _ in range(60):
        if engine_state(engine, host) is None and pool.snapshot() == {}:
            break
        await asyncio.sleep(0.1)
    assert engine_state(engine, host) is None and pool.snapshot() == {}


async def test_capacity_evicts_least_recently_used_then_queues(pools, engine):
    pool = await pools.make(memory=256)
    a = result(await pool.run(job("a")))["host"]
    b = result(await pool.run(job("b")))["host"]
    assert pool.used_mb() == 256
    c = await pool.run(job("c"))                      # evicts "a", the least recently used
    assert c.start == "cold"
    await asyncio.sleep(0.3)
    assert engine_state(engine, a) is None and engine_state(engine, b) == "running"
    # Two slow runs fill the budget; a third job waits for one of them rather than exceed it.
    slow = [asyncio.create_task(pool.run(job(n, sleep=1.5))) for n in ("d", "e")]
    await asyncio.sleep(0.7)
    waiting = asyncio.create_task(pool.run(job("f")))
    await asyncio.sleep(0.3)
    assert not waiting.done() and pool.used_mb() <= 256
    await asyncio.gather(*slow)
    assert (await waiting).start == "cold" and pool.used_mb() <= 256


async def test_concurrency_runs_several_activations_in_one_nodejs_container(pools):
    pool = await pools.make()
    j = dict(kind="nodejs", code=JS_ECHO, concurrency=3)
    host = result(await pool.run(job("conc", **j)))["host"]
    started = time.monotonic()
    outcomes = await asyncio.gather(*(pool.run(job("conc", sleep_ms=800, **j)) for _ in range(3)))
    elapsed = time.monotonic() - started
    assert {result(o)["host"] for o in outcomes} == {host}
    assert all(o.start == "warm" for o in outcomes)
    assert elapsed < 2.0, elapsed           # together, not one after another (3 x 0.8 s)


async def test_out_of_memory_is_reported_and_the_container_replaced(pools, engine):
    pool = await pools.make()
    host = result(await pool.run(job("oom")))["host"]
    outcome = await pool.run(job("oom", allocate_mb=400))
    assert outcome.start == "warm" and outcome.error == "oom"
    await asyncio.sleep(0.5)
    assert engine_state(engine, host) is None
    after = await pool.run(job("oom"))
    assert after.start == "cold" and result(after)["host"] != host


async def test_timeout_destroys_the_container(pools, engine):
    pool = await pools.make()
    host = result(await pool.run(job("slow", timeout_s=1)))["host"]
    outcome = await pool.run(job("slow", timeout_s=1, sleep=5))
    assert outcome.error == "timeout"
    await asyncio.sleep(0.5)
    assert engine_state(engine, host) is None
    assert all(c.state is not State.IDLE for c in pool._containers)


async def test_a_container_crashing_mid_activation_ends_it_with_an_error(pools, engine):
    pool = await pools.make()
    host = result(await pool.run(job("crash")))["host"]
    outcome = await pool.run(job("crash", crash=True))
    assert outcome.error == "crashed"
    await asyncio.sleep(0.5)
    assert engine_state(engine, host) is None
    assert (await pool.run(job("crash"))).start == "cold"


async def test_logs_are_cut_per_activation_and_truncated_at_the_limit(pools):
    pool = await pools.make()
    first = await pool.run(job("logs", lines=3))
    assert [line.split(" ", 1)[1][:14] for line in first.logs] == ["stdout: line 0", "stdout: line 1", "stdout: line 2"]
    big = await pool.run(job("logs", lines=200, log_limit_bytes=2000))
    assert 10 < len(big.logs) < 30
    assert big.logs[-1].startswith("Logs were truncated")
    third = await pool.run(job("logs", lines=1))
    assert len(third.logs) == 1          # nothing of the previous activation leaks into this one


async def test_orphans_of_a_crashed_invoker_are_removed_at_its_next_start(pools, engine):
    client, network = engine
    pool = await pools.make()
    await pool.run(job("o"))
    labels = pool.labels
    # Simulate a crash: forget the pool without stopping it; its containers stay behind.
    pools.made.remove(pool)
    orphans = client.containers.list(all=True, filters={"label": [f"{k}={v}" for k, v in labels.items()]})
    assert orphans
    successor = ContainerPool(DockerBackend(client, network), ProxyClient(1 << 20),
                              PoolConfig(prewarm=()), user_memory_mb=512, invoker_id=int(labels[INVOKER_LABEL]))
    await successor.start()
    pools.made.append(successor)
    left = client.containers.list(all=True, filters={"label": [f"{MANAGED_LABEL}=true",
                                                               f"{INVOKER_LABEL}={labels[INVOKER_LABEL]}"]})
    assert left == []


async def test_a_warm_container_that_died_while_idle_is_replaced_without_failing(pools, engine):
    client, _ = engine
    pool = await pools.make()
    host = result(await pool.run(job("dead")))["host"]
    client.api.kill(host)                                 # dies between two activations
    await asyncio.sleep(0.5)                              # the engine reports it; the pool drops it
    again = await pool.run(job("dead"))
    assert again.start == "cold" and result(again)["host"] != host


async def test_a_container_killed_mid_activation_ends_it_at_once(pools, engine):
    client, _ = engine
    pool = await pools.make()
    host = result(await pool.run(job("killed", timeout_s=30)))["host"]
    running = asyncio.create_task(pool.run(job("killed", timeout_s=30, sleep=20)))
    await asyncio.sleep(0.5)
    started = time.monotonic()
    client.api.kill(host)
    outcome = await asyncio.wait_for(running, 10)
    assert outcome.error in ("crashed", "oom") and time.monotonic() - started < 5


async def test_stopping_the_pool_removes_its_containers(pools, engine):
    client, _ = engine
    pool = await pools.make(prewarm=("nodejs@128=1",), pause_grace_s=0.05)
    await pool.run(job("bye"))
    await asyncio.sleep(0.3)                               # one paused, one stem cell
    labels = [f"{k}={v}" for k, v in pool.labels.items()]
    assert len(client.containers.list(all=True, filters={"label": labels})) == 2
    pools.made.remove(pool)
    await pool.stop()
    assert client.containers.list(all=True, filters={"label": labels}) == []
