#!/bin/bash
# A new volume: who may connect (images/postgres/pg_hba.conf) from the first start, not the image's default.
set -euo pipefail
cat /etc/tagifai/pg_hba.conf > "${PGDATA:-/var/lib/postgresql/data}/pg_hba.conf"
