#!/usr/bin/env bash
# Podman (rootful, Docker-compatible API) for the aws-batch backend's podman
# tests: moto's Batch server runs each submitted job as a real container
# through podman's Docker API.  Also busybox-static, from which the tests build
# their image (nothing can be pulled).  Idempotent: installs only what is
# missing.  Starts nothing: tests/podman_engine.py starts (and stops) its own
# `podman system service` with throw-away storage for the test session.
set -euo pipefail
if [ "$(id -u)" -ne 0 ]; then
  echo "deps: not root, skipping podman (the podman tests will skip)" >&2
  exit 0
fi
missing=()
for pkg in podman crun conmon runc busybox-static iptables catatonit; do
  if ! dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$pkg")
  fi
done
if [ "${#missing[@]}" -eq 0 ]; then
  echo "deps: podman already installed ($(dpkg-query -W -f='${Version}' podman))"
  exit 0
fi
export DEBIAN_FRONTEND=noninteractive
apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
echo "deps: installed ${missing[*]}"
