"""Prometheus metrics: one registry per process, served on its own port (0: off).

Each role builds its metrics here, so the names are in one place and every process exposes the
same shape: squall_<what>_<unit>, labelled by role where it helps.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

LATENCY_BUCKETS = (.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60)
HOP_BUCKETS = (.0001, .00025, .0005, .001, .0025, .005, .01, .025, .05, .1, .25, 1, 5, 30)


async def serve(registry: CollectorRegistry, host: str, port: int) -> web.AppRunner | None:
    """GET /metrics on host:port (0: none), served by the process's own event loop: no extra
    thread to contend for the GIL, and no reverse DNS lookup of the address (the standard
    library's HTTP server does one, which hangs where no DNS server is reachable)."""
    if not port:
        return None

    async def metrics(_request: web.Request) -> web.Response:
        return web.Response(body=generate_latest(registry), headers={"Content-Type": CONTENT_TYPE_LATEST})
    app = web.Application()
    app.router.add_get("/metrics", metrics)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    return runner


@dataclass
class EdgeMetrics:
    registry: CollectorRegistry = field(default_factory=CollectorRegistry)

    def __post_init__(self) -> None:
        self.requests = Counter("squall_edge_requests_total", "HTTP requests by route, method and status",
                                ["route", "method", "status"], registry=self.registry)
        self.latency = Histogram("squall_edge_request_seconds", "HTTP request latency by route and method",
                                 ["route", "method"], buckets=LATENCY_BUCKETS, registry=self.registry)


def hop_histogram(registry: CollectorRegistry) -> Histogram:
    """Where an activation's time goes, hop by hop (`make bench` prints the means). Controller:
    invoke (its whole Invoke call), publish (to JetStream, acked), wait (published to completed).
    Invoker: queue (accepted by the controller to picked up), mark (the started mark), container
    (getting one), init, run (the /run call), logs, finish (the record kept with its mark),
    complete (telling the controller), record (Cassandra, after the caller heard)."""
    return Histogram("squall_hop_seconds", "Time spent in each hop of an activation", ["hop"],
                     buckets=HOP_BUCKETS, registry=registry)


@dataclass
class ControllerMetrics:
    registry: CollectorRegistry = field(default_factory=CollectorRegistry)

    def __post_init__(self) -> None:
        r = self.registry
        self.started = Counter("squall_activations_started_total", "Activations started, by kind",
                               ["kind"], registry=r)
        self.completed = Counter("squall_activations_completed_total", "Activations completed, by status",
                                 ["status"], registry=r)
        self.throttled = Counter("squall_throttled_total", "Requests refused with 429", ["limit"], registry=r)
        self.invoker_healthy = Gauge("squall_invoker_healthy", "1 if the invoker is healthy", ["invoker"], registry=r)
        self.invoker_reserved = Gauge("squall_invoker_reserved_mb", "Memory of activations sent, not completed",
                                      ["invoker"], registry=r)
        self.queue_depth = Gauge("squall_queue_depth", "Activations waiting in an invoker's JetStream subject",
                                 ["invoker"], registry=r)
        self.hops = hop_histogram(r)


@dataclass
class InvokerMetrics:
    registry: CollectorRegistry = field(default_factory=CollectorRegistry)

    def __post_init__(self) -> None:
        r = self.registry
        self.container_starts = Counter("squall_container_starts_total",
                                        "Activations by how their container started (cold, prewarmed, warm, unpaused)",
                                        ["start"], registry=r)
        self.activations = Counter("squall_invoker_activations_total", "Activations run, by status",
                                   ["status"], registry=r)
        self.pool_containers = Gauge("squall_pool_containers", "Containers in the pool by state", ["state"], registry=r)
        self.pool_used_mb = Gauge("squall_pool_used_mb", "Memory the pool's containers count", registry=r)
        self.record_write = Histogram("squall_record_write_seconds", "Cassandra activation record writes",
                                      buckets=LATENCY_BUCKETS, registry=r)
        self.run_seconds = Histogram("squall_activation_run_seconds", "Time from pickup to record, per activation",
                                     buckets=LATENCY_BUCKETS, registry=r)
        self.hops = hop_histogram(r)
