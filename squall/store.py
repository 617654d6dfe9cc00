"""Squall's persistent state in Cassandra: subjects, entities, activation records.

One module owns the schema and every query, so the controller and the invokers
agree on both. The driver is callback based; `_run` bridges its futures into
asyncio. Statements are prepared once; replication and consistency come from
CassandraConfig, so the same code runs on one node or a multi-datacenter cluster.
"""
from __future__ import annotations

import asyncio
import json
import logging
from dataclasses import dataclass
from typing import Any, Sequence

from cassandra import ConsistencyLevel
from cassandra.auth import PlainTextAuthProvider
from cassandra.cluster import EXEC_PROFILE_DEFAULT, Cluster, ExecutionProfile, NoHostAvailable, ResponseFuture, Session
from cassandra.policies import DCAwareRoundRobinPolicy, TokenAwarePolicy
from cassandra.query import BatchStatement, BatchType

from squall.config import CassandraConfig
from squall.errors import Unavailable

log = logging.getLogger(__name__)


def _tables(ks: str, ttl: int) -> Sequence[str]:
    return (
        f"""CREATE TABLE IF NOT EXISTS {ks}.subjects (
            uuid text PRIMARY KEY, subject text, salt text, key_hash text,
            namespaces list<text>, blocked boolean)""",
        # One partition per namespace and collection: listing is one partition read.
        f"""CREATE TABLE IF NOT EXISTS {ks}.entities (
            namespace text, collection text, name text, doc text, updated bigint,
            PRIMARY KEY ((namespace, collection), name))""",
        f"""CREATE TABLE IF NOT EXISTS {ks}.activations (
            activation_id text PRIMARY KEY, namespace text, name text, start bigint, doc text)
            WITH default_time_to_live = {ttl}""",
        # Newest first per namespace, for listing activations.
        f"""CREATE TABLE IF NOT EXISTS {ks}.activations_by_namespace (
            namespace text, start bigint, activation_id text, name text, doc text,
            PRIMARY KEY ((namespace), start, activation_id))
            WITH CLUSTERING ORDER BY (start DESC, activation_id ASC)
            AND default_time_to_live = {ttl}""",
    )


def revision(doc: dict) -> str:
    """A stored entity's revision: changes on every update, also across delete and re-create."""
    return f"{doc.get('version', '0.0.1')}@{doc.get('updated', 0)}"


@dataclass(frozen=True)
class Subject:
    uuid: str
    subject: str
    salt: str
    key_hash: str
    namespaces: tuple[str, ...]
    blocked: bool = False


