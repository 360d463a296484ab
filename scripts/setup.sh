#!/usr/bin/env bash
# Set up everything AMS needs on a Debian 12 machine: system packages (when
# missing, via apt-get, as root) and a virtual environment in .venv with AMS
# and its test extras.  Idempotent: a second run does only what is missing.
#
#   scripts/setup.sh            # runtime + test dependencies
#   AMS_SETUP_QUIET=1 ...        # less output
set -euo pipefail
cd "$(dirname "$0")/.."

say() { [ -n "${AMS_SETUP_QUIET:-}" ] || printf 'setup: %s\n' "$*" >&2; }

# System packages: what pyfuse3 builds against, and what the tests drive
# (the multi-host tests bring up GlusterFS, MooseFS and sshfs themselves).
PKGS=(libfuse3-dev fuse3 pkg-config python3-venv python3-dev gcc swaks libnet-ssleay-perl isync mutt tmux
      glusterfs-server glusterfs-client moosefs-master moosefs-chunkserver moosefs-client
      sshfs openssh-server openssh-client iproute2 util-linux)
missing=()
for p in "${PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "setup: need root to install: ${missing[*]} (or install them and re-run)" >&2
    exit 1
  fi
  say "installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# Python >= 3.11: prefer the one on PATH, else Debian's.
PY=""
for cand in python3 python3.12 python3.11 /usr/bin/python3; do
  if command -v "$cand" >/dev/null 2>&1 &&
     "$cand" -c 'import sys, venv; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
    PY=$(command -v "$cand"); break
  fi
done
[ -n "$PY" ] || { echo "setup: no Python >= 3.11 with venv found" >&2; exit 1; }

if [ ! -x .venv/bin/python ]; then
  say "creating .venv with $PY"
  "$PY" -m venv .venv
fi
stamp=.venv/.ams-installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  say "installing AMS and its dependencies into .venv"
  .venv/bin/python -m pip install -q --upgrade pip >/dev/null
  .venv/bin/python -m pip install -q -e '.[test,fuse]'
  touch "$stamp"
fi
say "ready: $(.venv/bin/ams --version)"
