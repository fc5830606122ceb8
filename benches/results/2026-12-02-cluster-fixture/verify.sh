#!/usr/bin/env bash
# The fixture checked with real clients, timed, in one run (its output is verify.txt):
# install; up; psql: 4 sessions released at one instant run INSERT ... ON CONFLICT (hash)
# DO NOTHING RETURNING on one hash, 10 rounds, exactly one winner each; aws-cli: bucket,
# PUT, GET, bytes compared; PUT with If-None-Match: * on an existing key (boto3, and
# aws-cli's own reaction); kill-osd 1, GET again, start-osd 1; pg-stop: psql fails,
# pg-start: psql works; RSS of each daemon; the 4 KiB PUT rate (put-rate.sh); down, and
# no process or directory left.
#
# usage: verify.sh [FIXTURE_DIR]   (default /tmp/cluster-fixture-verify; removed at the end)
case "${1:-}" in -h | --help) sed -n '2,/^[^#]/s/^# \{0,1\}//p' "$0"; exit 0 ;; esac
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
fixture=$here/../../../scripts/cluster-fixture.sh
dir=${1:-/tmp/cluster-fixture-verify}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
timed() { # label command...
    local label=$1 start end
    shift
    start=$(date +%s.%N)
    "$@"
    end=$(date +%s.%N)
    python3 -c "print('TIME $label: %.2f s' % ($end - $start))" >&2
}
echo "# $(date -Is), $(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg)"
echo "# $(ceph --version 2>/dev/null || echo 'ceph not yet installed');" \
    "$(psql --version); $(aws --version 2>&1)"
timed install "$fixture" install
timed up "$fixture" up "$dir"
set -a
. "$dir/cluster.env"
set +a

echo "== psql: 4 sessions, one hash, 10 rounds"
psql -X -q "$RHINOBOX_PG_URL" -c 'create table blobs (hash bytea primary key, node text not null)'
for round in $(seq 10); do
    at=$(date -d '+1.5 sec' '+%F %T.%N')
    for n in 1 2 3 4; do
        psql -X -At -v ON_ERROR_STOP=1 "$RHINOBOX_PG_URL" -c "select pg_sleep_until('$at')" \
            -c "insert into blobs values (decode(md5('r$round'), 'hex'), 'node$n')
                on conflict (hash) do nothing returning node" >"$work/ins.$n" 2>&1 &
    done
    wait
    winners=$(cat "$work"/ins.* | grep -c '^node' || true)
    echo "round $round: $winners winner(s): $(cat "$work"/ins.* | grep '^node' | tr '\n' ' ')"
    [ "$winners" -eq 1 ] || { echo "FAIL: $winners winners"; exit 1; }
done

echo "== aws-cli against RGW"
export AWS_ACCESS_KEY_ID=$RHINOBOX_S3_CLUSTER_ACCESS_KEY
export AWS_SECRET_ACCESS_KEY=$RHINOBOX_S3_CLUSTER_SECRET_KEY
export AWS_DEFAULT_REGION=$RHINOBOX_S3_CLUSTER_REGION
s3() { aws --endpoint-url "$RHINOBOX_S3_CLUSTER_URL" s3api "$@"; }
s3 create-bucket --bucket verify >/dev/null
head -c 1048576 /dev/urandom >"$work/obj.bin"
s3 put-object --bucket verify --key a/obj.bin --body "$work/obj.bin" >/dev/null
s3 get-object --bucket verify --key a/obj.bin "$work/got.bin" >/dev/null
cmp "$work/obj.bin" "$work/got.bin" && echo "PUT + GET of 1 MiB: bytes equal"
rc=0
s3 put-object --bucket verify --key a/obj.bin --body "$work/obj.bin" --if-none-match '*' \
    >"$work/inm.out" 2>&1 || rc=$?
echo "aws-cli put-object --if-none-match '*' on the existing key:" \
    "exit $rc: $(tail -1 "$work/inm.out")"
python3 - <<'PY'
import os, boto3, botocore
c = boto3.client("s3", endpoint_url=os.environ["RHINOBOX_S3_CLUSTER_URL"])
try:
    c.put_object(Bucket="verify", Key="a/obj.bin", Body=b"other", IfNoneMatch="*")
    raise SystemExit("FAIL: the PUT with If-None-Match: * replaced the object")
except botocore.exceptions.ClientError as e:
    meta, error = e.response["ResponseMetadata"], e.response["Error"]
    print(f"boto3 IfNoneMatch='*' on the existing key: {meta['HTTPStatusCode']} {error['Code']}")
    assert meta["HTTPStatusCode"] == 412
size = c.head_object(Bucket="verify", Key="a/obj.bin")["ContentLength"]
print(f"object still {size} bytes")
c.put_object(Bucket="verify", Key="a/new.bin", Body=b"new", IfNoneMatch="*")
print("boto3 IfNoneMatch='*' on a new key: 200")
PY

echo "== one OSD killed"
timed kill-osd "$fixture" kill-osd "$dir" 1
rm -f "$work/got.bin"
timed get-with-osd-down s3 get-object --bucket verify --key a/obj.bin "$work/got.bin" >/dev/null
cmp "$work/obj.bin" "$work/got.bin" && echo "GET with osd.1 down: bytes equal"
s3 put-object --bucket verify --key a/while-down.bin --body "$work/obj.bin" >/dev/null &&
    echo "PUT with osd.1 down: ok"
timed start-osd "$fixture" start-osd "$dir" 1

echo "== PostgreSQL stopped and started"
timed pg-stop "$fixture" pg-stop "$dir"
if psql -X -At "$RHINOBOX_PG_URL" -c 'select 1' >"$work/psql.out" 2>&1; then
    echo "FAIL: psql worked with PostgreSQL stopped"
    exit 1
fi
echo "psql while stopped: $(head -1 "$work/psql.out")"
timed pg-start "$fixture" pg-start "$dir"
echo "psql after pg-start: $(psql -X -At "$RHINOBOX_PG_URL" -c 'select count(*) from blobs') rows"

echo "== RSS (ps -o rss, KiB)"
for pidfile in "$dir"/run/*.pid; do
    pid=$(cat "$pidfile")
    printf '%-14s %7d KiB\n' "$(basename "$pidfile" .pid)" "$(ps -o rss= -p "$pid")"
done
postmaster=$(head -1 "$dir/pg/data/postmaster.pid")
children_kib=$(ps -o rss= --ppid "$postmaster" | awk '{s += $1} END {print s + 0}')
printf '%-14s %7d KiB (postmaster); %d KiB summed over it and its %d children %s\n' \
    postgresql "$(ps -o rss= -p "$postmaster")" \
    "$(($(ps -o rss= -p "$postmaster") + children_kib))" \
    "$(ps --no-headers --ppid "$postmaster" | wc -l)" "(shared memory counted in each)"
ceph -c "$RHINOBOX_CEPH_CONF" -s | grep -E 'health:|osd:|pgs:'

echo "== 4 KiB PUT rate (after the restarted OSD's backfill: every PG active+clean)"
for _ in $(seq 120); do
    ceph -c "$RHINOBOX_CEPH_CONF" pg stat | grep -Eq '^[0-9]+ pgs: [0-9]+ active\+clean;' && break
    sleep 0.5
done
ceph -c "$RHINOBOX_CEPH_CONF" pg stat
"$here/put-rate.sh" "$dir" 4000

timed down "$fixture" down "$dir"
left=$(pgrep -f -- "$dir" | grep -vxc "$$" || true)
state=gone
[ ! -e "$dir" ] || state=present
echo "after down: $left process(es) naming $dir; directory $state"
