"""The public gRPC API through the typed Python client (squall/client.py), on the real stack."""
from __future__ import annotations

import grpc
import pytest

from squall.client import SquallClient, SquallClientError

pytestmark = pytest.mark.stack

CODE = "def main(args):\n    return {'hello': args.get('name', 'world')}\n"


@pytest.fixture()
async def client(stack):
    c = SquallClient(f"{stack.cfg.controller.host}:{stack.cfg.controller.port}", stack.auth)
    yield c
    await c.close()


async def test_the_same_operations_over_grpc(client, stack, unique):
    doc = await client.put("actions", unique, {"exec": {"kind": "python:3", "code": CODE}})
    assert doc["version"] == "0.0.1"
    assert unique in [a["name"] for a in await client.list("actions", limit=200)]
    activation = await client.invoke(unique, {"name": "grpc"})
    assert activation["response"]["result"] == {"hello": "grpc"}
    assert (await client.activation(activation["activationId"]))["activationId"] == activation["activationId"]
    started = await client.start(unique)
    assert not started.done and len(started.activation_id) == 32
    await client.put("triggers", unique, {})
    assert len(await client.fire(unique, {"x": 1})) == 32
    assert await client.namespaces() == [stack.namespace]
    await client.delete("actions", unique)


async def test_errors_arrive_as_grpc_status_codes(client, stack, unique):
    with pytest.raises(SquallClientError) as missing:
        await client.invoke(f"{unique}-nope")
    assert missing.value.code is grpc.StatusCode.NOT_FOUND
    with pytest.raises(SquallClientError) as bad:
        await client.put("actions", unique, {"exec": {"kind": "cobol"}})
    assert bad.value.code is grpc.StatusCode.INVALID_ARGUMENT and "kind" in bad.value.message
    stranger = SquallClient(f"{stack.cfg.controller.host}:{stack.cfg.controller.port}", "nobody:wrong")
    with pytest.raises(SquallClientError) as denied:
        await stranger.namespaces()
    assert denied.value.code is grpc.StatusCode.UNAUTHENTICATED
    await stranger.close()
