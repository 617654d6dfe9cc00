"""The edge process: `python -m edge`."""
from __future__ import annotations

import asyncio
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
    channel = grpc.aio.insecure_channel(f"{cfg.controller.host}:{cfg.controller.port}", options=GRPC_OPTIONS)
    metrics = EdgeMetrics()
    await serve(metrics.registry, cfg.edge.host, cfg.edge.metrics_port)
    runner = web.AppRunner(build_app(cfg, channel, metrics), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, cfg.edge.host, cfg.edge.port, backlog=1024)
    await site.start()
    log.info("edge listening on http://%s:%s", cfg.edge.host, cfg.edge.port)
    await stop.wait()
    await runner.cleanup()
    await channel.close()


if __name__ == "__main__":
    process.run("edge", main)
