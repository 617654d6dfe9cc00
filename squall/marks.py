"""What became of an activation, in JetStream's key-value bucket: at most once, and fast results.

One key per activation id, on file storage (replicated like the stream on a cluster):

    absent              never started: it may run (on any invoker)
    "started:<n>"       invoker n began to run it: it is never run again
    "{...record...}"    it finished: its record, sent ahead of the completion on the same connection
                        (NATS has it before anyone hears of the result), so the caller can be
                        answered before the (slower) Cassandra write, and a redelivery, a
                        takeover or a read can find the record until it is stored
    "stored"            its record is in Cassandra (the bucket stays small)

`begin` is an atomic create, so two deliveries of one activation cannot both start it, even when
a restarted NATS server has lost its count of deliveries. Moving on from "started" is conditional
on the mark's revision too, so an activation gets one outcome: the invoker's record, or, if a
takeover settled it first (its invoker seemed dead), the takeover's; the other one yields.
"""
from __future__ import annotations

import asyncio
import itertools
import json
from dataclasses import dataclass
from typing import Awaitable

from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js.api import Header, KeyValueConfig, StorageType
from nats.js.errors import BucketNotFoundError, KeyNotFoundError, KeyWrongLastSequenceError
from nats.js.kv import KeyValue

from squall.config import NatsConfig

_TTL_S = 7 * 24 * 3600   # longer than an activation can wait in the stream
_ACK_S = 5.0             # how long a mark's write may wait for JetStream's ack
_WRONG_LAST = (10071, 10164)   # JetStream's "wrong last sequence": someone wrote the mark meanwhile


@dataclass(frozen=True)
class Mark:
    started: bool
    record: dict | None = None   # the record, when it finished and is not known to be stored
    revision: int = 0


class Marks:
    def __init__(self, kv: KeyValue, nc: NATS, bucket: str):
        self._kv = kv
        self._nc = nc
        self._bucket = bucket
        # JetStream's acks of writes sent ahead (`finishing`), by the token ending their reply
        # subject. (nats-py's publish_async never resolves a refused write: it raises in its
        # reply handler instead.)
        self._inbox = nc.new_inbox() + "."
        self._acks: dict[str, asyncio.Future[Msg]] = {}
        self._tokens = itertools.count()

    @classmethod
    async def open(cls, nc: NATS, cfg: NatsConfig) -> "Marks":
        js = nc.jetstream()
        try:
            kv = await js.key_value(cfg.started_bucket)
        except BucketNotFoundError:
            kv = await js.create_key_value(KeyValueConfig(
                bucket=cfg.started_bucket, history=1, ttl=_TTL_S, storage=StorageType.FILE,
                replicas=cfg.replicas))
        marks = cls(kv, nc, cfg.started_bucket)
        await nc.subscribe(marks._inbox + "*", cb=marks._on_ack)
        return marks

    async def _on_ack(self, msg: Msg) -> None:
        ack = self._acks.pop(msg.subject[len(self._inbox):], None)
        if ack is not None and not ack.done():
            ack.set_result(msg)

    async def begin(self, activation_id: str, invoker_id: int) -> int | None:
        """Mark it started by this invoker: the mark's revision, or None if it was marked before
        (do not run it)."""
        try:
            return await self._kv.create(activation_id, f"started:{invoker_id}".encode())
        except KeyWrongLastSequenceError:
            return None

    async def finished(self, activation_id: str, record_json: bytes, revision: int) -> bool:
        """Keep its record with the mark, if the mark is still the one at `revision`; False if
        someone settled the activation meanwhile."""
        return await (await self.finishing(activation_id, record_json, revision))

    async def finishing(self, activation_id: str, record_json: bytes, revision: int) -> Awaitable[bool]:
        """`finished`, in two steps: returns once the write is on its way to JetStream, ahead of
        anything published after it on this connection, and gives what to await for its outcome.
        So the invoker can send the completion right behind it instead of after its ack."""
        token = str(next(self._tokens))
        ack = self._acks[token] = asyncio.get_running_loop().create_future()
        try:
            await self._nc.publish(f"$KV.{self._bucket}.{activation_id}", record_json, reply=self._inbox + token,
                                   headers={Header.EXPECTED_LAST_SUBJECT_SEQUENCE: str(revision)})
        except BaseException:
            self._acks.pop(token, None)
            raise
        return self._kept(activation_id, record_json, token, ack)

    async def _kept(self, activation_id: str, record_json: bytes, token: str, ack: asyncio.Future[Msg]) -> bool:
        try:
            reply = await asyncio.wait_for(ack, _ACK_S)
        finally:
            self._acks.pop(token, None)
        # A PubAck, an error, or (no stream listening) an empty reply with a status header.
        answer = json.loads(reply.data) if reply.data else {"error": {"description": f"no ack: {reply.headers}"}}
        error = answer.get("error")
        if error is None:
            return True
        if error.get("err_code") not in _WRONG_LAST:
            raise RuntimeError(f"the mark of {activation_id} was not written: {error.get('description')}")
        # Refused: settled by someone else, or this very record went in on an earlier try whose
        # ack was lost (the caller retries through a NATS restart). Only the former is a refusal.
        try:
            return (await self._kv.get(activation_id)).value == record_json
        except KeyNotFoundError:
            return False

    async def stored(self, activation_id: str) -> None:
        """Its record is in Cassandra: the mark drops it. Published without waiting for JetStream's
        ack (a key-value put is a message on the bucket's subject): if it is lost, the mark only
        keeps the record longer, and the invoker spares a round trip per activation."""
        await self._nc.publish(f"$KV.{self._bucket}.{activation_id}", b"stored")

    async def get(self, activation_id: str) -> Mark:
        try:
            entry = await self._kv.get(activation_id)
        except KeyNotFoundError:
            return Mark(started=False)
        value = entry.value or b""
        return Mark(started=True, record=json.loads(value) if value.startswith(b"{") else None,
                    revision=entry.revision or 0)
