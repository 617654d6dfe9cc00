"""The hot path's figures for `make bench`, measured in the same run as the pool's:

  grpc warm          a warm blocking invoke through the controller's gRPC API (squall.client)
  jetstream publish  publish-with-ack per second from one nats-py client (the bus's own ceiling),
                     and its round trip back to back and after 20 ms of idleness (waking up)
  throughput         sustained warm blocking invocations per second through the whole stack,
                     with every action homed on one invoker, then spread over all of them
  record write       Cassandra activation record writes (p50, p99), from the invokers' own
                     timing (their squall_record_write_seconds histogram, over this run: each
                     batch's write, not the records' wait for it)
  cpu per invocation CPU time each kind of process spent per warm invocation during the
                     throughput run with all invokers (from /proc): where the 2 cores go
"""
from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import time
import uuid
import zlib

import aiohttp
import requests

from squall import bus
from squall.client import SquallClient
from squall.config import SquallConfig

NOOP = "def main(args):\n    return {}\n"


async def grpc_warm(grpc_host: str, auth: str, action: str, n: int) -> list[float]:
    async with SquallClient(grpc_host, auth) as client:
        for _ in range(10):
            await client.invoke(action)
        samples = []
        for _ in range(n):
            started = time.perf_counter()
            await client.invoke(action)
            samples.append((time.perf_counter() - started) * 1000)
        return samples


WINDOW_S = 0.5   # rates are counted per window of this length: their samples


def per_window(stamps: list[float], started: float, seconds: float) -> list[float]:
    """Events per second in each whole window of WINDOW_S from started (a partial last one dropped)."""
    counts = [0] * int(seconds / WINDOW_S)
    for t in stamps:
        k = int((t - started) / WINDOW_S)
        if 0 <= k < len(counts):
            counts[k] += 1
    return [c / WINDOW_S for c in counts]


PAYLOAD = b"x" * 300   # about an activation message's size


@contextlib.asynccontextmanager
async def bench_stream(cfg: SquallConfig):
    """A JetStream stream of the bench's own on file storage, warmed up: a publish function."""
    nc = await bus.connect(cfg.nats, "bench")
    js = nc.jetstream()
    stream = f"BENCH_{uuid.uuid4().hex[:6]}"
    from nats.js.api import StorageType, StreamConfig
    await js.add_stream(StreamConfig(name=stream, subjects=[f"bench.{stream}"], storage=StorageType.FILE))
    try:
        for _ in range(50):
            await js.publish(f"bench.{stream}", PAYLOAD)
        yield lambda: js.publish(f"bench.{stream}", PAYLOAD)
    finally:
        await js.delete_stream(stream)
        await nc.close()


async def jetstream_publish_rate(cfg: SquallConfig, seconds: float = 3.0) -> list[float]:
    """Publish-with-ack per second from one client, one publish at a time: per-window samples."""
    async with bench_stream(cfg) as publish:
        stamps: list[float] = []
        started = time.perf_counter()
        while time.perf_counter() < started + seconds:
            await publish()
            stamps.append(time.perf_counter())
        return per_window(stamps, started, seconds)


async def jetstream_publish_ms(cfg: SquallConfig, idle_s: float, n: int = 100) -> list[float]:
    """Publish-with-ack round trips (ms), one at a time, each after idle_s with nothing to do.
    Back to back (0) against after a pause: what waking a process that went to sleep costs on
    this machine, as every hop of an invocation does that finds its process idle."""
    async with bench_stream(cfg) as publish:
        samples = []
        for _ in range(n):
            if idle_s:
                await asyncio.sleep(idle_s)
            started = time.perf_counter()
            await publish()
            samples.append((time.perf_counter() - started) * 1000)
        return samples


