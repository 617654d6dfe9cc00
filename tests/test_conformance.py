"""The conformance suite: Apache OpenWhisk's official JavaScript client (npm `openwhisk`) drives
the real stack as a user following OpenWhisk's documentation (tests/conformance/conformance.js)."""
from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import uuid

import pytest

from squall.config import REPO_ROOT

pytestmark = pytest.mark.stack

SUITE = REPO_ROOT / "tests" / "conformance"


def _install() -> None:
    """npm install, once per package-lock.json (node_modules is not committed)."""
    lock = SUITE / "package-lock.json"
    stamp = SUITE / "node_modules" / ".squall-installed"
    digest = hashlib.sha256(lock.read_bytes()).hexdigest()
    if stamp.is_file() and stamp.read_text() == digest:
        return
    subprocess.run(["npm", "ci", "--no-audit", "--no-fund", "--loglevel=error"], cwd=SUITE, check=True,
                   stdin=subprocess.DEVNULL, timeout=300)
    stamp.write_text(digest)


def test_official_openwhisk_client_works_against_squall(stack):
    assert shutil.which("node") and shutil.which("npm"), "Node.js and npm are needed (make setup installs them)"
    _install()
    env = {**os.environ, "APIHOST": stack.apihost, "AUTH": stack.auth, "UNIQUE": f"c{uuid.uuid4().hex[:8]}"}
    run = subprocess.run(["node", "conformance.js"], cwd=SUITE, env=env, capture_output=True, text=True, timeout=300)
    print(run.stdout)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "FAIL" not in run.stdout and run.stdout.count("ok ") >= 9
