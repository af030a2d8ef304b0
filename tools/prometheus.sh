#!/usr/bin/env bash
# Make `prometheus` (Debian's) available: `mlcycle up` runs it where installed, and the platform
# test checks what it scrapes. Installed from Debian when missing (run as root, as CI and fresh
# machines are); Debian's package starts no daemon here (no systemd), `mlcycle up` runs its own.
set -euo pipefail
if ! command -v prometheus >/dev/null; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus >/dev/null
fi
command -v prometheus
