#!/usr/bin/env bash
# Prometheus server and promtool (Debian's `prometheus` package) for the
# operations-pack tests: promtool checks and unit-tests deploy/prometheus/,
# and tests/test_ops_prometheus.py starts its own server on a free loopback
# port. Never leaves a system Prometheus service running.
set -euo pipefail
"$(dirname "$0")/../apt-install-missing" Prometheus prometheus
