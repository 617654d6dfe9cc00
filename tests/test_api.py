"""The walking skeleton end to end: REST edge -> gRPC -> JetStream -> invoker -> container -> Cassandra."""
from __future__ import annotations

import base64
import io
import json
import time
import zipfile

import pytest
import requests

from squall.store import Store
from tests.conftest import poll_activation

pytestmark = pytest.mark.stack

PY_HELLO = """
def main(args):
    print("hello from python", args.get("name"))
    import sys
    print("to stderr", file=sys.stderr)
    return {"greeting": "Hello, " + args.get("name", "world") + "!", "default": args.get("d")}
"""

JS_HELLO = """
function main(params) {
    console.log("hello from node", params.name);
    console.error("to stderr");
    return {greeting: "Hello, " + (params.name || "world") + "!", default: params.d};
}
"""

KINDS = {"python:3": PY_HELLO, "nodejs": JS_HELLO}


def create(api, stack, name, kind, code, **extra):
    body = {"exec": {"kind": kind, "code": code, **extra.pop("exec", {})}, **extra}
    r = api.put(stack.url(f"/namespaces/_/actions/{name}"), json=body)
    assert r.status_code == 200, r.text
    return r.json()


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_create_get_list_invoke_blocking(api, stack, unique, kind):
    doc = create(api, stack, unique, kind, KINDS[kind], parameters=[{"key": "d", "value": 42}])
    assert doc["name"] == unique and doc["namespace"] == stack.namespace and doc["version"] == "0.0.1"
    assert doc["limits"] == {"timeout": 60000, "memory": 256, "logs": 10, "concurrency": 1}

    got = api.get(stack.url(f"/namespaces/_/actions/{unique}")).json()
    assert got["exec"]["code"] == KINDS[kind]
    assert "code" not in api.get(stack.url(f"/namespaces/_/actions/{unique}?code=false")).json()["exec"]
    names = [a["name"] for a in api.get(stack.url("/namespaces/_/actions?limit=200")).json()]
    assert unique in names

    r = api.post(stack.url(f"/namespaces/_/actions/{unique}?blocking=true"), json={"name": "Squall"})
    assert r.status_code == 200, r.text
    activation = r.json()
    assert activation["response"]["success"] is True
    assert activation["response"]["result"] == {"greeting": "Hello, Squall!", "default": 42}
    assert activation["name"] == unique and activation["namespace"] == stack.namespace
    assert len(activation["activationId"]) == 32
    annotations = {a["key"]: a["value"] for a in activation["annotations"]}
    assert annotations["path"] == f"{stack.namespace}/{unique}"
    assert annotations["kind"] in (kind, "python:3", "nodejs:18")
    assert "waitTime" in annotations and "limits" in annotations
    assert annotations["initTime"] >= 0   # first invocation initializes the code
    logs = activation["logs"]
    assert any("stdout: hello from" in line for line in logs), logs
    assert any("stderr: to stderr" in line for line in logs), logs
    assert not any("XXX_THE_END_OF_A_WHISK_ACTIVATION_XXX" in line for line in logs)

    assert r.headers["x-openwhisk-activation-id"] == activation["activationId"]

    # The second invocation reuses the warm container: no init. A result alone still says its
    # activation, in OpenWhisk's header.
    r = api.post(stack.url(f"/namespaces/_/actions/{unique}?blocking=true&result=true"), json={"name": "again"})
    assert r.status_code == 200 and r.json() == {"greeting": "Hello, again!", "default": 42}
    assert poll_activation(api, stack, r.headers["x-openwhisk-activation-id"])["response"]["result"] == r.json()


def test_non_blocking_then_fetch_record_and_read_cassandra(api, stack, unique):
    create(api, stack, unique, "python:3", PY_HELLO)
    r = api.post(stack.url(f"/namespaces/_/actions/{unique}"), json={"name": "later"})
    assert r.status_code == 202, r.text
    activation_id = r.json()["activationId"]
    assert r.headers["x-openwhisk-activation-id"] == activation_id
    record = poll_activation(api, stack, activation_id)
    assert record["response"]["result"]["greeting"] == "Hello, later!"
    assert record["end"] >= record["start"] and record["duration"] == record["end"] - record["start"]

    # The record is really in Cassandra.
    import asyncio

    async def read():
        store = await Store.connect(stack.cfg.cassandra)
        try:
            return await store.get_activation(activation_id)
        finally:
            await store.close()
    stored = asyncio.run(read())
    assert stored["activationId"] == activation_id
    assert stored["response"] == record["response"]


