#!/usr/bin/env bash
# Make `wrk` (a C HTTP load generator; Debian's package) available for bench/serving.py and the
# load tests: installed from Debian when missing (run as root, as CI and fresh machines are).
set -euo pipefail
if ! command -v wrk >/dev/null; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends wrk >/dev/null
fi
command -v wrk
