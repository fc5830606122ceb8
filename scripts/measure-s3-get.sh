#!/usr/bin/env bash
# GetObject through the S3 API against the native download, one daemon, one run:
# a 1 GiB file (MB/s, best of 3, curl to /dev/null) and a 4 KiB file (requests/s of 4,000
# GETs, curl --parallel with 8 in flight), then the daemon's peak RSS (VmHWM). S3 requests
# use presigned SigV4 URLs (boto3), so curl is the client on both sides.
#
# usage: scripts/measure-s3-get.sh [OUT_DIR]   (default benches/results/<date>-s3-get)
# needs: a release build (cargo build --release), curl, python3 with boto3
case "${1:-}" in -h | --help) sed -n '2,/^[^#]/s/^# \{0,1\}//p' "$0"; exit 0 ;; esac
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-benches/results/$(date +%F)-s3-get}
work=$(mktemp -d /var/tmp/s3-get.XXXXXX)
mkdir -p "$out"
bin=./target/release/rhinobox
"$bin" --addr 127.0.0.1:0 --s3-addr 127.0.0.1:0 --s3-access-key bench --s3-secret-key bench-secret \
    --data-dir "$work/data" --workers 2 --max-upload-mb 2048 2>"$work/log" &
pid=$!
trap 'kill $pid 2>/dev/null; rm -rf "$work"' EXIT
for _ in $(seq 100); do grep -q "S3 API listening" "$work/log" 2>/dev/null && break; sleep 0.1; done
native=$(sed -n 's/^rhinobox: listening on //p' "$work/log")
s3=$(sed -n 's/^rhinobox: S3 API listening on //p' "$work/log")
head -c $((1 << 30)) /dev/urandom >"$work/big.bin"
head -c 4096 /dev/urandom >"$work/small.bin"
big=$(curl -sS -T "$work/big.bin" "http://$native/ingest/media/big.bin" | python3 -c 'import json,sys; print(json.load(sys.stdin)["stored"][0]["path"])')
small=$(curl -sS -T "$work/small.bin" "http://$native/ingest/media/small.bin" | python3 -c 'import json,sys; print(json.load(sys.stdin)["stored"][0]["path"])')
rm "$work/big.bin"
presign() {
    python3 - "$s3" "${1#storage/}" <<'PY'
import sys, boto3
from botocore.config import Config
c = boto3.client("s3", endpoint_url="http://" + sys.argv[1], aws_access_key_id="bench",
                 aws_secret_access_key="bench-secret", region_name="us-east-1",
                 config=Config(signature_version="s3v4"))
print(c.generate_presigned_url("get_object", Params={"Bucket": "media", "Key": sys.argv[2]}, ExpiresIn=3600))
PY
}
s3_big=$(presign "$big"); s3_small=$(presign "$small")
native_big="http://$native/files/download?path=$big"; native_small="http://$native/files/download?path=$small"
{
echo "# GetObject vs native download, $(date -Is), load $(cut -d' ' -f1-3 /proc/loadavg)"
echo "# $(nproc) cores; daemon: 2 workers, durability batch, --max-upload-mb 2048; client: curl $(curl --version | head -1 | cut -d' ' -f2)"
for name in native s3; do
    url=native_big; [ $name = s3 ] && url=s3_big
    best=0
    for _ in 1 2 3; do
        speed=$(curl -sS -o /dev/null -w '%{speed_download}' "${!url}")
        best=$(python3 -c "print(max($best, $speed))")
    done
    python3 -c "print('1GiB  $name  best of 3: %.0f MB/s' % ($best / 1e6))"
done
for name in native s3; do
    url=native_small; [ $name = s3 ] && url=s3_small
    conf="$work/$name.curl"
    for _ in $(seq 4000); do printf 'url = "%s"\noutput = /dev/null\n' "${!url}"; done >"$conf"
    start=$(date +%s.%N)
    curl -sS --no-progress-meter --parallel --parallel-max 8 -K "$conf"
    end=$(date +%s.%N)
    python3 -c "print('4KiB  $name  4000 GETs, 8 in flight: %.0f requests/s' % (4000 / ($end - $start)))"
done
echo "peak RSS of the daemon: $(grep VmHWM /proc/$pid/status | awk '{print $2, $3}')"
grep -c '" - 200 ' "$work/log" | sed 's/^/access-log lines with 200: /'
} | tee "$out/s3-get.txt"