def test_parameters_override_defaults_and_update_bumps_version(api, stack, unique):
    create(api, stack, unique, "python:3", PY_HELLO, parameters=[{"key": "d", "value": "default"}])
    r = api.post(stack.url(f"/namespaces/_/actions/{unique}?blocking=true&result=true"), json={"d": "mine"})
    assert r.json()["default"] == "mine"
    code = 'def main(args):\n    return {"v": 2}\n'
    r = api.put(stack.url(f"/namespaces/_/actions/{unique}?overwrite=true"), json={"exec": {"kind": "python:3", "code": code}})
    assert r.status_code == 200 and r.json()["version"] == "0.0.2"
    # A new revision never runs on the old container.
    r = api.post(stack.url(f"/namespaces/_/actions/{unique}?blocking=true&result=true"), json={})
    assert r.json() == {"v": 2}
    r = api.put(stack.url(f"/namespaces/_/actions/{unique}"), json={"exec": {"kind": "python:3", "code": code}})
    assert r.status_code == 409


@pytest.mark.parametrize("body", [
    b'  {\n  "a": 1,\n  "nested": {"b": [1, 2.5, null]},\n  "s": "\\u00e9t\\u00e9"\n}\n',   # as sent: passed on
    '{"a": 1, "nested": {"b": [1, 2.5, null]}, "s": "\u00e9t\u00e9"}'.encode("utf-8-sig"),    # re-encoded
    '{"a": 1, "nested": {"b": [1, 2.5, null]}, "s": "\u00e9t\u00e9"}'.encode("utf-16"),       # re-encoded
])
def test_parameters_reach_the_action_however_the_json_was_written(api, stack, unique, body):
    """Parameters without defaults to merge go to the action as the caller wrote them, not parsed
    and encoded again; JSON a proxy might not read (a byte order mark, UTF-16) is encoded again."""
    create(api, stack, unique, "python:3", "def main(args):\n    return {'got': args}\n")
    r = api.post(stack.url(f"/namespaces/_/actions/{unique}?blocking=true&result=true"), data=body,
                 headers={"Content-Type": "application/json"})
    assert r.status_code == 200, r.text
    assert r.json()["got"] == {"a": 1, "nested": {"b": [1, 2.5, None]}, "s": "\u00e9t\u00e9"}


@pytest.mark.parametrize("kind, code", [
    ("python:3", "def main(a):\n    return {'items': [{'id': i, 'name': 'item-%d' % i} for i in range(a['n'])]}\n"),
    ("nodejs", "function main(a) { return {items: Array.from({length: a.n}, (_, i) => ({id: i, name: 'item-' + i}))}; }"),
])
def test_large_results_arrive_whole_and_too_large_ones_are_refused(api, stack, unique, kind, code):
    """A result of several hundred KB reaches the caller whole (the proxy's reply arrives in many
    pieces); one over the 1 MB limit is the action developer's error, as in OpenWhisk."""
    create(api, stack, unique, kind, code)
    url = stack.url(f"/namespaces/_/actions/{unique}?blocking=true&result=true")
    r = api.post(url, json={"n": 20000})
    assert r.status_code == 200, r.text[:300]
    assert len(r.content) > 500_000 and r.json()["items"][-1] == {"id": 19999, "name": "item-19999"}
    r = api.post(url, json={"n": 60000})
    assert r.status_code == 502 and "exceeded the allowed length" in r.json()["error"], r.text[:300]


def test_delete(api, stack, unique):
    create(api, stack, unique, "nodejs", JS_HELLO)
    assert api.delete(stack.url(f"/namespaces/_/actions/{unique}")).status_code == 200
    assert api.get(stack.url(f"/namespaces/_/actions/{unique}")).status_code == 404
    assert api.delete(stack.url(f"/namespaces/_/actions/{unique}")).status_code == 404


