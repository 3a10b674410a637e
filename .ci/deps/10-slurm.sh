#!/usr/bin/env bash
# Slurm for the slurm-batch backend's integration tests: slurmctld, slurmd,
# the client commands and munge from Debian.  Starts nothing:
# tests/slurm_cluster.py writes a throw-away slurm.conf and starts (and
# stops) the daemons for the test session.
set -euo pipefail
"$(dirname "$0")/../apt-install-missing" Slurm slurmctld slurmd slurm-client munge
