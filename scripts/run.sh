#!/usr/bin/env bash
# Set up, then run every AMS role over a local store in ./var (created on the
# first run, with a demo user), printing where to connect.  Ctrl-C stops it.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
exec .venv/bin/ams serve --root var/store "$@"
