"""`make bench`: figures measured side by side in one run against the running stack.

Minimal for now: warm blocking invocations of a no-op action through the edge,
against the same action's cold first call. Prints a table and writes JSON
under .squall/bench/.
"""
from __future__ import annotations

import json
import statistics
import time
import uuid

import requests

from squall.config import SquallConfig
from squall.demo import read_wskprops

NOOP = "def main(args):\n    return {}\n"


def percentile(samples: list[float], p: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(round(p / 100 * (len(ordered) - 1))))]


def figure(name: str, samples_ms: list[float]) -> dict:
    return {"name": name, "n": len(samples_ms), "p50_ms": round(statistics.median(samples_ms), 2),
            "p95_ms": round(percentile(samples_ms, 95), 2)}


def main() -> None:
    cfg = SquallConfig.from_env()
    props = read_wskprops(cfg.paths.state / "wskprops")
    s = requests.Session()
    s.auth = tuple(props["AUTH"].split(":", 1))
    name = f"bench-{uuid.uuid4().hex[:8]}"
    url = f"{props['APIHOST']}/api/v1/namespaces/_/actions/{name}"
    s.put(url, json={"exec": {"kind": "python:3", "code": NOOP}}).raise_for_status()
    invoke = url + "?blocking=true&result=true"

    t = time.perf_counter()
    s.post(invoke, json={}).raise_for_status()
    cold = [(time.perf_counter() - t) * 1000]
    for _ in range(20):   # warm-up, excluded
        s.post(invoke, json={}).raise_for_status()
    warm = []
    for _ in range(200):
        t = time.perf_counter()
        s.post(invoke, json={}).raise_for_status()
        warm.append((time.perf_counter() - t) * 1000)
    s.delete(url)

    figures = [figure("first invocation (cold or prewarmed)", cold), figure("warm blocking invoke via edge", warm)]
    print(f"{'figure':<40} {'n':>5} {'p50 ms':>9} {'p95 ms':>9}")
    for f in figures:
        print(f"{f['name']:<40} {f['n']:>5} {f['p50_ms']:>9} {f['p95_ms']:>9}")
    out = cfg.paths.state / "bench"
    out.mkdir(parents=True, exist_ok=True)
    path = out / time.strftime("bench-%Y%m%d-%H%M%S.json")
    path.write_text(json.dumps({"figures": figures}, indent=2))
    print(f"written to {path}")


if __name__ == "__main__":
    main()
