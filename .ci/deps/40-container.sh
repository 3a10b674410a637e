#!/usr/bin/env bash
# The container image of deploy/Dockerfile, for tests/test_container.py:
# mmdebstrap makes a Debian bookworm base (nothing can be pulled here), then
# rootful podman (installed by 30-podman.sh) builds the image offline from it,
# with wheels made on the host.  Idempotent: the base image is kept in podman's
# storage and built only when missing (about 30 s); the image is rebuilt from
# the working tree on its cached layers (the test rebuilds it too, so it never
# runs a stale image).  Cold, on 2 cores: about 70 s.
set -euo pipefail
cd "$(dirname "$0")/../.."
.ci/apt-install-missing container-image mmdebstrap
if [ "$(id -u)" -ne 0 ]; then
  echo "deps: not root, skipping the container image (its test will skip)" >&2
  exit 0
fi
if [ -x .venv/bin/python ]; then
  .venv/bin/python -m tests.container_image all
else  # no venv to make the wheels with: the base only, the test builds the image
  python3 -m tests.container_image base
fi
