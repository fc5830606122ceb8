#!/usr/bin/env bash
# Issue 8 A/B: the store-protocol binary (NEW) against the one before it (OLD, 9bb2383),
# side by side on fresh data dirs, both 2 workers, durability batch, uring.
#   OLD=/work/old-bin/rhinobox-9bb2383 NEW=./target/release/rhinobox \
#     benches/results/2026-12-02-store/commands.sh ab|ab_swapped
case "${1:-}" in -h | --help) sed -n '2,/^[^#]/s/^# \{0,1\}//p' "$0"; exit 0 ;; esac
set -euo pipefail
OLD=${OLD:?old binary} NEW=${NEW:-./target/release/rhinobox}
OUT=${OUT:-benches/results/2026-12-02-store/raw} WORK=${WORK:-/var/tmp/store-ab}
BENCH=./target/release/rhinobox-bench
SCENARIOS=${SCENARIOS:-seed,latency,dedup,sizes}
mkdir -p "$OUT" "$WORK"
stamp() { echo "== $1 at $(date -Is), load $(cat /proc/loadavg)" | tee -a "$OUT/load.txt"; }
wait_listening() { # log file -> port
  for _ in $(seq 1 3000); do
    line=$(grep -m1 'rhinobox: listening on ' "$1" 2>/dev/null) && { echo "${line##*:}"; return; }
    sleep 0.1
  done
  echo "not listening: $1" >&2; return 1
}
run_pair() { # $1 = name, $2 = A binary, $3 = B binary
  local dir="$WORK/$1"; rm -rf "$dir"; mkdir -p "$dir"
  "$2" --addr 127.0.0.1:0 --data-dir "$dir/a" --workers 2 --durability batch \
    --io-engine uring 2>"$dir/a.log" & local a_pid=$!
  "$3" --addr 127.0.0.1:0 --data-dir "$dir/b" --workers 2 --durability batch \
    --io-engine uring 2>"$dir/b.log" & local b_pid=$!
  local a_port b_port
  a_port=$(wait_listening "$dir/a.log"); b_port=$(wait_listening "$dir/b.log")
  stamp "$1 a=$a_pid:$a_port b=$b_pid:$b_port"
  "$BENCH" --url "http://127.0.0.1:$a_port" --pid "$a_pid" \
    --compare "http://127.0.0.1:$b_port" --compare-pid "$b_pid" \
    --scenarios "$SCENARIOS" --rounds 2 --work-dir "$WORK" \
    --json "$OUT/$1.json" >"$OUT/$1.txt" 2>&1 || true
  kill "$a_pid" "$b_pid"; wait "$a_pid" "$b_pid" || true
  rm -rf "$dir"
}
ab() { run_pair ab-new-vs-old "$NEW" "$OLD"; }
ab_swapped() { run_pair ab-old-vs-new "$OLD" "$NEW"; }
df -h "$WORK" > "$OUT/df.txt"
"$@"
