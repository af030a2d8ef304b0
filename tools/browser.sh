#!/usr/bin/env bash
# Make Debian's headless Chromium and its WebDriver available for the browser test of the Airflow
# UI (tests/e2e/test_browser.py): installed from Debian when missing (run as root, as CI and fresh
# machines are). Playwright's own browser builds cannot be downloaded on these machines.
set -euo pipefail
if ! command -v chromium >/dev/null || ! command -v chromedriver >/dev/null; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium chromium-driver fonts-dejavu-core >/dev/null
fi
command -v chromium
command -v chromedriver