async def throughput(apihost: str, auth: str, actions: list[str], seconds: float, concurrency: int,
                     cpu_ms: dict[str, float] | None = None) -> list[float]:
    """Completed warm blocking invocations per second, per window: `concurrency` callers spread
    over the actions, each action with a warm container per caller first (none waits for a cold
    start in the run). With
    cpu_ms, fills it with the CPU ms each kind of process spent per invocation while they ran
    (after warm-up)."""
    completed: list[float] = []
    stop = time.perf_counter() + seconds

    async def once(session: aiohttp.ClientSession, action: str) -> int:
        async with session.post(f"{apihost}/api/v1/namespaces/_/actions/{action}?blocking=true", json={}) as r:
            await r.read()
            return r.status

    async def caller(session: aiohttp.ClientSession, i: int) -> None:
        action = actions[i % len(actions)]
        while time.perf_counter() < stop:
            if await once(session, action) == 200:
                completed.append(time.perf_counter())

    # (The header itself: aiohttp 3.13 deprecates its BasicAuth.)
    async with aiohttp.ClientSession(headers={"Authorization": "Basic " + base64.b64encode(auth.encode()).decode()},
                                     connector=aiohttp.TCPConnector(limit=concurrency)) as session:
        # Warm as many containers of each action as it has callers (all callers at once, a few
        # rounds): else an action with two callers starts its second container cold in the run.
        for _ in range(3):
            await asyncio.gather(*(once(session, actions[i % len(actions)]) for i in range(concurrency)))
        cpu_before = cpu_seconds()
        started = time.perf_counter()
        stop = started + seconds
        await asyncio.gather(*(caller(session, i) for i in range(concurrency)))
        if cpu_ms is not None and completed:
            cpu_ms.update({role: (used - cpu_before.get(role, 0.0)) * 1000 / len(completed)
                           for role, used in cpu_seconds().items()})
        return per_window(completed, started, seconds)


