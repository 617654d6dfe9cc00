"""The invoker process: `python -m invoker` (its id from SQUALL_INVOKER_ID)."""
from __future__ import annotations

import asyncio
import json
import logging

import docker

from container_pool.docker_backend import DockerBackend, default_network
from container_pool.pool import ContainerPool
from container_pool.proxy_client import ProxyClient
from invoker.service import Invoker
from squall import bus, process
from squall.config import SquallConfig
from squall.marks import Marks
from squall.metrics import InvokerMetrics, serve
from squall.store import Store

log = logging.getLogger("invoker")


def docker_client(cfg: SquallConfig) -> docker.DockerClient:
    if cfg.invoker.docker_host:
        return docker.DockerClient(base_url=cfg.invoker.docker_host, timeout=120)
    return docker.from_env(timeout=120)


async def main(cfg: SquallConfig, stop: asyncio.Event) -> None:
    store = await Store.connect(cfg.cassandra)
    nc = await bus.connect(cfg.nats, f"invoker{cfg.invoker.id}")
    client = docker_client(cfg)
    network = cfg.invoker.network or await asyncio.to_thread(default_network, client)
    pool = ContainerPool(DockerBackend(client, network, cfg.pool.freeze_directly), ProxyClient(cfg.limits.payload_max_bytes),
                         cfg.pool, cfg.invoker.user_memory_mb, cfg.invoker.id)
    await pool.start()
    metrics = InvokerMetrics()
    if cfg.invoker.metrics_port:
        await serve(metrics.registry, *cfg.invoker.metrics_endpoint(cfg.invoker.id))
    heartbeat = asyncio.create_task(_heartbeat(nc, cfg, pool, stop, metrics))
    try:
        await Invoker(cfg, store, nc, pool, await Marks.open(nc, cfg.nats), metrics).serve(stop)
    finally:
        heartbeat.cancel()
        log.info("invoker stopping: removing containers")
        await pool.stop()
        await nc.close()   # unacked work is redelivered anyway; drain can hang on a pull consumer
        await store.close()


async def _heartbeat(nc, cfg: SquallConfig, pool: ContainerPool, stop: asyncio.Event,
                     metrics: InvokerMetrics) -> None:
    """Every second: alive, with capacity and load, for the controllers' balancers."""
    while not stop.is_set():
        metrics.pool_used_mb.set(pool.used_mb())
        counts = pool.snapshot()
        for state in ("starting", "prewarmed", "initializing", "busy", "idle", "paused", "removing"):
            metrics.pool_containers.labels(state).set(counts.get(state, 0))
        beat = {"id": cfg.invoker.id, "capacityMB": cfg.invoker.user_memory_mb, "usedMB": pool.used_mb(),
                "inFlight": pool.busy(), "containers": pool.snapshot()}
        try:
            await nc.publish(cfg.nats.health_subject, json.dumps(beat).encode())
        except Exception as exc:   # NATS restarting: the next beat goes through
            log.debug("heartbeat not sent: %s", exc)
        await asyncio.sleep(1.0)


if __name__ == "__main__":
    process.run("invoker", main)