@pytest.mark.parametrize("kind,code,error", [
    ("python:3", "def main(args):\n    raise ValueError('boom')\n", "boom"),
    ("nodejs", "function main() { throw new Error('boom'); }", "boom"),
    ("python:3", "def main(args):\n    return [1, 2]\n", "dictionary"),
    ("nodejs", "function main() { return 'text'; }", "dictionary"),
])
def test_action_failures_are_activations_not_crashes(api, stack, unique, kind, code, error):
    create(api, stack, unique, kind, code)
    r = api.post(stack.url(f"/namespaces/_/actions/{unique}?blocking=true"), json={})
    assert r.status_code == 502, r.text
    activation = r.json()
    assert activation["response"]["success"] is False
    assert activation["response"]["status"] == "action developer error"
    assert error in json.dumps(activation["response"]["result"]["error"])
    # The container keeps serving: a second call answers the same way, not a hang.
    r = api.post(stack.url(f"/namespaces/_/actions/{unique}?blocking=true&result=true"), json={})
    assert r.status_code == 502 and "error" in r.json()


def test_application_error(api, stack, unique):
    create(api, stack, unique, "python:3", "def main(args):\n    return {'error': 'nope'}\n")
    r = api.post(stack.url(f"/namespaces/_/actions/{unique}?blocking=true"), json={})
    assert r.status_code == 502
    assert r.json()["response"]["status"] == "application error"
    assert r.json()["response"]["result"] == {"error": "nope"}


def test_syntax_error_is_an_init_failure(api, stack, unique):
    create(api, stack, unique, "python:3", "def main(args:\n")
    r = api.post(stack.url(f"/namespaces/_/actions/{unique}?blocking=true"), json={})
    assert r.status_code == 502
    assert r.json()["response"]["status"] == "action developer error"


def test_zip_actions(api, stack, unique):
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("__main__.py", "from helper import value\ndef main(args):\n    return {'value': value()}\n")
        z.writestr("helper.py", "def value():\n    return 'from zip'\n")
    code = base64.b64encode(buf.getvalue()).decode()
    create(api, stack, unique, "python:3", code, exec={"binary": True})
    r = api.post(stack.url(f"/namespaces/_/actions/{unique}?blocking=true&result=true"), json={})
    assert r.status_code == 200 and r.json() == {"value": "from zip"}, r.text
    # As wsk sends a zip: no binary flag; the base64 code says it (as OpenWhisk infers).
    assert create(api, stack, unique + "-w", "python:3", code)["exec"]["binary"] is True
    r = api.post(stack.url(f"/namespaces/_/actions/{unique}-w?blocking=true&result=true"), json={})
    assert r.status_code == 200 and r.json() == {"value": "from zip"}, r.text


def test_action_sees_openwhisk_environment(api, stack, unique):
    code = ("import os\ndef main(args):\n    return {k: os.environ.get(k) for k in "
            "('__OW_ACTION_NAME', '__OW_ACTIVATION_ID', '__OW_NAMESPACE', '__OW_DEADLINE', '__OW_API_KEY')}\n")
    create(api, stack, unique, "python:3", code)
    r = api.post(stack.url(f"/namespaces/_/actions/{unique}?blocking=true"), json={})
    activation = r.json()
    env = activation["response"]["result"]
    assert env["__OW_ACTION_NAME"] == f"/{stack.namespace}/{unique}"
    assert env["__OW_ACTIVATION_ID"] == activation["activationId"]
    assert env["__OW_NAMESPACE"] == stack.namespace
    assert int(env["__OW_DEADLINE"]) > activation["start"]
    assert env["__OW_API_KEY"] == stack.auth


# Errors in OpenWhisk's shape

def _is_error(r: requests.Response, status: int) -> dict:
    assert r.status_code == status, (r.status_code, r.text)
    body = r.json()
    assert set(body) == {"error", "code"} and body["error"], body
    return body


def test_unknown_action_404(api, stack, unique):
    _is_error(api.post(stack.url(f"/namespaces/_/actions/{unique}?blocking=true"), json={}), 404)
    _is_error(api.get(stack.url(f"/namespaces/_/actions/{unique}")), 404)
    _is_error(api.get(stack.url("/namespaces/_/activations/0123456789abcdef0123456789abcdef")), 404)


