"""The wskprops file (APIHOST, AUTH, NAMESPACE, and Squall's GRPCHOST), as OpenWhisk's CLI reads it."""
from __future__ import annotations

import os
from pathlib import Path

from squall.config import REPO_ROOT


def default_path() -> Path:
    """WSK_CONFIG_FILE if set (as for wsk), else the one `make up` writes."""
    return Path(os.environ.get("WSK_CONFIG_FILE") or REPO_ROOT / ".squall" / "wskprops")


def read(path: Path | str | None = None) -> dict[str, str]:
    props = {}
    for line in Path(path or default_path()).read_text().splitlines():
        key, sep, value = line.partition("=")
        if sep:
            props[key.strip()] = value.strip()
    return props
