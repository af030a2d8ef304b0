#!/usr/bin/env bash
# Make Alertmanager (Debian's `prometheus-alertmanager`) available: `mlcycle up` runs it where
# installed (Prometheus sends it the firing rules, the steps and Airflow's notifier their events),
# and the alerts test runs it. Installed from Debian when missing (run as root, as CI and fresh
# machines are); Debian's package starts no daemon here (no systemd), `mlcycle up` runs its own.
set -euo pipefail
if ! command -v prometheus-alertmanager >/dev/null; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus-alertmanager >/dev/null
fi
command -v prometheus-alertmanager
