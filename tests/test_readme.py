"""README's commands, run as written, so they cannot rot: the lines after `make up` in "The two
commands", both blocks of "A tour", the gRPC client's example, `make bench` and `make load` (with
few samples). A `# → text` line says `text` must appear in the output.

Blocks or lines that call `wsk` need Apache's wsk binary ($SQUALL_WSK or `wsk` on PATH); without
it they are skipped and say so.
"""
from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest

from squall.config import REPO_ROOT
from tests import WSK

pytestmark = pytest.mark.stack


def sh_blocks(section: str, language: str = "sh", level: str = "##") -> list[str]:
    text = (REPO_ROOT / "README.md").read_text()
    start = text.index(f"\n{level} {section}\n")
    end = text.find("\n## ", start + 1)
    return re.findall(rf"```{language}\n(.*?)```", text[start:end if end > 0 else None], re.S)


def run_block(block: str) -> str:
    env = dict(os.environ)
    if WSK:
        env["PATH"] = f"{Path(WSK).parent}:{env['PATH']}"
    done = subprocess.run(["bash", "-e", "-o", "pipefail", "-c", block], cwd=REPO_ROOT, env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, f"README block failed ({done.returncode}):\n{done.stdout}\n{done.stderr}"
    for expected in re.findall(r"^# → (.*)$", block, re.M):
        assert expected.strip() in done.stdout, f"{expected!r} not in:\n{done.stdout}"
    return done.stdout


def after_make_up() -> None:
    """What `make up` does after starting the stack (make test only starts it): the sample action."""
    import sys
    subprocess.run([sys.executable, "-m", "squall.demo"], cwd=REPO_ROOT, check=True, capture_output=True, timeout=120)


def test_after_make_up_with_curl(stack):
    after_make_up()
    [_, after_up] = sh_blocks("The two commands")
    assert "you" in run_block("\n".join(line for line in after_up.splitlines() if "wsk " not in line))


def test_after_make_up_with_wsk(stack):
    [_, after_up] = sh_blocks("The two commands")
    if not WSK:
        pytest.skip("needs Apache's wsk binary (set SQUALL_WSK or put wsk on PATH)")
    after_make_up()
    assert "you" in run_block("\n".join(line for line in after_up.splitlines() if "wsk " in line))


def test_tour_with_curl(stack):
    curl, _ = sh_blocks("A tour")
    run_block(curl)


def test_tour_with_wsk(stack):
    _, with_wsk = sh_blocks("A tour")
    if not WSK:
        pytest.skip("needs Apache's wsk binary (set SQUALL_WSK or put wsk on PATH)")
    run_block(with_wsk)


def test_grpc_client_example(stack):
    [example] = sh_blocks("gRPC", language="python", level="###")
    import sys
    done = subprocess.run([sys.executable, "-c", example], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "gRPC" in done.stdout


def test_make_bench_and_make_load_run(stack):
    """The benchmark and the load test, as README runs them, with few samples: they finish and
    write what README says (their figures are for people, not for tests)."""
    state = stack.cfg.paths.state
    env = {**os.environ, "ARGS": "--pool-only --start-samples 1 --samples 3", "USERS": "2", "DURATION": "6s"}
    done = subprocess.run(["make", "bench"], cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert "cold / raw engine start" in done.stdout and (state / "bench" / "latest.json").exists()
    done = subprocess.run(["make", "load"], cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert (state / "load" / "run_stats.csv").exists() and (state / "load" / "run.png").exists()