def actions_homed(namespace: str, invokers: list[int], count: int, home_of) -> list[str]:
    """`count` fresh action names whose home invoker is among `invokers`, spread evenly."""
    names: list[str] = []
    per = {i: 0 for i in invokers}
    while len(names) < count:
        name = f"bench-hot-{uuid.uuid4().hex[:8]}"
        home = home_of(namespace, name)
        if home in per and per[home] < -(-count // len(invokers)):
            per[home] += 1
            names.append(name)
    return names


def home_of(n: int):
    return lambda namespace, name: zlib.crc32(f"{namespace}/{name}".encode()) % n   # as controller/balancer.py


def scraped(endpoints: list[tuple[str, int]], prefix: str):
    """(line, value) of every sample starting with prefix, from each process's /metrics."""
    for host, port in endpoints:
        try:
            text = requests.get(f"http://{host}:{port}/metrics", timeout=3).text
        except requests.RequestException:
            continue
        for line in text.splitlines():
            if line.startswith(prefix):
                yield line, float(line.rsplit(" ", 1)[1])


def record_write_histogram(endpoints: list[tuple[str, int]]) -> dict[float, float]:
    """Cumulative bucket counts of squall_record_write_seconds over the given invokers."""
    buckets: dict[float, float] = {}
    for line, value in scraped(endpoints, "squall_record_write_seconds_bucket"):
        le = line.split('le="', 1)[1].split('"', 1)[0]
        bound = float("inf") if le == "+Inf" else float(le)
        buckets[bound] = buckets.get(bound, 0.0) + value
    return buckets


def quantile(before: dict[float, float], after: dict[float, float], q: float) -> float | None:
    """The q-quantile (ms) of what was observed between two scrapes, by linear interpolation."""
    bounds = sorted(after)
    counts = [after[b] - before.get(b, 0.0) for b in bounds]
    total = counts[-1] if counts else 0
    if total <= 0:
        return None
    target, lower, below = q * total, 0.0, 0.0
    for bound, cumulative in zip(bounds, counts):
        if cumulative >= target:
            if bound == float("inf"):
                return lower * 1000
            share = (target - below) / max(cumulative - below, 1e-9)
            return (lower + (bound - lower) * share) * 1000
        lower, below = bound, cumulative
    return None


def hop_totals(endpoints: list[tuple[str, int]]) -> dict[str, tuple[float, float]]:
    """squall_hop_seconds per hop as (sum, count), added up over the given processes."""
    totals: dict[str, list[float]] = {}
    for line, value in scraped(endpoints, "squall_hop_seconds_"):
        for suffix, index in (("_sum{", 0), ("_count{", 1)):
            if line.startswith("squall_hop_seconds" + suffix):
                totals.setdefault(line.split('hop="', 1)[1].split('"', 1)[0], [0.0, 0.0])[index] += value
    return {hop: (s, c) for hop, (s, c) in totals.items()}


def hop_means(before: dict[str, tuple[float, float]], after: dict[str, tuple[float, float]]) -> dict[str, float]:
    """Mean ms per hop of what was observed between two scrapes."""
    means = {}
    for hop, (s, c) in after.items():
        s0, c0 = before.get(hop, (0.0, 0.0))
        if c > c0:
            means[hop] = (s - s0) / (c - c0) * 1000
    return means


# The table `make bench` prints: (label, how to compute it from the hop means and the client's
# mean, counted in the end-to-end sum or not).
HOP_ROWS = (
    ("client, HTTP, edge, gRPC to the controller and back", lambda m, e2e: e2e - m["invoke"], True),
    ("controller: auth, resolve, merge, throttles, reply", lambda m, e2e: m["invoke"] - m["publish"] - m["wait"], True),
    ("controller: JetStream publish, acked", lambda m, e2e: m["publish"], True),
    ("invoker: picks it up (after the publish)", lambda m, e2e: m.get("queue", 0.0) - m["publish"], True),
    ("invoker: started mark (JetStream KV create)", lambda m, e2e: m.get("mark", 0.0), True),
    ("invoker: container (warm: found)", lambda m, e2e: m.get("container", 0.0), True),
    ("invoker: POST /run to the container", lambda m, e2e: m.get("run", 0.0), True),
    ("invoker: the activation's log lines", lambda m, e2e: m.get("logs", 0.0), True),
    ("invoker: record sent to its mark (KV; ack awaited after)", lambda m, e2e: m.get("finish", 0.0), True),
    ("invoker: completion to the controller (core NATS)", lambda m, e2e: m.get("complete", 0.0), True),
    ("the rest of the wait (asyncio, wake-ups)", lambda m, e2e: m["wait"] + m["publish"] - sum(
        m.get(h, 0.0) for h in ("queue", "mark", "container", "run", "logs", "finish", "complete")), True),
    ("(after the reply) record to Cassandra: queued, linger, write", lambda m, e2e: m.get("record", 0.0), False),
)


def edge_scaling(cfg, auth: str, actions: list[str], seconds: float) -> dict[str, list[float]]:
    """Throughput through one edge worker, then two sharing the port (SO_REUSEPORT), side by side
    in one run: edges of the bench's own on a spare port, in front of the stack's controller."""
    import os
    import socket
    import subprocess
    import sys
    with socket.socket() as s:
        s.bind((cfg.edge.host, 0))
        port = s.getsockname()[1]
    env = {**os.environ, **cfg.env(), "SQUALL_EDGE_PORT": str(port), "SQUALL_EDGE_WORKERS": "2",
           "SQUALL_EDGE_METRICS_PORT": "0"}
    apihost = f"http://{cfg.edge.host}:{port}"
    rates: dict[str, list[float]] = {}
    procs: list[subprocess.Popen] = []
    try:
        for workers in (1, 2):
            procs.append(subprocess.Popen([sys.executable, "-m", "edge"], env={**env, "SQUALL_EDGE_WORKER": str(workers - 1)},
                                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline:
                try:
                    if requests.get(apihost + "/api/v1", timeout=1).status_code == 200:
                        break
                except requests.RequestException:
                    time.sleep(0.2)
            time.sleep(1.0)   # the second worker listening too
            rates[f"warm invocations per s, {workers} edge worker{'s' if workers > 1 else ''}"] = asyncio.run(
                throughput(apihost, auth, actions, seconds, 2 * len(actions)))
    finally:
        for p in procs:
            p.terminate()
            p.wait(10)
    return rates


# Process kinds by their command line, for cpu_seconds(); the first match wins.
ROLES = (("edge", "-m edge"), ("controller", "-m controller"), ("invoker", "-m invoker"),
         ("nats", "nats-server"), ("cassandra", "CassandraDaemon"), ("podman", "podman"),
         ("containers", "/squall/proxy"), ("containers", "conmon"))


def cpu_seconds() -> dict[str, float]:
    """CPU seconds (user + system) used so far by each kind of process on this machine; this
    process, the load's client, is "client". Differences of two calls: what a run cost each."""
    totals: dict[str, float] = {}
    for pid in map(int, filter(str.isdigit, os.listdir("/proc"))):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                cmdline = f.read().replace(b"\0", b" ").decode(errors="replace")
            used = process_cpu_seconds(pid)
        except OSError:
            continue   # gone meanwhile
        role = "client" if pid == os.getpid() else next((r for r, pat in ROLES if pat in cmdline), None)
        if role:
            totals[role] = totals.get(role, 0.0) + used
    return totals


def process_cpu_seconds(pid: int) -> float:
    """CPU seconds (user + system) one process has used so far (OSError if it is gone)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
