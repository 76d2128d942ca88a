#!/usr/bin/env bash
# THE test command: what CI runs (.ci/run) and what to run before pushing.
#   1. makes sure PostgreSQL runs locally (scripts/ensure-postgres.sh),
#   2. builds the vCenter simulator (tests/vcsim/build.sh) and exports DESKPOOL_VCSIM_BIN,
#   3. makes sure Chromium + Playwright (scripts/ensure-chromium.sh, for the browser test),
#      promtool (scripts/ensure-promtool.sh, for the alert rules' test) and schemathesis
#      (scripts/ensure-schemathesis.sh, for the API schema test) are installed,
#   4. cargo fmt --check, clippy -D warnings, then every test (nextest when installed, plus
#      doc tests, which nextest does not run).
# Env: DATABASE_URL (default postgres://postgres@127.0.0.1:5432/postgres), CARGO_TARGET_DIR.
# It starts nothing that outlives it, except PostgreSQL when it had to start it.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

step() { printf '\n==> %s\n' "$*" >&2; }

step "PostgreSQL"
scripts/ensure-postgres.sh
export DATABASE_URL="${DATABASE_URL:-postgres://postgres@127.0.0.1:5432/postgres}"

step "vCenter simulator"
DESKPOOL_VCSIM_BIN="$(bash tests/vcsim/build.sh)"
export DESKPOOL_VCSIM_BIN
echo "$DESKPOOL_VCSIM_BIN"

step "Chromium and Playwright (browser test), promtool (alert rules), schemathesis (API schema)"
scripts/ensure-chromium.sh
scripts/ensure-promtool.sh
scripts/ensure-schemathesis.sh

step "cargo fmt --all -- --check"
cargo fmt --all -- --check

step "cargo clippy --workspace --all-targets -- -D warnings"
cargo clippy --workspace --all-targets -- -D warnings

if cargo nextest --version >/dev/null 2>&1; then
    step "cargo nextest run --workspace"
    cargo nextest run --workspace --no-fail-fast
    step "cargo test --workspace --doc"
    cargo test --workspace --doc
else
    step "cargo test --workspace (cargo-nextest not installed)"
    cargo test --workspace --no-fail-fast
fi

step "all checks passed"
