"""HTTP to the action proxies inside containers: /init and /run.

One aiohttp session with a keep-alive pool serves every container, so a warm
invocation reuses its TCP connection.
"""
from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

import aiohttp


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


class ProxyClient:
    def __init__(self, max_body: int):
        self._max_body = max_body
        self._session: aiohttp.ClientSession | None = None

    def _http(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=0, keepalive_timeout=600),
                json_serialize=None,
                auto_decompress=False,
            )
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

    async def _body(self, resp: aiohttp.ClientResponse) -> bytes:
        """The whole body, or its first max_body + 1 bytes if it is longer (enough to tell the
        action its result was too large). One read returns only what has arrived so far."""
        chunks, size = [], 0
        while size <= self._max_body:
            chunk = await resp.content.read(self._max_body + 1 - size)
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
        return b"".join(chunks)

    async def post(self, address: str, path: str, body: bytes, timeout_s: float,
                   connect_retry_s: float = 0.0) -> ProxyReply:
        """POST body; while the proxy is still starting, retry refused connections for connect_retry_s."""
        deadline = time.monotonic() + timeout_s
        retry_until = time.monotonic() + connect_retry_s
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise ProxyTimeout()
            try:
                async with self._http().post(
                        f"http://{address}{path}", data=body,
                        headers={"Content-Type": "application/json"},
                        timeout=aiohttp.ClientTimeout(total=remaining)) as resp:
                    return ProxyReply(resp.status, await self._body(resp))
            except asyncio.TimeoutError:
                raise ProxyTimeout() from None
            except (aiohttp.ClientConnectorError, aiohttp.ServerDisconnectedError) as exc:
                if time.monotonic() < retry_until:
                    await asyncio.sleep(0.001)   # the proxy is starting: it will listen soon
                    continue
                if isinstance(exc, aiohttp.ClientConnectorError):
                    raise ProxyRefused(str(exc)) from None
                raise ProxyUnreachable(str(exc)) from None
            except aiohttp.ClientError as exc:
                raise ProxyUnreachable(str(exc)) from None
