"""The invokers as a controller sees them: heartbeats, health tests, and failover.

* Heartbeats (core NATS, one a second per invoker) feed the balancer's view of each invoker.
* An invoker marked unhealthy (its activations keep ending in whisk internal errors) gets a
  health-test activation every few seconds, sent to it alone; one that succeeds clears it.
* Failover: when an invoker has been silent for takeover_after_s, this controller pulls from that
  invoker's durable consumer (the very one the invoker pulls from, so each message goes to one of
  them only) and settles every message, at most once in effect:
    - its record exists: it completed; acknowledge.
    - it is marked started (the invoker began to run it): if its mark holds its record (it
      finished, the record was not yet in Cassandra), store that; else record a whisk error saying
      its invoker failed. Tell any waiting caller, acknowledge. It is not run again.
    - otherwise it never started: publish it to a healthy invoker, then acknowledge.
  Messages the dead invoker had fetched come back once their ack wait runs out.
"""
from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid

from nats.aio.client import Client as NATS
from nats.errors import TimeoutError as NatsTimeout
from nats.js import JetStreamContext

from controller.entities import system_action
from controller.balancer import HEALTHY, UNHEALTHY, Balancer
from invoker.records import encode, failed
from proto import squall_pb2 as pb
from squall.bus import completion_subject, invoker_consumer, invoker_durable, invoker_subject
from squall.config import SquallConfig
from squall.marks import Marks
from squall.metrics import ControllerMetrics
from squall.store import Store, revision

log = logging.getLogger(__name__)

SYSTEM_NAMESPACE = "whisk.system"
HEALTH_ACTION = "invokerHealthTestAction"
HEALTH_CODE = "def main(args):\n    return {'healthy': True}\n"


def _now_ms() -> int:
    return int(time.time() * 1000)


