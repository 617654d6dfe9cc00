"""Authentication of OpenWhisk keys ("uuid:key", sent as HTTP basic auth).

Keys are stored salted and hashed; a verified key is cached briefly so the hot
path does not hash and read Cassandra on every call.
"""
from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import secrets
import time
import uuid as uuidlib
from dataclasses import dataclass

from squall.errors import Unauthenticated
from squall.store import Store, Subject


@dataclass(frozen=True)
class Identity:
    subject: str
    uuid: str
    key: str                      # the caller's "uuid:key", passed to actions as __OW_API_KEY
    namespaces: tuple[str, ...]   # the first is the default namespace ("_")

    @property
    def default_namespace(self) -> str:
        return self.namespaces[0]


def hash_key(salt: str, key: str) -> str:
    return hashlib.sha256((salt + key).encode()).hexdigest()


def new_credentials() -> tuple[str, str]:
    """A fresh (uuid, key) pair shaped like OpenWhisk's (uuid, 64 alphanumerics)."""
    alphabet = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
    return str(uuidlib.uuid4()), "".join(secrets.choice(alphabet) for _ in range(64))


def make_subject(name: str, namespaces: tuple[str, ...], auth: str) -> Subject:
    uuid, _, key = auth.partition(":")
    salt = secrets.token_hex(16)
    return Subject(uuid=uuid, subject=name, salt=salt, key_hash=hash_key(salt, key), namespaces=namespaces)


def parse_basic(header: str | None) -> tuple[str, str]:
    if not header or not header.startswith("Basic "):
        raise Unauthenticated()
    try:
        decoded = base64.b64decode(header[6:].strip(), validate=True).decode()
    except (binascii.Error, UnicodeDecodeError):
        raise Unauthenticated() from None
    uuid, sep, key = decoded.partition(":")
    if not sep or not uuid or not key:
        raise Unauthenticated()
    return uuid, key


class Authenticator:
    def __init__(self, store: Store, cache_seconds: float):
        self._store = store
        self._ttl = cache_seconds
        self._cache: dict[str, tuple[float, Identity]] = {}

    async def authenticate(self, header: str | None) -> Identity:
        now = time.monotonic()
        hit = self._cache.get(header or "")
        if hit and hit[0] > now:
            return hit[1]
        uuid, key = parse_basic(header)
        subject = await self._store.get_subject(uuid)
        if (subject is None or subject.blocked or not subject.namespaces
                or not hmac.compare_digest(subject.key_hash, hash_key(subject.salt, key))):
            raise Unauthenticated()
        identity = Identity(subject.subject, uuid, f"{uuid}:{key}", subject.namespaces)
        if len(self._cache) > 10_000:
            self._cache.clear()
        self._cache[header] = (now + self._ttl, identity)
        return identity

    async def ensure_subject(self, name: str, namespace: str, auth: str) -> None:
        """Create (or re-key) a subject whose key is `auth`; used for the guest on first start."""
        uuid, _, key = auth.partition(":")
        existing = await self._store.get_subject(uuid)
        if existing and hmac.compare_digest(existing.key_hash, hash_key(existing.salt, key)):
            return
        await self._store.put_subject(make_subject(name, (namespace,), auth))
