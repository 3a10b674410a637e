#!/usr/bin/env bash
# Slurm for the slurm-batch backend's integration tests: slurmctld, slurmd,
# the client commands and munge from Debian.  Starts nothing:
# tests/slurm_cluster.py writes a throw-away slurm.conf and starts (and
# stops) the daemons for the test session.
set -euo pipefail
"$(dirname "$0")/../apt-install-missing" Slurm slurmctld slurmd slurm-client munge
# The packages may start their services where an init system runs; the tests
# run their own daemons on other ports, so stop any the packages started.
for service in slurmctld slurmd munge; do
  if command -v systemctl >/dev/null 2>&1 && systemctl is-active --quiet "$service" 2>/dev/null; then
    systemctl stop "$service" || true
  fi
done
