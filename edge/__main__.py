"""The edge process: `python -m edge`."""
from __future__ import annotations

import asyncio
import os
import logging

import grpc
from aiohttp import web

from squall.process import GRPC_OPTIONS
from edge.app import build_app
from squall import process
from squall.config import SquallConfig
from squall.metrics import EdgeMetrics, serve

log = logging.getLogger("edge")


async def main(cfg: SquallConfig, stop: asyncio.Event) -> None:
    # One channel for the process: HTTP/2 multiplexes every request over it.
    controller = cfg.controller.address(cfg.edge.worker % max(cfg.controller.replicas, 1))
    channel = grpc.aio.insecure_channel(controller, options=GRPC_OPTIONS)
    metrics = EdgeMetrics()
    await serve(metrics.registry, *cfg.edge.metrics_endpoint(cfg.edge.worker))
    runner = web.AppRunner(build_app(cfg, channel, metrics), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, cfg.edge.host, cfg.edge.port, backlog=1024, reuse_port=cfg.edge.workers > 1)
    await site.start()
    log.info("edge worker %d listening on http://%s:%s, controller %s (pid %d)", cfg.edge.worker,
             cfg.edge.host, cfg.edge.port, controller, os.getpid())
    await stop.wait()
    await runner.cleanup()
    await channel.close()


if __name__ == "__main__":
    process.run("edge", main)
