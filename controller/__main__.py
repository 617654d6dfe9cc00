"""The controller process: `python -m controller`."""
from __future__ import annotations

import asyncio
import logging

import grpc

from controller.auth import Authenticator
from controller.balancer import Balancer
from controller.invokers import InvokerSupervision
from controller.service import Completions, SquallService
from controller.throttles import Throttles
from controller.waiters import Waiters
from proto import squall_pb2_grpc as pb_grpc
from squall import bus, process
from squall.process import GRPC_OPTIONS
from squall.config import SquallConfig
from squall.marks import Marks
from squall.metrics import ControllerMetrics, serve
from squall.store import Store

log = logging.getLogger("controller")



async def main(cfg: SquallConfig, stop: asyncio.Event) -> None:
    store = await Store.connect(cfg.cassandra, create_schema=True)
    nc = await bus.connect(cfg.nats, "controller")
    js = nc.jetstream()
    await bus.ensure_stream(js, cfg.nats)
    auth = Authenticator(store, cfg.controller.auth_cache_s)
    if cfg.controller.guest_auth:
        await auth.ensure_subject("guest", cfg.controller.guest_namespace, cfg.controller.guest_auth)
    waiters = Waiters()
    throttles = Throttles(cfg.limits)

    balancer = Balancer(cfg.controller.invokers, cfg.controller.unresponsive_after_s)
    metrics = ControllerMetrics()
    replica = cfg.controller.replica
    await serve(metrics.registry, *cfg.controller.metrics_endpoint(replica))
    address = cfg.controller.address(replica)
    marks = await Marks.open(nc, cfg.nats)
    supervision = InvokerSupervision(cfg, nc, js, marks, store, balancer, address, metrics)
    await supervision.start()
    service = SquallService(cfg, store, js, marks, auth, waiters, throttles, balancer, metrics)
    await service.alarms.start(schedule=cfg.controller.alarms)
    server = grpc.aio.server(options=GRPC_OPTIONS)
    pb_grpc.add_SquallServicer_to_server(service, server)
    server.add_insecure_port(address)
    await Completions(waiters, throttles, service.alarms, balancer, metrics).subscribe(
        nc, bus.completion_subject(cfg.nats, address))
    await server.start()
    log.info("controller replica %d listening on %s", replica, address)
    await stop.wait()
    log.info("controller stopping")
    await service.alarms.stop()
    await supervision.stop()
    await server.stop(grace=5)
    await nc.close()
    await store.close()


if __name__ == "__main__":
    process.run("controller", main)
