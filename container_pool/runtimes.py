"""Runtime kinds and the local images that serve them.

Every image runs a proxy on port 8080 that speaks OpenWhisk's action protocol
(POST /init once, POST /run per activation, log sentinels after each run), so an
official OpenWhisk runtime image can stand in for ours by changing `image`.
"""
from __future__ import annotations

from dataclasses import dataclass

PROXY_PORT = 8080
LOG_SENTINEL = "XXX_THE_END_OF_A_WHISK_ACTIVATION_XXX"


@dataclass(frozen=True)
class Runtime:
    kind: str          # canonical kind, as stored on the action
    image: str         # local image reference
    family: str        # "python" or "nodejs": which proxy the image carries
    default: bool = False


RUNTIMES: tuple[Runtime, ...] = (
    Runtime("python:3.11", "squall/action-python-v3.11:latest", "python", default=True),
    Runtime("nodejs:18", "squall/action-nodejs-v18:latest", "nodejs", default=True),
)

# OpenWhisk accepts family names and ":default" for the default version of a family.
ALIASES: dict[str, str] = {
    "python:3": "python:3.11",
    "python:default": "python:3.11",
    "python": "python:3.11",
    "nodejs": "nodejs:18",
    "nodejs:default": "nodejs:18",
}


def resolve(kind: str) -> Runtime | None:
    """The runtime serving `kind` (an alias or canonical kind), or None if unknown."""
    canonical = ALIASES.get(kind, kind)
    for runtime in RUNTIMES:
        if runtime.kind == canonical:
            return runtime
    return None
