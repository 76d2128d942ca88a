#!/usr/bin/env bash
# THE demo: deskpool keeping a desktop pool at size against the local vCenter simulator.
#
#   scripts/demo.sh             run until Ctrl-C
#   scripts/demo.sh --for 60    run 60 seconds, then stop (for smoke tests)
#
# Starts PostgreSQL if needed, builds the simulator and deskpool (release), starts the
# simulator on 127.0.0.1:18989 and deskpool on 127.0.0.1:18080 (config/demo.toml, database
# deskpool_demo), creates an admin token, defines the pool "demo" through the HTTP API, prints
# the web page's URL with a helpdesk token to sign in with, and shows the pool's progress.
# Everything it started except PostgreSQL is stopped on exit.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
repo="$(pwd)"

run_for=""
while [[ $# -gt 0 ]]; do
    case "$1" in
        --for) run_for="${2:?--for needs a number of seconds}"; shift 2 ;;
        -h|--help) sed -n '2,12p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "demo: unknown argument '$1' (try --help)" >&2; exit 2 ;;
    esac
done
[[ -z "$run_for" || "$run_for" =~ ^[0-9]+$ ]] || { echo "demo: --for takes whole seconds" >&2; exit 2; }

say() { printf 'demo: %s\n' "$*" >&2; }
die() { say "error: $*"; exit 1; }

config="config/demo.toml"
work=".cache/demo" # config/demo.toml reads the simulator password from here
api="http://127.0.0.1:18080"
pids=()

