#!/usr/bin/env bash
# The test command (README, .ci/run): unit tests once, then the integration suite against
# the real daemon binary under each io engine (RHINOBOX_TEST_IO_ENGINE is passed as
# --io-engine to every daemon the tests start). Uses cargo-nextest when installed (runs
# tests in parallel processes), else cargo test.
set -euo pipefail
cd "$(dirname "$0")/.."

if cargo nextest --version >/dev/null 2>&1; then
    run() { cargo nextest run --release --no-fail-fast "$@"; }
else
    run() { cargo test --release --no-fail-fast "$@"; }
fi

echo "=== unit tests ==="
run --lib --bins
for engine in uring threads; do
    echo "=== integration suite, io engine $engine ==="
    RHINOBOX_TEST_IO_ENGINE="$engine" run --test '*'
done
