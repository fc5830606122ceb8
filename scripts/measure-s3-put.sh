#!/usr/bin/env bash
# PutObject, GetObject and multipart uploads through S3: rhinobox against s3s-fs (the
# reference file-system S3 server of the s3s project), side by side in one run of
# rhinobox-bench --scenarios s3 (A = rhinobox, B = s3s-fs, interleaved A B A B):
#   s3:put        PutObject of distinct 4 KiB objects, 8 clients: objects/s, p50/p99
#   s3:get        GetObject of 4 KiB objects (put first), 8 clients, bodies BLAKE3-checked
#   s3:get-large  one PutObject and one GetObject of a 1 GiB object (MB/s), byte-checked
#   s3:multipart  1 GiB in 8 MiB UploadParts, 4 in flight, then Complete (MB/s), checked
# and each server's peak RSS per run. Both run on loopback with fresh data dirs under
# /var/tmp and the same key pair; rhinobox with its defaults (durability batch, a worker
# per core) and --max-upload-mb 2048 for the 1 GiB PutObject.
#
# usage: scripts/measure-s3-put.sh [--s3s-fs PATH] [--rounds N] [--large-mib MIB]
#                                  [--scale X] [OUT_DIR]
#   --s3s-fs PATH   the s3s-fs binary (default: $S3S_FS_BIN, else s3s-fs on PATH);
#                   install: cargo install s3s-fs --version 0.14.1 --locked \
#                            --features binary --root /work/tools-s3s-fs
#   --rounds N      rounds per scenario and server (default 3; the table shows medians)
#   --large-mib MIB size of the large object (default 1024)
#   --scale X       multiplies the small-object request counts (default 1)
#   OUT_DIR         default benches/results/<date>-s3-put; gets s3-put.txt, s3-put.json
# needs: cargo build --release (target/release/rhinobox and rhinobox-bench), python3
# exit status: rhinobox-bench's (1 when a request failed or a shape could not run, e.g.
# while the daemon has no PutObject: its side is skipped with a note, s3s-fs still runs)
case "${1:-}" in -h | --help) sed -n '2,/^[^#]/s/^# \{0,1\}//p' "$0"; exit 0 ;; esac
set -euo pipefail
cd "$(dirname "$0")/.."
s3s_fs=${S3S_FS_BIN:-$(command -v s3s-fs || true)}
rounds=3 large_mib=1024 scale=1 out=""
while [ $# -gt 0 ]; do
    case "$1" in
        --s3s-fs) s3s_fs=$2; shift 2 ;;
        --rounds) rounds=$2; shift 2 ;;
        --large-mib) large_mib=$2; shift 2 ;;
        --scale) scale=$2; shift 2 ;;
        -*) echo "unknown flag $1 (see --help)" >&2; exit 2 ;;
        *) out=$1; shift ;;
    esac
done
out=${out:-benches/results/$(date +%F)-s3-put}
for bin in ./target/release/rhinobox ./target/release/rhinobox-bench; do
    [ -x "$bin" ] || { echo "$bin missing: run cargo build --release" >&2; exit 2; }
done
[ -n "$s3s_fs" ] && [ -x "$s3s_fs" ] ||
    { echo "s3s-fs not found: pass --s3s-fs PATH or set S3S_FS_BIN (see --help)" >&2; exit 2; }
access_key=bench
export RHINOBOX_BENCH_S3_SECRET_KEY=bench-secret-$RANDOM$RANDOM
work=$(mktemp -d /var/tmp/s3-put.XXXXXX)
mkdir -p "$out" "$work/s3s-fs"
pids=()
cleanup() {
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT

./target/release/rhinobox --addr 127.0.0.1:0 --s3-addr 127.0.0.1:0 \
    --s3-access-key "$access_key" --s3-secret-key "$RHINOBOX_BENCH_S3_SECRET_KEY" \
    --data-dir "$work/rhinobox" --max-upload-mb 2048 2>"$work/rhinobox.log" &
rhinobox_pid=$!
pids+=("$rhinobox_pid")
# s3s-fs has no way to report an ephemeral port, so one is picked free here first.
port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
"$s3s_fs" --host 127.0.0.1 --port "$port" --access-key "$access_key" \
    --secret-key "$RHINOBOX_BENCH_S3_SECRET_KEY" "$work/s3s-fs" >"$work/s3s-fs.log" 2>&1 &
s3s_fs_pid=$!
pids+=("$s3s_fs_pid")
for _ in $(seq 100); do
    grep -q "S3 API listening" "$work/rhinobox.log" 2>/dev/null &&
        (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break
    sleep 0.1
done
rhinobox_s3=$(sed -n 's/^rhinobox: S3 API listening on //p' "$work/rhinobox.log")
[ -n "$rhinobox_s3" ] || { echo "rhinobox did not start:" >&2; cat "$work/rhinobox.log" >&2; exit 1; }
kill -0 "$s3s_fs_pid" || { echo "s3s-fs did not start:" >&2; cat "$work/s3s-fs.log" >&2; exit 1; }

{
    status=0
    echo "# S3 side by side, $(date -Is), load before: $(cat /proc/loadavg)"
    echo "# $(nproc) cores; A = rhinobox $(git rev-parse --short HEAD) (pid $rhinobox_pid," \
        "S3 on $rhinobox_s3), B = $("$s3s_fs" --version) (pid $s3s_fs_pid, 127.0.0.1:$port)"
    echo "# data: $work ($(stat -f -c %T "$work")); rounds $rounds, large object $large_mib MiB"
    ./target/release/rhinobox-bench --scenarios s3 --rounds "$rounds" --scale "$scale" \
        --s3-url "http://$rhinobox_s3" --pid "$rhinobox_pid" \
        --compare-s3-url "http://127.0.0.1:$port" --compare-pid "$s3s_fs_pid" \
        --s3-access-key "$access_key" --s3-large-mib "$large_mib" \
        --json "$out/s3-put.json" 2>&1 || status=$?
    echo "# load after: $(cat /proc/loadavg)"
    exit "$status"
} | tee "$out/s3-put.txt"
