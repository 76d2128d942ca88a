#!/usr/bin/env bash
# Makes sure promtool (Debian package prometheus) is installed, for the test that checks
# deploy/prometheus/alerts.yml. Idempotent; prints promtool's path on stdout; progress goes to
# stderr and only when something had to be done. Installing the package may start a local
# Prometheus service on systems with systemd; it is stopped and disabled again here.
set -euo pipefail

say() { echo "ensure-promtool: $*" >&2; }
die() { say "error: $*"; exit 1; }

as_root() {
    if [[ $(id -u) -eq 0 ]]; then "$@"
    elif command -v sudo >/dev/null 2>&1; then sudo "$@"
    else die "need root (or sudo) to run: $*"
    fi
}

if ! command -v promtool >/dev/null 2>&1; then
    command -v apt-get >/dev/null 2>&1 || die "promtool is not installed and apt-get is not available: install Prometheus' promtool"
    say "installing prometheus for promtool (apt-get)"
    as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq >&2
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus >&2
    if command -v systemctl >/dev/null 2>&1 && systemctl is-active --quiet prometheus 2>/dev/null; then
        as_root systemctl disable --now prometheus >&2 || true
    fi
fi

command -v promtool
