"""The controller's services: the public Squall gRPC API, and the completions invokers send.

Business rules live here: who may touch which namespace, entity validation,
activation ids, publishing to JetStream, and waiting for blocking results.
"""
from __future__ import annotations

import asyncio
import functools
import json
import logging
from typing import Any, Awaitable, Callable

import grpc
from nats.aio.client import Client as NATS
from nats.js import JetStreamContext

from controller import entities
from controller.activator import Activator
from controller.alarms import AlarmProvider
from controller.auth import Authenticator, Identity
from controller.balancer import Balancer
from controller.throttles import Throttles
from controller.web import WebActions
from controller.waiters import Completed, Waiters
from proto import squall_pb2 as pb
from proto import squall_pb2_grpc as pb_grpc
from squall.config import SquallConfig
from squall.marks import Marks
from squall.errors import (BadRequest, Conflict, Forbidden, NotFound, PayloadTooLarge, SquallError, TooManyRequests,
                           Unavailable)
from squall.metrics import ControllerMetrics
from squall.store import Store, revision

log = logging.getLogger(__name__)

Handler = Callable[..., Awaitable[Any]]


def _rpc(method: Handler) -> Handler:
    """Turn typed errors into gRPC statuses."""
    @functools.wraps(method)
    async def wrapper(self, request, context: grpc.aio.ServicerContext):
        try:
            return await method(self, request, context)
        except grpc.aio.AbortError:
            raise
        except Exception as exc:
            await context.abort(*self._status(exc, method.__name__))
    return wrapper


def _json_object(data: bytes, what: str, limit: int) -> dict:
    if len(data) > limit:
        raise PayloadTooLarge(f"The request content was too large: {what} of {len(data)} bytes exceeds the limit of {limit} bytes.")
    if not data:
        return {}
    try:
        value = json.loads(data)
    except ValueError as exc:
        raise BadRequest(f"The request content was malformed:\n{exc}") from None
    if not isinstance(value, dict):
        raise BadRequest(f"The request content was malformed:\n{what} must be a JSON object.")
    return value


