"""A single-node Apache Cassandra 5 for the local stack, run straight from Maven Central's jars.

No Cassandra server package exists in PyPI or Debian, so the server is assembled from parts:
`ensure_jars` lets Maven gather org.apache.cassandra:cassandra-all and its runtime jars
(deploy/cassandra/pom.xml), `write_config` writes cassandra.yaml and logback.xml for one loopback
node, `command` is the java argv Cassandra's own launcher (bin/cassandra + conf/cassandra-env.sh
+ conf/jvm-server.options + conf/jvm17-server.options) would build, and `wait_ready` waits until
the node answers a real CQL query.

Layout under CassandraSettings.home: lib/ (jars), conf/ (generated), data/ (data, commitlog,
hints, saved_caches, cdc_raw), logs/ (system.log, gc.log).

Stopping is SIGTERM to the java process: Cassandra's shutdown hook drains the node (flushes every
memtable to sstables, then closes the commit log), so nothing has to be replayed on the next start.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

MAIN_CLASS = "org.apache.cassandra.service.CassandraDaemon"
# The jamm jar's name when lib/ is not there yet (command() is also built for `down`/`status`).
DEFAULT_JAMM_JAR = "jamm-0.4.0.jar"
_MARKER = ".complete"  # in lib/: sha256 of the pom the jars were gathered with


@dataclass(frozen=True)
class CassandraSettings:
    home: Path                 # e.g. <repo>/.squall/cassandra  (lib/, conf/, data/, logs/ below it)
    host: str = "127.0.0.1"
    cql_port: int = 9042
    storage_port: int = 7000
    heap: str = "1G"
    cluster_name: str = "squall"

    @property
    def lib(self) -> Path:
        return self.home / "lib"

    @property
    def conf(self) -> Path:
        return self.home / "conf"

    @property
    def data(self) -> Path:
        return self.home / "data"

    @property
    def logs(self) -> Path:
        return self.home / "logs"

    @property
    def system_log(self) -> Path:
        return self.logs / "system.log"


# --------------------------------------------------------------------------------------- jars

def _pom_hash(pom: Path) -> str:
    return hashlib.sha256(pom.read_bytes()).hexdigest()


def ensure_jars(settings: CassandraSettings, pom: Path, log: Callable[[str], None] = print) -> Path:
    """Gather cassandra-all and its runtime jars into home/lib unless they are there already.

    lib/ counts as complete only with a marker holding the pom's hash, so an interrupted run or
    an edited pom (e.g. a version bump) fetches again. Maven writes into lib.partial/, which
    replaces lib/ only once complete: a running node never sees a half-filled lib/.
    """
    lib = settings.lib
    marker = lib / _MARKER
    digest = _pom_hash(pom)
    if marker.is_file() and marker.read_text().strip() == digest and _jar(lib, "cassandra-all-"):
        return lib
    mvn = shutil.which("mvn")
    if mvn is None:
        raise RuntimeError("Maven (mvn) is needed to fetch Cassandra's jars: apt-get install maven")
    partial = settings.home / "lib.partial"
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    log(f"cassandra: fetching cassandra-all and its runtime jars with Maven into {lib} (first time ~70 MB)")
    started = time.monotonic()
    proc = subprocess.run(
        [mvn, "-q", "-B", "-f", str(pom), "dependency:copy-dependencies", f"-DoutputDirectory={partial}"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"mvn copy-dependencies failed (exit {proc.returncode}):\n{_tail_text(proc.stdout)}")
    for needed in ("cassandra-all-", "jamm-"):
        if _jar(partial, needed) is None:
            raise RuntimeError(f"mvn finished but no {needed}*.jar in {partial}")
    (partial / _MARKER).write_text(digest + "\n")
    shutil.rmtree(lib, ignore_errors=True)
    partial.rename(lib)
    jars = list(lib.glob("*.jar"))
    size_mb = sum(j.stat().st_size for j in jars) / 1e6
    log(f"cassandra: {len(jars)} jars ({size_mb:.0f} MB) in {time.monotonic() - started:.0f}s")
    return lib


def _jar(lib: Path, prefix: str) -> Path | None:
    found = sorted(lib.glob(f"{prefix}[0-9]*.jar"))
    return found[-1] if found else None


# ------------------------------------------------------------------------------------- config

def yaml_settings(settings: CassandraSettings) -> dict[str, object]:
    """cassandra.yaml's content; anything not here keeps Cassandra 5.0's built-in default."""
    d = settings.data
    return {
        "cluster_name": settings.cluster_name,
        # Fixed for the life of the data: Cassandra refuses to start if it changes later.
        "num_tokens": 16,
        # A fresh 5.0-only cluster: the 5.0 sstable format and features, no 4.x compatibility.
        "storage_compatibility_mode": "NONE",
        "partitioner": "org.apache.cassandra.dht.Murmur3Partitioner",
        "endpoint_snitch": "SimpleSnitch",
        "seed_provider": [{
            "class_name": "org.apache.cassandra.locator.SimpleSeedProvider",
            "parameters": [{"seeds": f"{settings.host}:{settings.storage_port}"}],
        }],
        "listen_address": settings.host,
        "rpc_address": settings.host,
        "storage_port": settings.storage_port,
        "native_transport_port": settings.cql_port,
        "start_native_transport": True,
        # Everything on disk stays below home, nothing under /var/lib/cassandra.
        "data_file_directories": [str(d / "data")],
        "commitlog_directory": str(d / "commitlog"),
        "hints_directory": str(d / "hints"),
        "saved_caches_directory": str(d / "saved_caches"),
        "cdc_raw_directory": str(d / "cdc_raw"),
        # One node: there is no other replica to hand hints to.
        "hinted_handoff_enabled": False,
        # A write is acknowledged only once its commit log entry is fsynced, so an acknowledged
        # write (e.g. an activation record the invoker then acks on JetStream) survives SIGKILL or
        # a crash too; SIGTERM drains anyway. "group" syncs once per window for every write in it
        # (under load, far fewer fsyncs than "batch", which syncs each request); the stock
        # "periodic" mode acknowledges before the sync and can lose the last period on a crash.
        # Records are written after their caller has the result, so the window costs no one.
        "commitlog_sync": "group",
        "commitlog_sync_group_window": "5ms",
        # Action documents carry code up to 48 MB (limits.body_max_bytes); a mutation may be at
        # most half a commit log segment (16 MiB with the default 32 MiB segments).
        "commitlog_segment_size": "128MiB",
        "max_mutation_size": "64MiB",
        # And a CQL request that big must be accepted: by default one message may be at most
        # heap/40 (25.6 MiB with 1G); protocol v4 clients also send it as one frame.
        "native_transport_max_message_size": "64MiB",
        "native_transport_max_request_data_in_flight_per_ip": "128MiB",
        "native_transport_max_request_data_in_flight": "128MiB",
        "native_transport_max_frame_size": "64MiB",
        # Dropping or truncating a table (tests do) should not leave snapshots behind.
        "auto_snapshot": False,
        # The stock timeouts, stated so the store's 10 s driver timeout stays above them.
        "read_request_timeout": "5000ms",
        "range_request_timeout": "10000ms",
        "write_request_timeout": "2000ms",
        "counter_write_request_timeout": "5000ms",
        "cas_contention_timeout": "1000ms",
        "truncate_request_timeout": "60000ms",
        "request_timeout": "10000ms",
        # 2 cores: one compaction at a time leaves room for the rest of the stack.
        "concurrent_compactors": 1,
        # Invokers write activation records in unlogged batches of up to ~40 KB (a record goes to
        # two tables, so each batch spans several partitions): not worth a warning each time.
        "batch_size_warn_threshold": "64KiB",
        "unlogged_batch_across_partitions_warn_threshold": 200,
    }


def render_yaml(values: dict[str, object]) -> str:
    """One `key: value` line per setting, each value in JSON flow style (which is valid YAML):
    no YAML library needed to write it, or to read it back in tests."""
    lines = ["# Generated by squall/provision/cassandra.py; edits are overwritten on the next start."]
    lines += [f"{key}: {json.dumps(value)}" for key, value in values.items()]
    return "\n".join(lines) + "\n"


_LOGBACK = """<?xml version="1.0" encoding="UTF-8"?>
<!-- Generated by squall/provision/cassandra.py. INFO and above, to stdout (the supervisor's log)
     and to ${cassandra.logdir}/system.log (what wait_ready quotes when the node fails). -->
<configuration scan="false">
  <appender name="SYSTEMLOG" class="ch.qos.logback.core.rolling.RollingFileAppender">
    <file>${cassandra.logdir}/system.log</file>
    <rollingPolicy class="ch.qos.logback.core.rolling.FixedWindowRollingPolicy">
      <fileNamePattern>${cassandra.logdir}/system.log.%i.zip</fileNamePattern>
      <minIndex>1</minIndex>
      <maxIndex>5</maxIndex>
    </rollingPolicy>
    <triggeringPolicy class="ch.qos.logback.core.rolling.SizeBasedTriggeringPolicy">
      <maxFileSize>20MB</maxFileSize>
    </triggeringPolicy>
    <encoder>
      <pattern>%-5level [%thread] %date{ISO8601} %logger{0} - %msg%n</pattern>
    </encoder>
  </appender>
  <appender name="STDOUT" class="ch.qos.logback.core.ConsoleAppender">
    <encoder>
      <pattern>%-5level [%thread] %date{ISO8601} %logger{0} - %msg%n</pattern>
    </encoder>
  </appender>
  <root level="INFO">
    <appender-ref ref="SYSTEMLOG"/>
    <appender-ref ref="STDOUT"/>
  </root>
</configuration>
"""


def write_config(settings: CassandraSettings) -> Path:
    """Write conf/cassandra.yaml and conf/logback.xml and create the directories they name.

    Idempotent: files are rewritten only when their content would change.
    """
    values = yaml_settings(settings)
    dirs = [Path(p) for p in values["data_file_directories"]]  # type: ignore[union-attr]
    dirs += [Path(str(values[k])) for k in ("commitlog_directory", "hints_directory",
                                            "saved_caches_directory", "cdc_raw_directory")]
    for directory in (settings.conf, settings.logs, *dirs):
        directory.mkdir(parents=True, exist_ok=True)
    yaml_path = settings.conf / "cassandra.yaml"
    _write_if_changed(yaml_path, render_yaml(values))
    _write_if_changed(settings.conf / "logback.xml", _LOGBACK)
    return yaml_path


def _write_if_changed(path: Path, text: str) -> None:
    if path.is_file() and path.read_text() == text:
        return
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    tmp.replace(path)


# ------------------------------------------------------------------------------------ command

def find_java() -> str:
    """Java 17, the newest Java Cassandra 5.0 supports (11 and 17 only; 21+ refuse to start)."""
    home = os.environ.get("JAVA_HOME")
    if home and _java_feature_version(Path(home)) == 17 and (Path(home) / "bin" / "java").exists():
        return str(Path(home) / "bin" / "java")
    for candidate in sorted(Path("/usr/lib/jvm").glob("java-17-openjdk-*/bin/java")):
        return str(candidate)
    return shutil.which("java") or "java"


def _java_feature_version(home: Path) -> int | None:
    """Read from the JDK's `release` file: no JVM has to start for it."""
    try:
        text = (home / "release").read_text()
    except OSError:
        return None
    m = re.search(r'^JAVA_VERSION="(?:1\.)?(\d+)', text, re.M)
    return int(m.group(1)) if m else None


# conf/jvm-server.options (5.0), minus -XX:+AlwaysPreTouch: touching the whole heap at boot costs
# start time and makes the full heap resident at once, neither useful for a development node.
JVM_SERVER_OPTIONS: tuple[str, ...] = (
    "-ea",
    "-da:net.openhft...",
    "-XX:+UseThreadPriorities",
    "-XX:+HeapDumpOnOutOfMemoryError",
    "-Xss256k",
    "-XX:+UseTLAB",
    "-XX:+ResizeTLAB",
    "-XX:+UseNUMA",
    "-XX:+PerfDisableSharedMem",
    "-Djava.net.preferIPv4Stack=true",
)

# conf/jvm17-server.options (5.0): G1, and the JDK internals Cassandra reaches into.
JVM17_SERVER_OPTIONS: tuple[str, ...] = (
    "-XX:+UseG1GC",
    "-XX:+ParallelRefProcEnabled",
    "-XX:MaxTenuringThreshold=1",
    "-XX:G1HeapRegionSize=16m",
    "-XX:G1RSetUpdatingPauseTimePercent=5",
    "-XX:MaxGCPauseMillis=300",
    "-XX:InitiatingHeapOccupancyPercent=70",
    "-Djdk.attach.allowAttachSelf=true",
    "--add-exports", "java.base/jdk.internal.misc=ALL-UNNAMED",
    "--add-exports", "java.management.rmi/com.sun.jmx.remote.internal.rmi=ALL-UNNAMED",
    "--add-exports", "java.rmi/sun.rmi.registry=ALL-UNNAMED",
    "--add-exports", "java.rmi/sun.rmi.server=ALL-UNNAMED",
    "--add-exports", "java.sql/java.sql=ALL-UNNAMED",
    "--add-exports", "java.base/java.lang.ref=ALL-UNNAMED",
    "--add-exports", "jdk.unsupported/sun.misc=ALL-UNNAMED",
    "--add-exports", "jdk.compiler/com.sun.tools.javac.file=ALL-UNNAMED",
    "--add-exports", "jdk.attach/sun.tools.attach=ALL-UNNAMED",
    "--add-opens", "java.base/java.lang.module=ALL-UNNAMED",
    "--add-opens", "java.base/jdk.internal.loader=ALL-UNNAMED",
    "--add-opens", "java.base/jdk.internal.ref=ALL-UNNAMED",
    "--add-opens", "java.base/jdk.internal.reflect=ALL-UNNAMED",
    "--add-opens", "java.base/jdk.internal.math=ALL-UNNAMED",
    "--add-opens", "java.base/jdk.internal.module=ALL-UNNAMED",
    "--add-opens", "java.base/jdk.internal.util.jar=ALL-UNNAMED",
    "--add-opens", "jdk.management/com.sun.management.internal=ALL-UNNAMED",
    "--add-opens", "java.base/sun.nio.ch=ALL-UNNAMED",
    "--add-opens", "java.base/java.io=ALL-UNNAMED",
    "--add-opens", "java.base/java.lang.reflect=ALL-UNNAMED",
    "--add-opens", "jdk.compiler/com.sun.tools.javac=ALL-UNNAMED",
    "--add-opens", "java.base/java.lang=ALL-UNNAMED",
    "--add-opens", "java.base/java.util=ALL-UNNAMED",
    "-Dio.netty.tryReflectionSetAccessible=true",
    "-Dio.netty.allocator.useCacheForAllThreads=true",
    "-Dio.netty.allocator.maxOrder=11",
)


def _cpus() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def command(settings: CassandraSettings) -> list[str]:
    """The java argv of a foreground Cassandra node; SIGTERM to it is a clean stop.

    Besides the two .options files, this adds what cassandra-env.sh and bin/cassandra add
    (heap, jamm agent, GC threads and log, heap dump path, log/storage dirs, foreground). Left out
    on purpose: JMX (-Dcassandra.jmx.local.port; not needed by the stack and one more port),
    -XX:CompileCommandFile (conf/hotspot_compiler is generated by Cassandra's build, not on Maven)
    and the sigar native library path (no natives on Maven; Cassandra then logs that SIGAR is
    unavailable and skips those OS checks).
    """
    lib, conf, logs = settings.lib, settings.conf, settings.logs
    jamm = _jar(lib, "jamm-") or lib / DEFAULT_JAMM_JAR
    cpus = _cpus()
    return [
        find_java(),
        *JVM_SERVER_OPTIONS,
        *JVM17_SERVER_OPTIONS,
        f"-Xms{settings.heap}",
        f"-Xmx{settings.heap}",
        # cassandra-env.sh: with G1, as many parallel and concurrent GC threads as cores.
        f"-XX:ParallelGCThreads={cpus}",
        f"-XX:ConcGCThreads={cpus}",
        # jamm measures object sizes for memtable accounting; without the agent it falls back to
        # slower self-attachment (the reason for -Djdk.attach.allowAttachSelf above).
        f"-javaagent:{jamm}",
        f"-XX:HeapDumpPath={logs}",
        # bin/cassandra kills the JVM on OOM (`kill -9 %p`); same effect without a shell.
        "-XX:+ExitOnOutOfMemoryError",
        f"-Xlog:gc=info,heap*=info,safepoint=info:file={logs}/gc.log"
        ":time,uptime,pid,tid,level:filecount=3,filesize=10485760",
        f"-Dcassandra.config=file://{conf / 'cassandra.yaml'}",
        f"-Dlogback.configurationFile=file://{conf / 'logback.xml'}",
        f"-Dcassandra.logdir={logs}",
        f"-Dcassandra.storagedir={settings.data}",
        "-Dcassandra-foreground=yes",
        # A lone seed has no gossip peers to wait for (saves ~8 s on every start).
        "-Dcassandra.skip_wait_for_gossip_to_settle=0",
        "-Dcassandra.shutdown_announce_in_ms=0",
        # conf/ first, as cassandra.in.sh does, so our logback.xml wins over any in a jar.
        "-cp", f"{conf}:{lib}/*",
        MAIN_CLASS,
    ]


# --------------------------------------------------------------------------------- readiness

def wait_ready(settings: CassandraSettings, timeout: float = 300.0,
               proc: subprocess.Popen | None = None) -> None:
    """Return once the node answers `SELECT release_version FROM system.local` over CQL.

    The port opening is not enough: the native transport starts last, but a driver session
    is the only proof that queries work. Raises RuntimeError (with the end of system.log) when
    `proc` exits first or `timeout` seconds pass.
    """
    deadline = time.monotonic() + timeout
    last_error = "the CQL port never accepted a connection"
    while True:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"Cassandra exited with code {proc.returncode} before it was ready"
                               f"{_log_tail(settings)}")
        if _port_open(settings.host, settings.cql_port):
            try:
                _query_release_version(settings)
                return
            except Exception as exc:  # noqa: BLE001 - any failure just means "not yet"
                last_error = f"{type(exc).__name__}: {exc}"
        if time.monotonic() > deadline:
            raise RuntimeError(f"Cassandra did not answer CQL on {settings.host}:{settings.cql_port} "
                               f"within {timeout:.0f}s (last error: {last_error}){_log_tail(settings)}")
        time.sleep(0.5)


