"""The invoker process: `python -m invoker` (its id from SQUALL_INVOKER_ID)."""
from __future__ import annotations

import asyncio
import logging

import docker

from container_pool.docker_backend import DockerBackend, default_network
from container_pool.pool import ContainerPool
from container_pool.proxy_client import ProxyClient
from invoker.service import Invoker
from squall import bus, process
from squall.config import SquallConfig
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
    try:
        await Invoker(cfg, store, nc.jetstream(), pool).serve(stop)
    finally:
        log.info("invoker stopping: removing containers")
        await pool.stop()
        await nc.close()   # unacked work is redelivered anyway; drain can hang on a pull consumer
        await store.close()


if __name__ == "__main__":
    process.run("invoker", main)
