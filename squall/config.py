"""Squall's configuration: typed dataclasses, defaults documented once, here.

Every field can be overridden by an environment variable named
SQUALL_<SECTION>_<FIELD> in upper case, e.g. SQUALL_EDGE_PORT=3233 or
SQUALL_NATS_SERVERS=nats://a:4222,nats://b:4222 (tuples are comma separated).
The stack supervisor (squall.stack) passes the same environment to every
process, so one setting reaches every role.
"""
from __future__ import annotations

import dataclasses
import ipaddress
import os
import typing
from dataclasses import dataclass, field
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class PathsConfig:
    # Folder for all local state: data, logs, pid files, sockets, wskprops (git-ignored).
    state_dir: str = str(REPO_ROOT / ".squall")

    @property
    def state(self) -> Path:
        return Path(self.state_dir)


@dataclass(frozen=True)
class NatsConfig:
    # JetStream servers; several for a cluster.
    servers: tuple[str, ...] = ("nats://127.0.0.1:4222",)
    # Credentials the server requires (the supervisor generates them for the local server).
    user: str = ""
    password: str = ""
    # Stream holding activation messages, one subject per invoker.
    stream: str = "SQUALL_ACTIVATIONS"
    subject_prefix: str = "squall.activations"
    # Stream replicas (1 on a single node, 3 on a JetStream cluster).
    replicas: int = 1
    # Largest message the stream and server accept, bytes (payload limit plus headroom).
    max_message_bytes: int = 8 * 1024 * 1024
    # Core NATS subject of the invokers' heartbeats (outside the stream: nothing to keep).
    health_subject: str = "squall.health"
    # Core NATS subjects of completions, one below this per controller (outside the stream: a
    # completion nobody hears is read from the record later).
    completions_subject: str = "squall.completions"
    # JetStream key-value bucket marking activations an invoker has started (at most once).
    started_bucket: str = "squall_started"


@dataclass(frozen=True)
class CassandraConfig:
    # Nodes to reach the cluster through, and their CQL port.
    contact_points: tuple[str, ...] = ("127.0.0.1",)
    port: int = 9042
    # Credentials, if the cluster requires them.
    user: str = ""
    password: str = ""
    # Keyspace holding subjects, entities and activation records (created if missing).
    keyspace: str = "squall"
    # Replication of the keyspace: "SimpleStrategy" with replication_factor, or
    # "NetworkTopologyStrategy" with datacenters "dc1:3,dc2:3".
    replication_class: str = "SimpleStrategy"
    replication_factor: int = 1
    datacenters: str = ""
    # Consistency for reads and writes (LOCAL_QUORUM is ONE on a single node).
    consistency: str = "LOCAL_QUORUM"
    # How long activation records are kept, seconds (0 keeps them forever).
    activation_ttl_s: int = 7 * 24 * 3600
    # Per-request timeout of the driver, seconds.
    request_timeout_s: float = 10.0
    # Native protocol version (5 for Cassandra 4 and 5).
    protocol_version: int = 5
    # How long a starting process waits for Cassandra to answer, seconds.
    connect_timeout_s: float = 300.0


@dataclass(frozen=True)
class ControllerConfig:
    # Where the controller serves gRPC (public API and invoker callbacks); edges and invokers
    # reach it there.
    host: str = "127.0.0.1"
    port: int = 50051
    # The longest a blocking invoke waits for its result before answering with the
    # activation id (OpenWhisk: 60 s).
    blocking_wait_s: float = 60.0
    # Seconds an authenticated key stays cached before the store is asked again.
    auth_cache_s: float = 10.0
    # Seconds an action, package or trigger read for an invocation stays cached (this
    # controller's own writes invalidate at once; another controller's are seen after this).
    entity_cache_s: float = 2.0
    # Run the alarm feed's scheduler (/whisk.system/alarms) in this controller.
    alarms: bool = True
    # An invoker not heard from this long gets no new work ...
    unresponsive_after_s: float = 3.0
    # ... and after this long, the controller takes over what waits for it (failover).
    takeover_after_s: float = 10.0
    # Key and namespace of the guest subject created on first start ("uuid:key"; empty: generated).
    guest_auth: str = ""
    guest_namespace: str = "guest"
    # Number of invokers (ids 0..n-1) the controller balances over.
    invokers: int = 1
    # Prometheus metrics port of controller replica 0; replica r uses this plus r (0: none).
    metrics_port: int = 9101
    # Controller processes the stack runs, sharing state through Cassandra and NATS; replica r
    # serves gRPC on port + r, only replica 0 runs the alarm scheduler, and throttles count per
    # replica. Edge worker i talks to replica i mod replicas.
    replicas: int = 1
    # This process's replica number (set by the supervisor).
    replica: int = 0

    def address(self, replica: int) -> str:
        return f"{self.host}:{self.port + replica}"

    def metrics_endpoint(self, replica: int) -> tuple[str, int]:
        return self.host, (self.metrics_port + replica if self.metrics_port else 0)


