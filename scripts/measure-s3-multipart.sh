#!/usr/bin/env bash
# Multipart upload A/B: for each daemon binary given, a fresh daemon (own data dir, ext4 or
# whatever /var/tmp is) and `rhinobox-bench --scenarios s3:multipart --rounds 3` (1 GiB,
# 8 MiB parts, 4 in flight) against it; keeps the harness output, the daemon's log
# (CompleteMultipartUpload's latency is on its access-log lines `POST ...uploadId=... in N
# ms`), the load before and after. Binaries run in the order given, so pass A B A B to
# interleave.
#
# usage: scripts/measure-s3-multipart.sh OUT_DIR LABEL=BINARY...
# needs: target/release/rhinobox-bench (cargo build --release)
case "${1:-}" in -h | --help | "") sed -n '2,/^[^#]/s/^# \{0,1\}//p' "$0"; exit 0 ;; esac
set -euo pipefail
cd "$(dirname "$0")/.."
out=$1; shift
mkdir -p "$out"
bench=./target/release/rhinobox-bench
run=0
for spec in "$@"; do
    run=$((run + 1))
    label=${spec%%=*}; bin=${spec#*=}
    work=$(mktemp -d /var/tmp/s3-mp.XXXXXX)
    "$bin" --data-dir "$work/data" --addr 127.0.0.1:0 --s3-addr 127.0.0.1:0 \
        --s3-access-key AK --s3-secret-key SECRET --max-upload-mb 2048 2>"$work/log" &
    pid=$!
    for _ in $(seq 100); do grep -q "S3 API listening" "$work/log" 2>/dev/null && break; sleep 0.1; done
    s3=$(sed -n 's/^rhinobox: S3 API listening on //p' "$work/log")
    name="$out/run$run-$label"
    {
        echo "# $label = $bin ($(sha256sum "$bin" | cut -c1-12)), $(date -Is)"
        echo "# load before: $(cat /proc/loadavg)"
        RHINOBOX_BENCH_S3_SECRET_KEY=SECRET "$bench" --scenarios s3:multipart --rounds 3 \
            --s3-url "http://$s3" --s3-access-key AK --pid "$pid" 2>&1
        echo "# load after: $(cat /proc/loadavg)"
        echo "# daemon cpu (utime+stime ticks of $(getconf CLK_TCK)/s): $(awk '{print $14 + $15}' /proc/$pid/stat)"
    } | tee "$name.txt"
    kill "$pid"; wait "$pid" 2>/dev/null || true
    cp "$work/log" "$name.daemon.log"
    grep 'uploadId=' "$work/log" | grep '"POST' | tee "$name.complete.txt" || true
    rm -rf "$work"
done
