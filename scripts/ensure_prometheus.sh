#!/usr/bin/env bash
# The metrics tests scrape the gateway with a real Prometheus server: install Debian's
# package when the binary is missing (its own service is not needed: tests start their own).
set -euo pipefail
command -v prometheus >/dev/null && exit 0
echo "installing Prometheus (Debian package) for the metrics tests"
export DEBIAN_FRONTEND=noninteractive
SUDO=""
[[ $(id -u) -ne 0 ]] && SUDO="sudo"
$SUDO apt-get install -y -q --no-install-recommends prometheus >/dev/null \
  || { $SUDO apt-get update -q >/dev/null && $SUDO apt-get install -y -q --no-install-recommends prometheus >/dev/null; }
command -v prometheus >/dev/null || { echo "Prometheus could not be installed" >&2; exit 1; }
