"""OpenWhisk's programming model over the REST API, on the real stack: packages and bindings,
parameter merging and final parameters, triggers and rules, sequences, conductor compositions,
activation listing."""
from __future__ import annotations

import asyncio
import json
import time
import uuid

import pytest
import requests

from controller.auth import make_subject, new_credentials
from squall.store import Store
from tests.conftest import poll_activation

pytestmark = pytest.mark.stack

ECHO = "def main(args):\n    return args\n"
INCREMENT = "def main(args):\n    return {'n': args.get('n', 0) + 1}\n"
FAIL = "def main(args):\n    return {'error': 'stop here'}\n"


@pytest.fixture(scope="module")
def other(stack):
    """A second subject with its own namespace, created in the store as an admin would."""
    uuid_, key = new_credentials()
    namespace = f"other-{uuid.uuid4().hex[:8]}"

    async def create():
        store = await Store.connect(stack.cfg.cassandra)
        try:
            await store.put_subject(make_subject(namespace, (namespace,), f"{uuid_}:{key}"))
        finally:
            await store.close()
    asyncio.run(create())
    s = requests.Session()
    s.auth = (uuid_, key)
    return s, namespace


def put(api, stack, path, body, ns="_", status=200):
    r = api.put(stack.url(f"/namespaces/{ns}/{path}"), json=body)
    assert r.status_code == status, r.text
    return r.json()


def invoke(api, stack, name, params=None, ns="_"):
    r = api.post(stack.url(f"/namespaces/{ns}/actions/{name}?blocking=true"), json=params or {})
    return r.status_code, r.json()


def action(code=ECHO, **extra):
    return {"exec": {"kind": "python:3", "code": code}, **extra}


def kv(**values):
    return [{"key": k, "value": v} for k, v in values.items()]


def test_packages_hold_actions_and_merge_parameters(api, stack, unique):
    put(api, stack, f"packages/{unique}", {"parameters": kv(a="package", b="package", c="package")})
    put(api, stack, f"actions/{unique}/echo", action(parameters=kv(b="action", c="action")))
    status, activation = invoke(api, stack, f"{unique}/echo", {"c": "invoke"})
    assert status == 200, activation
    assert activation["response"]["result"] == {"a": "package", "b": "action", "c": "invoke"}
    annotations = {a["key"]: a["value"] for a in activation["annotations"]}
    assert annotations["path"] == f"{stack.namespace}/{unique}/echo" and activation["name"] == "echo"

    package = api.get(stack.url(f"/namespaces/_/packages/{unique}")).json()
    assert [a["name"] for a in package["actions"]] == ["echo"]
    r = api.delete(stack.url(f"/namespaces/_/packages/{unique}"))
    assert r.status_code == 409 and "not empty" in r.json()["error"]
    assert api.delete(stack.url(f"/namespaces/_/actions/{unique}/echo")).status_code == 200
    assert api.delete(stack.url(f"/namespaces/_/packages/{unique}")).status_code == 200
    # An action cannot go into a package that does not exist.
    assert api.put(stack.url(f"/namespaces/_/actions/{unique}/echo"), json=action()).status_code == 404


def test_shared_packages_are_used_through_bindings(api, stack, unique, other):
    other_api, other_ns = other
    put(api, stack, f"packages/{unique}", {"publish": True, "parameters": kv(greeting="hello", who="package")})
    put(api, stack, f"actions/{unique}/echo", action(parameters=kv(who="action")))
    put(api, stack, f"packages/{unique}-private", {})
    # The other namespace binds the shared package, with parameters of its own.
    binding = put(other_api, stack, f"packages/my-{unique}",
                  {"binding": {"namespace": stack.namespace, "name": unique}, "parameters": kv(greeting="bonjour")},
                  ns=other_ns)
    assert binding["binding"] == {"namespace": stack.namespace, "name": unique}
    status, activation = invoke(other_api, stack, f"my-{unique}/echo", {"extra": 1}, ns=other_ns)
    assert status == 200, activation
    assert activation["response"]["result"] == {"greeting": "bonjour", "who": "action", "extra": 1}
    assert activation["namespace"] == other_ns
    # Shared: readable from the other namespace; private: not, nor bindable.
    assert other_api.get(stack.url(f"/namespaces/{stack.namespace}/packages/{unique}")).status_code == 200
    assert other_api.get(stack.url(f"/namespaces/{stack.namespace}/packages/{unique}-private")).status_code == 403
    r = other_api.put(stack.url(f"/namespaces/{other_ns}/packages/bad-{unique}"),
                      json={"binding": {"namespace": stack.namespace, "name": f"{unique}-private"}})
    assert r.status_code == 403
    # And the other namespace's own entities stay its own.
    assert api.get(stack.url(f"/namespaces/{other_ns}/packages/my-{unique}")).status_code == 403
    assert other_api.get(stack.url(f"/namespaces/{stack.namespace}/actions")).status_code == 403


