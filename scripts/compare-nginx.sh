#!/usr/bin/env bash
# rhinobox vs nginx WebDAV, 4 KiB PUTs, side by side (A B A B), ratios printed.
#
# usage: scripts/compare-nginx.sh [--durability none|batch] [--scale N] [-- HARNESS ARGS]
#
# nginx runs from a config of its own in a temp dir (daemon off, 1 worker, dav_methods PUT,
# access log off); no system config is touched and nothing listens beyond loopback.
# Both store into directories on the same file system (/var/tmp). rhinobox is started by
# the harness with --durability none by default, as nginx never fsyncs.
#
# nginx stores the bytes and nothing else: no content sniffing, no hashing, no dedup, no
# journal, no fsync. rhinobox does all of that on every PUT.
set -euo pipefail

durability=none
scale=1
extra=()
while [ $# -gt 0 ]; do
    case "$1" in
        --durability) durability=$2; shift 2 ;;
        --scale) scale=$2; shift 2 ;;
        --) shift; extra=("$@"); break ;;
        -h | --help) sed -n '2,/^[^#]/s/^# \{0,1\}//p' "$0"; exit 0 ;;
        *) echo "compare-nginx.sh: unknown argument $1 (--help for the usage)" >&2; exit 2 ;;
    esac
done

cd "$(dirname "$0")/.."

if ! command -v nginx >/dev/null; then
    apt-get update >/dev/null
    apt-get install -y nginx-light >/dev/null 2>&1 || apt-get install -y nginx >/dev/null
fi
if ! nginx -V 2>&1 | grep -q http_dav_module; then
    echo "compare-nginx.sh: this nginx has no WebDAV module (install nginx or nginx-light)" >&2
    exit 2
fi

cargo build --release --bin rhinobox --bin rhinobox-bench

tmp=$(mktemp -d /var/tmp/rhinobox-nginx.XXXXXX)
mkdir -p "$tmp/dav" "$tmp/body" "$tmp/logs"
# The worker drops privileges to www-data (Debian's nginx user) when started as root.
nginx_user=$(id -un)
if [ "$(id -u)" = 0 ] && id www-data >/dev/null 2>&1; then
    nginx_user=www-data
    chmod 755 "$tmp"
    chown -R www-data "$tmp/dav" "$tmp/body"
fi
port=$((20000 + RANDOM % 20000))
cat > "$tmp/nginx.conf" <<CONF
daemon off;
user $nginx_user;
worker_processes 1;
error_log $tmp/logs/error.log warn;
pid $tmp/nginx.pid;
events { worker_connections 1024; }
http {
    access_log off;
    client_body_temp_path $tmp/body;
    client_max_body_size 1g;
    server {
        listen 127.0.0.1:$port;
        location /dav/ {
            root $tmp;
            dav_methods PUT;
            create_full_put_path on;
            dav_access user:rw group:r all:r;
        }
    }
}
CONF

nginx -c "$tmp/nginx.conf" -p "$tmp" &
nginx_pid=$!
trap 'kill $nginx_pid 2>/dev/null || true; wait $nginx_pid 2>/dev/null || true' EXIT
for _ in $(seq 100); do
    if curl -s -o /dev/null -T /dev/null "http://127.0.0.1:$port/dav/probe"; then break; fi
    sleep 0.05
done
worker_pid=$(pgrep -P "$nginx_pid" | head -1 || true)
echo "nginx $(nginx -v 2>&1 | cut -d/ -f2) on 127.0.0.1:$port (master $nginx_pid, worker ${worker_pid:-?})"

./target/release/rhinobox-bench --put --scenarios put,concurrency --scale "$scale" \
    --durability "$durability" --work-dir /var/tmp \
    --compare "http://127.0.0.1:$port/dav" ${worker_pid:+--compare-pid "$worker_pid"} \
    "${extra[@]}"

echo
echo "Note: nginx (B) stores the bytes only: no sniffing, no BLAKE3, no dedup, no journal, no"
echo "fsync, no access log. rhinobox (A, durability $durability) does all of that per file; its"
echo "answers are checked (hash of every file), nginx's only by status."
echo "nginx's files are left in $tmp/dav (removing many files slows ext4 down for a while)."
