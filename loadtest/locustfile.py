"""Locust scenarios a FaaS user runs, against the running stack (`make load`).

Each request is named after its scenario, so locust's CSV reports them apart:
  warm-noop        warm blocking invocations of a no-op action
  payload-10KB     blocking invocations carrying 10 KB ...
  payload-1MB      ... and just under 1 MB (the default payload limit)
  async+poll       non-blocking invocations, then polling until the record is there
  cold-storm       many distinct actions, each invoked once (cold or prewarmed starts)
  trigger-fanout   trigger fires fanned out by three rules
  entities         a mix of entity reads and writes
The actions, trigger and rules are created once at the start (and left for the next run).
"""
from __future__ import annotations

import itertools
import time
import uuid

from locust import HttpUser, between, events, task

from squall import wskprops

NOOP = "def main(args):\n    return {}\n"
ECHO_SIZE = "def main(args):\n    return {'size': len(args.get('blob', ''))}\n"
PREFIX = "load"
_storm = itertools.count()
_run = uuid.uuid4().hex[:6]


def _props() -> dict:
    return wskprops.read()


@events.test_start.add_listener
def create_entities(environment, **_):
    import requests
    props = _props()
    s = requests.Session()
    s.auth = tuple(props["AUTH"].split(":", 1))
    base = props["APIHOST"] + "/api/v1/namespaces/_"
    for name, code in ((f"{PREFIX}-noop", NOOP), (f"{PREFIX}-echo", ECHO_SIZE)):
        s.put(f"{base}/actions/{name}?overwrite=true", json={"exec": {"kind": "python:3", "code": code}}).raise_for_status()
    s.put(f"{base}/triggers/{PREFIX}-trigger?overwrite=true", json={}).raise_for_status()
    for i in range(3):
        s.put(f"{base}/rules/{PREFIX}-rule{i}?overwrite=true",
              json={"trigger": f"/_/{PREFIX}-trigger", "action": f"/_/{PREFIX}-noop"}).raise_for_status()


class FaasUser(HttpUser):
    wait_time = between(0.0, 0.1)

    def on_start(self) -> None:
        props = _props()
        self.client.auth = tuple(props["AUTH"].split(":", 1))
        self.base = "/api/v1/namespaces/_"

    def _invoke(self, action: str, name: str, params: dict | None = None) -> None:
        with self.client.post(f"{self.base}/actions/{action}?blocking=true&result=true", json=params or {},
                              name=name, catch_response=True) as r:
            if r.status_code != 200:
                r.failure(f"{r.status_code}: {r.text[:200]}")

    @task(10)
    def warm_noop(self) -> None:
        self._invoke(f"{PREFIX}-noop", "warm-noop")

    @task(3)
    def payload_10kb(self) -> None:
        self._invoke(f"{PREFIX}-echo", "payload-10KB", {"blob": "x" * 10_000})

    @task(1)
    def payload_1mb(self) -> None:
        self._invoke(f"{PREFIX}-echo", "payload-1MB", {"blob": "x" * 1_000_000})

    @task(3)
    def async_then_poll(self) -> None:
        started = time.perf_counter()
        r = self.client.post(f"{self.base}/actions/{PREFIX}-noop", json={}, name="async+poll: invoke")
        if r.status_code != 202:
            return
        activation_id = r.json()["activationId"]
        for _ in range(200):
            got = self.client.get(f"{self.base}/activations/{activation_id}", name="async+poll: poll",
                                  catch_response=True)
            if got.status_code == 200:
                got.success()
                events.request.fire(request_type="FLOW", name="async+poll", response_time=(time.perf_counter() - started) * 1000,
                                    response_length=0, exception=None, context={})
                return
            got.success()   # 404 until the record is there
            time.sleep(0.02)

    @task(1)
    def cold_storm(self) -> None:
        name = f"{PREFIX}-storm-{_run}-{next(_storm)}"
        self.client.put(f"{self.base}/actions/{name}", json={"exec": {"kind": "python:3", "code": NOOP}},
                        name="cold-storm: create")
        self._invoke(name, "cold-storm")
        self.client.delete(f"{self.base}/actions/{name}", name="cold-storm: delete")

    @task(2)
    def trigger_fanout(self) -> None:
        with self.client.post(f"{self.base}/triggers/{PREFIX}-trigger", json={"at": time.time()},
                              name="trigger-fanout", catch_response=True) as r:
            if r.status_code != 202:
                r.failure(str(r.status_code))

    @task(3)
    def entities(self) -> None:
        self.client.get(f"{self.base}/actions?limit=30", name="entities: list")
        self.client.get(f"{self.base}/actions/{PREFIX}-noop?code=false", name="entities: get")
        self.client.put(f"{self.base}/packages/{PREFIX}-pkg?overwrite=true",
                        json={"parameters": [{"key": "t", "value": time.time()}]}, name="entities: put")
