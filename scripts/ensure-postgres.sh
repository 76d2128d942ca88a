#!/usr/bin/env bash
# Makes sure a local PostgreSQL accepts password-less TCP connections from 127.0.0.1 as user
# postgres, installing, creating or starting a cluster as needed (Debian/Ubuntu, as root or via
# sudo, with or without systemd). Idempotent. Prints the URL it verified on stdout; progress
# goes to stderr and only when something had to be done.
#
# Env: PGPORT (default 5432).
set -euo pipefail

port="${PGPORT:-5432}"
url="postgres://postgres@127.0.0.1:${port}/postgres"
marker="# deskpool: trust local TCP for user postgres (scripts/ensure-postgres.sh)"

say() { echo "ensure-postgres: $*" >&2; }
die() { say "error: $*"; exit 1; }

can_connect() {
    command -v psql >/dev/null 2>&1 &&
        PGCONNECT_TIMEOUT=3 psql "$url" -XAtqc 'select 1' >/dev/null 2>&1
}

if can_connect; then
    echo "$url"
    exit 0
fi

as_root() {
    if [[ $(id -u) -eq 0 ]]; then "$@"
    elif command -v sudo >/dev/null 2>&1; then sudo "$@"
    else die "need root (or sudo) to run: $*"
    fi
}

if ! command -v pg_ctlcluster >/dev/null 2>&1; then
    command -v apt-get >/dev/null 2>&1 || die "PostgreSQL is not installed and apt-get is not available: install PostgreSQL and make it listen on 127.0.0.1:${port}"
    say "installing postgresql (apt-get)"
    as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq >&2
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >&2
fi

# Pick the cluster on our port; if none exists, create one.
read -r ver cluster status < <(pg_lsclusters -h 2>/dev/null | awk -v p="$port" '$3 == p { print $1, $2, $4; exit }') || true
if [[ -z "${ver:-}" ]]; then
    ver=$(ls /usr/lib/postgresql 2>/dev/null | sort -V | tail -n1)
    [[ -n "$ver" ]] || die "no PostgreSQL server found under /usr/lib/postgresql"
    cluster=main
    # "main" may exist on another port (then PGPORT asked for a second cluster).
    if pg_lsclusters -h 2>/dev/null | awk -v v="$ver" '$1 == v && $2 == "main" { f = 1 } END { exit !f }'; then
        cluster="deskpool-$port"
    fi
    say "creating cluster $ver/$cluster on port $port"
    as_root pg_createcluster "$ver" "$cluster" --port "$port" >&2
    status=down
fi

if [[ "$status" != online ]]; then
    say "starting cluster $ver/$cluster"
    as_root pg_ctlcluster --skip-systemctl-redirect "$ver" "$cluster" start >&2
fi

wait_ready() {
    for _ in $(seq 1 60); do
        pg_isready -q -h 127.0.0.1 -p "$port" && return 0
        sleep 0.5
    done
    die "PostgreSQL $ver/$cluster does not accept connections on 127.0.0.1:$port (see /var/log/postgresql/postgresql-$ver-$cluster.log)"
}
wait_ready
if can_connect; then
    say "PostgreSQL $ver/$cluster is up"
    echo "$url"
    exit 0
fi

# Up, but refusing us: a fresh Debian cluster asks for a password (scram) on TCP. Add a trust
# rule for user postgres from 127.0.0.1 only, at the top (first match wins). This is meant for
# development and CI machines.
hba="/etc/postgresql/$ver/$cluster/pg_hba.conf"
[[ -f "$hba" ]] || die "cannot connect as postgres and $hba does not exist"
if ! as_root grep -qF "$marker" "$hba"; then
    say "adding a trust rule for postgres@127.0.0.1 to $hba"
    as_root sh -c '{ printf "%s\n%s\n" "$1" "host all postgres 127.0.0.1/32 trust"; cat "$2"; } > "$2.new" && cat "$2.new" > "$2" && rm -f "$2.new"' sh "$marker" "$hba"
    as_root pg_ctlcluster --skip-systemctl-redirect "$ver" "$cluster" reload >&2
    sleep 1
fi
wait_ready
can_connect || die "PostgreSQL $ver/$cluster is up but refuses postgres@127.0.0.1 without a password (check $hba)"
say "PostgreSQL $ver/$cluster is up"
echo "$url"
