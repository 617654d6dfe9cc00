"""Pausing a container through its cgroup freezer, next to the engine instead of through it.

The engine's pause and unpause each cost ~7 ms here (an API round trip, then a runc process);
writing the container's freezer file costs ~0.05 ms. OpenWhisk's invoker likewise goes around
Docker for these two calls (it runs `runc pause/resume` itself). Usable when the invoker runs on
the engine's host with the rights to write the file; the backend falls back to the API otherwise.

The engine then still reports the container as running while it is frozen, so a frozen container
must be thawed before the engine is asked to remove it (a frozen process cannot die).
"""
from __future__ import annotations

import asyncio
import time
from pathlib import Path

CGROUP_ROOT = Path("/sys/fs/cgroup")


class CgroupFreezer:
    def __init__(self, state_file: Path, v2: bool):
        self._file = state_file
        self._v2 = v2
        self.frozen = False

    @classmethod
    def for_pid(cls, pid: int, root: Path = CGROUP_ROOT) -> "CgroupFreezer | None":
        """The freezer of the cgroup process `pid` is in, if this process may write it."""
        try:
            lines = Path(f"/proc/{pid}/cgroup").read_text().splitlines()
        except OSError:
            return None
        for line in lines:
            _, controllers, path = line.split(":", 2)
            if "freezer" in controllers.split(","):                     # cgroup v1
                candidate = cls(root / "freezer" / path.lstrip("/") / "freezer.state", v2=False)
                break
        else:
            v2 = [line for line in lines if line.startswith("0::")]
            if not v2:
                return None
            candidate = cls(root / v2[0][3:].lstrip("/") / "cgroup.freeze", v2=True)
        try:
            with open(candidate._file, "r+"):
                return candidate
        except OSError:
            return None

    async def freeze(self, timeout_s: float = 2.0) -> None:
        self._write("1" if self._v2 else "FROZEN")
        self.frozen = True
        deadline = time.monotonic() + timeout_s
        while not self.is_frozen():       # v1 passes through FREEZING; usually done at once
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self._file} did not reach the frozen state")
            await asyncio.sleep(0.0005)

    def is_frozen(self) -> bool:
        if self._v2:
            events = self._file.with_name("cgroup.events").read_text()
            return "frozen 1" in events
        return self._file.read_text().strip() == "FROZEN"

    def thaw(self) -> None:
        self._write("0" if self._v2 else "THAWED")
        self.frozen = False

    def _write(self, value: str) -> None:
        with open(self._file, "w") as f:
            f.write(value)
