#!/usr/bin/env bash
# The runs of 2026-12-02-hostile, in the order they ran. From the repo root, after
# `cargo build --release`; the pre-fix binaries are at /work/old-bin. Every data dir is
# fresh, under WORK (ext4 without a journal, /dev/vda: see setup.txt), kept until the end.
# usage: commands.sh STEP... with STEP one of ab, ab-swapped, ab-sizes, ab-sizes-swapped,
#   floods10-N, hostile-WHO-ENGINE
case "${1:-}" in -h | --help) sed -n '2,/^[^#]/s/^# \{0,1\}//p' "$0"; exit 0 ;; esac
set -u
OUT=benches/results/2026-12-02-hostile/raw
WORK=${WORK:-/var/tmp/h4-bench-$(date +%s)}
NEW=./target/release/rhinobox
OLD=/work/old-bin/rhinobox
BENCH=./target/release/rhinobox-bench
mkdir -p "$OUT" "$WORK"
stamp() { echo "== $1 at $(date -Is), load $(cat /proc/loadavg)" | tee -a "$OUT/load.txt"; }

wait_listening() { # log file -> port
  for _ in $(seq 1 3000); do
    line=$(grep -m1 'rhinobox: listening on ' "$1" 2>/dev/null) && { echo "${line##*:}"; return; }
    sleep 0.1
  done
  echo "not listening: $1" >&2; return 1
}

ab() { # Throughput A/B: new (A) and old (B) daemons side by side, started here.
  local dir="$WORK/ab"; mkdir -p "$dir"
  "$NEW" --addr 127.0.0.1:0 --data-dir "$dir/new" --workers 2 --durability batch \
    --io-engine uring 2>"$dir/new.log" & local new_pid=$!
  "$OLD" --addr 127.0.0.1:0 --data-dir "$dir/old" --workers 2 --durability batch \
    --io-engine uring 2>"$dir/old.log" & local old_pid=$!
  local new_port old_port
  new_port=$(wait_listening "$dir/new.log"); old_port=$(wait_listening "$dir/old.log")
  stamp "ab new=$new_pid:$new_port old=$old_pid:$old_port"
  "$BENCH" --url "http://127.0.0.1:$new_port" --pid "$new_pid" \
    --compare "http://127.0.0.1:$old_port" --compare-pid "$old_pid" \
    --scenarios seed,concurrency,sizes --rounds 3 --work-dir "$WORK" --keep-data \
    --json "$OUT/ab-new-vs-old.json" >"$OUT/ab-new-vs-old.txt" 2>&1
  stamp "ab done"
  kill -TERM "$new_pid" "$old_pid"; wait "$new_pid" "$old_pid"
}

ab_swapped() { # The same A/B with the roles swapped (old = A, first of each pair).
  local dir="$WORK/ab-swapped"; mkdir -p "$dir"
  "$NEW" --addr 127.0.0.1:0 --data-dir "$dir/new" --workers 2 --durability batch \
    --io-engine uring 2>"$dir/new.log" & local new_pid=$!
  "$OLD" --addr 127.0.0.1:0 --data-dir "$dir/old" --workers 2 --durability batch \
    --io-engine uring 2>"$dir/old.log" & local old_pid=$!
  local new_port old_port
  new_port=$(wait_listening "$dir/new.log"); old_port=$(wait_listening "$dir/old.log")
  stamp "ab-swapped old=$old_pid:$old_port new=$new_pid:$new_port"
  "$BENCH" --url "http://127.0.0.1:$old_port" --pid "$old_pid" \
    --compare "http://127.0.0.1:$new_port" --compare-pid "$new_pid" \
    --scenarios seed,concurrency,sizes --rounds 3 --work-dir "$WORK" --keep-data \
    --json "$OUT/ab-old-vs-new.json" >"$OUT/ab-old-vs-new.txt" 2>&1
  stamp "ab-swapped done"
  kill -TERM "$new_pid" "$old_pid"; wait "$new_pid" "$old_pid"
}

ab_sizes() { # A/B of the sizes group only, for the large-file figures; $1 = swapped: old = A.
  local dir="$WORK/ab-sizes$1"; mkdir -p "$dir"
  "$NEW" --addr 127.0.0.1:0 --data-dir "$dir/new" --workers 2 --durability batch \
    --io-engine uring 2>"$dir/new.log" & local new_pid=$!
  "$OLD" --addr 127.0.0.1:0 --data-dir "$dir/old" --workers 2 --durability batch \
    --io-engine uring 2>"$dir/old.log" & local old_pid=$!
  local new_port old_port
  new_port=$(wait_listening "$dir/new.log"); old_port=$(wait_listening "$dir/old.log")
  stamp "ab-sizes$1 new=$new_pid:$new_port old=$old_pid:$old_port"
  local a="$new_port --pid $new_pid" b="$old_port --compare-pid $old_pid" name=new-vs-old
  [ "$1" = -swapped ] && a="$old_port --pid $old_pid" b="$new_port --compare-pid $new_pid" \
    name=old-vs-new
  # shellcheck disable=SC2086 # a and b hold "PORT --pid PID" on purpose
  "$BENCH" --url http://127.0.0.1:$a --compare http://127.0.0.1:$b \
    --scenarios sizes --rounds 3 --work-dir "$WORK" --keep-data \
    --json "$OUT/ab-sizes-$name.json" >"$OUT/ab-sizes-$name.txt" 2>&1
  stamp "ab-sizes done"
  kill -TERM "$new_pid" "$old_pid"; wait "$new_pid" "$old_pid"
}

floods10() { # $1 = new|old: ten flood cycles, to see where RSS levels.
  local bin=$NEW; [ "$1" = old ] && bin=$OLD
  stamp "floods10 $1"
  "$BENCH" --daemon-bin "$bin" --io-engine uring --workers 2 --durability batch \
    --scenarios hostile:floods --flood-cycles 10 --work-dir "$WORK" --keep-data \
    --json "$OUT/floods10-$1-uring.json" >"$OUT/floods10-$1-uring.txt" 2>&1
  stamp "floods10 $1 done (exit $?)"
}

hostile() { # $1 = new|old, $2 = io engine
  local bin=$NEW; [ "$1" = old ] && bin=$OLD
  stamp "hostile $1 $2"
  "$BENCH" --daemon-bin "$bin" --io-engine "$2" --workers 2 --durability batch \
    --scenarios hostile --rounds 3 --work-dir "$WORK" --keep-data \
    --json "$OUT/hostile-$1-$2.json" >"$OUT/hostile-$1-$2.txt" 2>&1
  stamp "hostile $1 $2 done (exit $?)"
}

df -T "$WORK" >"$OUT/df.txt"
for step in "$@"; do
  case $step in
    ab) ab ;;
    ab-swapped) ab_swapped ;;
    ab-sizes) ab_sizes "" ;;
    ab-sizes-swapped) ab_sizes -swapped ;;
    floods10-*) floods10 "${step#floods10-}" ;;
    hostile-*) IFS=- read -r _ who engine <<<"$step"; hostile "$who" "$engine" ;;
  esac
done
