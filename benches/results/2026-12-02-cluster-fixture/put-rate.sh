#!/usr/bin/env bash
# The engine's own small-object rate: 4 KiB PutObject into the fixture's RGW with 8 clients
# in flight, two ways: curl --parallel --parallel-max 8 (one process, SigV4 by curl's
# --aws-sigv4, unsigned payload) and boto3 with 8 threads (one client each). Each prints
# PUTs, seconds, PUTs/s, the HTTP codes, and the CPU seconds radosgw + the OSDs + the mon
# spent (from /proc/PID/stat), so the server cost per PUT is known apart from the client's.
#
# usage: put-rate.sh FIXTURE_DIR [COUNT]   (a fixture from scripts/cluster-fixture.sh up)
case "${1:-}" in -h | --help | "") sed -n '2,/^[^#]/s/^# \{0,1\}//p' "$0"; exit 0 ;; esac
set -euo pipefail
dir=$(realpath "$1")
count=${2:-4000}
set -a
. "$dir/cluster.env"
set +a
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
head -c 4096 /dev/urandom >"$work/4k.bin"
server_cpu_s() {
    local total=0 pid ticks
    for pid in $(cat "$dir"/run/client.rgw.a.pid "$dir"/run/osd.*.pid "$dir"/run/mon.a.pid); do
        ticks=$(awk '{print $14 + $15}' "/proc/$pid/stat")
        total=$((total + ticks))
    done
    python3 -c "print($total / $(getconf CLK_TCK))"
}
report() { # name start end cpu0 cpu1 codes
    python3 -c "
n = $count; s = $3 - $2; cpu = $5 - $4
print(f'$1: {n} PUTs of 4 KiB, 8 in flight: {s:.2f} s, {n / s:.0f} PUTs/s, '
      f'server CPU {cpu:.2f} s ({cpu * 1000 / n:.2f} ms per PUT); codes: $6')"
}
echo "# $(date -Is) $(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg)," \
    "ceph $(ceph --version | cut -d' ' -f3)"
run_id=$(date +%s)
# curl: warm-up of 200, then the measured run.
for phase in warm run; do
    n=$count
    [ $phase = warm ] && n=200
    for i in $(seq "$n"); do
        printf 'upload-file = "%s"\nurl = "%s/%s/curl-%s-%s-%d"\n' "$work/4k.bin" \
            "$RHINOBOX_S3_CLUSTER_URL" "$RHINOBOX_S3_CLUSTER_BUCKET" "$run_id" $phase "$i"
    done >"$work/$phase.curl"
    cpu0=$(server_cpu_s)
    start=$(date +%s.%N)
    curl -sS --no-progress-meter --parallel --parallel-max 8 \
        --aws-sigv4 "aws:amz:$RHINOBOX_S3_CLUSTER_REGION:s3" \
        -u "$RHINOBOX_S3_CLUSTER_ACCESS_KEY:$RHINOBOX_S3_CLUSTER_SECRET_KEY" \
        -H 'x-amz-content-sha256: UNSIGNED-PAYLOAD' -o /dev/null -w '%{http_code}\n' \
        -K "$work/$phase.curl" >"$work/$phase.codes"
    end=$(date +%s.%N)
    cpu1=$(server_cpu_s)
    codes=$(sort "$work/$phase.codes" | uniq -c | tr -s ' ' | tr '\n' ' ')
    [ $phase = run ] && report curl "$start" "$end" "$cpu0" "$cpu1" "$codes"
done
cpu0=$(server_cpu_s)
python3 - "$count" "$run_id" >"$work/boto3.out" <<'PY'
import os, sys, threading, time, boto3
from botocore.config import Config
count, run_id = int(sys.argv[1]), sys.argv[2]
body = os.urandom(4096)
def client():
    return boto3.client("s3", endpoint_url=os.environ["RHINOBOX_S3_CLUSTER_URL"],
        aws_access_key_id=os.environ["RHINOBOX_S3_CLUSTER_ACCESS_KEY"],
        aws_secret_access_key=os.environ["RHINOBOX_S3_CLUSTER_SECRET_KEY"],
        region_name=os.environ["RHINOBOX_S3_CLUSTER_REGION"],
        config=Config(max_pool_connections=2, retries={"max_attempts": 1}))
clients = [client() for _ in range(8)]
codes = {}
lock = threading.Lock()
def work(t):
    c = clients[t]
    for i in range(t, count, 8):
        code = c.put_object(Bucket=os.environ["RHINOBOX_S3_CLUSTER_BUCKET"],
            Key=f"boto3-{run_id}-{i}", Body=body)["ResponseMetadata"]["HTTPStatusCode"]
        with lock:
            codes[code] = codes.get(code, 0) + 1
for c in clients:  # warm the connections
    c.list_buckets()
threads = [threading.Thread(target=work, args=(t,)) for t in range(8)]
start = time.time()
for t in threads: t.start()
for t in threads: t.join()
print(start, time.time(), " ".join(f"{n} {c}" for c, n in sorted(codes.items())))
PY
cpu1=$(server_cpu_s)
read -r start end codes <"$work/boto3.out"
report "boto3 (8 threads)" "$start" "$end" "$cpu0" "$cpu1" "$codes"
