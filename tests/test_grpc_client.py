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
    assert await client.fire(unique, {"x": 1}) is None   # no active rule: nothing ran
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


async def test_throttles_answer_resource_exhausted_before_queueing(stack, unique):
    """A second controller with small limits for the guest namespace, beside the stack's."""
    import asyncio
    import os
    import socket
    import subprocess
    import sys

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    from squall.stack import prepare
    configured, _ = prepare()        # the stack's settings, with its generated credentials
    env = {**os.environ, **configured.env(), "SQUALL_CONTROLLER_PORT": str(port), "SQUALL_CONTROLLER_ALARMS": "false",
           "SQUALL_CONTROLLER_METRICS_PORT": "0",
           "SQUALL_LIMITS_NAMESPACE_OVERRIDES": f"{stack.namespace}=3/100/1"}
    proc = subprocess.Popen([sys.executable, "-m", "controller"], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    client = SquallClient(f"{configured.controller.host}:{port}", stack.auth)
    try:
        for _ in range(100):
            try:
                limits = await client.namespaces()
                break
            except SquallClientError:
                await asyncio.sleep(0.1)
        assert limits == [stack.namespace]
        await client.put("actions", unique, {"exec": {"kind": "python:3", "code": CODE}})
        await client.put("triggers", unique, {})
        for _ in range(3):
            await client.start(unique)
        with pytest.raises(SquallClientError) as throttled:
            await client.start(unique)
        assert throttled.value.code is grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "Too many requests in the last minute (count: 4, allowed: 3)" in throttled.value.message
        await client.fire(unique)
        with pytest.raises(SquallClientError) as fires:
            await client.fire(unique)
        assert fires.value.code is grpc.StatusCode.RESOURCE_EXHAUSTED
    finally:
        await client.close()
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
