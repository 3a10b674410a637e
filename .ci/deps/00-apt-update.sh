#!/usr/bin/env bash
# One apt-get update for every later deps script (they install with --no-install-recommends).
set -euo pipefail
if [ "$(id -u)" -ne 0 ]; then
  echo "deps: not root, skipping apt (tests needing system packages will skip)" >&2
  exit 0
fi
apt-get update -qq
