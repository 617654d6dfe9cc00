#!/usr/bin/env bash
# Installs what Squall needs on this machine, idempotently: system packages
# (container engine, Java 17, Maven, debootstrap), the Python virtualenv with
# the project, and the generated gRPC code. Safe to run again: it only does
# what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

say() { echo "[squall] $*"; }

# 1. System packages (Debian). Podman is only needed when no DOCKER_HOST is given.
# nftables: the firewall between action containers and the services (squall/netns.py).
packages=(openjdk-17-jre-headless maven debootstrap curl ca-certificates iproute2 nftables)
if [ -z "${DOCKER_HOST:-}" ]; then
  packages+=(podman runc netavark aardvark-dns iptables catatonit conmon)
fi
# Node.js and npm run the conformance suite (the official `openwhisk` npm client).
command -v node >/dev/null && command -v npm >/dev/null || packages+=(nodejs npm)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  say "installing system packages: ${missing[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
else
  say "system packages: present"
fi

# 2. Python virtualenv with the project (Python 3.11+).
PY=""
for cand in python3.13 python3.12 python3.11 python3; do
  if command -v "$cand" >/dev/null && "$cand" 2>/dev/null -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
    PY=$(command -v "$cand"); break
  fi
done
[ -n "$PY" ] || { echo "[squall] Python 3.11 or newer is needed" >&2; exit 1; }
if [ ! -x .venv/bin/python ]; then
  say "creating .venv with $PY"
  "$PY" -m venv .venv
fi
stamp=.venv/.squall-installed
want=$(sha256sum pyproject.toml | cut -d' ' -f1)
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  say "installing Python dependencies (pip)"
  .venv/bin/python -m pip install -q --upgrade pip
  .venv/bin/python -m pip install -q -e .
  echo "$want" > "$stamp"
else
  say "Python dependencies: present"
fi

# 3. Generated gRPC code (not committed).
make -s proto