def test_final_parameters_cannot_be_overridden(api, stack, unique):
    put(api, stack, f"actions/{unique}", action(parameters=kv(fixed=1), annotations=kv(final=True)))
    status, body = invoke(api, stack, unique, {"fixed": 2})
    assert status == 400 and "not allowed" in body["error"]
    status, body = invoke(api, stack, unique, {"other": 2})
    assert status == 200 and body["response"]["result"] == {"fixed": 1, "other": 2}


def test_triggers_fire_active_rules_with_merged_parameters(api, stack, unique):
    put(api, stack, f"actions/{unique}-a", action())
    trigger = put(api, stack, f"triggers/{unique}", {"parameters": kv(source="trigger", level="low")})
    assert trigger["name"] == unique
    # With the empty status wsk sends on every rule PUT (read as none given).
    rule = put(api, stack, f"rules/{unique}-r", {"trigger": f"/_/{unique}", "action": f"/_/{unique}-a", "status": ""})
    assert rule["status"] == "active"
    assert rule["trigger"] == {"path": stack.namespace, "name": unique}
    got = api.get(stack.url(f"/namespaces/_/triggers/{unique}")).json()
    assert got["rules"] == {f"{stack.namespace}/{unique}-r": {"action": {"path": stack.namespace, "name": f"{unique}-a"},
                                                            "status": "active"}}

    # A second rule, disabled: listed in the trigger's activation as not run (as OpenWhisk does).
    put(api, stack, f"rules/{unique}-off", {"trigger": f"/_/{unique}", "action": f"/_/{unique}-a", "status": "inactive"})
    r = api.post(stack.url(f"/namespaces/_/triggers/{unique}"), json={"level": "high"})
    assert r.status_code == 202, r.text
    assert r.headers["x-openwhisk-activation-id"] == r.json()["activationId"]
    fired = poll_activation(api, stack, r.json()["activationId"])
    assert fired["response"]["result"] == {"level": "high"}   # the payload as fired
    entries = {e["rule"]: e for e in (json.loads(line) for line in fired["logs"])}
    entry, off = entries[f"{stack.namespace}/{unique}-r"], entries[f"{stack.namespace}/{unique}-off"]
    assert entry["success"] is True
    assert off["success"] is False and "activationId" not in off
    assert off["error"] == f"Rule '{stack.namespace}/{unique}-off' is inactive, action '{stack.namespace}/{unique}-a' was not activated."
    ran = poll_activation(api, stack, entry["activationId"])
    assert ran["response"]["result"] == {"source": "trigger", "level": "high"}

    # With no active rule, firing runs nothing and records nothing: 204, as in OpenWhisk.
    r = api.post(stack.url(f"/namespaces/_/rules/{unique}-r"), json={"status": "inactive"})
    assert r.status_code == 200 and r.json()["status"] == "inactive"
    r = api.post(stack.url(f"/namespaces/_/triggers/{unique}"), json={})
    assert r.status_code == 204 and r.content == b""
    assert api.post(stack.url(f"/namespaces/_/rules/{unique}-r"), json={"status": "sideways"}).status_code == 400
    assert api.post(stack.url(f"/namespaces/_/triggers/{unique}-missing"), json={}).status_code == 404
    r = api.put(stack.url(f"/namespaces/_/rules/{unique}-bad"), json={"trigger": f"/_/{unique}", "action": "/_/nope"})
    assert r.status_code == 404


