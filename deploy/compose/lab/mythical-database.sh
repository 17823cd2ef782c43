#!/bin/sh
# PostgreSQL 15 for mythical-database: a fresh cluster (user postgres, trust
# from the compose network: the lab's password "mythical" is accepted), then
# the server in the foreground.
set -eu
bin=/usr/lib/postgresql/15/bin
data=/var/lib/postgresql/data
install -d -o postgres -g postgres -m 0700 "$data"
as_postgres() { setpriv --reuid postgres --regid postgres --init-groups "$@"; }
if [ ! -s "$data/PG_VERSION" ]; then
    as_postgres "$bin/initdb" -D "$data" -U postgres --auth=trust --no-sync >/dev/null
    echo 'host all all 0.0.0.0/0 trust' >> "$data/pg_hba.conf"
fi
exec setpriv --reuid postgres --regid postgres --init-groups \
    "$bin/postgres" -D "$data" -c listen_addresses='*' -c fsync=off
