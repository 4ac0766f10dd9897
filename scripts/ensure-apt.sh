#!/usr/bin/env bash
# Install Debian packages the tests or benchmarks need, only when their binary is missing.
# Usage: scripts/ensure-apt.sh BINARY:PACKAGE [BINARY:PACKAGE ...]
# Recommends are skipped on purpose: prometheus recommends the node exporter, which would
# take port 9100 and start a service nobody asked for.
set -euo pipefail
missing=()
for pair in "$@"; do
  bin=${pair%%:*}; pkg=${pair#*:}
  if ! command -v "$bin" >/dev/null 2>&1 && [ ! -x "$bin" ]; then missing+=("$pkg"); fi
done
[ ${#missing[@]} -eq 0 ] && exit 0
echo "ensure-apt: installing ${missing[*]}" >&2
SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
# policy-rc.d 101 keeps dpkg from starting the packaged daemons (nginx, prometheus):
# the tests start their own instances on free ports.
if [ ! -e /usr/sbin/policy-rc.d ]; then
  printf '#!/bin/sh\nexit 101\n' | $SUDO tee /usr/sbin/policy-rc.d >/dev/null
  $SUDO chmod +x /usr/sbin/policy-rc.d
  trap '$SUDO rm -f /usr/sbin/policy-rc.d' EXIT
fi
$SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
