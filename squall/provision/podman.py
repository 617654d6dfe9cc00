"""Rootful Podman serving the Docker-compatible API on a unix socket, for the local stack.

Only used when no DOCKER_HOST is given: with a real Docker engine nothing here runs, and the
invoker talks to that engine through the same `docker` SDK calls.

The settings below are the ones that work on a Debian VM with hybrid cgroups (v1 freezer and
memory controllers) and no CAP_SYS_RESOURCE: podman's default ulimits cannot be raised there,
crun fails on hybrid cgroups, and systemd is not the cgroup manager nor the event log.
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Callable

CONF_PATH = Path("/etc/containers/containers.conf.d/squall.conf")

CONF_TEXT = """# Written by squall/provision/podman.py for the local stack.
[containers]
default_ulimits = ["nofile=20000:20000", "nproc=4096:4096"]

[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"

[network]
network_backend = "netavark"
"""


def ensure_config(log: Callable[[str], None] = print, path: Path = CONF_PATH) -> None:
    """Write the drop-in containers.conf (idempotent). Podman reads it at each start."""
    if shutil.which("podman") is None:
        raise SystemExit("[squall] podman is not installed: run scripts/bootstrap.sh (make setup), "
                         "or set DOCKER_HOST to a Docker engine")
    if path.is_file() and path.read_text() == CONF_TEXT:
        return
    if os.geteuid() != 0:
        raise SystemExit(f"[squall] rootful Podman needs {path}; run as root, or set DOCKER_HOST")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(CONF_TEXT)
    log(f"podman: wrote {path}")


def service_argv(socket_path: Path) -> list[str]:
    """`podman system service` on our own socket; --time=0 keeps it up without clients."""
    return ["podman", "system", "service", "--time=0", f"unix://{socket_path}"]
