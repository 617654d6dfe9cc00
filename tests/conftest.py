"""Fixtures for tests against the real running stack.

`make test` brings the stack up before pytest runs; the `stack` fixture checks
it answers (and brings it up itself when pytest is run directly).
"""
from __future__ import annotations

import base64
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests

from squall.config import REPO_ROOT, SquallConfig
from squall import wskprops as wskprops_file
from squall.stack import running_config


@dataclass
class Stack:
    apihost: str
    auth: str
    namespace: str
    cfg: SquallConfig

    def url(self, path: str) -> str:
        return f"{self.apihost}/api/v1{path}"

    @property
    def session(self) -> requests.Session:
        s = requests.Session()
        s.auth = tuple(self.auth.split(":", 1))
        return s


def _answering(url: str) -> bool:
    try:
        return requests.get(url, timeout=2).status_code == 200
    except requests.RequestException:
        return False


@pytest.fixture(scope="session")
def stack() -> Stack:
    cfg = SquallConfig.from_env()
    wskprops = cfg.paths.state / "wskprops"
    api = f"http://{cfg.edge.host}:{cfg.edge.port}/api/v1"
    if not (wskprops.exists() and _answering(api)):
        subprocess.run([sys.executable, "-m", "squall.stack", "up"], cwd=REPO_ROOT, check=True)
    cfg = running_config()   # as the stack runs (its addresses, invokers, credentials)
    props = wskprops_file.read(wskprops)
    return Stack(props["APIHOST"], props["AUTH"], props.get("NAMESPACE", "guest"), cfg)


@pytest.fixture()
def api(stack: Stack) -> requests.Session:
    return stack.session


@pytest.fixture()
def unique() -> str:
    """A fresh entity name per test, so tests never see each other's actions."""
    return f"t-{uuid.uuid4().hex[:10]}"


def poll_activation(api: requests.Session, stack: Stack, activation_id: str, timeout: float = 60) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        r = api.get(stack.url(f"/namespaces/_/activations/{activation_id}"))
        if r.status_code == 200:
            return r.json()
        assert r.status_code == 404, r.text
        time.sleep(0.2)
    raise AssertionError(f"activation {activation_id} not recorded within {timeout}s")


def basic(auth: str) -> str:
    return "Basic " + base64.b64encode(auth.encode()).decode()


# The fault suite's counts, printed at the end of every run (not only when a test fails).
FAULT_COUNTS = pytest.StashKey[list]()


def pytest_configure(config: pytest.Config) -> None:
    config.stash[FAULT_COUNTS] = []


@pytest.fixture()
def fault_counts(request: pytest.FixtureRequest) -> list:
    return request.config.stash[FAULT_COUNTS]


def pytest_terminal_summary(terminalreporter, exitstatus, config: pytest.Config) -> None:
    rows = config.stash.get(FAULT_COUNTS, [])
    if rows:
        terminalreporter.section("fault suite: accepted, recorded, lost, run twice")
        for row in rows:
            terminalreporter.write_line(row)
