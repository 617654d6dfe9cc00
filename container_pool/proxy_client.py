"""HTTP to the action proxies inside containers: /init and /run.

Plain HTTP/1.1 over asyncio streams, with a keep-alive pool per container address: a warm
invocation reuses its connection. The proxies are simple peers (OpenWhisk's /init and /run,
JSON in and out), so this speaks just what they need: a POST with Content-Length, and a reply
with Content-Length, chunked or until close. A general client (aiohttp's, before) spent more
of the invoker's CPU on each call than everything else the call needed on the invoker.
"""
from __future__ import annotations

import asyncio
import collections
import socket
import time
from dataclasses import dataclass


@dataclass(frozen=True)
class ProxyReply:
    status: int
    body: bytes


class ProxyTimeout(Exception):
    """The proxy did not answer within the action's time limit."""


class ProxyUnreachable(Exception):
    """The proxy could not be reached or dropped the connection."""


class ProxyRefused(ProxyUnreachable):
    """No connection could be made at all: the request was certainly not received."""


class _BadReply(Exception):
    """The peer's reply is not HTTP this client understands."""


# An idle connection older than this is not reused: a proxy may close idle connections (Node's
# keepAliveTimeout is 5 s), and a request sent on one it is closing would be lost.
_IDLE_REUSE_S = 4.0
_BUFFER = 1 << 20   # the stream's buffer limit (and longest header line)


class _Connection:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        self.reader = reader
        self.writer = writer
        self.idle_since = time.monotonic()

    def close(self) -> None:
        self.writer.close()


class ProxyClient:
    def __init__(self, max_body: int):
        self._max_body = max_body
        self._idle: dict[str, collections.deque[_Connection]] = collections.defaultdict(collections.deque)

    async def close(self) -> None:
        for idle in self._idle.values():
            while idle:
                idle.pop().close()
        self._idle.clear()

    def _reusable(self, address: str) -> _Connection | None:
        idle = self._idle.get(address)
        now = time.monotonic()
        while idle:
            conn = idle.pop()
            if now - conn.idle_since < _IDLE_REUSE_S and not conn.reader.at_eof():
                return conn
            conn.close()
        return None

    async def _connect(self, address: str) -> _Connection:
        host, _, port = address.rpartition(":")
        reader, writer = await asyncio.open_connection(host, int(port), limit=_BUFFER)
        sock = writer.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return _Connection(reader, writer)

    async def post(self, address: str, path: str, body: bytes, timeout_s: float,
                   connect_retry_s: float = 0.0) -> ProxyReply:
        """POST body; while the proxy is still starting, retry refused connections for connect_retry_s."""
        deadline = time.monotonic() + timeout_s
        retry_until = time.monotonic() + connect_retry_s
        head = (f"POST {path} HTTP/1.1\r\nHost: {address}\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(body)}\r\n\r\n").encode()
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise ProxyTimeout()
            conn = self._reusable(address)
            try:
                async with asyncio.timeout(remaining):
                    if conn is None:
                        try:
                            conn = await self._connect(address)
                        except OSError as exc:
                            if time.monotonic() < retry_until:
                                await asyncio.sleep(0.001)   # the proxy is starting: it will listen soon
                                continue
                            raise ProxyRefused(str(exc)) from None
                    conn.writer.writelines((head, body))   # headers and body in one send
                    reply, keep = await self._reply(conn.reader)
            except TimeoutError:
                if conn is not None:
                    conn.close()
                raise ProxyTimeout() from None
            except (OSError, ValueError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, _BadReply) as exc:
                if conn is not None:
                    conn.close()
                raise ProxyUnreachable(str(exc) or type(exc).__name__) from None
            except BaseException:   # cancelled: the connection is mid-exchange, not reusable
                if conn is not None:
                    conn.close()
                raise
            if keep:
                conn.idle_since = time.monotonic()
                self._idle[address].append(conn)
            else:
                conn.close()
            return reply

    async def _reply(self, reader: asyncio.StreamReader) -> tuple[ProxyReply, bool]:
        """The reply, and whether the connection can carry another request."""
        status_line = await reader.readuntil(b"\r\n")
        parts = status_line.split(None, 2)
        if len(parts) < 2 or not parts[0].startswith(b"HTTP/1.") or not parts[1].isdigit():
            raise _BadReply(f"not an HTTP reply: {status_line[:80]!r}")
        status = int(parts[1])
        keep = parts[0] == b"HTTP/1.1"
        length, chunked = None, False
        while (line := await reader.readuntil(b"\r\n")) != b"\r\n":
            name, _, value = line.partition(b":")
            name, value = name.strip().lower(), value.strip().lower()
            if name == b"content-length":
                length = int(value)
            elif name == b"transfer-encoding":
                chunked = b"chunked" in value
            elif name == b"connection":
                keep = value == b"keep-alive" or (keep and value != b"close")
        if status in (204, 304) or status < 200:
            body = b""
        elif chunked:
            body = await self._chunked(reader)
        elif length is not None:
            if length > self._max_body:   # enough to tell the action its result was too large
                return ProxyReply(status, await reader.readexactly(self._max_body + 1)), False
            body = await reader.readexactly(length)
        else:   # until the peer closes
            return ProxyReply(status, await self._until_closed(reader)), False
        return ProxyReply(status, body), keep and len(body) <= self._max_body

    async def _until_closed(self, reader: asyncio.StreamReader) -> bytes:
        chunks, size = [], 0
        while size <= self._max_body and (chunk := await reader.read(self._max_body + 1 - size)):
            chunks.append(chunk)
            size += len(chunk)
        return b"".join(chunks)

    async def _chunked(self, reader: asyncio.StreamReader) -> bytes:
        chunks, size = [], 0
        while True:
            line = await reader.readuntil(b"\r\n")
            n = int(line.split(b";", 1)[0].strip(), 16)
            if n == 0:
                while await reader.readuntil(b"\r\n") != b"\r\n":   # trailers
                    pass
                return b"".join(chunks)
            if size + n > self._max_body:
                chunks.append(await reader.readexactly(self._max_body + 1 - size))
                return b"".join(chunks)   # (the rest is left unread: the connection is not reused)
            chunks.append(await reader.readexactly(n))
            size += n
            await reader.readexactly(2)
