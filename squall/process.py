"""How every Squall role runs as a process: uvloop, logging, clean stop on SIGTERM/SIGINT."""
from __future__ import annotations

import asyncio
import faulthandler
import json
import logging
import signal
import sys
import time
from typing import Awaitable, Callable

import uvloop

from squall.config import SquallConfig


# Messages carry action code and payloads larger than gRPC's 4 MB default.
GRPC_OPTIONS = [
    ("grpc.max_receive_message_length", 64 * 1024 * 1024),
    ("grpc.max_send_message_length", 64 * 1024 * 1024),
]


class JsonFormatter(logging.Formatter):
    """One JSON object per line; an activation id given as `extra` rides along."""

    def __init__(self, role: str):
        super().__init__()
        self._role = role

    def format(self, record: logging.LogRecord) -> str:
        out = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "role": self._role,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        if getattr(record, "activation_id", None):
            out["activationId"] = record.activation_id
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out)


def run(role: str, main: Callable[[SquallConfig, asyncio.Event], Awaitable[None]]) -> None:
    """Run `main(config, stop)` on uvloop until it returns; SIGTERM/SIGINT set `stop`."""
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(JsonFormatter(role))
    logging.basicConfig(level=logging.INFO, handlers=[handler], force=True)
    logging.getLogger("cassandra").setLevel(logging.WARNING)
    config = SquallConfig.from_env()
    faulthandler.register(signal.SIGUSR1)   # `kill -USR1 <pid>` dumps every thread's stack

    async def wrapped() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await main(config, stop)

    uvloop.run(wrapped())
