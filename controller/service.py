"""The controller's gRPC services: the public Squall API and the Invokers callback.

Business rules live here: who may touch which namespace, entity validation,
activation ids, publishing to JetStream, and waiting for blocking results.
"""
from __future__ import annotations

import functools
import json
import logging
import time
import uuid
from typing import Any, Awaitable, Callable

import grpc
from nats.js import JetStreamContext

from controller import entities
from controller.auth import Authenticator, Identity
from controller.balancer import Balancer
from controller.waiters import Waiters
from proto import squall_pb2 as pb
from proto import squall_pb2_grpc as pb_grpc
from squall.bus import invoker_subject
from squall.config import SquallConfig
from squall.errors import BadRequest, Forbidden, NotFound, PayloadTooLarge, SquallError, Unavailable, Conflict
from squall.store import Store, revision

log = logging.getLogger(__name__)

Handler = Callable[..., Awaitable[Any]]


def _rpc(method: Handler) -> Handler:
    """Turn typed errors into gRPC statuses; anything else is an internal error, logged."""
    @functools.wraps(method)
    async def wrapper(self, request, context: grpc.aio.ServicerContext):
        try:
            return await method(self, request, context)
        except SquallError as exc:
            await context.abort(exc.code, exc.message)
        except grpc.aio.AbortError:
            raise
        except Exception:
            log.exception("internal error in %s", method.__name__)
            await context.abort(grpc.StatusCode.INTERNAL, "An internal error occurred.")
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
    def __init__(self, cfg: SquallConfig, store: Store, js: JetStreamContext, auth: Authenticator, waiters: Waiters):
        self._cfg = cfg
        self._store = store
        self._js = js
        self._auth = auth
        self._waiters = waiters
        self._balancer = Balancer(cfg.controller.invokers)
        self._address = f"{cfg.controller.host}:{cfg.controller.port}"

    async def _identity(self, context: grpc.aio.ServicerContext) -> Identity:
        header = dict(context.invocation_metadata()).get("authorization")
        return await self._auth.authenticate(header)

    @staticmethod
    def _namespace(identity: Identity, namespace: str) -> str:
        if namespace in ("_", ""):
            return identity.default_namespace
        if namespace not in identity.namespaces:
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

    @_rpc
    async def PutEntity(self, request, context):
        identity = await self._identity(context)
        ns = self._namespace(identity, request.ref.namespace)
        collection = self._collection(request.ref.collection)
        if collection != "actions":
            raise NotFound(f"{collection} are not supported yet.")
        name = entities.validate_name(request.ref.name, allow_package=True)
        body = _json_object(request.doc_json, "entity", self._cfg.limits.body_max_bytes)
        previous = await self._store.get_entity(ns, collection, name) if request.overwrite else None
        doc = entities.build_action(ns, name, body, previous, self._cfg.limits)
        stored = await self._store.put_entity(ns, collection, name, doc, create_only=previous is None and not request.overwrite)
        if not stored:
            raise Conflict()
        return pb.EntityReply(doc_json=_dumps(doc))

    @_rpc
    async def GetEntity(self, request, context):
        identity = await self._identity(context)
        ns = self._namespace(identity, request.namespace)
        doc = await self._store.get_entity(ns, self._collection(request.collection), request.name)
        if doc is None:
            raise NotFound()
        return pb.EntityReply(doc_json=_dumps(doc if request.code else entities.without_code(doc)))

    @_rpc
    async def DeleteEntity(self, request, context):
        identity = await self._identity(context)
        ns = self._namespace(identity, request.namespace)
        collection = self._collection(request.collection)
        doc = await self._store.get_entity(ns, collection, request.name)
        if doc is None or not await self._store.delete_entity(ns, collection, request.name):
            raise NotFound()
        return pb.EntityReply(doc_json=_dumps(entities.without_code(doc)))

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
        limit = request.limit if request.limit > 0 else 30
        return pb.ListReply(list_json=_dumps([entities.summary(d) for d in docs[skip:skip + limit]]))

    @_rpc
    async def Invoke(self, request, context):
        identity = await self._identity(context)
        ns = self._namespace(identity, request.namespace)
        name = entities.validate_name(request.name, allow_package=True)
        _json_object(request.params_json, "parameters", self._cfg.limits.payload_max_bytes)
        action = await self._store.get_entity(ns, "actions", name)
        if action is None:
            raise NotFound()
        if action["exec"]["kind"] == "sequence":
            raise BadRequest("Sequences cannot be invoked yet.")
        activation_id = uuid.uuid4().hex
        message = pb.ActivationMessage(
            activation_id=activation_id,
            transaction_id=activation_id,
            namespace=ns,
            name=name,
            revision=revision(action),
            subject=identity.subject,
            user_namespace=ns,
            params_json=request.params_json or b"{}",
            blocking=request.blocking,
            controller=self._address,
            api_key=identity.key,
            submitted_ms=int(time.time() * 1000),
        )
        waiter = self._waiters.expect(activation_id) if request.blocking else None
        invoker = self._balancer.choose(ns, name)
        try:
            # Acknowledged by JetStream (on disk) before the caller hears of the activation.
            await self._js.publish(
                invoker_subject(self._cfg.nats, invoker),
                message.SerializeToString(),
                timeout=5.0,
                headers={"Nats-Msg-Id": activation_id},
            )
        except Exception as exc:
            self._waiters.forget(activation_id)
            log.warning("publish of %s failed: %s", activation_id, exc)
            raise Unavailable() from None
        if waiter is None:
            return pb.InvokeReply(activation_id=activation_id)
        wait_s = self._cfg.controller.blocking_wait_s
        if request.wait_ms > 0:
            wait_s = min(wait_s, request.wait_ms / 1000)
        record = await self._waiters.wait(activation_id, waiter, wait_s)
        if record is None:
            # A completion may have gone missing while the record was stored: look once.
            stored = await self._store.get_activation(activation_id)
            record = _dumps(stored) if stored else None
        if record is None:
            return pb.InvokeReply(activation_id=activation_id, done=False)
        response = json.loads(record).get("response", {})
        reply = pb.InvokeReply(activation_id=activation_id, done=True, status_code=response.get("statusCode", 3))
        if request.result_only:
            reply.result_json = _dumps(response.get("result", {}))
        else:
            reply.activation_json = record
        return reply

    @_rpc
    async def GetActivation(self, request, context):
        identity = await self._identity(context)
        ns = self._namespace(identity, request.namespace)
        record = await self._store.get_activation(request.activation_id)
        if record is None or record.get("namespace") != ns:
            raise NotFound()
        return pb.ActivationReply(activation_json=_dumps(record))


class InvokersService(pb_grpc.InvokersServicer):
    def __init__(self, waiters: Waiters):
        self._waiters = waiters

    async def Complete(self, request, context):
        self._waiters.complete(request.activation_id, request.activation_json)
        return pb.CompletionAck()
