"""Starting activations: resolving what is invoked, merging parameters, and composing.

A plain action becomes one ActivationMessage on its invoker's JetStream subject. Sequences,
conductor compositions and trigger fires are orchestrated here, in the controller, as
OpenWhisk's controller does: each step is an ordinary activation, and the composite gets a
record of its own (written by the controller) that lists its steps' activation ids.

Parameter merging, lowest first: the package's, the binding's, the action's, then the caller's.
An action annotated final=true refuses invoke parameters that would override its defaults.
"""
from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
import uuid
from dataclasses import dataclass
from typing import Any

from nats.js import JetStreamContext

from controller import entities
from controller.auth import Identity
from controller.balancer import Balancer
from controller.cache import EntityCache
from controller.throttles import Throttles
from controller.waiters import Completed, Waiters
from proto import squall_pb2 as pb
from squall.bus import invoker_subject
from squall.config import SquallConfig
from squall.marks import Marks
from squall.metrics import ControllerMetrics
from squall.errors import BadRequest, Forbidden, NotFound, SquallError, Unavailable
from squall.jsonbytes import as_sent
from squall.store import Store, revision

log = logging.getLogger(__name__)

SEQUENCE_LIMIT = 50      # OpenWhisk's actionSequenceLimit: components of one sequence
COMPOSITION_LIMIT = 50   # steps of a conductor composition
SUCCESS, APPLICATION_ERROR, DEVELOPER_ERROR, WHISK_ERROR = 0, 1, 2, 3
STATUS = {0: "success", 1: "application error", 2: "action developer error", 3: "whisk internal error"}


def _now_ms() -> int:
    return int(time.time() * 1000)


