#!/usr/bin/env bash
# Prometheus server and promtool (Debian's `prometheus` package) for the
# operations-pack tests: promtool checks and unit-tests deploy/prometheus/,
# and tests/test_ops_prometheus.py starts its own server on a free loopback
# port. Idempotent; never leaves a system Prometheus service running.
set -euo pipefail
if command -v promtool >/dev/null 2>&1 && command -v prometheus >/dev/null 2>&1; then
  exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
  echo "deps: not root, cannot install prometheus (its tests will skip)" >&2
  exit 0
fi
export DEBIAN_FRONTEND=noninteractive
# The package's maintainer scripts would start the service through
# invoke-rc.d; a policy-rc.d answering 101 ("action forbidden") stops that.
policy=/usr/sbin/policy-rc.d
own_policy=0
if [ ! -e "$policy" ]; then
  printf '#!/bin/sh\nexit 101\n' >"$policy"
  chmod 755 "$policy"
  own_policy=1
fi
cleanup() { if [ "$own_policy" = 1 ]; then rm -f "$policy"; fi; }
trap cleanup EXIT
apt-get install -y -qq --no-install-recommends prometheus >/dev/null
# Belt and braces, where an init script exists and started it anyway.
if [ -x /etc/init.d/prometheus ]; then
  /etc/init.d/prometheus stop >/dev/null 2>&1 || true
fi
prometheus --version 2>&1 | head -n1
promtool --version 2>&1 | head -n1
