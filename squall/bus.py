"""The JetStream side shared by controller and invokers: connection, stream, subjects.

Activations flow through one work-queue stream on file storage, one subject per
invoker. A message is removed only when its invoker acknowledges it, which it
does after the activation record is stored, so a crash anywhere redelivers.
"""
from __future__ import annotations

import logging

import nats
from nats.aio.client import Client as NATS
from nats.js import JetStreamContext
from nats.js.api import (AckPolicy, ConsumerConfig, DiscardPolicy, RetentionPolicy, StorageType,
                         StreamConfig)
from nats.js.errors import NotFoundError

from squall.config import NatsConfig

log = logging.getLogger(__name__)


async def connect(cfg: NatsConfig, name: str) -> NATS:
    async def on_error(exc: Exception) -> None:
        log.warning("nats: %s", exc)

    return await nats.connect(
        servers=list(cfg.servers),
        user=cfg.user or None,
        password=cfg.password or None,
        name=name,
        max_reconnect_attempts=-1,   # keep trying through a NATS restart
        reconnect_time_wait=0.5,
        error_cb=on_error,
    )


def invoker_subject(cfg: NatsConfig, invoker_id: int) -> str:
    return f"{cfg.subject_prefix}.invoker{invoker_id}"


def completion_subject(cfg: NatsConfig, controller_address: str) -> str:
    """Where invokers send the completions of what the controller at that address published."""
    return f"{cfg.completions_subject}.{controller_address.replace('.', '_').replace(':', '_')}"


def invoker_durable(invoker_id: int) -> str:
    return f"invoker{invoker_id}"


def invoker_consumer(invoker_id: int, ack_wait_s: float, max_ack_pending: int) -> ConsumerConfig:
    """The one durable pull consumer of an invoker's subject: its invoker pulls from it, and a
    controller taking over after the invoker's death pulls from the same one."""
    return ConsumerConfig(durable_name=invoker_durable(invoker_id), ack_policy=AckPolicy.EXPLICIT,
                          ack_wait=ack_wait_s, max_ack_pending=max_ack_pending, max_deliver=-1)


async def ensure_stream(js: JetStreamContext, cfg: NatsConfig) -> None:
    config = StreamConfig(
        name=cfg.stream,
        subjects=[f"{cfg.subject_prefix}.>"],
        retention=RetentionPolicy.WORK_QUEUE,
        storage=StorageType.FILE,
        discard=DiscardPolicy.NEW,   # a full stream refuses new work (the caller sees it) rather than dropping old
        max_msg_size=cfg.max_message_bytes,
        num_replicas=cfg.replicas,
        duplicate_window=120.0,      # a retried publish with the same activation id is stored once
    )
    try:
        await js.stream_info(cfg.stream)
        await js.update_stream(config)
    except NotFoundError:
        await js.add_stream(config)
