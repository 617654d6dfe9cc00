"""JSON passed on as bytes, without parsing and encoding it again (a large payload or result
costs milliseconds a pass)."""
from __future__ import annotations


def as_sent(body: bytes) -> bool:
    """Whether JSON bytes can be passed on as they are, inside other JSON or to an action's
    proxy: an object in UTF-8 without a byte order mark (json.loads also reads UTF-16 and -32,
    and the mark; not every reader does)."""
    return body.lstrip()[:1] == b"{" and b"\x00" not in body[:4]
