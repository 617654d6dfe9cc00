"""The invoker's work loop: JetStream message in, activation record out.

For each message: load the action (cached by revision), run it through the
pool, store the record in Cassandra (retrying until it is stored), then ack the
message and tell the controller. A crash before the ack redelivers the message;
a redelivered activation whose record exists is not run again.
"""
from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import time

from nats.aio.client import Client as NATS
from nats.errors import TimeoutError as NatsTimeout
from nats.aio.msg import Msg

from container_pool.backend import ImageUnavailable
from container_pool.container import ActionKey
from container_pool.pool import ContainerPool, Job
from container_pool.runtimes import resolve
from invoker import records
from invoker.actions import ActionCache, Loaded
from invoker.recorder import Recorder
from invoker.records import ActionInfo
from proto import squall_pb2 as pb
from squall.bus import completion_subject, invoker_consumer, invoker_durable, invoker_subject
from squall.config import SquallConfig
from squall.marks import Marks
from squall.metrics import InvokerMetrics
from squall.store import Store

log = logging.getLogger(__name__)


def _now_ms() -> int:
    return int(time.time() * 1000)


class Invoker:
    def __init__(self, cfg: SquallConfig, store: Store, nc: NATS, pool: ContainerPool,
                 marks: Marks, metrics: InvokerMetrics):
        self._metrics = metrics
        self._cfg = cfg
        self._store = store
        self._recorder = Recorder(store, cfg.invoker.record_writers, cfg.invoker.record_batch_max,
                                  cfg.invoker.record_batch_bytes, cfg.invoker.record_linger_s,
                                  metrics.record_write.observe)
        self._nc = nc
        self._js = nc.jetstream()
        self._pool = pool
        self._marks = marks
        self._id = cfg.invoker.id
        self._actions = ActionCache(store)
        self._tasks: set[asyncio.Task] = set()
        self._held: dict[str, Msg] = {}   # messages being worked on, by their ack subject

    async def serve(self, stop: asyncio.Event) -> None:
        cfg = self._cfg
        sub = await self._js.pull_subscribe(
            invoker_subject(cfg.nats, self._id), durable=invoker_durable(self._id), stream=cfg.nats.stream,
            config=invoker_consumer(self._id, cfg.invoker.ack_wait_s, cfg.invoker.max_concurrent))
        slot_freed = asyncio.Event()
        keeper = asyncio.create_task(self._keep_alive(cfg.invoker.ack_wait_s / 3))
        log.info("invoker %s consuming %s (pid %d)", self._id, invoker_subject(cfg.nats, self._id), os.getpid())
        while not stop.is_set():
            free = cfg.invoker.max_concurrent - len(self._tasks)
            if free <= 0:
                slot_freed.clear()
                await slot_freed.wait()
                continue
            try:
                msgs = await sub.fetch(batch=free, timeout=1.0)
            except (NatsTimeout, asyncio.TimeoutError):
                continue
            except Exception as exc:   # NATS restarting: wait and fetch again
                log.warning("fetch failed: %s", exc)
                await asyncio.sleep(0.5)
                continue
            for msg in msgs:
                task = asyncio.create_task(self._handle(msg))
                self._tasks.add(task)
                task.add_done_callback(lambda t: (self._tasks.discard(t), slot_freed.set()))
        # Let running activations finish and be recorded before the process ends.
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=cfg.limits.timeout_max_ms / 1000 + 10)
        keeper.cancel()
        await self._recorder.close()

    async def _handle(self, msg: Msg) -> None:
        am = pb.ActivationMessage.FromString(msg.data)
        self._held[msg.reply] = msg
        try:
            record, ran = None, False
            if msg.metadata.num_delivered > 1:
                record = await self._earlier_outcome(am)
            if record is None:
                picked_up = time.perf_counter()
                if am.submitted_ms:   # (the controller's clock: same host, or NTP's precision)
                    self._metrics.hops.labels("queue").observe(max(_now_ms() - am.submitted_ms, 0) / 1000)
                outcome = await self._activate(am)
                if outcome is None:
                    # Marked already, though delivered as new: a NATS server killed mid-way can lose
                    # its count of deliveries (seen in the fault suite). It started: not again.
                    record = await self._earlier_outcome(am)
                else:
                    record, revision, raw = outcome
                    self._observe(record, time.perf_counter() - picked_up)
                    await self._finish(am, record, revision, raw)   # (completes it too, before Cassandra's write)
                    ran = True
            await msg.ack()
        except Exception:
            log.exception("activation failed", extra={"activation_id": am.activation_id})
            return
        finally:
            self._held.pop(msg.reply, None)
        if not ran:
            await self._complete(am, records.encode(record), record)

    async def _keep_alive(self, every: float) -> None:
        """Tell JetStream, for each message still being worked on, that it is, so it is not
        redelivered meanwhile: one loop for all of them (a timer task per activation cost more)."""
        while True:
            await asyncio.sleep(every)
            for msg in list(self._held.values()):
                with contextlib.suppress(Exception):
                    await msg.in_progress()

    async def _finish(self, am: pb.ActivationMessage, record: dict, revision: int, raw: bytes | None) -> None:
        """Make a new record durable, tell the controller, store it in Cassandra. The record goes
        to the activation's mark (JetStream) and the completion right behind it on the same
        connection, so NATS has the record before the controller hears the result; the mark's ack
        is awaited after, and the slower Cassandra write comes last. A redelivery or a takeover
        after a crash finds the record in the mark. If a takeover settled the activation meanwhile
        (only after this invoker was silent for the whole ack wait: cut off, say), that outcome
        stands and this record yields; the takeover's completion went first, and the controller
        keeps the first it hears. (raw: the result as the action wrote it.)"""
        body = records.encode(record, raw)
        result_at = records.result_at(body, raw)
        completed = False
        try:
            with self._metrics.hops.labels("finish").time():
                pending = await self._marks.finishing(am.activation_id, body, revision)
            await self._complete(am, body, record, result_at)
            completed = True
            kept = await pending
        except Exception as exc:   # NATS restarting: again until the mark has it (or refuses it)
            log.warning("keeping the record with its mark failed, retrying: %s", exc, extra={"activation_id": am.activation_id})
            kept = await self._until_stored(lambda: self._marks.finished(am.activation_id, body, revision),
                                            am.activation_id, "keeping the record with its mark")
        if not kept:
            log.warning("settled elsewhere while it ran here: its record yields", extra={"activation_id": am.activation_id})
            return
        if not completed:
            await self._complete(am, body, record, result_at)
        await self._store_record(record, am.activation_id, body)
        with contextlib.suppress(Exception):   # only keeps the bucket small
            await self._marks.stored(am.activation_id)

    async def _earlier_outcome(self, am: pb.ActivationMessage) -> dict | None:
        """For an activation delivered again: its record if one was stored or kept with its mark
        (stored now); else, if it had started, a record saying its invoker failed (stored now);
        None if it never started."""
        record = await self._until_stored(lambda: self._store.get_activation(am.activation_id),
                                          am.activation_id, "looking for the record")
        if record is not None:
            log.info("redelivered activation was already recorded", extra={"activation_id": am.activation_id})
            return record
        mark = await self._marks.get(am.activation_id)
        if not mark.started:
            return None
        if mark.record is not None:
            record = mark.record
            log.info("redelivered activation had finished: storing its record", extra={"activation_id": am.activation_id})
        else:
            # Begun before, by this invoker or one that died: at most once, so not again.
            record = records.failed(am, "The invoker running this activation failed before it "
                                        "completed; the action may have run partly.", _now_ms())
            if not await self._marks.finished(am.activation_id, records.encode(record), mark.revision):
                return await self._earlier_outcome(am)   # it finished meanwhile: that outcome
            log.warning("redelivered activation had started: recorded as failed", extra={"activation_id": am.activation_id})
        await self._store_record(record, am.activation_id)
        return record

    async def _activate(self, am: pb.ActivationMessage) -> tuple[dict, int, bytes | None] | None:
        """Run it: its record, the revision of its started mark and its result as the action
        wrote it (see records.raw_result); None if it was marked started already (do not run it
        again)."""
        started = _now_ms()
        loaded = await self._until_stored(lambda: self._actions.get(am.namespace, am.name, am.revision),
                                          am.activation_id, "reading the action")
        if loaded is None:
            info = ActionInfo(am.namespace, am.name, "0.0.1", "unknown", {})
            resp = records.response(records.APPLICATION_ERROR, {"error": "The requested resource does not exist."})
            return await self._marked(am, records.record(am, info, resp, None, started, _now_ms()))
        action = loaded.doc
        exec_ = action["exec"]
        limits = action["limits"]
        info = ActionInfo(am.namespace, am.name, action["version"], exec_["kind"], limits, action.get("publish", False))
        job = self._job(am, loaded, self._value_json(am, action))
        if job is None:
            resp = records.response(records.DEVELOPER_ERROR, {"error": f"Unsupported kind '{exec_['kind']}'."})
            return await self._marked(am, records.record(am, info, resp, None, started, _now_ms()))
        # Marked just before it can start to run, if not marked yet (atomically): a redelivery
        # finding the mark will not run it again. (Not earlier: a slow Cassandra read above must
        # not look like a run to a takeover.)
        with self._metrics.hops.labels("mark").time():
            revision = await self._marks.begin(am.activation_id, self._id)
        if revision is None:
            return None
        # One line per run: the fault suite counts them to prove nothing runs twice.
        log.info("running", extra={"activation_id": am.activation_id})
        try:
            outcome = await self._pool.run(job)
            for hop, seconds in outcome.timings.items():
                self._metrics.hops.labels(hop).observe(seconds)
        except ImageUnavailable as exc:
            resp = records.response(records.DEVELOPER_ERROR, {"error": str(exc)})
            return records.record(am, info, resp, None, started, _now_ms()), revision, None
        except Exception as exc:
            log.exception("container failure", extra={"activation_id": am.activation_id})
            resp = records.response(records.WHISK_ERROR, {"error": f"Failed to run the action: {exc}"})
            return records.record(am, info, resp, None, started, _now_ms()), revision, None
        resp = records.interpret(outcome, limits["timeout"], self._cfg.limits.payload_max_bytes)
        start = outcome.run_start_ms - (outcome.init_ms or 0) if outcome.run_start_ms else started
        end = outcome.run_end_ms or _now_ms()
        raw = records.raw_result(outcome, resp)
        return records.record(am, info, resp, outcome, start, end, raw), revision, raw

    async def _marked(self, am: pb.ActivationMessage, record: dict) -> tuple[dict, int, None] | None:
        """An outcome reached without running anything, under a started mark like any other."""
        revision = await self._marks.begin(am.activation_id, self._id)
        return None if revision is None else (record, revision, None)

    @staticmethod
    def _value_json(am: pb.ActivationMessage, action: dict) -> bytes:
        """The parameters the action runs with, as JSON. The controller merged the action's
        defaults already; they are merged again only when the action has any (a composition's
        step may come without them), so a large payload is otherwise passed on as it came, not
        parsed and encoded again."""
        if not action.get("parameters"):
            return am.params_json or b"{}"
        params = {p["key"]: p["value"] for p in action["parameters"]}
        params.update(json.loads(am.params_json or b"{}"))
        return json.dumps(params).encode()

    def _job(self, am: pb.ActivationMessage, loaded: Loaded, value_json: bytes) -> Job | None:
        exec_ = loaded.doc["exec"]
        limits = loaded.doc["limits"]
        if exec_["kind"] == "blackbox":
            image, kind = exec_["image"], "blackbox:" + exec_["image"]
        else:
            runtime = resolve(exec_["kind"])
            if runtime is None:
                return None
            image, kind = runtime.image, runtime.kind
        fqn = f"/{am.namespace}/{am.name}"
        deadline = _now_ms() + limits["timeout"]
        run = {
            "namespace": am.user_namespace, "action_name": fqn,
            "action_version": loaded.doc["version"], "activation_id": am.activation_id,
            "transaction_id": am.transaction_id, "deadline": str(deadline), "api_key": am.api_key,
        }
        return Job(
            key=ActionKey(am.namespace, am.name, am.revision, limits["memory"]),
            kind=kind, image=image,
            init_body=loaded.init_body,
            run_body=b'{"value":' + value_json + b"," + json.dumps(run)[1:].encode(),
            timeout_s=limits["timeout"] / 1000, concurrency=limits.get("concurrency", 1),
            log_limit_bytes=limits.get("logs", 10) * 1024 * 1024,
        )

    def _observe(self, record: dict, seconds: float) -> None:
        self._metrics.run_seconds.observe(seconds)
        self._metrics.activations.labels(record["response"]["status"]).inc()
        start = next((a["value"] for a in record["annotations"] if a["key"] == "containerStart"), None)
        if start:
            self._metrics.container_starts.labels(start).inc()

    async def _store_record(self, record: dict, activation_id: str, body: bytes | None = None) -> None:
        doc = (body or records.encode(record)).decode()

        async def put() -> None:
            with self._metrics.hops.labels("record").time():   # (queued, gathered and written)
                await self._recorder.put(record, doc)
        await self._until_stored(put, activation_id, "storing the record")

    async def _until_stored(self, operation, activation_id: str, what: str):
        """Retry a Cassandra operation while Cassandra is down or slow, with backoff: the message
        stays unacknowledged (and kept alive) meanwhile, so nothing is lost or run twice."""
        delay = 0.1
        while True:
            try:
                return await operation()
            except Exception as exc:
                log.warning("%s failed, retrying in %.1fs: %s", what, delay, exc, extra={"activation_id": activation_id})
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)

    async def _complete(self, am: pb.ActivationMessage, record_json: bytes, record: dict, result_at: int = 0) -> None:
        """Tell the controller that published it (core NATS, fire and forget: a completion that
        gets lost leaves its caller to read the record)."""
        if not am.controller:
            return
        with contextlib.suppress(Exception), self._metrics.hops.labels("complete").time():
            await self._nc.publish(completion_subject(self._cfg.nats, am.controller), pb.Completion(
                activation_id=am.activation_id, invoker=self._id, activation_json=record_json,
                status_code=record["response"]["statusCode"], result_at=result_at).SerializeToString())
