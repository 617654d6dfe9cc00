"""Apache's `wsk` CLI against Squall: the everyday commands, through a wskprops file.

The binary is not on any package registry this project installs from, so this runs when one is
found: $SQUALL_WSK, or `wsk` on PATH (built from apache/openwhisk-cli); otherwise it is skipped
and says so. What wsk sends that other clients do not (a rule PUT's empty status, a zip without
the binary flag) is also covered by tests that always run (test_model, test_api).
"""
from __future__ import annotations

import json
import os
import subprocess
import threading
import time
import zipfile

import pytest
import requests

from tests import WSK

pytestmark = pytest.mark.stack


@pytest.fixture()
def wsk(stack, tmp_path):
    if not WSK:
        pytest.skip("Apache's wsk binary not found (set SQUALL_WSK or put wsk on PATH)")
    env = {**os.environ, "WSK_CONFIG_FILE": str(stack.cfg.paths.state / "wskprops")}

    def run(*args: str, check: bool = True, timeout: float = 60) -> str:
        done = subprocess.run([WSK, "-i", *args], env=env, capture_output=True, text=True, timeout=timeout)
        assert done.returncode == 0 or not check, f"wsk {' '.join(args)}: {done.stdout}{done.stderr}"
        return done.stdout
    return run


def body(out: str):
    """The JSON wsk prints after its "ok: ..." line."""
    return json.loads(out[out.index("{"):] if "{" in out else out)


def test_wsk_everyday_commands(wsk, stack, unique, tmp_path):
    hello = tmp_path / "hello.py"
    hello.write_text("import sys\ndef main(a):\n    print('log', a.get('name'))\n    return {'hi': a.get('name', 'x')}\n")
    params = tmp_path / "params.json"
    params.write_text('{"name": "file"}')
    a = f"{unique}-a"
    assert "ok: created action" in wsk("action", "create", a, str(hello))
    assert "ok: updated action" in wsk("action", "update", a, str(hello), "-p", "name", "default")
    assert body(wsk("action", "invoke", a, "-p", "name", "bob", "--result")) == {"hi": "bob"}
    assert body(wsk("action", "invoke", a, "--param-file", str(params), "-r")) == {"hi": "file"}
    record = body(wsk("action", "invoke", a, "--blocking"))
    assert record["response"]["result"] == {"hi": "default"}
    assert f"/{stack.namespace}/{a}" in wsk("action", "list")
    assert body(wsk("action", "get", a))["name"] == a

    # A zip, and a sequence.
    archive = tmp_path / "act.zip"
    with zipfile.ZipFile(archive, "w") as z:
        z.writestr("__main__.py", "import helper\ndef main(a):\n    return {'zip': helper.f()}\n")
        z.writestr("helper.py", "def f():\n    return 'from zip'\n")
    wsk("action", "create", f"{unique}-zip", str(archive), "--kind", "python:3")
    assert body(wsk("action", "invoke", f"{unique}-zip", "-r")) == {"zip": "from zip"}
    wsk("action", "create", f"{unique}-seq", "--sequence", f"{a},{a}")
    assert body(wsk("action", "invoke", f"{unique}-seq", "-r", "-p", "name", "s")) == {"hi": "default"}

    # Packages and bindings.
    wsk("package", "create", f"{unique}-p", "-p", "name", "pkg")
    wsk("package", "bind", f"{unique}-p", f"{unique}-b", "-p", "name", "bound")
    assert f"/{stack.namespace}/{unique}-b" in wsk("package", "list")
    wsk("action", "create", f"{unique}-p/inner", str(hello))
    assert body(wsk("action", "invoke", f"{unique}-b/inner", "-r")) == {"hi": "bound"}

    # Triggers and rules.
    wsk("trigger", "create", f"{unique}-t")
    assert "ok: created rule" in wsk("rule", "create", f"{unique}-r", f"{unique}-t", a)
    assert "ok: disabled rule" in wsk("rule", "disable", f"{unique}-r")
    assert body(wsk("rule", "get", f"{unique}-r"))["status"] == "inactive"
    assert "ok: enabled rule" in wsk("rule", "enable", f"{unique}-r")
    fired = wsk("trigger", "fire", f"{unique}-t", "-p", "name", "fired")
    trigger_id = fired.split()[-1]
    deadline = time.monotonic() + 30
    while "{" not in (out := wsk("activation", "get", trigger_id, check=False)) and time.monotonic() < deadline:
        time.sleep(0.5)
    ran = json.loads(body(out)["logs"][0])["activationId"]

    # Activations: list, get, result, logs, poll.
    deadline = time.monotonic() + 30
    while ran not in wsk("activation", "list", "-l", "50") and time.monotonic() < deadline:
        time.sleep(0.5)
    assert ran in wsk("activation", "list", "-l", "50")
    assert body(wsk("activation", "result", ran)) == {"hi": "fired"}
    assert body(wsk("activation", "get", ran))["activationId"] == ran
    assert "stdout: log fired" in wsk("activation", "logs", ran)
    later = threading.Timer(3, lambda: wsk("action", "invoke", a, "-p", "name", "polled"))
    later.start()
    polled = wsk("activation", "poll", a, "--exit", "10")
    later.join()
    assert "log polled" in polled, polled

    # A web action's URL, answered without credentials.
    web = tmp_path / "web.py"
    web.write_text("def main(a):\n    return {'body': 'web ' + a.get('who', '?')}\n")
    wsk("action", "create", f"{unique}-web", str(web), "--web", "true")
    url = wsk("action", "get", f"{unique}-web", "--url").strip().splitlines()[-1]
    assert url.endswith(f"/api/v1/web/{stack.namespace}/default/{unique}-web")
    assert requests.get(url, params={"who": "curl"}, timeout=30).text == "web curl"

    for entity, name in (("rule", f"{unique}-r"), ("trigger", f"{unique}-t"), ("action", f"{unique}-seq")):
        assert "ok: deleted" in wsk(entity, "delete", name)