def test_wrong_or_missing_key_401(stack, unique):
    url = stack.url(f"/namespaces/_/actions/{unique}")
    _is_error(requests.get(url, auth=(stack.auth.split(":")[0], "wrong")), 401)
    _is_error(requests.get(url, auth=("nobody", "nothing")), 401)
    _is_error(requests.get(url), 401)
    _is_error(requests.get(url, headers={"Authorization": "Basic !!!notbase64"}), 401)


def test_malformed_json_and_missing_exec_400(api, stack, unique):
    url = stack.url(f"/namespaces/_/actions/{unique}")
    _is_error(api.put(url, data=b"{not json", headers={"Content-Type": "application/json"}), 400)
    _is_error(api.put(url, json={"parameters": []}), 400)
    _is_error(api.put(url, json={"exec": {"kind": "cobol", "code": "x"}}), 400)
    _is_error(api.put(url, json={"exec": {"kind": "python:3", "code": "x"}, "limits": {"timeout": 1}}), 400)
    _is_error(api.put(stack.url("/namespaces/_/actions/bad%24name"), json={"exec": {"kind": "python:3", "code": "x"}}), 400)
    create(api, stack, unique, "python:3", PY_HELLO)
    _is_error(api.post(url + "?blocking=true", data=b"[1,2]", headers={"Content-Type": "application/json"}), 400)
    _is_error(api.post(url + "?blocking=true", data=b"{oops", headers={"Content-Type": "application/json"}), 400)


def test_other_namespace_forbidden(api, stack, unique):
    _is_error(api.get(stack.url(f"/namespaces/someone-else/actions/{unique}")), 403)


def test_oversized_parameters_413(api, stack, unique):
    create(api, stack, unique, "python:3", PY_HELLO)
    big = {"blob": "x" * (stack.cfg.limits.payload_max_bytes + 10)}
    _is_error(api.post(stack.url(f"/namespaces/_/actions/{unique}?blocking=true"), json=big), 413)


def test_namespaces_list(api, stack):
    assert stack.namespace in api.get(stack.url("/namespaces")).json()


def _annotations(activation: dict) -> dict:
    return {a["key"]: a["value"] for a in activation["annotations"]}


def test_record_tells_how_the_container_started(api, stack, unique):
    # 256 MB python actions find a prewarmed stem cell; then warm; then, once paused, unpaused.
    create(api, stack, unique, "python:3", PY_HELLO, limits={"memory": 256})
    url = stack.url(f"/namespaces/_/actions/{unique}?blocking=true")
    first = _annotations(api.post(url, json={}).json())
    assert first["containerStart"] in ("prewarmed", "cold") and first["initTime"] >= 0
    second = _annotations(api.post(url, json={}).json())
    assert second["containerStart"] in ("warm", "unpaused") and "initTime" not in second
    time.sleep(0.5)   # past the pause grace
    third = _annotations(api.post(url, json={}).json())
    assert third["containerStart"] == "unpaused" and "initTime" not in third
    # A memory size without stem cells starts cold.
    create(api, stack, unique + "-b", "python:3", PY_HELLO, limits={"memory": 320})
    cold = _annotations(api.post(stack.url(f"/namespaces/_/actions/{unique}-b?blocking=true"), json={}).json())
    assert cold["containerStart"] == "cold" and cold["initTime"] >= 0


def test_blackbox_action_runs_a_local_image(api, stack, unique):
    body = {"exec": {"kind": "blackbox", "image": "squall/action-python-v3.11:latest",
                     "code": 'def main(args):\n    return {"blackbox": args}\n'}}
    assert api.put(stack.url(f"/namespaces/_/actions/{unique}"), json=body).status_code == 200
    r = api.post(stack.url(f"/namespaces/_/actions/{unique}?blocking=true&result=true"), json={"x": 1})
    assert r.status_code == 200 and r.json() == {"blackbox": {"x": 1}}
    # An image that is not there is the developer's error, reported, not a platform failure.
    body = {"exec": {"kind": "blackbox", "image": "squall/no-such-image:1"}}
    assert api.put(stack.url(f"/namespaces/_/actions/{unique}-missing"), json=body).status_code == 200
    r = api.post(stack.url(f"/namespaces/_/actions/{unique}-missing?blocking=true"), json={})
    assert r.status_code == 502
    assert r.json()["response"]["status"] == "action developer error"
    assert r.json()["response"]["result"] == {"error": "Failed to pull container image 'squall/no-such-image:1'."}