def _port_open(host: str, port: int) -> bool:
    # Cheap gate: the driver would log a warning for every refused connection.
    try:
        with socket.create_connection((host, port), timeout=1):
            return True
    except OSError:
        return False


def _query_release_version(settings: CassandraSettings) -> str:
    # Imported here: the driver is heavy and only readiness needs it.
    from cassandra.cluster import EXEC_PROFILE_DEFAULT, Cluster, ExecutionProfile
    from cassandra.policies import RoundRobinPolicy

    cluster = Cluster(
        contact_points=[settings.host], port=settings.cql_port,
        execution_profiles={EXEC_PROFILE_DEFAULT: ExecutionProfile(
            load_balancing_policy=RoundRobinPolicy(), request_timeout=5)},
        connect_timeout=5, control_connection_timeout=5)
    try:
        row = cluster.connect().execute("SELECT release_version FROM system.local").one()
        return str(row.release_version)
    finally:
        cluster.shutdown()


def _log_tail(settings: CassandraSettings, lines: int = 40) -> str:
    path = settings.system_log
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return (f"\n(no {path}: the JVM stopped before logging started; "
                "its stdout/stderr has the reason)")
    return f"\nlast lines of {path}:\n{_tail_text(text, lines)}"


def _tail_text(text: str, lines: int = 40) -> str:
    return "\n".join(text.rstrip().splitlines()[-lines:])