class InvokerSupervision:
    def __init__(self, cfg: SquallConfig, nc: NATS, js: JetStreamContext, marks: Marks, store: Store,
                 balancer: Balancer, address: str, metrics: ControllerMetrics):
        self._metrics = metrics
        self._cfg = cfg
        self._nc = nc
        self._js = js
        self._marks = marks
        self._store = store
        self._balancer = balancer
        self._address = address
        self._tasks: list[asyncio.Task] = []
        self._subs: dict[int, object] = {}

    async def start(self) -> None:
        await self._nc.subscribe(self._cfg.nats.health_subject, cb=self._on_heartbeat)
        await self._ensure_health_action()
        self._tasks = [asyncio.create_task(self._loop())]

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()

    async def _on_heartbeat(self, msg) -> None:
        try:
            beat = json.loads(msg.data)
            self._balancer.heartbeat(int(beat["id"]), int(beat["capacityMB"]), int(beat["usedMB"]),
                                     int(beat.get("inFlight", 0)),
                                     {str(k): int(v) for k, v in (beat.get("containers") or {}).items()})
        except (ValueError, KeyError, TypeError):
            log.warning("malformed heartbeat: %r", msg.data[:200])

    async def wait_for_any(self, seconds: float) -> bool:
        """Right after a controller starts, no heartbeat has come yet: wait for one."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            if any(self._balancer.silent_for(i) < 5 for i in range(len(self._balancer.invokers))):
                return True
            await asyncio.sleep(0.05)
        return False

    async def _loop(self) -> None:
        last_test, ticks = 0.0, 0
        while True:
            await asyncio.sleep(1.0)
            ticks += 1
            try:
                await self._gauges(queue_depth=ticks % 5 == 0)
                for state in self._balancer.invokers:
                    silent = self._balancer.silent_for(state.id)
                    if silent > self._cfg.controller.takeover_after_s:
                        await self._take_over(state.id)
                    elif self._balancer.status(state.id) == UNHEALTHY and time.monotonic() - last_test > 5:
                        await self._health_test(state.id)
                        last_test = time.monotonic()
            except Exception:
                log.exception("invoker supervision failed; retrying")

    async def _gauges(self, queue_depth: bool) -> None:
        for state in self._balancer.invokers:
            label = str(state.id)
            self._metrics.invoker_healthy.labels(label).set(1 if self._balancer.status(state.id) == HEALTHY else 0)
            self._metrics.invoker_reserved.labels(label).set(state.reserved_mb)
            if queue_depth:
                try:
                    info = await self._js.consumer_info(self._cfg.nats.stream, invoker_durable(state.id))
                    self._metrics.queue_depth.labels(label).set(info.num_pending + info.num_ack_pending)
                except Exception:   # no consumer yet (invoker never started), or NATS restarting
                    pass

    # Health tests

    async def _ensure_health_action(self) -> None:
        await self._store.ensure_action(system_action(SYSTEM_NAMESPACE, HEALTH_ACTION, HEALTH_CODE, 128))

    async def _health_test(self, invoker: int) -> None:
        doc = await self._store.get_entity(SYSTEM_NAMESPACE, "actions", HEALTH_ACTION)
        activation_id = uuid.uuid4().hex
        message = pb.ActivationMessage(
            activation_id=activation_id, transaction_id=activation_id, namespace=SYSTEM_NAMESPACE,
            name=HEALTH_ACTION, revision=revision(doc), subject=SYSTEM_NAMESPACE,
            user_namespace=SYSTEM_NAMESPACE, params_json=b"{}", controller=self._address,
            submitted_ms=_now_ms(), path=f"{SYSTEM_NAMESPACE}/{HEALTH_ACTION}")
        log.info("sending a health test to unhealthy invoker %d", invoker)
        await self._js.publish(invoker_subject(self._cfg.nats, invoker), message.SerializeToString(),
                               headers={"Nats-Msg-Id": activation_id})
        # Its completion, like any other, updates the invoker's failure count in the balancer.

    # Failover

    async def _take_over(self, invoker: int) -> None:
        sub = self._subs.get(invoker)
        if sub is None:
            cfg = self._cfg
            sub = await self._js.pull_subscribe(
                invoker_subject(cfg.nats, invoker), durable=invoker_durable(invoker), stream=cfg.nats.stream,
                config=invoker_consumer(invoker, cfg.invoker.ack_wait_s, cfg.invoker.max_concurrent))
            self._subs[invoker] = sub
        try:
            msgs = await sub.fetch(batch=64, timeout=0.2)
        except (NatsTimeout, asyncio.TimeoutError):
            return
        self._balancer.forget_invoker_work(invoker)
        for msg in msgs:
            await self._settle(invoker, msg)

    async def _settle(self, dead: int, msg) -> None:
        am = pb.ActivationMessage.FromString(msg.data)
        if await self._store.get_activation(am.activation_id) is not None:
            await msg.ack()
            return
        mark = await self._marks.get(am.activation_id)
        if mark.started:
            # Finished, its record not stored yet: store it. Else it failed with its invoker.
            record = mark.record or failed(am, f"The invoker {dead} running this activation failed before it "
                                               "completed; the action may have run partly.", _now_ms())
            body = encode(record)
            if mark.record is None:
                # Settled here unless its invoker finished it meanwhile (then that record stands).
                if not await self._marks.finished(am.activation_id, body, mark.revision):
                    return await self._settle(dead, msg)
                log.warning("activation %s was running on dead invoker %d: recorded as failed", am.activation_id, dead)
            await self._store.put_activation(record, body.decode())
            await msg.ack()
            # As its invoker would have: to the controller that published it (this one or another
            # replica), which releases its throttle count and reservation and answers its caller.
            if am.controller:
                await self._nc.publish(completion_subject(self._cfg.nats, am.controller), pb.Completion(
                    activation_id=am.activation_id, invoker=-1, status_code=record["response"]["statusCode"],
                    activation_json=body).SerializeToString())
            return
        target = self._balancer.choose(am.namespace, am.name)
        if target is None or target == dead:
            await msg.nak(delay=1.0)   # nowhere to go yet: it stays queued
            return
        await self._js.publish(invoker_subject(self._cfg.nats, target), msg.data,
                               headers={"Nats-Msg-Id": f"{am.activation_id}.from{dead}"})
        await msg.ack()
        log.warning("activation %s moved from dead invoker %d to invoker %d", am.activation_id, dead, target)

