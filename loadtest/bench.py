"""`make bench`: the container pool's figures, measured side by side in one run on the real stack.

Every figure is client-side wall time over several samples (a warm-up excluded), reported as
count, median and p95, and the ratios the pool is judged by are computed from figures of the same
run (this machine is small and noisy: only same-run comparisons mean anything):

  raw engine start   create + start of the runtime image through the same Docker API, until its
                     proxy answers HTTP; no Squall involved
  cold               first invocation of a new action with a memory size that has no stem cells,
                     while the invoker has room (at capacity a cold start also evicts an idle
                     container, and that container's teardown in the engine overlaps the start);
                     alternated with raw engine starts, so both see the same containers around
  prewarmed          first invocation of a new action that finds a stem cell
  warm               repeated invocation, end to end through the edge
  direct /run        POST /run straight to the same warm container
  unpaused           invocation of an action whose container has been paused

The table is printed and written, with the environment, as JSON under .squall/bench/.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path

import docker
import requests

from container_pool.docker_backend import default_network
from loadtest import hotpath
from container_pool.runtimes import PROXY_PORT, resolve
from squall.config import SquallConfig
from squall import wskprops
from squall.stack import running_config

ACTION = "import socket\ndef main(args):\n    return {'host': socket.gethostname()}\n"
LARGE = ("ITEMS = [{'id': i, 'name': 'item-%d' % i, 'tags': ['a', 'b'], 'v': i * 0.5} for i in range(12000)]\n"
         "def main(args):\n    return {'items': ITEMS} if args.get('give') else {'n': len(args.get('items', []))}\n")
BIG_CODE = "BLOB = '" + "x" * 1_000_000 + "'\ndef main(args):\n    return {'n': len(BLOB)}\n"


class _Samples:
    """Median and p95 of a figure's samples (`samples` in the subclass's unit)."""
    samples: list[float]

    @property
    def p50(self) -> float:
        return statistics.median(self.samples) if self.samples else float("nan")

    @property
    def p95(self) -> float:
        if not self.samples:
            return float("nan")
        ordered = sorted(self.samples)
        return ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]


@dataclass
class Figure(_Samples):
    name: str
    samples: list[float] = field(default_factory=list)   # ms
    starts: dict[str, int] = field(default_factory=dict)   # containerStart values seen

    def add(self, ms: float, start: str | None = None) -> None:
        self.samples.append(ms)
        if start:
            self.starts[start] = self.starts.get(start, 0) + 1

    def summary(self) -> dict:
        return {"name": self.name, "n": len(self.samples), "p50_ms": round(self.p50, 2),
                "p95_ms": round(self.p95, 2), "containerStart": self.starts}


@dataclass
class Rates(_Samples):
    """A rate: one sample per window of hotpath.WINDOW_S, per second."""
    samples: list[float]

    def summary(self) -> dict:
        return {"n": len(self.samples), "p50_per_s": round(self.p50, 1), "p95_per_s": round(self.p95, 1)}


class Bench:
    def __init__(self, cfg: SquallConfig):
        props = wskprops.read(cfg.paths.state / "wskprops")
        self.api = props["APIHOST"] + "/api/v1/namespaces/_/actions/"
        self.invokers_url = props["APIHOST"] + "/api/v1/invokers"
        self.edge = requests.Session()
        self.edge.auth = tuple(props["AUTH"].split(":", 1))
        self.direct = requests.Session()
        host = cfg.invoker.docker_host or os.environ.get("DOCKER_HOST") or \
            f"unix://{cfg.paths.state / 'run' / 'podman.sock'}"
        self.engine = docker.DockerClient(base_url=host, timeout=120)
        self.network = default_network(self.engine)
        self.image = resolve("python:3").image
        self.created: list[str] = []
        self.containers: set[str] = set()
        self.cold_at_capacity = 0   # cold samples taken while an invoker was full (so evicting)

    # helpers

    def create(self, memory: int) -> str:
        name = f"bench-{uuid.uuid4().hex[:10]}"
        r = self.edge.put(self.api + name, json={"exec": {"kind": "python:3", "code": ACTION},
                                                 "limits": {"memory": memory}})
        r.raise_for_status()
        self.created.append(name)
        return name

    def invoke(self, name: str) -> tuple[float, dict]:
        started = time.perf_counter()
        r = self.edge.post(self.api + name + "?blocking=true", json={})
        ms = (time.perf_counter() - started) * 1000
        r.raise_for_status()
        activation = r.json()
        host = activation.get("response", {}).get("result", {}).get("host")
        if host:
            self.containers.add(host)   # (a container's hostname is its id's beginning)
        return ms, activation

    @staticmethod
    def start_of(activation: dict) -> str:
        return next((a["value"] for a in activation.get("annotations", []) if a["key"] == "containerStart"), "?")

    def stem_cells_ready(self, count: int, timeout_s: float = 15.0) -> None:
        """Wait until every healthy invoker has its configured stem cells again (as its heartbeat
        tells), so a prewarmed sample is not a cold one in disguise."""
        time.sleep(1.2)   # a heartbeat from after the last sample (they come every second)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            invokers = [i for i in self.edge.get(self.invokers_url).json() if i["status"] == "healthy"]
            if all(i.get("containers", {}).get("prewarmed", 0) >= count for i in invokers):
                return
            time.sleep(0.1)

    def cleanup(self) -> None:
        """Delete the bench's actions, and remove the containers they ran in, so that the pools
        have room again for the next run (an invoker notices the removal and replaces them)."""
        for name in self.created:
            self.edge.delete(self.api + name)
        for host in self.containers:
            try:
                self.engine.api.remove_container(host, force=True)
            except docker.errors.APIError:
                pass   # gone already

    # figures

    def raw_and_cold(self, n: int) -> tuple[Figure, Figure]:
        """Alternate the two, after one excluded pair of warm-up: both then see the same engine,
        the same number of containers around and the same background noise. The raw containers
        are removed only at the end, as the cold ones stay: a removal's cleanup in the engine
        would otherwise overlap the next start."""
        raw, cold = Figure("raw engine start (create+start+first reply)"), Figure("cold start, end to end")
        started: list = []
        try:
            for i in range(n + 1):
                raw_ms = self.raw_engine_start(started)
                full = any(inv["usedMB"] + 128 > inv["capacityMB"] for inv in self.edge.get(self.invokers_url).json()
                           if inv["status"] == "healthy")
                cold_ms, activation = self.invoke(self.create(memory=128))   # no stem cells of 128 MB
                if i:
                    raw.add(raw_ms)
                    cold.add(cold_ms, self.start_of(activation))
                    self.cold_at_capacity += full
        finally:
            for container in started:
                container.remove(force=True)
        return raw, cold

    def raw_engine_start(self, started: list) -> float:
        begin = time.perf_counter()
        container = self.engine.containers.run(
            self.image, detach=True, init=True, network=self.network, mem_limit="128m",
            labels={"squall.bench": "true"})
        started.append(container)
        container.reload()
        ip = next(v["IPAddress"] for v in container.attrs["NetworkSettings"]["Networks"].values()
                  if v.get("IPAddress"))
        while True:
            try:
                requests.get(f"http://{ip}:{PROXY_PORT}/", timeout=1)
                return (time.perf_counter() - begin) * 1000
            except requests.ConnectionError:
                time.sleep(0.001)

    def prewarmed(self, n: int, stem_cells: int) -> Figure:
        fig = Figure("prewarmed first invocation, end to end")
        for _ in range(n):
            name = self.create(memory=256)
            self.stem_cells_ready(stem_cells)
            ms, activation = self.invoke(name)
            fig.add(ms, self.start_of(activation))
        return fig

    def warm_and_direct(self, n: int, processes: list[tuple[str, int]]) -> tuple[Figure, Figure, dict[str, float]]:
        """The warm figure, the direct one, and the hops' mean times during the warm figure."""
        warm, direct = Figure("warm invocation, end to end"), Figure("direct POST /run, same container")
        name = self.create(memory=256)
        for _ in range(10):                                          # warm-up
            _, activation = self.invoke(name)
        before = hotpath.hop_totals(processes)
        host = activation["response"]["result"]["host"]
        attrs = self.engine.containers.get(host).attrs
        ip = next(v["IPAddress"] for v in attrs["NetworkSettings"]["Networks"].values() if v.get("IPAddress"))
        body = {"value": {}, "namespace": "guest", "action_name": f"/guest/{name}",
                "activation_id": uuid.uuid4().hex, "deadline": str(int(time.time() * 1000) + 60000)}
        for _ in range(n):
            ms, activation = self.invoke(name)
            warm.add(ms, self.start_of(activation))
            # Right after, within the pause grace, the container is still running.
            started = time.perf_counter()
            try:
                self.direct.post(f"http://{ip}:{PROXY_PORT}/run", json=body, timeout=1).raise_for_status()
            except requests.Timeout:
                continue                                             # paused meanwhile: skip
            direct.add((time.perf_counter() - started) * 1000)
        return warm, direct, hotpath.hop_means(before, hotpath.hop_totals(processes))

    def large(self, n: int) -> tuple[Figure, Figure, Figure]:
        """Blocking invokes (result only) of warm actions: with ~0.8 MB of structured parameters
        and a small result, with small parameters and a ~0.7 MB result, and of an action with
        1 MB of code (which nothing should handle again on a warm run)."""
        payload, result = Figure("0.8 MB parameters, blocking, result"), Figure("0.7 MB result, blocking, result")
        code = Figure("1 MB of code, warm, blocking, result")
        names = []
        for source in (LARGE, BIG_CODE):
            names.append(f"bench-{uuid.uuid4().hex[:10]}")
            self.edge.put(self.api + names[-1], json={"exec": {"kind": "python:3", "code": source}}).raise_for_status()
            self.created.append(names[-1])
        items = json.dumps({"items": [{"id": i, "name": f"item-{i}", "tags": ["a", "b"], "v": i * 0.5}
                                      for i in range(12000)]}).encode()
        for figure, name, body in ((payload, names[0], items), (result, names[0], b'{"give": true}'),
                                   (code, names[1], b"{}")):
            for i in range(n + 3):                                   # 3 of warm-up
                started = time.perf_counter()
                r = self.edge.post(self.api + name + "?blocking=true&result=true", data=body,
                                   headers={"Content-Type": "application/json"})
                ms = (time.perf_counter() - started) * 1000
                r.raise_for_status()
                if i >= 3:
                    figure.add(ms)
        return payload, result, code

    def unpaused(self, n: int) -> Figure:
        fig = Figure("unpaused invocation, end to end")
        name = self.create(memory=256)
        for _ in range(5):
            self.invoke(name)
        for _ in range(n):
            time.sleep(0.3)                                          # past the pause grace
            ms, activation = self.invoke(name)
            fig.add(ms, self.start_of(activation))
        return fig


