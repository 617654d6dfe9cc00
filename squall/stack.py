"""Bring the whole platform up on one machine, and down again: `python -m squall.stack up|down|status|logs`.

Each component is an OS process with a pid file and a log under the state
folder (.squall/ by default). `up` is idempotent: a component already running
is left alone, one that is missing is started, in dependency order, each waited
for until it really answers. `down` stops them in reverse order with SIGTERM
(the invoker finishes and records what it is running; JetStream and Cassandra
flush to disk), so no accepted work is lost.
"""
from __future__ import annotations

import argparse
import json
import mmap
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable

from squall import netns
from squall.bus import invoker_subject
from squall.config import REPO_ROOT, SquallConfig


def say(message: str) -> None:
    print(f"[squall] {message}", flush=True)


@dataclass
class Layout:
    """Where things live under the state folder."""
    root: Path

    @property
    def run(self) -> Path:
        return self.root / "run"

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    @property
    def secrets(self) -> Path:
        return self.root / "secrets.json"

    @property
    def wskprops(self) -> Path:
        return self.root / "wskprops"

    @property
    def podman_socket(self) -> Path:
        return self.run / "podman.sock"

    @property
    def topology(self) -> Path:
        """The network-namespace subnet the running stack was started with (absent: none)."""
        return self.run / "netns-subnet"

    def pid_file(self, name: str) -> Path:
        return self.run / f"{name}.pid"

    def log_file(self, name: str) -> Path:
        return self.logs / f"{name}.log"


@dataclass
class Component:
    name: str
    argv: list[str]
    ready: Callable[[], bool]
    ready_timeout: float = 60.0
    env: dict[str, str] = field(default_factory=dict)
    stop_timeout: float = 30.0
    cwd: Path = REPO_ROOT


# Process bookkeeping

def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie child is not alive.
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


def running_pid(layout: Layout, name: str) -> int | None:
    try:
        pid = int(layout.pid_file(name).read_text().strip())
    except (OSError, ValueError):
        return None
    return pid if _alive(pid) else None


def start(layout: Layout, comp: Component) -> None:
    pid = running_pid(layout, comp.name)
    if pid is not None and comp.ready():
        say(f"{comp.name}: already running (pid {pid})")
        return
    if pid is None:
        say(f"{comp.name}: starting")
        log = open(layout.log_file(comp.name), "ab")
        proc = subprocess.Popen(comp.argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                cwd=comp.cwd, env={**os.environ, **comp.env}, start_new_session=True)
        layout.pid_file(comp.name).write_text(str(proc.pid))
        pid = proc.pid
    deadline = time.monotonic() + comp.ready_timeout
    started = time.monotonic()
    while not comp.ready():
        if not _alive(pid):
            raise SystemExit(f"[squall] {comp.name} exited during start; its log ends with:\n{tail(layout, comp.name)}")
        if time.monotonic() > deadline:
            raise SystemExit(f"[squall] {comp.name} not ready after {comp.ready_timeout:.0f}s; log:\n{tail(layout, comp.name)}")
        time.sleep(0.2)
    say(f"{comp.name}: ready (pid {pid}, {time.monotonic() - started:.1f}s)")


def stop(layout: Layout, name: str, timeout: float = 30.0) -> None:
    pid = running_pid(layout, name)
    if pid is None:
        layout.pid_file(name).unlink(missing_ok=True)
        return
    say(f"{name}: stopping (pid {pid})")
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    if _alive(pid):
        say(f"{name}: did not stop in {timeout:.0f}s, killing it")
        os.killpg(pid, signal.SIGKILL)
    layout.pid_file(name).unlink(missing_ok=True)


