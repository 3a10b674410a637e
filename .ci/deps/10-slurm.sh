#!/usr/bin/env bash
# Slurm for the slurm-batch backend's integration tests: slurmctld, slurmd,
# the client commands and munge from Debian.  Idempotent: installs only what
# is missing.  Starts nothing: tests/slurm_cluster.py writes a throw-away
# slurm.conf and starts (and stops) the daemons for the test session.
set -euo pipefail
if [ "$(id -u)" -ne 0 ]; then
  echo "deps: not root, skipping Slurm (the real-Slurm tests will skip)" >&2
  exit 0
fi
missing=()
for pkg in slurmctld slurmd slurm-client munge; do
  if ! dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$pkg")
  fi
done
if [ "${#missing[@]}" -eq 0 ]; then
  echo "deps: Slurm already installed ($(dpkg-query -W -f='${Version}' slurmctld))"
  exit 0
fi
export DEBIAN_FRONTEND=noninteractive
apt-get install -y -qq --no-install-recommends "${missing[@]}"
# The packages may start their services where an init system runs; the tests
# run their own daemons on other ports, so stop any the packages started.
for service in slurmctld slurmd munge; do
  if command -v systemctl >/dev/null 2>&1 && systemctl is-active --quiet "$service" 2>/dev/null; then
    systemctl stop "$service" || true
  fi
done
echo "deps: installed ${missing[*]}"