def hot_path(bench: "Bench", cfg: SquallConfig, args) -> tuple[dict[str, Figure], dict]:
    """gRPC warm invokes, large parameters and results, JetStream's publish rate, throughput with
    one and with all invokers, and the Cassandra record writes those runs caused."""
    import asyncio
    props = wskprops.read(cfg.paths.state / "wskprops")
    invokers = [i["id"] for i in bench.edge.get(props["APIHOST"] + "/api/v1/invokers").json() if i["status"] == "healthy"]
    namespace = bench.edge.get(props["APIHOST"] + "/api/v1/namespaces").json()[0]
    grpc = Figure("warm invocation through gRPC")
    name = bench.create(memory=256)
    for ms in asyncio.run(hotpath.grpc_warm(props["GRPCHOST"], props["AUTH"], name, args.samples)):
        grpc.add(ms)
    figures = {"grpc": grpc}
    figures["payload"], figures["result"], figures["code"] = bench.large(max(args.samples // 4, 3))
    rates: dict[str, Rates | float | None] = {}
    rates["jetstream publish-with-ack per s"] = Rates(asyncio.run(hotpath.jetstream_publish_rate(cfg)))
    for key, label, idle_s in (("js_busy", "JetStream publish-with-ack, back to back", 0.0),
                               ("js_idle", "JetStream publish-with-ack, after 20 ms idle", 0.02)):
        figures[key] = Figure(label, asyncio.run(hotpath.jetstream_publish_ms(cfg, idle_s)))
    ports = [cfg.invoker.metrics_endpoint(i) for i in invokers]
    before = hotpath.record_write_histogram(ports)
    home = hotpath.home_of(len(bench.edge.get(props["APIHOST"] + "/api/v1/invokers").json()))
    per_invoker = 4   # callers (and warm containers) per invoker: well within its memory, no overflow
    for label, chosen in (("1 invoker", invokers[:1]), ("all invokers", invokers)):
        names = hotpath.actions_homed(namespace, chosen, per_invoker * len(chosen), home)
        for n in names:
            # 128 MB: the edge scaling run below gives each action two callers, so two containers,
            # which must fit in an invoker beside its stem cells (else evictions and cold starts).
            bench.edge.put(bench.api + n, json={"exec": {"kind": "python:3", "code": hotpath.NOOP},
                                                "limits": {"memory": 128}}).raise_for_status()
            bench.created.append(n)
        cpu_ms: dict[str, float] = {}   # (the run with all invokers is the one kept)
        rates[f"warm invocations per s, {label}"] = Rates(asyncio.run(hotpath.throughput(
            props["APIHOST"], props["AUTH"], names, args.seconds, len(names), cpu_ms)))
    for role, ms in sorted(cpu_ms.items(), key=lambda kv: -kv[1]):
        rates[f"CPU ms per invocation, {role}"] = ms
    rates.update({k: Rates(v) for k, v in hotpath.edge_scaling(cfg, props["AUTH"], names, args.seconds).items()})
    after = hotpath.record_write_histogram(ports)
    rates["Cassandra record write p50 ms"] = hotpath.quantile(before, after, 0.5)
    rates["Cassandra record write p99 ms"] = hotpath.quantile(before, after, 0.99)
    return figures, rates


TARGETS = (  # (ratio name, numerator, denominator, target, "max" or "report")
    ("cold / raw engine start", "cold", "raw", 1.2),
    ("prewarmed / raw engine start", "prewarmed", "raw", 0.25),
    ("warm end to end / direct /run", "warm", "direct", 3.0),
    ("unpaused / warm", "unpaused", "warm", 1.5),
    ("warm through gRPC / direct /run", "grpc", "direct", None),
    ("JetStream round trip after idle / back to back", "js_idle", "js_busy", None),
)

EXPECTED_START = {"cold": "cold", "prewarmed": "prewarmed", "warm": "warm", "unpaused": "unpaused"}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", type=int, default=40, help="samples of the warm figures")
    parser.add_argument("--start-samples", type=int, default=10, help="samples of the start figures")
    parser.add_argument("--seconds", type=float, default=8.0, help="length of each throughput run")
    parser.add_argument("--pool-only", action="store_true", help="only the container pool's figures")
    args = parser.parse_args(argv)
    cfg = running_config()
    bench = Bench(cfg)
    hot: dict[str, Rates | float | None] = {}
    try:
        figures: dict[str, Figure] = {}
        figures["raw"], figures["cold"] = bench.raw_and_cold(args.start_samples)
        figures["prewarmed"] = bench.prewarmed(args.start_samples, sum(c.count for c in cfg.pool.stem_cells()))
        processes = [*(cfg.controller.metrics_endpoint(r) for r in range(cfg.controller.replicas)),
                     *(cfg.invoker.metrics_endpoint(i) for i in range(cfg.controller.invokers))]
        figures["warm"], figures["direct"], hops = bench.warm_and_direct(args.samples, processes)
        figures["unpaused"] = bench.unpaused(args.samples)
        if not args.pool_only:
            more, hot = hot_path(bench, cfg, args)
            figures.update(more)
    finally:
        bench.cleanup()

    print(f"\n{'figure':<46} {'n':>4} {'p50 ms':>9} {'p95 ms':>9}  containerStart seen")
    for key, fig in figures.items():
        seen = ", ".join(f"{k} x{v}" for k, v in fig.starts.items())
        print(f"{fig.name:<46} {len(fig.samples):>4} {fig.p50:>9.1f} {fig.p95:>9.1f}  {seen}")
        if key == "cold" and bench.cold_at_capacity:
            print(f"  warning: {bench.cold_at_capacity} samples found an invoker full: their start included an "
                  "eviction (measure on a stack with room, e.g. right after make up)")
        expected = EXPECTED_START.get(key)
        if expected and set(fig.starts) - {expected}:
            print(f"  warning: expected only '{expected}' starts for this figure")
    hop_table = []
    if "invoke" in hops and "wait" in hops:
        e2e = statistics.mean(figures["warm"].samples)
        print(f"\nwhere a warm invocation's time goes (means over the warm figure, {e2e:.1f} ms end to end)")
        for label, value, counted in hotpath.HOP_ROWS:
            ms = value(hops, e2e)
            hop_table.append({"hop": label, "ms": round(ms, 2), "in_end_to_end": counted})
            print(f"  {label:<54} {ms:>6.2f} ms")
    ratios = []
    rates = {name: value for name, value in hot.items() if isinstance(value, Rates)}
    if rates:
        print(f"\n{'rate (per second, over %.1f s windows)' % hotpath.WINDOW_S:<46} {'n':>4} {'p50':>9} {'p95':>9}")
        for name, value in rates.items():
            print(f"{name:<46} {len(value.samples):>4} {value.p50:>9.1f} {value.p95:>9.1f}")
        print(f"\n{'latency or cost':<46} {'value':>9}")
        for name, value in hot.items():
            if name not in rates:
                print(f"{name:<46} {value if value is None else round(value, 1):>9}")
    p50 = {name: value.p50 for name, value in rates.items() if value.samples}
    jetstream = p50.get("jetstream publish-with-ack per s")
    one, two = p50.get("warm invocations per s, 1 edge worker"), p50.get("warm invocations per s, 2 edge workers")
    if one and two:
        ratios.append({"name": "throughput, 2 edge workers / 1", "value": round(two / one, 3), "target_min": None, "met": None})
    for n in ("1 invoker", "all invokers"):
        rate = p50.get(f"warm invocations per s, {n}")
        if rate and jetstream:
            value = rate / jetstream
            ratios.append({"name": f"throughput, {n} / JetStream publish rate", "value": round(value, 3),
                           "target_min": 0.5, "met": value >= 0.5})
    print(f"\n{'ratio (of medians)':<46} {'value':>9} {'target':>9}")
    for r in ratios:
        if r["target_min"] is None:
            print(f"{r['name']:<46} {r['value']:>9.2f} {'report':>9}")
        else:
            print(f"{r['name']:<46} {r['value']:>9.2f} {'>= %.2f' % r['target_min']:>9}  {'met' if r['met'] else 'MISSED'}")
    for name, num, den, target in TARGETS:
        if num not in figures:
            continue
        value = figures[num].p50 / figures[den].p50
        met = None if target is None else value <= target
        ratios.append({"name": name, "value": round(value, 3), "target_max": target, "met": met})
        verdict = "" if target is None else ("met" if met else "MISSED")
        print(f"{name:<46} {value:>9.2f} {('<= %.2f' % target) if target else 'report':>9}  {verdict}")

    report = {
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "environment": {"engine": bench.engine.version().get("Components", [{}])[0].get("Name", "?"),
                        "engine_version": bench.engine.version().get("Version"),
                        "cpus": os.cpu_count(), "python": platform.python_version()},
        "figures": [fig.summary() for fig in figures.values()],
        "ratios": ratios,
        "rates": {name: value.summary() if isinstance(value, Rates) else value for name, value in hot.items()},
        "hops_ms": hop_table,
    }
    out = cfg.paths.state / "bench"
    out.mkdir(parents=True, exist_ok=True)
    path = out / time.strftime("pool-%Y%m%d-%H%M%S.json")
    path.write_text(json.dumps(report, indent=2))
    (out / "latest.json").write_text(json.dumps(report, indent=2))
    print(f"\nwritten to {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
