"""The `squall` command's user side, on the real stack: invoke, activations (with --follow), deploy."""
from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest

from squall.config import REPO_ROOT

pytestmark = pytest.mark.stack


def squall(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    out = subprocess.run([sys.executable, "-m", "squall", *args], capture_output=True, text=True, cwd=REPO_ROOT,
                         timeout=120)
    if check:
        assert out.returncode == 0, out.stderr
    return out


def test_deploy_a_manifest_then_invoke_and_follow_logs(tmp_path, unique):
    (tmp_path / "hello.py").write_text("def main(args):\n    print('hello', args.get('name'))\n"
                                       "    return {'greeting': args.get('greeting') + ', ' + args.get('name')}\n")
    (tmp_path / "manifest.yaml").write_text(f"""
packages:
  {unique}:
    inputs: {{greeting: hello}}
    actions:
      hello: {{function: hello.py, inputs: {{name: world}}, web-export: true}}
    sequences:
      twice: {{actions: "hello, hello"}}
    triggers:
      {unique}-tick: {{}}
    rules:
      {unique}-rule: {{trigger: {unique}-tick, action: hello}}
""")
    out = squall("deploy", str(tmp_path / "manifest.yaml"))
    assert f"action {unique}/hello" in out.stdout and f"rule {unique}-rule" in out.stdout
    result = json.loads(squall("invoke", f"{unique}/hello", "-p", "name", "squall").stdout)
    assert result == {"greeting": "hello, squall"}
    assert json.loads(squall("invoke", f"{unique}/hello", "-p", "name", '"json"').stdout)["greeting"] == "hello, json"

    follower = subprocess.Popen([sys.executable, "-m", "squall", "activation", "logs", "hello", "--follow"],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO_ROOT)
    try:
        time.sleep(1.5)
        squall("invoke", f"{unique}/hello", "-p", "name", "followed")
        time.sleep(2.0)
    finally:
        follower.terminate()
        out, _ = follower.communicate(timeout=10)
    assert "stdout: hello followed" in out

    listed = squall("activation", "list", "hello", "--limit", "3").stdout
    assert len(listed.strip().splitlines()) == 3


def test_errors_are_one_line_with_an_exit_code(tmp_path, unique):
    missing = squall("invoke", f"{unique}-missing", check=False)
    assert missing.returncode == 1 and missing.stderr.count("\n") == 1 and "404" in missing.stderr
    (tmp_path / "bad.yaml").write_text("packages: {}\n")
    bad = squall("deploy", str(tmp_path / "bad.yaml"), check=False)
    assert bad.returncode == 1 and "needs `packages:`" in bad.stderr
    usage = squall("invoke", check=False)
    assert usage.returncode == 2