def test_sequences_chain_results_and_stop_at_the_first_error(api, stack, unique):
    put(api, stack, f"actions/{unique}-inc", action(INCREMENT))
    put(api, stack, f"actions/{unique}-fail", action(FAIL))
    inc = f"/{stack.namespace}/{unique}-inc"
    put(api, stack, f"actions/{unique}", {"exec": {"kind": "sequence", "components": [inc, inc, inc]}})
    status, activation = invoke(api, stack, unique, {"n": 10})
    assert status == 200, activation
    assert activation["response"]["result"] == {"n": 13}
    assert len(activation["logs"]) == 3
    annotations = {a["key"]: a["value"] for a in activation["annotations"]}
    assert annotations["topmost"] is True and annotations["kind"] == "sequence"
    component = poll_activation(api, stack, activation["logs"][0])
    assert component["cause"] == activation["activationId"]
    assert {"key": "causedBy", "value": "sequence"} in component["annotations"]

    fail = f"/{stack.namespace}/{unique}-fail"
    put(api, stack, f"actions/{unique}-2", {"exec": {"kind": "sequence", "components": [inc, fail, inc]}})
    status, activation = invoke(api, stack, f"{unique}-2", {"n": 1})
    assert status == 502 and activation["response"]["result"] == {"error": "stop here"}
    assert len(activation["logs"]) == 2
    # Components must exist when the sequence is created.
    r = api.put(stack.url(f"/namespaces/_/actions/{unique}-3"),
                json={"exec": {"kind": "sequence", "components": [f"/{stack.namespace}/nope"]}})
    assert r.status_code == 404


CONDUCTOR = """
def main(args):
    step = args.get('$step', 0)
    if step == 0:
        return {'action': '%s', 'params': {'n': args['n']}, 'state': {'$step': 1}}
    if step == 1:
        return {'action': '%s', 'params': {'n': args['n']}, 'state': {'$step': 2}}
    return {'params': {'done': args['n']}}
"""


def test_conductor_actions_drive_compositions(api, stack, unique):
    put(api, stack, f"actions/{unique}-inc", action(INCREMENT))
    inc = f"/{stack.namespace}/{unique}-inc"
    put(api, stack, f"actions/{unique}", action(CONDUCTOR % (inc, inc), annotations=kv(conductor=True)))
    status, activation = invoke(api, stack, unique, {"n": 5})
    assert status == 200, activation
    assert activation["response"]["result"] == {"done": 7}
    assert len(activation["logs"]) == 5        # conductor, inc, conductor, inc, conductor


def test_activations_are_listed_filtered_and_read_in_parts(api, stack, unique):
    put(api, stack, f"actions/{unique}", action("def main(args):\n    print('log line')\n    return {'ok': True}\n"))
    since = int(time.time() * 1000) - 1000
    ids = [invoke(api, stack, unique)[1]["activationId"] for _ in range(3)]
    listed = api.get(stack.url(f"/namespaces/_/activations?name={unique}&since={since}&limit=2")).json()
    assert [a["activationId"] for a in listed] == ids[::-1][:2]       # newest first
    assert "response" not in listed[0] and listed[0]["statusCode"] == 0
    docs = api.get(stack.url(f"/namespaces/_/activations?name={unique}&docs=true&skip=1")).json()
    assert [a["activationId"] for a in docs] == ids[::-1][1:] and docs[0]["response"]["success"]
    count = api.get(stack.url(f"/namespaces/_/activations?name={unique}&count=true&skip=1"))
    assert count.json() == {"activations": 2}, count.text
    assert api.get(stack.url(f"/namespaces/_/activations?count=true&since={since}")).json()["activations"] >= 3
    put(api, stack, f"packages/{unique}", {})
    put(api, stack, f"actions/{unique}/inner", action("def main(args):\n    return {}\n"))
    invoke(api, stack, f"{unique}/inner")
    assert api.get(stack.url(f"/namespaces/_/activations?name={unique}/inner&count=true")).json() == {"activations": 1}
    r = api.get(stack.url(f"/namespaces/_/activations?count=true&docs=true"))
    assert r.status_code == 400 and r.json()["error"] == "The parameter 'docs' is not permitted with 'count'."
    result = api.get(stack.url(f"/namespaces/_/activations/{ids[0]}/result")).json()
    assert result["result"] == {"ok": True} and result["success"] is True
    logs = api.get(stack.url(f"/namespaces/_/activations/{ids[0]}/logs")).json()["logs"]
    assert len(logs) == 1 and logs[0].endswith("stdout: log line")
    assert api.get(stack.url("/namespaces/_/activations/0123456789abcdef0123456789abcdef/logs")).status_code == 404


