#!/usr/bin/env bash
# An Airflow component of the Compose stack: `airflow.sh api-server|scheduler|dag-processor|triggerer`.
# The admin login (simple auth manager) comes from AIRFLOW_ADMIN_PASSWORD, written to a mode-600
# file only this container reads.
set -euo pipefail
: "${AIRFLOW_ADMIN_PASSWORD:?}"
umask 077
printf '{"admin": "%s"}' "$AIRFLOW_ADMIN_PASSWORD" > "$AIRFLOW_HOME/passwords.json"
export AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE="$AIRFLOW_HOME/passwords.json"
exec airflow "$@"
