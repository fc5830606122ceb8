#!/usr/bin/env bash
# Short coverage-guided fuzz run of every target; fails on any crash,
# failed assertion, timeout or out-of-memory. Usage: fuzz/run-ci.sh [seconds per target]
#
# Stable rustc: cargo-fuzz's `-s none` (no sanitizer) passes only stable flags
# (-Cpasses=sancov-module and -Cllvm-args=-sanitizer-coverage-*), so no nightly and no
# RUSTC_BOOTSTRAP. `-a` keeps debug assertions and overflow checks on. libFuzzer itself
# is built from source by libfuzzer-sys, which needs a C++ compiler (g++ or clang++).
#
# Each target starts from its seeds (corpus/<target>, committed) and the crashes found so
# far (regressions/<target>, committed; they must all pass), and writes what it finds to
# corpus-work/<target> (ignored by git, reused across runs when the CI caches it).
case "${1:-}" in -h | --help) sed -n '2,/^[^#]/s/^# \{0,1\}//p' "$0"; exit 0 ;; esac
set -euo pipefail
cd "$(dirname "$0")"

# The newest release that builds with rustc 1.95 from its lock file (`--locked`).
CARGO_FUZZ_VERSION=0.13.2
SECONDS_PER_TARGET=${1:-${FUZZ_SECONDS_PER_TARGET:-30}}

if ! command -v c++ >/dev/null; then
    echo "fuzz: a C++ compiler is needed to build libFuzzer (apt-get install g++)" >&2
    exit 2
fi
if [ "$(cargo fuzz --version 2>/dev/null)" != "cargo-fuzz $CARGO_FUZZ_VERSION" ]; then
    cargo install --locked cargo-fuzz --version "$CARGO_FUZZ_VERSION"
fi

FLAGS=(-s none -a)
cargo fuzz build "${FLAGS[@]}"
failed=()
for target in $(cargo fuzz list); do
    mkdir -p "corpus-work/$target" "artifacts/$target" "regressions/$target"
    echo "=== fuzz $target: ${SECONDS_PER_TARGET}s"
    # -timeout: every parser here is linear and inputs are at most 4 KiB, so 10 s on one
    # input is a finding (1 s gave false timeouts on a host shared at load 10 on 2 cores);
    # -rss_limit_mb: the parsers are bounded, a few hundred MiB is a leak or a bomb.
    # -jobs=1 -workers=1: one process (the log goes to fuzz-0.log, copied out at the end).
    if ! cargo fuzz run "${FLAGS[@]}" "$target" \
        "corpus-work/$target" "corpus/$target" "regressions/$target" -- \
        -max_total_time="$SECONDS_PER_TARGET" -timeout=10 -rss_limit_mb=1024 \
        -workers=1 -jobs=1 -print_final_stats=1 \
        -artifact_prefix="artifacts/$target/" 2>&1 | tail -n 25; then
        failed+=("$target")
    fi
done
if [ ${#failed[@]} -gt 0 ]; then
    echo "fuzz: FAILED: ${failed[*]} (inputs in fuzz/artifacts/<target>/)" >&2
    exit 1
fi
echo "fuzz: all targets passed"