def _dumps(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode()


class SquallService(pb_grpc.SquallServicer):
    def __init__(self, cfg: SquallConfig, store: Store, js: JetStreamContext, marks: Marks, auth: Authenticator,
                 waiters: Waiters, throttles: Throttles, balancer: Balancer, metrics: ControllerMetrics):
        self._metrics = metrics
        self._cfg = cfg
        self._store = store
        self._waiters = waiters
        self._auth = auth
        self._throttles = throttles
        self._balancer = balancer
        self._activator = Activator(cfg, store, js, marks, waiters, throttles, balancer,
                                    cfg.controller.address(cfg.controller.replica), metrics)
        self.alarms = AlarmProvider(store, self._activator.fire)
        self._web = WebActions(self._activator, auth, cfg.controller.blocking_wait_s, cfg.limits.payload_max_bytes)

    def _status(self, exc: Exception, method: str) -> tuple[grpc.StatusCode, str]:
        """A typed error's gRPC status; anything else is an internal error, logged."""
        if isinstance(exc, SquallError):
            if isinstance(exc, TooManyRequests):
                self._metrics.throttled.labels(method).inc()
            return exc.code, exc.message
        log.error("internal error in %s", method, exc_info=exc)
        return grpc.StatusCode.INTERNAL, "An internal error occurred."

    @staticmethod
    def _authorization(context: grpc.aio.ServicerContext) -> str | None:
        return dict(context.invocation_metadata()).get("authorization")

    async def _identity(self, context: grpc.aio.ServicerContext) -> Identity:
        return await self._auth.authenticate(self._authorization(context))

    @staticmethod
    def _namespace(identity: Identity, namespace: str, owned: bool = True) -> str:
        """The namespace meant ("_" is the caller's default); with owned, one of the caller's."""
        if namespace in ("_", ""):
            return identity.default_namespace
        if owned and namespace not in identity.namespaces:
            raise Forbidden()
        return namespace

    @staticmethod
    def _collection(collection: str) -> str:
        if collection not in entities.COLLECTIONS:
            raise NotFound()
        return collection

    @_rpc
    async def ListNamespaces(self, request, context):
        identity = await self._identity(context)
        return pb.ListReply(list_json=_dumps(list(identity.namespaces)))

    # Entities

    @_rpc
    async def PutEntity(self, request, context):
        identity = await self._identity(context)
        ns = self._namespace(identity, request.ref.namespace)
        collection = self._collection(request.ref.collection)
        name = entities.validate_name(request.ref.name, allow_package=collection == "actions")
        body = _json_object(request.doc_json, "entity", self._cfg.limits.body_max_bytes)
        previous = await self._store.get_entity(ns, collection, name)
        if previous is not None and not request.overwrite:
            raise Conflict()
        doc = await self._build(identity, ns, collection, name, body, previous)
        feed = entities.annotation(doc, "feed") if collection == "triggers" else None
        feed_params = entities.parameters(doc) if feed else {}
        if feed:
            doc["parameters"] = []   # they are the feed's, not the trigger's
        stored = await self._store.put_entity(ns, collection, name, doc, create_only=previous is None)
        self._activator.cache.invalidate(ns, collection, name)
        if not stored:
            raise Conflict()
        if feed and feed_params:
            # With its parameters, the platform tells the feed (wsk and the npm client send none
            # and call the feed themselves, as in OpenWhisk).
            error = await self._feed(identity, feed, "CREATE", ns, name, feed_params)
            if error is not None:
                await self._store.delete_entity(ns, collection, name)
                self._activator.cache.invalidate(ns, collection, name)
                raise BadRequest(f"The feed refused the trigger: {error}")
        return pb.EntityReply(doc_json=_dumps(await self._view(identity, ns, collection, doc, code=True)))

    async def _feed(self, identity: Identity, feed: str, event: str, ns: str, trigger: str,
                    params: dict) -> str | None:
        """Invoke a trigger's feed action with a lifecycle event; the error, if it failed."""
        feed_ns, feed_name = entities.split_fqn(feed, ns)
        resolved = await self._activator.resolve(identity, feed_ns, feed_name)
        body = {**params, "lifecycleEvent": event, "triggerName": f"/{ns}/{trigger}", "authKey": identity.key}
        _, record = await self._activator.invoke(identity, resolved, body, identity.default_namespace, True,
                                                 self._cfg.controller.blocking_wait_s)
        response = json.loads(record.record)["response"] if record else {"success": False, "result": {"error": "timeout"}}
        return None if response.get("success") else str(response.get("result", {}).get("error", response))

    async def _build(self, identity: Identity, ns: str, collection: str, name: str, body: dict,
                     previous: dict | None) -> dict:
        if collection == "actions":
            package = name.rpartition("/")[0]
            if package:
                pkg = await self._store.get_entity(ns, "packages", package)
                if pkg is None:
                    raise NotFound("The package of the action does not exist.")
                if pkg.get("binding"):
                    raise BadRequest("Cannot create an action in a package binding.")
            doc = entities.build_action(ns, name, body, previous, self._cfg.limits)
            if doc["exec"]["kind"] == "sequence":
                for component in doc["exec"]["components"]:
                    c_ns, c_name = entities.split_fqn(component, ns)
                    await self._activator.resolve(identity, c_ns, c_name)   # each must exist and be usable
            return doc
        if collection == "packages":
            doc = entities.build_package(ns, name, body, previous)
            if doc["binding"]:
                target = doc["binding"]
                target["namespace"] = self._namespace(identity, target["namespace"], owned=False)
                pkg = await self._store.get_entity(target["namespace"], "packages", target["name"])
                if pkg is None or pkg.get("binding"):
                    raise NotFound("The package to bind does not exist.")
                if target["namespace"] not in identity.namespaces and not pkg.get("publish"):
                    raise Forbidden()
            return doc
        if collection == "triggers":
            return entities.build_trigger(ns, name, body, previous)
        doc, (t_ns, t_name), (a_ns, a_name) = entities.build_rule(ns, name, body, previous)
        if t_ns != ns:
            raise BadRequest("A rule's trigger must be in the rule's namespace.")
        if await self._store.get_entity(t_ns, "triggers", t_name) is None:
            raise NotFound("The rule's trigger does not exist.")
        await self._activator.resolve(identity, a_ns, a_name)
        return doc

    async def _view(self, identity: Identity, ns: str, collection: str, doc: dict, code: bool) -> dict:
        """An entity as OpenWhisk returns it: packages list their actions, triggers their rules."""
        if collection == "actions":
            return entities.public(doc if code else entities.without_code(doc))
        if collection == "packages":
            source = doc.get("binding") or {"namespace": ns, "name": doc["name"]}
            actions = await self._store.list_entities(source["namespace"], "actions")
            prefix = source["name"] + "/"
            listed = [{"name": a["name"][len(prefix):], "version": a["version"], "annotations": a.get("annotations", [])}
                      for a in actions if a["name"].startswith(prefix)]
            return {**doc, "actions": listed, "feeds": []}
        if collection == "triggers":
            me = entities.path_of(ns, doc["name"])
            rules = {f"{ns}/{r['name']}": {"action": r["action"], "status": r["status"]}
                     for r in await self._store.list_entities(ns, "rules") if r.get("trigger") == me}
            return {**doc, "rules": rules}
        return doc

    async def _readable(self, identity: Identity, ns: str, collection: str, name: str) -> None:
        """Another namespace's entity may be read only if it is, or is inside, a shared package."""
        if ns in identity.namespaces:
            return
        package = name if collection == "packages" else name.rpartition("/")[0] if collection == "actions" else ""
        if package:
            pkg = await self._store.get_entity(ns, "packages", package)
            if pkg is not None and pkg.get("publish") and not pkg.get("binding"):
                return
        raise Forbidden()

    @_rpc
    async def GetEntity(self, request, context):
        identity = await self._identity(context)
        ns = self._namespace(identity, request.namespace, owned=False)
        collection = self._collection(request.collection)
        await self._readable(identity, ns, collection, request.name)
        doc = await self._store.get_entity(ns, collection, request.name)
        if doc is None:
            raise NotFound()
        return pb.EntityReply(doc_json=_dumps(await self._view(identity, ns, collection, doc, request.code)))

    @_rpc
    async def DeleteEntity(self, request, context):
        identity = await self._identity(context)
        ns = self._namespace(identity, request.namespace)
        collection = self._collection(request.collection)
        doc = await self._store.get_entity(ns, collection, request.name)
        if doc is None:
            raise NotFound()
        if collection == "packages":
            inside = [a for a in await self._store.list_entities(ns, "actions") if a["name"].startswith(request.name + "/")]
            if inside:
                raise Conflict(f"Package not empty (contains {len(inside)} {'entity' if len(inside) == 1 else 'entities'})")
        feed = entities.annotation(doc, "feed") if collection == "triggers" else None
        if feed:
            await self._feed(identity, feed, "DELETE", ns, request.name, {})   # best effort, as wsk does
        deleted = await self._store.delete_entity(ns, collection, request.name)
        self._activator.cache.invalidate(ns, collection, request.name)
        if not deleted:
            raise NotFound()
        return pb.EntityReply(doc_json=_dumps(await self._view(identity, ns, collection, doc, code=False)))

    @_rpc
    async def ListEntities(self, request, context):
        identity = await self._identity(context)
        ns = self._namespace(identity, request.namespace)
        collection = self._collection(request.collection)
        docs = await self._store.list_entities(ns, collection)
        if request.count:
            return pb.ListReply(list_json=_dumps({collection: len(docs)}))
        docs.sort(key=lambda d: d.get("updated", 0), reverse=True)   # newest first, as OpenWhisk lists
        skip = max(request.skip, 0)
        limit = min(request.limit if request.limit > 0 else 30, 200)
        return pb.ListReply(list_json=_dumps([entities.summary(d) for d in docs[skip:skip + limit]]))

    @_rpc
    async def SetRuleStatus(self, request, context):
        identity = await self._identity(context)
        ns = self._namespace(identity, request.namespace)
        if request.status not in ("active", "inactive"):
            raise BadRequest("The request content was malformed:\nstatus must be 'active' or 'inactive'")
        rule = await self._store.get_entity(ns, "rules", request.name)
        if rule is None:
            raise NotFound()
        rule = {**rule, "status": request.status, "updated": rule.get("updated", 0) + 1}
        await self._store.put_entity(ns, "rules", request.name, rule, create_only=False)
        self._activator.cache.invalidate(ns, "rules", request.name)
        return pb.EntityReply(doc_json=_dumps(rule))

    # Activations

    @_rpc
    async def Invoke(self, request, context):
        with self._metrics.hops.labels("invoke").time():
            return await self._invoke(request, self._authorization(context))

    async def InvokeStream(self, batches, context):
        """Invoke, for each call on the stream, each in a task of its own; results go back as
        they finish, those that finish while a message is being written together in the next.
        When the caller closes its side, the calls under way still finish."""
        results: list[pb.InvokeResult] = []
        ready = asyncio.Event()          # results to send, or the caller's side closed
        running: set[asyncio.Task] = set()
        reading = True

        def done(result: pb.InvokeResult) -> None:
            results.append(result)
            ready.set()

        async def one(call: pb.InvokeCall) -> None:
            try:
                with self._metrics.hops.labels("invoke").time():
                    reply = await self._invoke(call.request, call.authorization)
                done(pb.InvokeResult(id=call.id, reply=reply))
            except Exception as exc:
                code, details = self._status(exc, "Invoke")
                done(pb.InvokeResult(id=call.id, code=code.value[0], details=details))

        async def read() -> None:
            nonlocal reading
            async for batch in batches:
                for call in batch.calls:
                    task = asyncio.create_task(one(call))
                    running.add(task)
                    task.add_done_callback(running.discard)
            if running:
                await asyncio.wait(set(running))
            reading = False
            ready.set()

        reader = asyncio.create_task(read())
        try:
            while results or reading:
                await ready.wait()
                ready.clear()
                if results:
                    batch = pb.InvokeResults(results=results[:])
                    results.clear()
                    yield batch
        finally:
            reader.cancel()   # the stream is gone: calls under way finish, their results have nowhere to go

    async def _invoke(self, request: pb.InvokeRequest, authorization: str | None) -> pb.InvokeReply:
        """Invoke, for a unary call or one on the stream (each with its own credentials)."""
        identity = await self._auth.authenticate(authorization or None)
        ns = self._namespace(identity, request.namespace, owned=False)
        name = entities.validate_name(request.name, allow_package=True)
        params = _json_object(request.params_json, "parameters", self._cfg.limits.payload_max_bytes)
        resolved = await self._activator.resolve(identity, ns, name)
        wait_s = self._cfg.controller.blocking_wait_s
        if request.wait_ms > 0:
            wait_s = min(wait_s, request.wait_ms / 1000)
        activation_id, record = await self._activator.invoke(
            identity, resolved, params, identity.default_namespace if ns not in identity.namespaces else ns,
            request.blocking, wait_s, request.params_json)
        if record is None:
            return pb.InvokeReply(activation_id=activation_id, done=False)
        reply = pb.InvokeReply(activation_id=activation_id, done=True, status_code=record.status())
        if request.result_only:
            reply.result_json = record.result()
        else:
            reply.activation_json = record.record
        return reply

    @_rpc
    async def FireTrigger(self, request, context):
        identity = await self._identity(context)
        ns = self._namespace(identity, request.namespace)
        payload = _json_object(request.params_json, "parameters", self._cfg.limits.payload_max_bytes)
        activation_id = await self._activator.fire(identity, ns, entities.validate_name(request.name), payload)
        return pb.InvokeReply(activation_id=activation_id or "", done=False)

    @_rpc
    async def GetActivation(self, request, context):
        identity = await self._identity(context)
        ns = self._namespace(identity, request.namespace)
        record = await self._activator.record_of(request.activation_id)
        if record is None or record.get("namespace") != ns:
            raise NotFound()
        return pb.ActivationReply(activation_json=_dumps(record))

    @_rpc
    async def ListActivations(self, request, context):
        identity = await self._identity(context)
        ns = self._namespace(identity, request.namespace)
        skip, limit = max(request.skip, 0), min(request.limit if request.limit > 0 else 30, 200)
        if request.count:
            if request.docs:
                raise BadRequest("The parameter 'docs' is not permitted with 'count'.")
            if "/" not in request.name:
                count = await self._store.count_activations(ns, request.since, request.upto, request.name)
                return pb.ListReply(list_json=_dumps({"activations": max(count - skip, 0)}))
            # A package's action: counted from its records, read and filtered as they are listed.
        # Newest first from the namespace's partition; filters applied as it is read.
        records = await self._store.list_activations(ns, since=request.since, upto=request.upto,
                                                     limit=skip + limit if not request.name else 10_000)
        # The newest may have reached their callers before Cassandra: add those this controller saw.
        stored = {r.get("activationId") for r in records}
        fresh = [r for r in self._waiters.recent(ns) if r.get("activationId") not in stored
                 and request.since <= r.get("start", 0) <= (request.upto or 2**62)]
        if fresh:
            records = sorted(records + fresh, key=lambda r: r.get("start", 0), reverse=True)
        if request.name:
            short = request.name.rsplit("/", 1)[-1]
            records = [r for r in records if r.get("name") == short and
                       (short == request.name or _path(r).endswith("/" + request.name))]
        if request.count:
            return pb.ListReply(list_json=_dumps({"activations": len(records[skip:])}))
        records = records[skip:skip + limit]
        if not request.docs:
            records = [{k: v for k, v in r.items() if k not in ("response", "logs")}
                       | {"statusCode": r.get("response", {}).get("statusCode", r.get("statusCode"))}
                       for r in records]
        return pb.ListReply(list_json=_dumps(records))


    @_rpc
    async def ListInvokers(self, request, context):
        await self._identity(context)
        return pb.ListReply(list_json=_dumps(self._balancer.snapshot()))

    @_rpc
    async def GetLimits(self, request, context):
        identity = await self._identity(context)
        limits = self._throttles.limits(self._namespace(identity, request.namespace))
        return pb.EntityReply(doc_json=_dumps({
            "invocationsPerMinute": limits.invocations_per_minute,
            "concurrentInvocations": limits.concurrent,
            "firesPerMinute": limits.fires_per_minute,
        }))

    @_rpc
    async def WebInvoke(self, request, context):
        headers = json.loads(request.headers_json or b"{}")
        reply = await self._web.handle(
            request.namespace, request.package, request.action, request.extension, request.method,
            headers, request.path, request.query, request.body, request.content_type,
            dict(context.invocation_metadata()).get("authorization"))
        return pb.WebReply(status=reply.status, headers_json=_dumps(reply.headers), body=reply.body)


STATUS_NAMES = {0: "success", 1: "application_error", 2: "developer_error", 3: "whisk_error"}


def _path(record: dict) -> str:
    return next((a["value"] for a in record.get("annotations", []) if a["key"] == "path"), "")


class Completions:
    """The completions invokers send this controller (core NATS, on its own subject)."""

    def __init__(self, waiters: Waiters, throttles: Throttles, alarms: AlarmProvider, balancer: Balancer,
                 metrics: ControllerMetrics):
        self._metrics = metrics
        self._waiters = waiters
        self._throttles = throttles
        self._alarms = alarms
        self._balancer = balancer

    async def subscribe(self, nc: NATS, subject: str) -> None:
        await nc.subscribe(subject, cb=self._on_completion)

    async def _on_completion(self, msg) -> None:
        try:
            completion = pb.Completion.FromString(msg.data)
        except Exception:   # (protobuf's DecodeError)
            log.warning("malformed completion on %s", msg.subject)
            return
        self.complete(completion)
        if self._alarms.concerns(completion.activation_json):
            await self._alarms.apply_record(completion.activation_json)

    def complete(self, completion: pb.Completion) -> None:
        self._throttles.finished(completion.activation_id)
        status = completion.status_code
        self._balancer.completed(completion.activation_id, completion.invoker, status)
        self._metrics.completed.labels(STATUS_NAMES.get(status, "unknown")).inc()
        self._waiters.complete(completion.activation_id, Completed(
            completion.activation_json, completion.status_code, completion.result_at))
