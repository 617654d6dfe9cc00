"""Reading a container's output as LogLines, two ways.

FileLogSource reads the engine's own log file for the container (Docker's json-file, Podman's
k8s-file) when the invoker runs on the engine's host, as OpenWhisk's invoker does: a read after
a run finds the activation's lines, sentinels included, without any API call or polling delay,
and with the engine's own nanosecond timestamps. StreamLogSource, for a remote engine, follows
the API's log stream in a thread per output stream and stamps lines when they arrive.
"""
from __future__ import annotations

import collections
import json
import logging
import os
import threading
from datetime import datetime, timezone
from typing import Callable, Iterable

from container_pool.backend import LogLine

log = logging.getLogger(__name__)


def _utc(stamp: str) -> str:
    # Engines write "...+00:00" (Podman) or "...Z" (Docker); OpenWhisk's records use "Z".
    return stamp[:-6] + "Z" if stamp.endswith("+00:00") else stamp


class FileLogSource:
    def __init__(self, path: str):
        self._path = path
        self._file = None
        self._pending = b""       # an incomplete last line, until its newline arrives
        self._partial = {}        # k8s-file: stream -> text of a line split into parts

    def read(self) -> list[LogLine]:
        if self._file is None:
            try:
                self._file = open(self._path, "rb")
            except OSError:
                return []
        data = self._file.read()
        if not data:
            return []
        complete, _, self._pending = (self._pending + data).rpartition(b"\n")
        return [line for raw in complete.split(b"\n") if raw and (line := self._parse(raw)) is not None]

    def _parse(self, raw: bytes) -> LogLine | None:
        text = raw.decode("utf-8", "replace")
        if text.startswith("{"):                       # json-file: one JSON object per line
            try:
                doc = json.loads(text)
            except ValueError:
                return None
            return LogLine(_utc(doc.get("time", "")), doc.get("stream", "stdout"), doc.get("log", "").rstrip("\n"))
        stamp, stream, tag, body = (text.split(" ", 3) + ["", "", ""])[:4]   # k8s-file
        if tag == "P":                                 # a long line arrives in parts
            self._partial[stream] = self._partial.get(stream, "") + body
            return None
        return LogLine(_utc(stamp), stream, self._partial.pop(stream, "") + body)

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


class StreamLogSource:
    def __init__(self, streams: Callable[[str], Iterable[bytes]], name: str):
        self._lines: collections.deque[LogLine] = collections.deque()
        self._closed = False
        for stream in ("stdout", "stderr"):
            threading.Thread(target=self._pump, args=(streams, stream), name=f"logs-{name}-{stream}",
                             daemon=True).start()

    def _pump(self, streams: Callable[[str], Iterable[bytes]], stream: str) -> None:
        pending = b""
        try:
            for chunk in streams(stream):
                if self._closed:
                    return
                pending += chunk
                while b"\n" in pending:
                    line, pending = pending.split(b"\n", 1)
                    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
                    self._lines.append(LogLine(stamp, stream, line.decode("utf-8", "replace")))
        except Exception as exc:   # the container is gone, or the engine restarted
            log.debug("log stream %s ended: %s", stream, exc)

    def read(self) -> list[LogLine]:
        out = []
        while self._lines:
            out.append(self._lines.popleft())
        return out

    def close(self) -> None:
        self._closed = True


def open_log_source(path: str | None, streams: Callable[[str], Iterable[bytes]], name: str):
    """The engine's log file when this process can read it (same host, enough rights), else the API."""
    if path and os.access(path, os.R_OK):
        return FileLogSource(path)
    return StreamLogSource(streams, name)