def tail(layout: Layout, name: str, lines: int = 30) -> str:
    try:
        return "\n".join(layout.log_file(name).read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


# Readiness probes

def port_open(host: str, port: int) -> Callable[[], bool]:
    def probe() -> bool:
        with socket.socket() as s:
            s.settimeout(0.5)
            return s.connect_ex((host, port)) == 0
    return probe


def http_ok(url: str) -> Callable[[], bool]:
    def probe() -> bool:
        try:
            with urllib.request.urlopen(url, timeout=1) as resp:
                return resp.status == 200
        except OSError:
            return False
    return probe


def log_contains(layout: Layout, name: str, marker: str) -> Callable[[], bool]:
    """The process's log has `marker`, with {pid} standing for its pid (so an earlier run's
    lines in the same log do not count)."""
    def probe() -> bool:
        pid = running_pid(layout, name)
        if pid is None:
            return False
        try:
            with open(layout.log_file(name), "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as m:
                return m.rfind(marker.format(pid=pid).encode()) >= 0   # the whole log: fast enough
        except (OSError, ValueError):   # (ValueError: an empty file cannot be mapped)
            return False
    return probe


# The stack

def load_secrets(layout: Layout) -> dict[str, str]:
    """Credentials generated on the first start and kept: the guest key and the NATS password."""
    if layout.secrets.exists():
        return json.loads(layout.secrets.read_text())
    from controller.auth import new_credentials
    uuid, key = new_credentials()
    values = {"guest_auth": f"{uuid}:{key}", "nats_user": "squall", "nats_password": secrets.token_hex(16)}
    layout.secrets.write_text(json.dumps(values, indent=2))
    layout.secrets.chmod(0o600)
    return values


def configure(base: SquallConfig, layout: Layout, values: dict[str, str]) -> SquallConfig:
    """The configuration every process gets: the user's SQUALL_* settings plus the generated
    secrets, and with invokers in network namespaces, the services' address on their bridge."""
    invoker = base.invoker
    if not invoker.docker_host and not os.environ.get("DOCKER_HOST"):
        invoker = replace(invoker, docker_host=f"unix://{layout.podman_socket}")
    services = invoker.host_address()

    def local(host: str) -> str:
        return services if host in ("127.0.0.1", "localhost") else host
    return replace(
        base,
        nats=replace(base.nats, user=base.nats.user or values["nats_user"],
                     password=base.nats.password or values["nats_password"],
                     servers=tuple(url.replace("127.0.0.1", services).replace("localhost", services)
                                   for url in base.nats.servers)),
        cassandra=replace(base.cassandra, contact_points=tuple(local(h) for h in base.cassandra.contact_points)),
        controller=replace(base.controller, guest_auth=base.controller.guest_auth or values["guest_auth"],
                           host=local(base.controller.host)),
        invoker=invoker,
    )


def _local(cfg: SquallConfig, host: str) -> bool:
    """A service this stack runs itself (on loopback, or on the invokers' bridge)."""
    return host in ("127.0.0.1", "localhost", cfg.invoker.host_address())


def uses_local_podman(cfg: SquallConfig, layout: Layout) -> bool:
    return cfg.invoker.docker_host == f"unix://{layout.podman_socket}"


def nats_config(cfg: SquallConfig, layout: Layout) -> Path:
    host, port = _host_port(cfg.nats.servers[0], 4222)
    path = layout.root / "nats" / "nats.conf"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"""# generated by squall.stack
listen: "{host}:{port}"
max_payload: {cfg.nats.max_message_bytes}
jetstream {{
  store_dir: "{layout.root / 'nats' / 'data'}"
}}
authorization {{
  user: "{cfg.nats.user}"
  password: "{cfg.nats.password}"
}}
""")
    return path


def _host_port(url: str, default_port: int) -> tuple[str, int]:
    hostport = url.split("://", 1)[-1].split("@")[-1]
    host, _, port = hostport.partition(":")
    return host or "127.0.0.1", int(port or default_port)


def nats_server_binary() -> str:
    candidate = Path(sys.executable).parent / "nats-server"
    found = str(candidate) if candidate.exists() else shutil.which("nats-server")
    if not found:
        raise SystemExit("[squall] nats-server not found: install the project (pip install -e .) first")
    return found


def components(cfg: SquallConfig, layout: Layout) -> list[Component]:
    """The platform's processes, in start order (the infrastructure ones first)."""
    env = {**cfg.env(), "PYTHONUNBUFFERED": "1"}
    py = sys.executable
    comps: list[Component] = []
    if uses_local_podman(cfg, layout):
        from squall.provision import podman
        # Its own working folder: conmon drops files (e.g. "oom") into the current directory.
        workdir = layout.root / "podman"
        workdir.mkdir(parents=True, exist_ok=True)
        comps.append(Component("podman", podman.service_argv(layout.podman_socket), cwd=workdir,
                               ready=lambda: layout.podman_socket.exists() and _podman_ping(layout)))
    nhost, nport = _host_port(cfg.nats.servers[0], 4222)
    if _local(cfg, nhost):
        comps.append(Component("nats", [nats_server_binary(), "-c", str(nats_config(cfg, layout))],
                               ready=port_open(nhost, nport)))
    if _runs_cassandra(cfg):
        comps.append(_cassandra_component(cfg, layout))
    for r in range(cfg.controller.replicas):
        # Replica 0 keeps the plain name (and runs the alarm scheduler); the others are numbered.
        extra = {"SQUALL_CONTROLLER_REPLICA": str(r)} | ({"SQUALL_CONTROLLER_ALARMS": "false"} if r else {})
        comps.append(Component("controller" + (str(r) if r else ""), [py, "-m", "controller"], env={**env, **extra},
                               ready=port_open(cfg.controller.host, cfg.controller.port + r), ready_timeout=90))
    for i in range(cfg.controller.invokers):
        name = f"invoker{i}"
        argv = [py, "-m", "invoker"]
        if cfg.invoker.netns_subnet:
            argv = netns.wrap(argv, i)
        comps.append(Component(name, argv, env={**env, "SQUALL_INVOKER_ID": str(i)},
                               ready=log_contains(layout, name, "consuming " + invoker_subject(cfg.nats, i) + " (pid {pid})"),
                               ready_timeout=90,
                               stop_timeout=cfg.limits.timeout_max_ms / 1000 + 30))
    for w in range(cfg.edge.workers):
        name = "edge" + (str(w) if w else "")
        # Workers share the port, so each one's readiness is its own log line.
        comps.append(Component(name, [py, "-m", "edge"], env={**env, "SQUALL_EDGE_WORKER": str(w)},
                               ready=log_contains(layout, name, "(pid {pid})")))
    return comps


def _podman_ping(layout: Layout) -> bool:
    try:
        with socket.socket(socket.AF_UNIX) as s:
            s.settimeout(1)
            s.connect(str(layout.podman_socket))
            s.sendall(b"GET /_ping HTTP/1.0\r\n\r\n")
            return b" 200 " in s.recv(64)
    except OSError:
        return False


def _runs_cassandra(cfg: SquallConfig) -> bool:
    return len(cfg.cassandra.contact_points) == 1 and _local(cfg, cfg.cassandra.contact_points[0])


def _cassandra_settings(cfg: SquallConfig, layout: Layout):
    from squall.provision.cassandra import CassandraSettings
    return CassandraSettings(home=layout.root / "cassandra", cql_port=cfg.cassandra.port,
                             host=cfg.cassandra.contact_points[0])


def _cassandra_component(cfg: SquallConfig, layout: Layout) -> Component:
    from squall.provision import cassandra
    settings = _cassandra_settings(cfg, layout)
    return Component("cassandra", cassandra.command(settings), ready=port_open(settings.host, cfg.cassandra.port),
                     ready_timeout=300, stop_timeout=60)


def provision(cfg: SquallConfig, layout: Layout) -> None:
    """One-time (idempotent) preparation: container engine config, Cassandra jars and config."""
    if uses_local_podman(cfg, layout):
        from squall.provision import podman
        podman.ensure_config(log=say)
    if _runs_cassandra(cfg):
        from squall.provision import cassandra
        settings = _cassandra_settings(cfg, layout)
        cassandra.ensure_jars(settings, REPO_ROOT / "deploy" / "cassandra" / "pom.xml", log=say)
        cassandra.write_config(settings)


def _engine(cfg: SquallConfig):
    import docker
    return docker.DockerClient(base_url=cfg.invoker.docker_host or os.environ["DOCKER_HOST"], timeout=600)


def ensure_images(cfg: SquallConfig, layout: Layout) -> None:
    from squall.provision import images
    images.ensure_images(_engine(cfg), layout.root / "images", log=say)


def container_subnets(cfg: SquallConfig) -> list[str]:
    """The subnets of the engine's network(s) action containers join."""
    from container_pool.docker_backend import default_network
    client = _engine(cfg)
    network = client.networks.get(cfg.invoker.network or default_network(client))
    return [c["Subnet"] for c in (network.attrs.get("IPAM", {}).get("Config") or []) if c.get("Subnet")]


def _network_namespaces(cfg: SquallConfig, layout: Layout) -> None:
    """Invokers in namespaces of their own (see squall.netns), or none: recorded for later
    commands, which must see the stack as it runs, whatever their own environment says."""
    if cfg.invoker.netns_subnet:
        netns.setup(cfg.invoker.netns_subnet, cfg.controller.invokers, container_subnets(cfg), log=say)
        layout.topology.write_text(cfg.invoker.netns_subnet)
    else:
        layout.topology.unlink(missing_ok=True)


def write_wskprops(cfg: SquallConfig, layout: Layout) -> None:
    layout.wskprops.write_text(
        f"APIHOST=http://{cfg.edge.host}:{cfg.edge.port}\n"
        f"AUTH={cfg.controller.guest_auth}\n"
        f"NAMESPACE={cfg.controller.guest_namespace}\n"
        # Not read by wsk: where gRPC clients (squall.client) find the controller's public API.
        f"GRPCHOST={cfg.controller.host}:{cfg.controller.port}\n")


def prepare(base: SquallConfig | None = None) -> tuple[SquallConfig, Layout]:
    """The stack's configuration: as it runs, if it runs (see _as_running), else as configured."""
    base = base or SquallConfig.from_env()
    layout = Layout(base.paths.state)
    for d in (layout.root, layout.run, layout.logs):
        d.mkdir(parents=True, exist_ok=True)
    return configure(_as_running(base, layout), layout, load_secrets(layout)), layout


def running_config() -> SquallConfig:
    """For tools and tests: the configuration of the running stack, with its credentials."""
    return prepare()[0]


def up() -> SquallConfig:
    base = SquallConfig.from_env()
    base = _reshape(base, Layout(base.paths.state))
    cfg, layout = prepare(base)
    provision(cfg, layout)
    comps = components(cfg, layout)
    namespaces_ready = False
    for comp in comps:
        if comp.name != "podman" and not namespaces_ready:
            _network_namespaces(cfg, layout)   # the services' address must exist before they bind it
            namespaces_ready = True
        if comp.name == "controller":
            ensure_images(cfg, layout)   # needs the engine up; before any action can run
        if comp.name == "cassandra":
            start(layout, comp)
            from squall.provision import cassandra
            cassandra.wait_ready(_cassandra_settings(cfg, layout), timeout=300)
            continue
        start(layout, comp)
    write_wskprops(cfg, layout)
    say(f"up: API at http://{cfg.edge.host}:{cfg.edge.port}, credentials in {layout.wskprops}")
    return cfg


def _running(layout: Layout) -> bool:
    return any(running_pid(layout, p.stem) for p in layout.run.glob("*.pid"))


def _as_running(cfg: SquallConfig, layout: Layout) -> SquallConfig:
    """While the stack runs, its shape wins over this command's environment: as many invokers,
    controller replicas and edge workers as have pid files (one that died is started again, a
    stack started with more is stopped and shown whole), and network namespaces if and only if it
    was started with them. (`up` asked for another shape restarts it first: see _reshape.)"""
    def count(role: str, configured: int) -> int:
        ids = [int(p.stem[len(role):]) for p in layout.run.glob(f"{role}*.pid") if p.stem[len(role):].isdigit()]
        return max([configured, *(i + 1 for i in ids)])
    invoker = cfg.invoker
    if _running(layout):
        subnet = layout.topology.read_text().strip() if layout.topology.exists() else ""
        invoker = replace(invoker, netns_subnet=subnet)
    return replace(cfg, invoker=invoker,
                   controller=replace(cfg.controller, invokers=count("invoker", cfg.controller.invokers),
                                      replicas=count("controller", cfg.controller.replicas)),
                   edge=replace(cfg.edge, workers=count("edge", cfg.edge.workers)))


INFRASTRUCTURE = ("podman", "nats", "cassandra")


def _reshape(base: SquallConfig, layout: Layout) -> SquallConfig:
    """`up` asked for more processes of a role than run, or (by setting
    SQUALL_INVOKER_NETNS_SUBNET) for other network namespaces: `make test` after `make up`, say.
    A process learns its peers' count and addresses only as it starts (the controller counts the
    invokers, a lone edge worker holds its port alone, services listen on the bridge or on
    loopback), so the running ones are stopped first: Squall's own processes, and for other
    namespaces the services too. Data is kept. What up then starts: the larger of each count,
    in the namespaces asked for. Nothing running, or nothing more asked: nothing is stopped."""
    if not layout.run.is_dir() or not _running(layout):
        return base
    running = _as_running(replace(base, controller=replace(base.controller, invokers=1, replicas=1),
                                  edge=replace(base.edge, workers=1)), layout)
    wanted = _as_running(base, layout)   # the larger counts, the running namespaces
    subnet = os.environ.get("SQUALL_INVOKER_NETNS_SUBNET", running.invoker.netns_subnet)
    moved = subnet != running.invoker.netns_subnet
    grown = (wanted.controller.invokers, wanted.controller.replicas, wanted.edge.workers) != (
        running.controller.invokers, running.controller.replicas, running.edge.workers)
    if not (moved or grown):
        return base
    say(f"restarting in the shape asked for: {wanted.controller.invokers} invoker(s), "
        f"{wanted.controller.replicas} controller(s), {wanted.edge.workers} edge worker(s), "
        f"network namespaces {subnet or 'none'}")
    if moved:
        down()
    else:
        cfg = configure(running, layout, load_secrets(layout))
        for comp in reversed(components(cfg, layout)):
            if comp.name not in INFRASTRUCTURE:
                stop(layout, comp.name, comp.stop_timeout)
    return replace(wanted, invoker=replace(wanted.invoker, netns_subnet=subnet))


def down() -> None:
    cfg, layout = prepare()
    for comp in reversed(components(cfg, layout)):
        stop(layout, comp.name, comp.stop_timeout)
    netns.teardown()   # (whatever a stack left, even one that was killed)
    layout.topology.unlink(missing_ok=True)
    say("down")


def status() -> int:
    cfg, layout = prepare()
    worst = 0
    for comp in components(cfg, layout):
        pid = running_pid(layout, comp.name)
        state = "stopped" if pid is None else ("ready" if comp.ready() else "starting")
        worst = max(worst, 0 if state == "ready" else 1)
        print(f"{comp.name:<12} {state:<9} {'pid ' + str(pid) if pid else ''}")
    _print_invokers(cfg)
    return worst


def _print_invokers(cfg: SquallConfig) -> None:
    """The controller's view of the invokers (health, capacity, load), if it answers."""
    import asyncio
    from squall import wskprops
    from squall.client import SquallClient, SquallClientError
    try:
        props = wskprops.read(cfg.paths.state / "wskprops")
    except OSError:
        return

    async def ask() -> list[dict]:
        async with SquallClient(props.get("GRPCHOST", ""), props.get("AUTH", "")) as client:
            return await asyncio.wait_for(client.invokers(), 3)
    try:
        invokers = asyncio.run(ask())
    except (SquallClientError, asyncio.TimeoutError, OSError):
        return
    print(f"\n{'invoker':<9} {'status':<13} {'capacity MB':>11} {'used MB':>8} {'reserved MB':>11} {'in flight':>9}")
    for i in invokers:
        print(f"{i['id']:<9} {i['status']:<13} {i['capacityMB']:>11} {i['usedMB']:>8} {i['reservedMB']:>11} {i['inFlight']:>9}")


def logs(names: list[str], lines: int) -> None:
    cfg, layout = prepare()
    for comp in components(cfg, layout):
        if not names or comp.name in names:
            print(f"==> {layout.log_file(comp.name)} <==")
            print(tail(layout, comp.name, lines))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="squall", description="Run the Squall platform on this machine.")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("up", help="set up and start everything (idempotent)")
    sub.add_parser("down", help="stop everything")
    sub.add_parser("status", help="show each process")
    p_logs = sub.add_parser("logs", help="show the end of the logs")
    p_logs.add_argument("components", nargs="*")
    p_logs.add_argument("-n", "--lines", type=int, default=40)
    args = parser.parse_args(argv)
    if args.command == "up":
        up()
    elif args.command == "down":
        down()
    elif args.command == "status":
        return status()
    elif args.command == "logs":
        logs(args.components, args.lines)
    return 0


if __name__ == "__main__":
    sys.exit(main())
