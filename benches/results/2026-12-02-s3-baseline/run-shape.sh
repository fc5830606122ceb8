#!/usr/bin/env bash
# One run of the 2026-12-02 S3 baseline, kept as it was run: a fresh s3s-fs on a fresh dir
# under /var/tmp, then rhinobox-bench --scenarios s3:SHAPE against it, output into this
# directory as SHAPE-runN.txt and .json, with the seconds a rustc ran during the run.
# usage: run-shape.sh SHAPE N   (SHAPE: put, get, get-large, multipart)
# needs: /work/tools-s3s-fs/bin/s3s-fs, /work/h-bench/target/release/rhinobox-bench
case "${1:-}" in -h | --help) sed -n '2,/^[^#]/s/^# \{0,1\}//p' "$0"; exit 0 ;; esac
set -euo pipefail
shape=$1; n=$2; out=/work/h-bench/benches/results/2026-12-02-s3-baseline
cd /work/h-bench
while [ "$(pgrep -c rustc || true)" -gt 0 ]; do echo "waiting: rustc running" >&2; sleep 20; done
dir=$(mktemp -d /var/tmp/s3s-fs-baseline.XXXXXX)
port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
export RHINOBOX_BENCH_S3_SECRET_KEY=bench-secret
/work/tools-s3s-fs/bin/s3s-fs --host 127.0.0.1 --port "$port" --access-key bench \
    --secret-key "$RHINOBOX_BENCH_S3_SECRET_KEY" "$dir" >"$dir.log" 2>&1 &
pid=$!
sleep 0.5
# Samples once a second whether any rustc runs (the other engineer's builds share the cores).
( while sleep 1; do pgrep -c rustc >/dev/null && echo busy || echo quiet; done > "$dir.busy" ) &
sampler=$!
{
  echo "# s3:$shape run $n, $(date -Is), load before: $(cat /proc/loadavg); rustc processes: $(pgrep -c rustc || true)"
  echo "# s3s-fs $(/work/tools-s3s-fs/bin/s3s-fs --version) pid $pid on 127.0.0.1:$port, root $dir ($(stat -f -c %T "$dir"))"
  echo "# ./target/release/rhinobox-bench --scenarios s3:$shape --s3-url http://127.0.0.1:$port --pid $pid --s3-access-key bench --json $shape-run$n.json  (secret in RHINOBOX_BENCH_S3_SECRET_KEY)"
  ./target/release/rhinobox-bench --scenarios "s3:$shape" --s3-url "http://127.0.0.1:$port" --pid "$pid" \
      --s3-access-key bench --json "$out/$shape-run$n.json" 2>&1 || echo "# exit status $?"
  kill "$sampler"
  echo "# load after: $(cat /proc/loadavg); rustc processes: $(pgrep -c rustc || true);" \
      "seconds with a rustc running during the run: $(grep -c busy "$dir.busy" || true) of $(wc -l < "$dir.busy")"
} > "$out/$shape-run$n.txt"
kill "$pid"; wait "$pid" 2>/dev/null || true
# The data dir stays until all runs are done: deleting many files slows ext4 down for a while.
echo "$dir" >> /tmp/baseline-dirs