class Store:
    def __init__(self, cluster: Cluster, session: Session, config: CassandraConfig):
        self._cluster = cluster
        self._session = session
        self._config = config
        self._prepared: dict[str, Any] = {}

    @classmethod
    async def connect(cls, config: CassandraConfig, create_schema: bool = False) -> "Store":
        profile = ExecutionProfile(
            load_balancing_policy=TokenAwarePolicy(DCAwareRoundRobinPolicy()),
            consistency_level=ConsistencyLevel.name_to_value[config.consistency.upper()],
            request_timeout=config.request_timeout_s,
        )
        auth = PlainTextAuthProvider(config.user, config.password) if config.user else None
        cluster = Cluster(
            contact_points=list(config.contact_points),
            port=config.port,
            protocol_version=config.protocol_version,
            auth_provider=auth,
            execution_profiles={EXEC_PROFILE_DEFAULT: profile},
        )
        session = await _connect(cluster, config.connect_timeout_s)
        store = cls(cluster, session, config)
        if create_schema:
            await store.create_schema()
        await store._prepare()
        return store

    async def create_schema(self) -> None:
        c = self._config
        if c.replication_class == "NetworkTopologyStrategy":
            dcs = dict(part.split(":") for part in c.datacenters.split(",") if part)
            replication = {"class": "NetworkTopologyStrategy", **dcs}
        else:
            replication = {"class": "SimpleStrategy", "replication_factor": str(c.replication_factor)}
        repl = ", ".join(f"'{k}': '{v}'" for k, v in replication.items())
        await self._run(self._session.execute_async(
            f"CREATE KEYSPACE IF NOT EXISTS {c.keyspace} WITH replication = {{{repl}}}"))
        for ddl in _tables(c.keyspace, c.activation_ttl_s):
            await self._run(self._session.execute_async(ddl))

    async def _prepare(self) -> None:
        queries = {
            "subject_get": "SELECT uuid, subject, salt, key_hash, namespaces, blocked FROM {ks}.subjects WHERE uuid = ?",
            "subject_list": "SELECT uuid, subject, salt, key_hash, namespaces, blocked FROM {ks}.subjects",
            "subject_delete": "DELETE FROM {ks}.subjects WHERE uuid = ?",
            "subject_put": "INSERT INTO {ks}.subjects (uuid, subject, salt, key_hash, namespaces, blocked) VALUES (?, ?, ?, ?, ?, ?)",
            "entity_get": "SELECT doc FROM {ks}.entities WHERE namespace = ? AND collection = ? AND name = ?",
            "entity_put": "INSERT INTO {ks}.entities (namespace, collection, name, doc, updated) VALUES (?, ?, ?, ?, ?)",
            "entity_create": "INSERT INTO {ks}.entities (namespace, collection, name, doc, updated) VALUES (?, ?, ?, ?, ?) IF NOT EXISTS",
            "entity_delete": "DELETE FROM {ks}.entities WHERE namespace = ? AND collection = ? AND name = ? IF EXISTS",
            "entity_list": "SELECT name, doc FROM {ks}.entities WHERE namespace = ? AND collection = ?",
            "activation_put": "INSERT INTO {ks}.activations (activation_id, namespace, name, start, doc) VALUES (?, ?, ?, ?, ?)",
            "activation_put_ns": "INSERT INTO {ks}.activations_by_namespace (namespace, start, activation_id, name, doc) VALUES (?, ?, ?, ?, ?)",
            "activation_get": "SELECT namespace, doc FROM {ks}.activations WHERE activation_id = ?",
            "activation_list": "SELECT doc FROM {ks}.activations_by_namespace WHERE namespace = ? AND start >= ? AND start <= ? LIMIT ?",
            "activation_count": "SELECT COUNT(*) FROM {ks}.activations_by_namespace WHERE namespace = ? AND start >= ? AND start <= ?",
            # One partition, filtered where it is read.
            "activation_count_named": "SELECT COUNT(*) FROM {ks}.activations_by_namespace WHERE namespace = ? AND start >= ? AND start <= ? AND name = ? ALLOW FILTERING",
        }
        queries = {name: q.format(ks=self._config.keyspace) for name, q in queries.items()}
        names = list(queries)
        prepared = await asyncio.gather(*(asyncio.to_thread(self._session.prepare, queries[n]) for n in names))
        self._prepared = dict(zip(names, prepared))

    async def _run(self, future: ResponseFuture) -> list:
        """Await a driver future; returns the rows (all pages)."""
        loop = asyncio.get_running_loop()
        done: asyncio.Future = loop.create_future()
        rows: list = []

        def on_rows(page):
            rows.extend(page or ())
            if future.has_more_pages:
                future.start_fetching_next_page()
            else:
                loop.call_soon_threadsafe(_settle, done, rows, None)

        def on_error(exc):
            loop.call_soon_threadsafe(_settle, done, None, _unavailable(exc))

        future.add_callbacks(on_rows, on_error)
        return await done

    def _exec(self, name: str, *args: Any) -> ResponseFuture:
        return self._submit(self._prepared[name], args)

    def _submit(self, statement: Any, args: Any = None) -> ResponseFuture:
        try:
            return self._session.execute_async(statement, args)
        except Exception as exc:   # no host up at all
            raise _unavailable(exc) from exc

    async def close(self) -> None:
        await asyncio.to_thread(self._cluster.shutdown)

    # Subjects

    async def get_subject(self, uuid: str) -> Subject | None:
        rows = await self._run(self._exec("subject_get", uuid))
        if not rows:
            return None
        r = rows[0]
        return Subject(r.uuid, r.subject, r.salt, r.key_hash, tuple(r.namespaces or ()), bool(r.blocked))

    async def list_subjects(self) -> list[Subject]:
        """Every subject: a full scan, for the admin command only."""
        rows = await self._run(self._exec("subject_list"))
        return [Subject(r.uuid, r.subject, r.salt, r.key_hash, tuple(r.namespaces or ()), bool(r.blocked))
                for r in rows]

    async def delete_subject(self, uuid: str) -> None:
        await self._run(self._exec("subject_delete", uuid))

    async def put_subject(self, s: Subject) -> None:
        await self._run(self._exec("subject_put", s.uuid, s.subject, s.salt, s.key_hash, list(s.namespaces), s.blocked))

    # Entities (documents are OpenWhisk's JSON)

    async def get_entity(self, namespace: str, collection: str, name: str) -> dict | None:
        rows = await self._run(self._exec("entity_get", namespace, collection, name))
        return json.loads(rows[0].doc) if rows else None

    async def put_entity(self, namespace: str, collection: str, name: str, doc: dict, create_only: bool) -> bool:
        """Store doc; with create_only, only if absent. Returns False when it already existed."""
        args = (namespace, collection, name, json.dumps(doc, separators=(",", ":")), doc.get("updated", 0))
        if create_only:
            rows = await self._run(self._exec("entity_create", *args))
            return bool(rows[0].applied)
        await self._run(self._exec("entity_put", *args))
        return True

    async def delete_entity(self, namespace: str, collection: str, name: str) -> bool:
        rows = await self._run(self._exec("entity_delete", namespace, collection, name))
        return bool(rows[0].applied)

    async def ensure_action(self, doc: dict) -> None:
        """Store an action the platform installs, unless the same code is there (run at every start)."""
        current = await self.get_entity(doc["namespace"], "actions", doc["name"])
        if current is None or current["exec"].get("code") != doc["exec"]["code"]:
            await self.put_entity(doc["namespace"], "actions", doc["name"], doc, create_only=False)

    async def list_entities(self, namespace: str, collection: str) -> list[dict]:
        rows = await self._run(self._exec("entity_list", namespace, collection))
        return [json.loads(r.doc) for r in rows]

    # Activation records: written by invokers, idempotent by activation id.

    async def put_activation(self, record: dict, doc: str | None = None) -> None:
        """One record (doc: its JSON, if already serialized), as two plain writes."""
        doc = doc or json.dumps(record, separators=(",", ":"))
        aid, ns, name, start = record["activationId"], record["namespace"], record["name"], record["start"]
        await asyncio.gather(
            self._run(self._exec("activation_put", aid, ns, name, start, doc)),
            self._run(self._exec("activation_put_ns", ns, start, aid, name, doc)),
        )

    async def put_activations(self, records: Sequence[tuple[dict, str]]) -> None:
        """Several (record, its JSON) in one unlogged batch: one request and one commit log sync
        for all, and one mutation of each namespace's listing partition. Unlogged, since each
        record is idempotent and its writer retries the whole batch until it is stored. Keep a
        batch under the cluster's batch_size_fail_threshold (stock: 50 KiB)."""
        batch = BatchStatement(batch_type=BatchType.UNLOGGED)
        for record, doc in records:
            aid, ns, name, start = record["activationId"], record["namespace"], record["name"], record["start"]
            batch.add(self._prepared["activation_put"], (aid, ns, name, start, doc))
            batch.add(self._prepared["activation_put_ns"], (ns, start, aid, name, doc))
        await self._run(self._submit(batch))

    async def get_activation(self, activation_id: str) -> dict | None:
        rows = await self._run(self._exec("activation_get", activation_id))
        return json.loads(rows[0].doc) if rows else None

    async def list_activations(self, namespace: str, limit: int, since: int = 0, upto: int = 0) -> list[dict]:
        """Newest first, start within [since, upto] (0: unbounded)."""
        rows = await self._run(self._exec("activation_list", namespace, since or 0, upto or 2**62, limit))
        return [json.loads(r.doc) for r in rows]

    async def count_activations(self, namespace: str, since: int = 0, upto: int = 0, name: str = "") -> int:
        """How many start within [since, upto] (0: unbounded), of the action with this short name
        if one is given."""
        bounds = (namespace, since or 0, upto or 2**62)
        rows = await self._run(self._exec("activation_count_named", *bounds, name) if name
                               else self._exec("activation_count", *bounds))
        return rows[0].count if rows else 0


def _unavailable(exc: BaseException) -> Unavailable:
    """Cassandra down, restarting or timing out is a 503 for callers, not an internal error;
    writers that must not give up (the invoker's record) retry on it."""
    error = Unavailable()
    error.__cause__ = exc
    return error


async def _connect(cluster: Cluster, timeout_s: float) -> Session:
    """Connect, waiting for Cassandra while it starts (or restarts) rather than failing at once."""
    deadline = asyncio.get_running_loop().time() + timeout_s
    delay = 0.5
    while True:
        try:
            return await asyncio.to_thread(cluster.connect)
        except NoHostAvailable as exc:
            if asyncio.get_running_loop().time() + delay > deadline:
                raise
            log.warning("cassandra not reachable yet, retrying in %.1fs: %s", delay, exc)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)


def _settle(fut: asyncio.Future, value: Any, exc: BaseException | None) -> None:
    if fut.done():
        return
    if exc is not None:
        fut.set_exception(exc)
    else:
        fut.set_result(value)