async def test_openapi_document_describes_every_route(stack):
    import grpc
    from edge.app import build_app, routes
    from edge.openapi import expand
    from squall.config import SquallConfig
    doc = requests.get(f"{stack.apihost}/api/v1/api-docs").json()
    assert doc["openapi"].startswith("3.")
    # The edge serves exactly the routes of its table (aiohttp adds HEAD for each GET) ...
    app = build_app(SquallConfig(), channel=grpc.aio.insecure_channel("127.0.0.1:1"))
    served = [r for r in app.router.routes() if r.method != "HEAD"]
    assert len(served) == len(routes())
    # ... and the document describes every one of them.
    for method, pattern, _, _ in routes():
        for path in expand(pattern):
            if path.endswith("/") and path != "/":
                continue
            for m in (("get", "post", "put", "delete") if method == "*" else (method.lower(),)):
                assert m in doc["paths"].get(path, {}), f"{m.upper()} {path} is not documented"


def test_blocking_wait_that_runs_out_answers_the_activation_id(api, stack, unique):
    create(api, stack, unique, "python:3", "import time\ndef main(args):\n    time.sleep(2)\n    return {'slow': True}\n")
    r = api.post(stack.url(f"/namespaces/_/actions/{unique}?blocking=true&timeout=300"), json={})
    assert r.status_code == 202 and set(r.json()) == {"activationId"}
    record = poll_activation(api, stack, r.json()["activationId"])
    assert record["response"]["result"] == {"slow": True}


def test_namespace_limits_are_readable(api, stack):
    limits = api.get(stack.url("/namespaces/_/limits")).json()
    assert set(limits) == {"invocationsPerMinute", "concurrentInvocations", "firesPerMinute"}


def test_every_process_serves_prometheus_metrics(api, stack, unique):
    create(api, stack, unique, "python:3", PY_HELLO)
    assert api.post(stack.url(f"/namespaces/_/actions/{unique}?blocking=true"), json={}).status_code == 200
    cfg = stack.cfg

    def scrape(host: str, port: int) -> str:
        r = requests.get(f"http://{host}:{port}/metrics", timeout=5)
        assert r.status_code == 200
        return r.text
    edge = "".join(scrape(*cfg.edge.metrics_endpoint(w)) for w in range(cfg.edge.workers))
    assert 'squall_edge_requests_total{method="POST",route="/api/v1/namespaces/{ns}/actions/{name}",status="200"}' in edge
    controller = scrape(*cfg.controller.metrics_endpoint(0))
    assert 'squall_activations_completed_total{status="success"}' in controller
    assert "squall_invoker_healthy" in controller
    invokers = [scrape(*cfg.invoker.metrics_endpoint(i["id"])) for i in api.get(stack.url("/invokers")).json()
                if i["status"] == "healthy"]
    assert any("squall_container_starts_total" in text for text in invokers)
    assert all("squall_record_write_seconds_bucket" in text and "squall_pool_used_mb" in text for text in invokers)


def test_memory_reserved_for_invocations_is_released_when_they_complete(api, stack, unique):
    """The controller counts what it sent each invoker until it completes; completions come fast
    (core NATS) and may beat the publish's acknowledgement, and must still be counted out."""
    import concurrent.futures
    create(api, stack, unique, "python:3", "def main(args):\n    return {}\n")

    def invoke(_):
        return api.post(stack.url(f"/namespaces/_/actions/{unique}?blocking=true"), json={}).status_code
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        assert set(pool.map(invoke, range(40))) == {200}
    reserved = [i["reservedMB"] for i in api.get(stack.url("/invokers")).json()]
    assert reserved == [0] * len(reserved), reserved
