#!/bin/bash
# The stack's PostgreSQL: who may connect is pg_hba.conf beside this file, put in place at every start
# (a volume made before it too; a new volume gets it from initdb/20-hba.sh), then the image's entrypoint.
set -euo pipefail
data="${PGDATA:-/var/lib/postgresql/data}"
if [[ -s "$data/PG_VERSION" ]]; then
  cat /etc/tagifai/pg_hba.conf > "$data/pg_hba.conf"
fi
exec docker-entrypoint.sh "$@"
