"""Same-window A/B of the invoker's code: `make ab REV=<git revision>`.

On a machine whose speed drifts between runs (this one's, by a third), two runs one after the
other cannot tell a 10% change apart. Here both versions serve one load at the same time: one
invoker runs the work tree's code, the other the code at REV (exported under .squall/ab/), each
with its own actions homed on it, and each process's CPU time per activation it completed is
compared. The two swap code every round, so neither invoker's share of the load decides. Needs a
running stack with two invokers (`make up INVOKERS=2`); both run the work tree's code at the end.
"""
from __future__ import annotations

import argparse
import asyncio
import statistics
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

from loadtest import hotpath
from loadtest.bench import Bench
from squall import stack, wskprops
from squall.config import REPO_ROOT, SquallConfig


def export(rev: str, cfg: SquallConfig) -> Path:
    """The code at rev, with its generated gRPC code, under the state directory."""
    sha = subprocess.run(["git", "rev-parse", "--short", rev], cwd=REPO_ROOT, capture_output=True,
                         text=True, check=True).stdout.strip()
    out = cfg.paths.state / "ab" / sha
    if not (out / "proto" / "squall_pb2.py").exists():
        out.mkdir(parents=True, exist_ok=True)
        subprocess.run(f"git archive {sha} | tar -x -C {out}", shell=True, cwd=REPO_ROOT, check=True)
        subprocess.run([sys.executable, "-m", "grpc_tools.protoc", "-I.", "--python_out=.", "--pyi_out=.",
                        "--grpc_python_out=.", "proto/squall.proto"], cwd=out, check=True)
    return out


class Invokers:
    """The stack's invokers, restarted with the code of a given directory, as the stack starts them."""

    def __init__(self):
        self.cfg, self._layout = stack.prepare()
        self._comps = {c.name: c for c in stack.components(self.cfg, self._layout)}

    def restart(self, i: int, code: Path) -> None:
        comp = self._comps[f"invoker{i}"]
        stack.stop(self._layout, comp.name, comp.stop_timeout)
        stack.start(self._layout, replace(comp, cwd=code, env={**comp.env, "PYTHONPATH": str(code)}))
        time.sleep(1.0)   # its first heartbeat: healthy again in the balancer

    def cpu_seconds(self, i: int) -> float:
        return hotpath.process_cpu_seconds(stack.running_pid(self._layout, f"invoker{i}"))

    def completed(self, i: int) -> float:
        return sum(value for _, value in hotpath.scraped([self.cfg.invoker.metrics_endpoint(i)],
                                                          "squall_invoker_activations_total{"))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("rev", help="the git revision to compare the work tree's invoker code with")
    parser.add_argument("--rounds", type=int, default=4, help="rounds (the two swap code each round)")
    parser.add_argument("--seconds", type=float, default=10.0, help="length of each round's load")
    args = parser.parse_args(argv)
    invokers = Invokers()
    cfg = invokers.cfg
    if cfg.controller.invokers < 2:
        raise SystemExit("make ab needs a stack with two invokers: make up INVOKERS=2")
    props = wskprops.read(cfg.paths.state / "wskprops")
    old = export(args.rev, cfg)
    bench = Bench(cfg)
    namespace = bench.edge.get(props["APIHOST"] + "/api/v1/namespaces").json()[0]
    names = hotpath.actions_homed(namespace, [0, 1], 4, hotpath.home_of(cfg.controller.invokers))
    per_activation: dict[str, list[float]] = {"rev": [], "work tree": []}
    try:
        for name in names:
            bench.edge.put(bench.api + name, json={"exec": {"kind": "python:3", "code": hotpath.NOOP},
                                                   "limits": {"memory": 128}}).raise_for_status()
            bench.created.append(name)
        print(f"invoker CPU ms per activation, {args.rev} ({old.name}) against the work tree, same load, same time")
        for r in range(args.rounds):
            on_old = r % 2
            invokers.restart(on_old, old)
            invokers.restart(1 - on_old, REPO_ROOT)
            cpu0 = {i: invokers.cpu_seconds(i) for i in (0, 1)}
            done0 = {i: invokers.completed(i) for i in (0, 1)}
            rates = asyncio.run(hotpath.throughput(props["APIHOST"], props["AUTH"], names, args.seconds, 2 * len(names)))
            ms = {i: (invokers.cpu_seconds(i) - cpu0[i]) * 1000 / max(invokers.completed(i) - done0[i], 1) for i in (0, 1)}
            per_activation["rev"].append(ms[on_old])
            per_activation["work tree"].append(ms[1 - on_old])
            print(f"  round {r + 1}: {statistics.median(rates):5.0f}/s in all; {args.rev} on invoker{on_old} "
                  f"{ms[on_old]:.2f}, work tree on invoker{1 - on_old} {ms[1 - on_old]:.2f}")
    finally:
        for i in (0, 1):
            invokers.restart(i, REPO_ROOT)
        bench.cleanup()
    a, b = (statistics.median(per_activation[k]) for k in ("rev", "work tree"))
    print(f"median: {args.rev} {a:.2f}, work tree {b:.2f} ms per activation (work tree / {args.rev}: {b / a:.2f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
