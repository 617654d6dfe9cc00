"""A small typed client of Squall's public gRPC API (proto/squall.proto, service Squall).

    async with SquallClient.from_wskprops() as squall:
        await squall.put("actions", "hello", {"exec": {"kind": "python:3", "code": CODE}})
        activation = await squall.invoke("hello", {"name": "you"})
        print(activation["response"]["result"])

Entities, parameters and records are OpenWhisk's JSON documents (dicts); failures raise
SquallClientError with the gRPC status (NOT_FOUND, UNAUTHENTICATED, RESOURCE_EXHAUSTED, ...)
and OpenWhisk's message.
"""
from __future__ import annotations

import base64
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

from proto import squall_pb2 as pb
from proto import squall_pb2_grpc as pb_grpc
from squall import wskprops
from squall.process import GRPC_OPTIONS


class SquallClientError(Exception):
    def __init__(self, code: grpc.StatusCode, message: str):
        super().__init__(f"{code.name}: {message}")
        self.code = code
        self.message = message


@dataclass(frozen=True)
class Invocation:
    activation_id: str
    done: bool                      # False: still running when the wait ended
    activation: dict | None = None  # the record, when done


def _dumps(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode()


class SquallClient:
    def __init__(self, target: str, auth: str, namespace: str = "_"):
        self._channel = grpc.aio.insecure_channel(target, options=GRPC_OPTIONS)
        self._stub = pb_grpc.SquallStub(self._channel)
        self._meta = (("authorization", "Basic " + base64.b64encode(auth.encode()).decode()),)
        self.namespace = namespace

    @classmethod
    def from_wskprops(cls, path: str | Path | None = None) -> "SquallClient":
        """From a wskprops file (default: WSK_CONFIG_FILE, else .squall/wskprops)."""
        props = wskprops.read(path)
        return cls(props["GRPCHOST"], props["AUTH"])

    async def __aenter__(self) -> "SquallClient":
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()

    async def close(self) -> None:
        await self._channel.close()

    async def _call(self, method: str, request):
        try:
            return await getattr(self._stub, method)(request, metadata=self._meta)
        except grpc.aio.AioRpcError as exc:
            raise SquallClientError(exc.code(), exc.details() or "") from None

    # Entities: collection is "actions", "packages", "triggers" or "rules".

    async def put(self, collection: str, name: str, doc: dict, overwrite: bool = False) -> dict:
        ref = pb.EntityRef(namespace=self.namespace, collection=collection, name=name)
        reply = await self._call("PutEntity", pb.PutEntityRequest(ref=ref, doc_json=_dumps(doc), overwrite=overwrite))
        return json.loads(reply.doc_json)

    async def get(self, collection: str, name: str, code: bool = True) -> dict:
        ref = pb.EntityRef(namespace=self.namespace, collection=collection, name=name, code=code)
        return json.loads((await self._call("GetEntity", ref)).doc_json)

    async def delete(self, collection: str, name: str) -> dict:
        ref = pb.EntityRef(namespace=self.namespace, collection=collection, name=name)
        return json.loads((await self._call("DeleteEntity", ref)).doc_json)

    async def list(self, collection: str, limit: int = 30, skip: int = 0) -> list[dict]:
        reply = await self._call("ListEntities", pb.ListEntitiesRequest(
            namespace=self.namespace, collection=collection, limit=limit, skip=skip))
        return json.loads(reply.list_json)

    async def invokers(self) -> list[dict]:
        return json.loads((await self._call("ListInvokers", pb.ListInvokersRequest())).list_json)

    async def namespaces(self) -> list[str]:
        return json.loads((await self._call("ListNamespaces", pb.ListNamespacesRequest())).list_json)

    # Activations

    async def invoke(self, name: str, params: dict | None = None, wait_s: float = 60) -> dict:
        """Invoke and wait: the activation record; raises TimeoutError if it outlasts wait_s."""
        invocation = await self.start(name, params, blocking=True, wait_s=wait_s)
        if not invocation.done:
            raise TimeoutError(f"activation {invocation.activation_id} still running")
        return invocation.activation

    async def start(self, name: str, params: dict | None = None, blocking: bool = False,
                    wait_s: float = 60) -> Invocation:
        reply = await self._call("Invoke", pb.InvokeRequest(
            namespace=self.namespace, name=name, params_json=_dumps(params or {}), blocking=blocking,
            wait_ms=int(wait_s * 1000)))
        return Invocation(reply.activation_id, reply.done,
                          json.loads(reply.activation_json) if reply.done else None)

    async def fire(self, trigger: str, params: dict | None = None) -> str | None:
        """The trigger's activation id; None if it has no active rule (nothing ran)."""
        reply = await self._call("FireTrigger", pb.FireRequest(
            namespace=self.namespace, name=trigger, params_json=_dumps(params or {})))
        return reply.activation_id or None

    async def activation(self, activation_id: str) -> dict:
        reply = await self._call("GetActivation", pb.ActivationRef(namespace=self.namespace, activation_id=activation_id))
        return json.loads(reply.activation_json)

    async def activations(self, name: str = "", limit: int = 30, skip: int = 0, docs: bool = False,
                          since: int = 0, upto: int = 0) -> list[dict]:
        reply = await self._call("ListActivations", pb.ListActivationsRequest(
            namespace=self.namespace, name=name, limit=limit, skip=skip, docs=docs, since=since, upto=upto))
        return json.loads(reply.list_json)
