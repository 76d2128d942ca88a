#!/usr/bin/env bash
# Makes sure the API schema test (crates/deskpool/tests/schema.rs) can run: the Python package
# schemathesis, major version 4. Installs it with pip when missing; idempotent. Progress goes to
# stderr and only when something had to be done.
#
# Env: DESKPOOL_PYTHON (default python3).
set -euo pipefail

python="${DESKPOOL_PYTHON:-python3}"
say() { echo "ensure-schemathesis: $*" >&2; }
die() { say "error: $*"; exit 1; }

if ! "$python" -c 'import schemathesis, sys; sys.exit(0 if schemathesis.__version__.startswith("4.") else 1)' >/dev/null 2>&1; then
    command -v "$python" >/dev/null 2>&1 || die "$python not found: install Python 3 or set DESKPOOL_PYTHON"
    say "installing schemathesis 4 (pip)"
    "$python" -m pip install -q 'schemathesis==4.*' >&2 || die "pip install schemathesis failed"
fi