cleanup() {
    local status=$?
    trap - EXIT INT TERM
    for pid in "${pids[@]}"; do
        kill -TERM "$pid" 2>/dev/null || true
    done
    for pid in "${pids[@]}"; do
        wait "$pid" 2>/dev/null || true
    done
    rm -rf "$repo/$work"
    [[ ${#pids[@]} -gt 0 ]] && say "stopped deskpool and the simulator"
    exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

for port in 18080 18989 18990; do
    if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
        die "127.0.0.1:$port is in use (another demo still running?)"
    fi
done

rm -rf "$work"
mkdir -p "$work"
chmod 700 "$work"

say "PostgreSQL"
scripts/ensure-postgres.sh >/dev/null

say "building the vCenter simulator"
[[ -f tests/vcsim/build.sh ]] || die "tests/vcsim/build.sh is missing"
vcsim="$(bash tests/vcsim/build.sh)"

say "building deskpool (release)"
cargo build --release -p deskpool --quiet
deskpool="${CARGO_TARGET_DIR:-$repo/target}/release/deskpool"
[[ -x "$deskpool" ]] || die "$deskpool was not built"
dp() { "$deskpool" --config "$config" "$@"; }

say "starting the simulator on 127.0.0.1:18989"
"$vcsim" -listen 127.0.0.1:18989 -control-listen 127.0.0.1:18990 \
    -ready-file "$work/vcsim.ready" -clone-delay 2s -folders demo \
    >"$work/vcsim.log" 2>&1 &
pids+=("$!")
for _ in $(seq 1 100); do
    [[ -s "$work/vcsim.ready" ]] && break
    kill -0 "${pids[0]}" 2>/dev/null || die "the simulator exited: $(tail -n5 "$work/vcsim.log")"
    sleep 0.2
done
[[ -s "$work/vcsim.ready" ]] || die "the simulator did not get ready in 20 s"
# The password goes to a file (mode 600), never onto a command line.
(umask 077 && sed -n 's/.*"password":"\([^"]*\)".*/\1/p' "$work/vcsim.ready" >"$work/sim.password")
[[ -s "$work/sim.password" ]] || die "no password in $work/vcsim.ready"

say "migrating a fresh demo database"
# A clean start each run: the simulator's inventory is new every time, too.
psql -q -h 127.0.0.1 -U postgres -d postgres \
    -c 'DROP DATABASE IF EXISTS deskpool_demo WITH (FORCE)' >/dev/null 2>&1 || true
dp migrate
token="$(dp token create --name "demo-$(date +%Y%m%d-%H%M%S)" --role admin 2>"$work/token.err")" ||
    die "creating the admin token failed: $(cat "$work/token.err")"

say "starting deskpool serve on $api (log: $work/serve.log)"
# Not through dp(): a backgrounded function is a subshell, and $! would be its pid, not deskpool's.
"$deskpool" --config "$config" serve >"$work/serve.log" 2>&1 &
pids+=("$!")
for _ in $(seq 1 100); do
    curl -fsS "$api/healthz" >/dev/null 2>&1 && break
    kill -0 "${pids[1]}" 2>/dev/null || die "deskpool serve exited: $(tail -n5 "$work/serve.log")"
    sleep 0.2
done
curl -fsS "$api/healthz" >/dev/null 2>&1 || die "deskpool serve did not answer /healthz in 20 s"
say "serve is up"

auth=(-H "Authorization: Bearer $token")
pool='{"name": "demo", "vcenter": "sim", "datacenter": "DC0", "golden_vm": "golden",
       "snapshot": "base", "folder": "demo", "resource_pool": "DC0_C0",
       "datastore": "LocalDS_0", "naming_pattern": "demo-{n:3}",
       "target_size": 5, "min_size": 0, "max_size": 10}'
code="$(curl -sS -o "$work/create.json" -w '%{http_code}' "${auth[@]}" \
    -H 'Content-Type: application/json' -X POST --data "$pool" "$api/api/v1/pools")"
case "$code" in
    201|200) say "defined pool 'demo' (target 5 desktops)" ;;
    *) die "POST /api/v1/pools answered $code: $(cat "$work/create.json")" ;;
esac

# A helpdesk token for the web page, made through the token API (the admin is the actor).
code="$(curl -sS -o "$work/helpdesk.json" -w '%{http_code}' "${auth[@]}" \
    -H 'Content-Type: application/json' -X POST \
    --data "{\"name\": \"helpdesk-$(date +%H%M%S)\", \"role\": \"helpdesk\"}" "$api/api/v1/tokens")"
[[ "$code" == 201 ]] || die "POST /api/v1/tokens answered $code: $(cat "$work/helpdesk.json")"
helpdesk="$(sed -n 's/.*"secret":"\([^"]*\)".*/\1/p' "$work/helpdesk.json")"
rm -f "$work/helpdesk.json"
say "web page: $api/ui/  (it shows pool 'demo' filling)"
say "sign in with this helpdesk token: $helpdesk"

say "watching pool 'demo' (Ctrl-C to stop); deskpool's log lines about desktops follow"
# deskpool's own progress log (one line per clone started/finished, power-on, ready).
# tail --pid ends with deskpool, so the whole pipeline ends when cleanup stops deskpool.
tail -n +1 -F --pid="${pids[1]}" "$work/serve.log" 2>/dev/null |
    grep --line-buffered -E 'kind=|WARN|ERROR' |
    sed -u 's/^/  deskpool | /' &
start=$SECONDS
last=""
while [[ -z "$run_for" || $((SECONDS - start)) -lt $run_for ]]; do
    kill -0 "${pids[1]}" 2>/dev/null || die "deskpool serve exited: $(tail -n5 "$work/serve.log")"
    now="$(curl -sS "${auth[@]}" "$api/api/v1/pools/demo" 2>&1 | tr -d '\n' |
        grep -o '"status":{[^}]*}' | sed 's/"status"://; s/[{}"]//g; s/,/  /g' || true)"
    if [[ -n "$now" && "$now" != "$last" ]]; then
        printf 'demo: %s pool demo: %s\n' "$(date +%H:%M:%S)" "$now" >&2
        last="$now"
    fi
    sleep 1
done
say "--for $run_for elapsed"