@dataclass(frozen=True)
class EdgeConfig:
    # Where the REST API (OpenWhisk's APIHOST) listens.
    host: str = "127.0.0.1"
    port: int = 3233
    # Prometheus metrics port of edge worker 0; worker i uses this minus i (0: none).
    metrics_port: int = 9100
    # Edge processes sharing the REST port (SO_REUSEPORT: the kernel spreads connections).
    workers: int = 1
    # This process's worker number (set by the supervisor).
    worker: int = 0

    def metrics_endpoint(self, worker: int) -> tuple[str, int]:
        return self.host, (self.metrics_port - worker if self.metrics_port else 0)


@dataclass(frozen=True)
class InvokerConfig:
    # This invoker's id, 0..n-1 (its JetStream subject and consumer, its containers' label).
    id: int = 0
    # Prometheus metrics port of invoker 0; invoker n uses this plus n (0: none).
    metrics_port: int = 9110
    # Memory for action containers, MB: the pool never runs more than this.
    user_memory_mb: int = 2048
    # Docker-compatible API; empty means DOCKER_HOST or the stack's podman socket.
    docker_host: str = ""
    # Network action containers join (podman: "podman", docker: "bridge").
    network: str = ""
    # Activations one invoker runs at once, at most.
    max_concurrent: int = 64
    # Seconds JetStream waits for an ack before redelivering; extended while running. (How soon
    # the work of a dead invoker can be taken over.)
    ack_wait_s: float = 15.0
    # Activation records go to Cassandra in unlogged batches (see invoker/recorder.py): this many
    # batches in flight at once, each of at most this many records and about this many bytes
    # (keep it under the cluster's batch_size_fail_threshold, 50 KiB by default), gathered for
    # this long before a batch is taken, or until a quarter of a full batch is there (0: at
    # once). Callers have their results by then; only the message's ack waits.
    record_writers: int = 2
    record_batch_max: int = 64
    record_batch_bytes: int = 40_000
    record_linger_s: float = 0.05
    # Run each local invoker in a network namespace of its own, joined to the host by a veth pair
    # on this /24 (e.g. 10.231.0.0/24): the host's bridge takes .1, invoker n takes .(10+n).
    # NATS, Cassandra and the controller then listen on .1 only, and action containers are
    # firewalled from the whole /24. Empty: no namespaces, everything on 127.0.0.1. Needs root.
    netns_subnet: str = ""

    def host_address(self) -> str:
        """Where the platform's services listen: the bridge's address, or loopback."""
        if not self.netns_subnet:
            return "127.0.0.1"
        return str(ipaddress.ip_network(self.netns_subnet)[1])

    def address_of(self, invoker_id: int) -> str:
        """Invoker n's own address (its network namespace's), or loopback."""
        if not self.netns_subnet:
            return "127.0.0.1"
        return str(ipaddress.ip_network(self.netns_subnet)[10 + invoker_id])

    def metrics_endpoint(self, invoker_id: int) -> tuple[str, int]:
        return self.address_of(invoker_id), self.metrics_port + invoker_id


@dataclass(frozen=True)
class PoolConfig:
    # Pause an idle warm container after this many seconds (OpenWhisk: 50 ms); negative: never.
    pause_grace_s: float = 0.05
    # Pause and unpause through the container's cgroup freezer when the invoker may write it
    # (same host, root): ~0.05 ms instead of ~7 ms through the engine's API. Else the API.
    freeze_directly: bool = True
    # Remove an idle warm container after this many seconds (OpenWhisk: 10 minutes).
    idle_timeout_s: float = 600.0
    # How long a new container's proxy may take to accept its first connection.
    start_timeout_s: float = 30.0
    # How long to wait for the log sentinels after a run before giving up on its logs.
    log_wait_s: float = 2.0
    # Pids limit of an action container.
    pids_limit: int = 1024
    # Stem cells, as "kind@memoryMB=count" items: started with the invoker and refilled after use,
    # so a first invocation of an action of that kind and memory skips the container start.
    prewarm: tuple[str, ...] = ("python:3.11@256=1", "nodejs:18@256=1")
    # Reactive prewarming: each cold start of a prewarmed kind and memory raises its count by one,
    # up to this many ...
    prewarm_max: int = 3
    # ... and a stem cell left unused this long lowers it again by one, down to the configured count.
    prewarm_ttl_s: float = 300.0

    def stem_cells(self) -> list["StemCells"]:
        cells = []
        for item in self.prewarm:
            try:
                kind, _, rest = item.rpartition("@")
                memory, _, count = rest.partition("=")
                cells.append(StemCells(kind, int(memory), int(count or 1)))
            except ValueError:
                raise ValueError(f"SQUALL_POOL_PREWARM item {item!r} is not kind@memoryMB=count") from None
        return cells


