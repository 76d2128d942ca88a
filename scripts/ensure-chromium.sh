#!/usr/bin/env bash
# Makes sure the browser test can run: Debian's Chromium at /usr/bin/chromium and the Python
# package playwright (its driver only: Playwright's own browser download is never used, the test
# points it at Debian's Chromium). Installs what is missing (apt-get, pip); idempotent. Prints
# the browser's path on stdout; progress goes to stderr and only when something had to be done.
#
# Env: DESKPOOL_PYTHON (default python3).
set -euo pipefail

python="${DESKPOOL_PYTHON:-python3}"
say() { echo "ensure-chromium: $*" >&2; }
die() { say "error: $*"; exit 1; }

as_root() {
    if [[ $(id -u) -eq 0 ]]; then "$@"
    elif command -v sudo >/dev/null 2>&1; then sudo "$@"
    else die "need root (or sudo) to run: $*"
    fi
}

if [[ ! -x /usr/bin/chromium ]]; then
    command -v apt-get >/dev/null 2>&1 || die "Chromium is not installed and apt-get is not available: install Debian's chromium package"
    say "installing chromium (apt-get)"
    as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq >&2
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >&2
fi

if ! "$python" -c 'import playwright.sync_api' >/dev/null 2>&1; then
    command -v "$python" >/dev/null 2>&1 || die "$python not found: install Python 3 or set DESKPOOL_PYTHON"
    say "installing the playwright Python package (pip)"
    "$python" -m pip install -q playwright >&2 || die "pip install playwright failed"
fi

echo /usr/bin/chromium