WEB = """
import base64
def main(args):
    kind = args.get('kind', 'json')
    if kind == 'http':
        return {'statusCode': 201, 'headers': {'X-Squall': 'yes', 'Content-Type': 'application/json'},
                'body': {'method': args['__ow_method'], 'path': args['__ow_path'], 'q': args.get('q')}}
    if kind == 'png':
        return {'headers': {'Content-Type': 'image/png'}, 'body': base64.b64encode(b'\\x89PNG').decode()}
    if kind == 'fail':
        return {'error': 'bad input'}
    return {'html': '<b>hi</b>', 'text': 'hi', 'got': {k: v for k, v in args.items() if not k.startswith('__ow_')},
            'method': args['__ow_method'], 'agent': args['__ow_headers'].get('user-agent')}
"""


def test_web_actions_answer_plain_http(api, stack, unique):
    put(api, stack, f"packages/{unique}", {})
    put(api, stack, f"actions/{unique}/web", action(WEB, annotations=kv(**{"web-export": True})))
    put(api, stack, f"actions/{unique}-hidden", action(WEB))
    base = f"{stack.apihost}/api/v1/web/{stack.namespace}/{unique}/web"
    plain = requests.Session()                                     # no credentials
    r = plain.post(base + ".json?x=1", json={"y": 2}, headers={"User-Agent": "squall-test"})
    assert r.status_code == 200 and r.headers["Access-Control-Allow-Origin"] == "*"
    assert poll_activation(api, stack, r.headers["x-openwhisk-activation-id"])["name"] == "web"
    assert r.json()["got"] == {"x": "1", "y": 2} and r.json()["method"] == "post" and r.json()["agent"] == "squall-test"
    assert plain.get(base + ".html").text == "<b>hi</b>"
    assert plain.get(base + ".text").headers["Content-Type"].startswith("text/plain")
    r = plain.get(base + ".http/some/path?kind=http&q=v")
    assert r.status_code == 201 and r.headers["X-Squall"] == "yes"
    assert r.json() == {"method": "get", "path": "/some/path", "q": "v"}
    r = plain.get(base + "?kind=png")                                # no extension: .http
    assert r.headers["Content-Type"] == "image/png" and r.content == b"\x89PNG"
    assert plain.get(base + ".json?kind=fail").status_code == 400
    assert plain.options(base + ".json").status_code == 200
    # Not exported, or not there: 404, as OpenWhisk answers.
    assert plain.get(f"{stack.apihost}/api/v1/web/{stack.namespace}/default/{unique}-hidden.json").status_code == 404
    assert plain.get(f"{stack.apihost}/api/v1/web/{stack.namespace}/default/nope.json").status_code == 404


def test_web_actions_can_require_authentication(api, stack, unique):
    put(api, stack, f"actions/{unique}-key", action(WEB, annotations=kv(**{"web-export": True, "require-whisk-auth": True})))
    put(api, stack, f"actions/{unique}-secret", action(WEB, annotations=kv(**{"web-export": True, "require-whisk-auth": "s3cret"})))
    base = f"{stack.apihost}/api/v1/web/{stack.namespace}/default/{unique}"
    assert requests.get(base + "-key.json").status_code == 401
    assert api.get(base + "-key.json").status_code == 200
    assert requests.get(base + "-secret.json").status_code == 401
    assert requests.get(base + "-secret.json", headers={"X-Require-Whisk-Auth": "s3cret"}).status_code == 200


def test_admin_command_creates_subjects_with_several_namespaces_and_rotates_keys(stack, unique):
    import subprocess
    import sys

    def admin(*args):
        out = subprocess.run([sys.executable, "-m", "squall", "admin", *args], capture_output=True, text=True)
        assert out.returncode == 0, out.stderr
        return out.stdout.strip()
    key = admin("subject", "create", unique, "--namespace", f"{unique}-a", "--namespace", f"{unique}-b")
    s = requests.Session()
    s.auth = tuple(key.split(":", 1))
    assert s.get(stack.url("/namespaces")).json() == [f"{unique}-a", f"{unique}-b"]
    assert f"{unique}\t{unique}-a,{unique}-b" in admin("subject", "list")
    admin("namespace", "add", unique, f"{unique}-c")
    rotated = admin("subject", "rotate", unique)
    assert rotated.split(":")[0] == key.split(":")[0] and rotated != key
    s.auth = tuple(rotated.split(":", 1))
    assert s.get(stack.url("/namespaces")).json() == [f"{unique}-a", f"{unique}-b", f"{unique}-c"]
    # Each namespace of the subject is its own: "_" is the first one.
    r = s.put(stack.url(f"/namespaces/{unique}-b/actions/x"), json=action())
    assert r.status_code == 200 and r.json()["namespace"] == f"{unique}-b"
    admin("subject", "delete", unique)