@dataclass(frozen=True)
class StemCells:
    kind: str
    memory_mb: int
    count: int


@dataclass(frozen=True)
class LimitsConfig:
    # Action limits: minimum, maximum and default (OpenWhisk's defaults).
    timeout_min_ms: int = 100
    timeout_max_ms: int = 300_000
    timeout_default_ms: int = 60_000
    memory_min_mb: int = 128
    memory_max_mb: int = 512
    memory_default_mb: int = 256
    logs_min_mb: int = 0
    logs_max_mb: int = 10
    logs_default_mb: int = 10
    concurrency_min: int = 1
    concurrency_max: int = 500
    concurrency_default: int = 1
    # Largest parameters or result, bytes (OpenWhisk: 1 MB).
    payload_max_bytes: int = 1024 * 1024
    # Largest request body the edge accepts (code of an action can be larger than parameters).
    body_max_bytes: int = 48 * 1024 * 1024
    # Per-namespace throttles, answered with 429 before anything is queued (OpenWhisk's defaults
    # are 60, 30 and 60: generous here so one developer's tests and benchmarks are not throttled;
    # `make bench` sustains several hundred invocations a second for minutes).
    # Per namespace: "ns=invocations/concurrent/fires" items, e.g. "guest=120/20/60".
    invocations_per_minute: int = 60_000
    concurrent_invocations: int = 500
    fires_per_minute: int = 60_000
    namespace_overrides: tuple[str, ...] = ()


@dataclass(frozen=True)
class SquallConfig:
    paths: PathsConfig = field(default_factory=PathsConfig)
    nats: NatsConfig = field(default_factory=NatsConfig)
    cassandra: CassandraConfig = field(default_factory=CassandraConfig)
    controller: ControllerConfig = field(default_factory=ControllerConfig)
    edge: EdgeConfig = field(default_factory=EdgeConfig)
    invoker: InvokerConfig = field(default_factory=InvokerConfig)
    pool: PoolConfig = field(default_factory=PoolConfig)
    limits: LimitsConfig = field(default_factory=LimitsConfig)

    @classmethod
    def from_env(cls, env: typing.Mapping[str, str] | None = None) -> "SquallConfig":
        env = os.environ if env is None else env
        sections = {}
        for section in dataclasses.fields(cls):
            section_cls = typing.get_type_hints(cls)[section.name]
            sections[section.name] = _load_section(section_cls, f"SQUALL_{section.name.upper()}_", env)
        return cls(**sections)

    def env(self) -> dict[str, str]:
        """This configuration as SQUALL_* variables, to hand to a child process."""
        out = {}
        for section in dataclasses.fields(self):
            value = getattr(self, section.name)
            for f in dataclasses.fields(value):
                v = getattr(value, f.name)
                text = ",".join(v) if isinstance(v, tuple) else str(v)
                out[f"SQUALL_{section.name.upper()}_{f.name.upper()}"] = text
        return out


def _load_section(section_cls: type, prefix: str, env: typing.Mapping[str, str]):
    hints = typing.get_type_hints(section_cls)
    kwargs = {}
    for f in dataclasses.fields(section_cls):
        raw = env.get(prefix + f.name.upper())
        if raw is not None:
            kwargs[f.name] = _parse(hints[f.name], raw, prefix + f.name.upper())
    return section_cls(**kwargs)


def _parse(kind: typing.Any, raw: str, name: str) -> typing.Any:
    try:
        if kind is bool:
            return raw.strip().lower() in ("1", "true", "yes", "on")
        if kind is int:
            return int(raw)
        if kind is float:
            return float(raw)
        if typing.get_origin(kind) is tuple:
            return tuple(part.strip() for part in raw.split(",") if part.strip())
        return raw
    except ValueError as exc:
        raise ValueError(f"{name}: cannot read {raw!r} as {kind}") from exc
