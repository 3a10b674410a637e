#!/usr/bin/env bash
# Podman (rootful, Docker-compatible API) for the aws-batch backend's podman
# tests: moto's Batch server runs each submitted job as a real container
# through podman's Docker API.  Also busybox-static, from which the tests build
# their image (nothing can be pulled).  Starts nothing: tests/podman_engine.py
# starts (and stops) its own `podman system service` with throw-away storage.
set -euo pipefail
"$(dirname "$0")/../apt-install-missing" podman \
  podman crun conmon runc busybox-static iptables catatonit