def _dumps(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode()


def response(status_code: int, result: dict) -> dict:
    return {"status": STATUS[status_code], "statusCode": status_code, "success": status_code == 0,
            "result": result}


@dataclass(frozen=True)
class Resolved:
    namespace: str     # where the action's document lives
    name: str          # its name there: "action" or "pkg/action"
    doc: dict
    defaults: dict     # package < binding < action parameters
    path: str          # as the caller named it: "ns/action" or "ns/pkg/action"

    @property
    def kind(self) -> str:
        return self.doc["exec"]["kind"]

    @property
    def short_name(self) -> str:
        return self.name.rsplit("/", 1)[-1]


class Activator:
    def __init__(self, cfg: SquallConfig, store: Store, js: JetStreamContext, marks: Marks, waiters: Waiters,
                 throttles: Throttles, balancer: Balancer, address: str, metrics: ControllerMetrics):
        self._metrics = metrics
        self._cfg = cfg
        self._store = store
        self._marks = marks
        self.cache = EntityCache(store, cfg.controller.entity_cache_s)
        self._js = js
        self._waiters = waiters
        self._throttles = throttles
        self._balancer = balancer
        self._address = address
        self._tasks: set[asyncio.Task] = set()

    # Resolution

    async def package(self, identity: Identity, namespace: str, name: str) -> tuple[dict, dict]:
        """A package the caller may use, and the parameters it brings: (package, defaults).
        A binding resolves to the package it binds, its own parameters over the bound one's."""
        doc = await self.cache.get(namespace, "packages", name)
        if doc is None:
            raise NotFound()
        if namespace not in identity.namespaces and not doc.get("publish"):
            raise Forbidden()
        binding = doc.get("binding") or {}
        if not binding:
            return doc, entities.parameters(doc)
        target = await self.cache.get(binding["namespace"], "packages", binding["name"])
        if target is None or target.get("binding"):
            raise NotFound("The package binding refers to a package that does not exist.")
        if binding["namespace"] not in identity.namespaces and not target.get("publish"):
            raise Forbidden()
        return target, {**entities.parameters(target), **entities.parameters(doc)}

    async def resolve(self, identity: Identity, namespace: str, name: str) -> Resolved:
        package, _, short = name.rpartition("/")
        if not package:
            if namespace not in identity.namespaces:
                raise Forbidden()
            doc = await self.cache.get(namespace, "actions", name)
            if doc is None:
                raise NotFound()
            return Resolved(namespace, name, doc, entities.parameters(doc), f"{namespace}/{name}")
        pkg, defaults = await self.package(identity, namespace, package)
        doc_ns, doc_name = pkg["namespace"], f"{pkg['name']}/{short}"
        doc = await self.cache.get(doc_ns, "actions", doc_name)
        if doc is None:
            raise NotFound()
        return Resolved(doc_ns, doc_name, doc, {**defaults, **entities.parameters(doc)},
                        f"{namespace}/{package}/{short}")

    @staticmethod
    def merge(resolved: Resolved, params: dict) -> dict:
        if entities.annotation(resolved.doc, "final") is True:
            fixed = [k for k in params if k in resolved.defaults]
            if fixed:
                raise BadRequest("Request defines parameters that are not allowed (e.g., reserved properties).")
        return {**resolved.defaults, **params}

    # Invoking

    async def invoke(self, identity: Identity, resolved: Resolved, params: dict, user_ns: str,
                     blocking: bool, wait_s: float, params_json: bytes = b"") -> tuple[str, Completed | None]:
        """Start an activation of whatever kind; with blocking, wait up to wait_s for its record.
        Returns the activation id and the record (None when not waited for or not done).
        params_json: params as the caller sent them (a JSON object), passed on as they are when
        there are no defaults to merge, rather than encoded again."""
        self._throttles.admit_invoke(user_ns)
        merged = self.merge(resolved, params)
        if self._composite(resolved):
            activation_id, task = self._composing(identity, resolved, merged, user_ns)
            if not blocking:
                return activation_id, None
            try:
                record = await asyncio.wait_for(asyncio.shield(task), wait_s)
            except asyncio.TimeoutError:
                return activation_id, None
            return activation_id, Completed(_dumps(record))
        raw = params_json if not resolved.defaults and as_sent(params_json) else None
        activation_id, waiter = await self._publish(identity, resolved, merged, user_ns, "", blocking, raw)
        if waiter is None:
            return activation_id, None
        with self._metrics.hops.labels("wait").time():
            record = await self._waiters.wait(activation_id, waiter, wait_s)
        if record is None:
            # A completion may have gone missing while the record was stored: look once. (If the
            # store is down, the caller still gets the activation id: the activation is accepted.)
            stored = await self._reachable_record(activation_id)
            record = Completed(_dumps(stored)) if stored else None
        return activation_id, record

    async def _reachable_record(self, activation_id: str) -> dict | None:
        """Its record, or None if there is none yet or none can be read now."""
        try:
            return await self.record_of(activation_id)
        except Unavailable:
            return None

    async def record_of(self, activation_id: str) -> dict | None:
        """An activation's record: from Cassandra, or, in the few milliseconds between a result
        and its Cassandra write (or while Cassandra is down), from its mark in JetStream."""
        store_down = False
        try:
            record = await self._store.get_activation(activation_id)
        except Unavailable:
            record, store_down = None, True
        if record is None:
            try:
                record = (await self._marks.get(activation_id)).record
            except Exception as exc:   # NATS down too
                log.debug("mark of %s not readable: %s", activation_id, exc)
                raise Unavailable() from None
        if record is None and store_down:
            raise Unavailable()
        return record

    @staticmethod
    def _composite(resolved: Resolved) -> bool:
        return resolved.kind == "sequence" or entities.annotation(resolved.doc, "conductor") is True

    async def _publish(self, identity: Identity, resolved: Resolved, params: dict, user_ns: str,
                       cause: str, blocking: bool, params_json: bytes | None = None
                       ) -> tuple[str, asyncio.Future | None]:
        activation_id = uuid.uuid4().hex
        message = pb.ActivationMessage(
            activation_id=activation_id, transaction_id=activation_id,
            namespace=resolved.namespace, name=resolved.name, revision=revision(resolved.doc),
            subject=identity.subject, user_namespace=user_ns, params_json=params_json or _dumps(params),
            blocking=blocking, controller=self._address, api_key=identity.key,
            submitted_ms=_now_ms(), cause=cause, path=resolved.path)
        memory = resolved.doc.get("limits", {}).get("memory", 256)
        invoker = await self._invoker_for(resolved, memory)
        waiter = self._waiters.expect(activation_id) if blocking else None
        # Counted before the publish: its completion can arrive before the publish's ack is read.
        self._throttles.started(user_ns, activation_id)
        self._balancer.placed(activation_id, invoker, memory)
        try:
            # Acknowledged by JetStream (on disk) before anyone hears of the activation.
            with self._metrics.hops.labels("publish").time():
                await self._js.publish(invoker_subject(self._cfg.nats, invoker), message.SerializeToString(),
                                       timeout=5.0, headers={"Nats-Msg-Id": activation_id})
        except Exception as exc:
            self._waiters.forget(activation_id)
            self._throttles.finished(activation_id)
            self._balancer.unplaced(activation_id)
            log.warning("publish of %s failed: %s", activation_id, exc)
            raise Unavailable() from None
        self._metrics.started.labels("action").inc()
        return activation_id, waiter

    async def _invoker_for(self, resolved: Resolved, memory: int) -> int:
        invoker = self._balancer.choose(resolved.namespace, resolved.name, memory)
        # Just after this controller started, or while invokers restart: wait briefly for one.
        deadline = time.monotonic() + 3.0
        while invoker is None and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
            invoker = self._balancer.choose(resolved.namespace, resolved.name, memory)
        if invoker is None:
            raise Unavailable("No invokers are available.")
        return invoker

    async def _step(self, identity: Identity, resolved: Resolved, params: dict, user_ns: str,
                    cause: str) -> tuple[str, dict]:
        """Run one step of a composition to its end: (activation id, record)."""
        if self._composite(resolved):
            activation_id = uuid.uuid4().hex
            return activation_id, await self._compose(identity, resolved, params, user_ns, activation_id, cause)
        activation_id, waiter = await self._publish(identity, resolved, params, user_ns, cause, True)
        wait_s = resolved.doc["limits"]["timeout"] / 1000 + self._cfg.controller.blocking_wait_s
        record = await self._waiters.wait(activation_id, waiter, wait_s)
        if record is None:
            stored = await self._reachable_record(activation_id)
            if stored is None:
                return activation_id, {"response": response(WHISK_ERROR, {
                    "error": "The component did not complete in time."})}
            return activation_id, stored
        return activation_id, json.loads(record.record)

    # Compositions

    def _composing(self, identity: Identity, resolved: Resolved, params: dict,
                   user_ns: str) -> tuple[str, asyncio.Task]:
        """A composition, run by this controller in a task of its own (kept until it ends): its
        activation id and the task."""
        activation_id = uuid.uuid4().hex
        task = asyncio.create_task(self._compose(identity, resolved, params, user_ns, activation_id, ""))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return activation_id, task

    async def _compose(self, identity: Identity, resolved: Resolved, params: dict, user_ns: str,
                       activation_id: str, cause: str) -> dict:
        start = _now_ms()
        self._metrics.started.labels("sequence" if resolved.kind == "sequence" else "conductor").inc()
        try:
            if resolved.kind == "sequence":
                resp, logs = await self._sequence(identity, resolved, params, user_ns, activation_id)
            else:
                resp, logs = await self._conduct(identity, resolved, params, user_ns, activation_id)
        except SquallError as exc:
            resp, logs = response(APPLICATION_ERROR, {"error": exc.message}), []
        except Exception as exc:   # never leave a composition without a record
            log.exception("composition failed", extra={"activation_id": activation_id})
            resp, logs = response(WHISK_ERROR, {"error": f"The composition failed: {exc}"}), []
        end = _now_ms()
        annotations = [
            {"key": "path", "value": resolved.path},
            {"key": "kind", "value": "sequence" if resolved.kind == "sequence" else resolved.kind},
            {"key": "limits", "value": resolved.doc.get("limits", {})},
            {"key": "waitTime", "value": 0},
        ]
        if not cause:
            annotations.append({"key": "topmost", "value": True})
        if entities.annotation(resolved.doc, "conductor") is True:
            annotations.append({"key": "conductor", "value": True})
        record = {
            "namespace": user_ns, "name": resolved.short_name, "version": resolved.doc["version"],
            "subject": identity.subject, "activationId": activation_id,
            "start": start, "end": end, "duration": end - start, "statusCode": resp["statusCode"],
            "response": {**resp, "size": len(_dumps(resp["result"]))},
            "logs": logs, "annotations": annotations, "publish": False,
        }
        if cause:
            record["cause"] = cause
        await self._store.put_activation(record)
        return record

    async def _sequence(self, identity: Identity, resolved: Resolved, params: dict, user_ns: str,
                        activation_id: str) -> tuple[dict, list[str]]:
        components = resolved.doc["exec"]["components"]
        if len(components) > SEQUENCE_LIMIT:
            return response(APPLICATION_ERROR, {"error": "Too many actions in the sequence."}), []
        logs: list[str] = []
        result = params
        for component in components:
            ns, name = entities.split_fqn(component, resolved.namespace)
            step = await self.resolve(identity, ns, name)
            step_id, record = await self._step(identity, step, {**step.defaults, **result}, user_ns, activation_id)
            logs.append(step_id)
            resp = record["response"]
            if not resp.get("success"):
                return {k: resp[k] for k in ("status", "statusCode", "success", "result")}, logs
            result = resp.get("result") or {}
        return response(SUCCESS, result), logs

    async def _conduct(self, identity: Identity, resolved: Resolved, params: dict, user_ns: str,
                       activation_id: str) -> tuple[dict, list[str]]:
        """OpenWhisk's conductor protocol: the conductor returns {action, params, state}; the
        named action runs with params; its result, with the state, goes back to the conductor;
        until the conductor names no action, whose params are then the composition's result."""
        logs: list[str] = []
        plain = _as_plain(resolved)
        value = params
        for _ in range(COMPOSITION_LIMIT):
            step_id, record = await self._step(identity, plain, value, user_ns, activation_id)
            logs.append(step_id)
            resp = record["response"]
            if not resp.get("success"):
                return {k: resp[k] for k in ("status", "statusCode", "success", "result")}, logs
            out = dict(resp.get("result") or {})
            action, state, next_params = out.pop("action", None), out.pop("state", None), out.pop("params", {})
            if not action:
                return response(SUCCESS, next_params if isinstance(next_params, dict) else out), logs
            ns, name = entities.split_fqn(action, resolved.namespace)
            component = await self.resolve(identity, ns, name)
            step_id, record = await self._step(identity, component, {**component.defaults, **(next_params or {})},
                                               user_ns, activation_id)
            logs.append(step_id)
            value = {**(record["response"].get("result") or {}), **(state if isinstance(state, dict) else {})}
        return response(APPLICATION_ERROR, {"error": "The composition exceeded its step limit."}), logs

    # Triggers

    async def fire(self, identity: Identity, namespace: str, name: str, payload: dict) -> str | None:
        """Fire a trigger: each active rule's action runs with the trigger's parameters merged
        with the payload. The trigger's activation id, or None when no rule is active (then, as
        in OpenWhisk, nothing runs and no activation is recorded)."""
        trigger = await self.cache.get(namespace, "triggers", name)
        if trigger is None:
            raise NotFound()
        self._throttles.admit_fire(namespace)
        me = entities.path_of(namespace, name)
        rules = [r for r in await self._store.list_entities(namespace, "rules") if r.get("trigger") == me]
        if not any(r.get("status") == "active" for r in rules):
            return None
        self._metrics.started.labels("trigger").inc()
        params = {**entities.parameters(trigger), **payload}
        activation_id, start = uuid.uuid4().hex, _now_ms()
        logs = [json.dumps(await self._fire_rule(identity, namespace, rule, params), separators=(",", ":"))
                for rule in rules]
        end = _now_ms()
        # Its result is the payload as fired (OpenWhisk's too), not merged with its parameters.
        await self._store.put_activation({
            "namespace": namespace, "name": name, "version": trigger["version"], "subject": identity.subject,
            "activationId": activation_id, "start": start, "end": end, "duration": 0,
            "statusCode": 0, "response": {**response(SUCCESS, payload), "size": len(_dumps(payload))},
            "logs": logs, "annotations": [{"key": "path", "value": f"{namespace}/{name}"}], "publish": False,
        })
        return activation_id

    async def _fire_rule(self, identity: Identity, namespace: str, rule: dict, params: dict) -> dict:
        """One rule of a fired trigger: its entry in the trigger's logs (an inactive rule's too,
        as OpenWhisk lists it)."""
        ref = rule["action"]
        action_path = f"{ref['path']}/{ref['name']}"
        entry = {"rule": f"{namespace}/{rule['name']}", "action": action_path}
        if rule.get("status") != "active":
            return {**entry, "statusCode": 1, "success": False,
                    "error": f"Rule '{entry['rule']}' is inactive, action '{action_path}' was not activated."}
        try:
            ns, _, package = ref["path"].partition("/")
            target = await self.resolve(identity, ns, f"{package}/{ref['name']}" if package else ref["name"])
            merged = self.merge(target, params)
            if self._composite(target):
                sub_id, _ = self._composing(identity, target, merged, namespace)
            else:
                sub_id, _ = await self._publish(identity, target, merged, namespace, "", False)
        except SquallError as exc:
            return {**entry, "statusCode": 1, "success": False, "error": exc.message}
        return {**entry, "statusCode": 0, "success": True, "activationId": sub_id}


def _as_plain(resolved: Resolved) -> Resolved:
    """The conductor action itself, run as an ordinary action (not as a composition again)."""
    annotations = [a for a in resolved.doc.get("annotations", []) if a["key"] != "conductor"]
    return Resolved(resolved.namespace, resolved.name, {**resolved.doc, "annotations": annotations},
                    resolved.defaults, resolved.path)
