"""Build the runtime images locally, without any image registry.

Two steps, both through the Docker Engine API (so Podman's compatible service and a real
Docker engine are driven the same way):

1. base: a Debian bookworm root filesystem made by debootstrap (minbase plus python3 and
   nodejs), imported as `squall/action-base:<digest>`. The tarball is cached under the state
   folder, so a lost image re-imports in seconds instead of re-downloading.
2. one image per runtime kind: FROM the base, with that family's proxy (runtimes/<family>/)
   and its CMD, built from a tiny in-memory context.

Every image is labelled with a digest of its inputs; an image whose label matches is kept,
so running this again is a no-op, and editing a proxy rebuilds only the images it goes into.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import subprocess
import tarfile
import time
from pathlib import Path
from typing import Callable

import docker
from docker.errors import ImageNotFound

from container_pool.runtimes import PROXY_PORT, RUNTIMES, Runtime
from squall.config import REPO_ROOT

SUITE = "bookworm"
PACKAGES = ("python3", "nodejs")
BASE_REPO = "squall/action-base"
INPUT_LABEL = "squall.inputs"

# Per family: the proxy file and how the image runs it.
PROXIES: dict[str, tuple[str, list[str]]] = {
    "python": ("runtimes/python/proxy.py", ["python3", "-u", "/squall/proxy.py"]),
    "nodejs": ("runtimes/nodejs/proxy.js", ["node", "/squall/proxy.js"]),
}

Log = Callable[[str], None]


def _digest(*parts: object) -> str:
    h = hashlib.sha256()
    for part in parts:
        h.update(part if isinstance(part, bytes) else json.dumps(part, sort_keys=True).encode())
        h.update(b"\0")
    return h.hexdigest()[:16]


def _label_of(client: docker.DockerClient, ref: str) -> str | None:
    try:
        labels = client.images.get(ref).labels or {}
    except ImageNotFound:
        return None
    return labels.get(INPUT_LABEL)


def ensure_images(client: docker.DockerClient, work: Path, log: Log = print) -> dict[str, str]:
    """Make sure every runtime's image exists and is current; returns {kind: image}."""
    work.mkdir(parents=True, exist_ok=True)
    base = ensure_base(client, work, log)
    return {rt.kind: ensure_runtime_image(client, base, rt, log) for rt in RUNTIMES}


def ensure_base(client: docker.DockerClient, work: Path, log: Log = print) -> str:
    digest = _digest(SUITE, PACKAGES)
    ref = f"{BASE_REPO}:{digest}"
    if _label_of(client, ref) == digest:
        return ref
    tarball = work / f"rootfs-{SUITE}-{digest}.tar"
    if not tarball.is_file():
        _debootstrap(work, tarball, log)
    log(f"images: importing {tarball.name} as {ref}")
    started = time.monotonic()
    reply = client.api.import_image_from_file(
        str(tarball), repository=BASE_REPO, tag=digest,
        changes=[f'LABEL {INPUT_LABEL}="{digest}"',
                 "ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
                 "ENV LANG=C.UTF-8"])
    # Podman's compatible import ignores the tag (it tags :latest), so tag by the returned id.
    image_id = _imported_id(reply)
    if image_id and _label_of(client, ref) != digest:
        client.api.tag(image_id, BASE_REPO, digest)
        try:
            if client.images.get(f"{BASE_REPO}:latest").id == image_id:
                client.api.remove_image(f"{BASE_REPO}:latest")   # only drops that tag
        except ImageNotFound:
            pass
    if _label_of(client, ref) != digest:
        raise SystemExit(f"[squall] importing {tarball} did not produce {ref}")
    log(f"images: {ref} imported in {time.monotonic() - started:.0f}s")
    return ref


def _imported_id(reply: str) -> str | None:
    """The image id from an import's JSON progress lines (Docker and Podman both end with it)."""
    for line in reversed(str(reply).splitlines()):
        try:
            doc = json.loads(line)
        except ValueError:
            continue
        for key in ("id", "status"):
            value = doc.get(key) if isinstance(doc, dict) else None
            if isinstance(value, str) and value.startswith("sha256:"):
                return value
    return None


def _debootstrap(work: Path, tarball: Path, log: Log) -> None:
    if shutil.which("debootstrap") is None:
        raise SystemExit("[squall] debootstrap is needed to build runtime images: run make setup")
    mirror = os.environ.get("SQUALL_DEBIAN_MIRROR", "http://deb.debian.org/debian")
    rootfs = work / "rootfs.partial"
    shutil.rmtree(rootfs, ignore_errors=True)
    log(f"images: debootstrap {SUITE} with {', '.join(PACKAGES)} from {mirror} (first time, about a minute)")
    started = time.monotonic()
    proc = subprocess.run(
        ["debootstrap", "--variant=minbase", f"--include={','.join(PACKAGES)}", SUITE, str(rootfs), mirror],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, text=True)
    if proc.returncode != 0:
        tail = "\n".join(proc.stdout.splitlines()[-20:])
        raise SystemExit(f"[squall] debootstrap failed (exit {proc.returncode}):\n{tail}")
    # Downloaded .debs and apt lists are only weight in an image that never installs anything.
    for leftover in ("var/cache/apt/archives", "var/lib/apt/lists"):
        for path in (rootfs / leftover).glob("*"):
            if path.is_file():
                path.unlink()
    partial = tarball.with_suffix(".partial")
    subprocess.run(["tar", "--numeric-owner", "-C", str(rootfs), "-cf", str(partial), "."], check=True)
    partial.rename(tarball)
    shutil.rmtree(rootfs, ignore_errors=True)
    log(f"images: root filesystem ready in {time.monotonic() - started:.0f}s "
        f"({tarball.stat().st_size / 1e6:.0f} MB)")


def ensure_runtime_image(client: docker.DockerClient, base: str, runtime: Runtime, log: Log = print) -> str:
    proxy_path, cmd = PROXIES[runtime.family]
    proxy = (REPO_ROOT / proxy_path).read_bytes()
    dockerfile = "\n".join([
        f"FROM {base}",
        f"COPY proxy /squall/{Path(proxy_path).name}",
        "ENV PYTHONDONTWRITEBYTECODE=1",
        f"EXPOSE {PROXY_PORT}",
        "WORKDIR /tmp",
        f"CMD {json.dumps(cmd)}",
        "",
    ]).encode()
    digest = _digest(base, dockerfile, proxy)
    if _label_of(client, runtime.image) == digest:
        return runtime.image
    log(f"images: building {runtime.image} ({runtime.kind})")
    started = time.monotonic()
    context = io.BytesIO()
    with tarfile.open(fileobj=context, mode="w") as tar:
        for name, data in (("Dockerfile", dockerfile), ("proxy", proxy)):
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(data), 0o644
            tar.addfile(info, io.BytesIO(data))
    context.seek(0)
    # pull=False: the base exists only here; there is no registry to ask.
    client.images.build(fileobj=context, custom_context=True, tag=runtime.image, pull=False,
                        rm=True, forcerm=True, labels={INPUT_LABEL: digest})
    if _label_of(client, runtime.image) != digest:
        raise SystemExit(f"[squall] building {runtime.image} did not produce the expected image")
    log(f"images: {runtime.image} built in {time.monotonic() - started:.1f}s")
    return runtime.image