def test_alarm_feed_fires_a_trigger_on_an_interval(api, stack, unique):
    put(api, stack, f"actions/{unique}-a", action())
    # With its feed parameters, creating the trigger tells the feed (lifecycleEvent CREATE).
    put(api, stack, f"triggers/{unique}", {"annotations": kv(feed="/whisk.system/alarms/interval"),
                                           "parameters": kv(seconds=1, trigger_payload={"tick": True})})
    put(api, stack, f"rules/{unique}-r", {"trigger": f"/_/{unique}", "action": f"/_/{unique}-a"})
    fired = []
    for _ in range(60):
        listed = api.get(stack.url(f"/namespaces/_/activations?name={unique}-a&docs=true")).json()
        fired = [a["response"]["result"] for a in listed]
        if len(fired) >= 2:
            break
        time.sleep(0.5)
    assert len(fired) >= 2 and fired[0]["tick"] is True and "alarmTime" in fired[0]
    # Deleting the trigger tells the feed (DELETE): no more alarms.
    assert api.delete(stack.url(f"/namespaces/_/triggers/{unique}")).status_code == 200
    time.sleep(1.5)
    count = len(api.get(stack.url(f"/namespaces/_/activations?name={unique}-a")).json())
    time.sleep(2.5)
    assert len(api.get(stack.url(f"/namespaces/_/activations?name={unique}-a")).json()) == count


def test_feed_actions_are_invoked_with_lifecycle_events_and_validate(api, stack, unique):
    put(api, stack, f"triggers/{unique}", {"annotations": kv(feed="/whisk.system/alarms/alarm")})
    feed = "/namespaces/whisk.system/actions/alarms/alarm?blocking=true"
    r = api.post(stack.url(feed), json={"lifecycleEvent": "CREATE", "triggerName": f"/{stack.namespace}/{unique}",
                                        "cron": "not a cron"})
    assert r.status_code == 502 and "five fields" in r.json()["response"]["result"]["error"]
    r = api.post(stack.url(feed), json={"lifecycleEvent": "CREATE", "triggerName": f"/{stack.namespace}/{unique}",
                                        "cron": "*/5 * * * *"})
    assert r.status_code == 200 and r.json()["response"]["result"]["alarm"]["cron"] == "*/5 * * * *"
    for event in ("PAUSE", "UNPAUSE", "READ", "DELETE"):
        r = api.post(stack.url(feed), json={"lifecycleEvent": event, "triggerName": f"/{stack.namespace}/{unique}"})
        assert r.status_code == 200, r.text
    # A trigger whose feed refuses its parameters is not created.
    r = api.put(stack.url(f"/namespaces/_/triggers/{unique}-bad"),
                json={"annotations": kv(feed="/whisk.system/alarms/alarm"), "parameters": kv(cron="* *")})
    assert r.status_code == 400 and "feed refused" in r.json()["error"]
    assert api.get(stack.url(f"/namespaces/_/triggers/{unique}-bad")).status_code == 404


def test_raw_http_web_actions_get_the_query_and_body_as_they_came(api, stack, unique):
    code = "def main(args):\n    return {'q': args['__ow_query'], 'b': args.get('__ow_body'), 'x': args.get('x')}\n"
    put(api, stack, f"actions/{unique}", action(code, annotations=kv(**{"web-export": True, "raw-http": True})))
    r = requests.post(f"{stack.apihost}/api/v1/web/{stack.namespace}/default/{unique}.json?x=1&y=2",
                      data="plain text", headers={"Content-Type": "text/plain"})
    assert r.status_code == 200 and r.json() == {"q": "x=1&y=2", "b": "plain text", "x": None}
