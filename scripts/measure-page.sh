#!/usr/bin/env bash
# Measures the web page: its weight (bytes, requests), the time until it shows the file
# list over loopback, and how fast it uploads 100 photos, beside one multipart request
# from the same page and beside curl (one multipart request; 4 parallel PUTs). Every set is new content (no dedup), on one fresh daemon with the defaults.
#
# usage: scripts/measure-page.sh [--photos N] [--size-kib K] [--out DIR]
#   --photos N    photos per set (default 100)
#   --size-kib K  bytes of each photo in KiB (default 256)
#   --out DIR     where page.json and summary.txt go (default benches/results/<date>-web)
# Needs chromium, node and playwright-core (tests/browser: npm ci), curl, python3.
set -euo pipefail
cd "$(dirname "$0")/.."

photos=100
size_kib=256
out="benches/results/$(date +%Y-%m-%d)-web"
while [ $# -gt 0 ]; do
    case "$1" in
        --photos) photos=$2; shift 2 ;;
        --size-kib) size_kib=$2; shift 2 ;;
        --out) out=$2; shift 2 ;;
        -h|--help) sed -n '2,12p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "measure-page.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
    esac
done

cargo build --release --bin rhinobox
mkdir -p "$out"
work=$(mktemp -d /var/tmp/rhinobox-page.XXXXXX)
daemon_pid=
cleanup() {
    [ -n "$daemon_pid" ] && kill "$daemon_pid" 2>/dev/null && wait "$daemon_pid" || true
    rm -rf "$work"
}
trap cleanup EXIT

# Four sets of distinct JPEG-headed photos: page, page multipart, curl multipart, curl PUT.
python3 - "$work" "$photos" "$size_kib" <<'EOF'
import os, sys
work, count, size = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]) * 1024
jfif = bytes.fromhex("ffd8ffe000104a46494600010100000100010000")
for set_name in ("page", "multipart", "curl-multipart", "curl-put"):
    os.makedirs(os.path.join(work, set_name))
    for i in range(count):
        with open(os.path.join(work, set_name, f"IMG_{i:04d}.jpg"), "wb") as f:
            f.write(jfif + os.urandom(size - len(jfif) - 2) + b"\xff\xd9")
EOF

./target/release/rhinobox --addr 127.0.0.1:0 --data-dir "$work/data" 2>"$work/daemon.log" &
daemon_pid=$!
port=
for _ in $(seq 1 300); do
    port=$(grep -m1 -o 'listening on [^ ]*' "$work/daemon.log" | sed 's/.*://') && break
    sleep 0.1
done
[ -n "$port" ] || { echo "daemon did not start:" >&2; cat "$work/daemon.log" >&2; exit 1; }
base="http://127.0.0.1:$port"

(cd tests/browser && node page.mjs measure "$base" "$photos" \
    "$work"/page/*.jpg "$work"/multipart/*.jpg) >"$out/page.json"

curl_form=()
for f in "$work"/curl-multipart/*.jpg; do curl_form+=(-F "file=@$f"); done
start=$(date +%s%N)
curl -sS -o /dev/null -w '%{http_code}\n' "${curl_form[@]}" "$base/ingest/media" \
    >"$work/curl-multipart.code"
curl_multipart_ms=$(( ($(date +%s%N) - start) / 1000000 ))
start=$(date +%s%N)
ls "$work"/curl-put/*.jpg | xargs -P 4 -I{} \
    curl -sS -o /dev/null -w '%{http_code}\n' -T {} "$base/ingest/media/" >"$work/curl-put.codes"
curl_put_ms=$(( ($(date +%s%N) - start) / 1000000 ))

python3 - "$out" "$photos" "$size_kib" "$curl_multipart_ms" "$curl_put_ms" \
    "$work/curl-multipart.code" "$work/curl-put.codes" <<'EOF' | tee "$out/summary.txt"
import json, sys
out, photos, size_kib = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
curl_multipart_ms, curl_put_ms = float(sys.argv[4]), float(sys.argv[5])
codes = open(sys.argv[6]).read().split() + open(sys.argv[7]).read().split()
page = json.load(open(f"{out}/page.json"))
t = page["timing"]
resources = t["resources"]
weight = t["html_bytes"] + sum(r["bytes"] for r in resources)
body = t["html_body_bytes"] + sum(r["body"] for r in resources)
print(f"page: {1 + len(resources)} requests before the list shows "
      f"(document + {', '.join(r['name'].split('/', 3)[-1] for r in resources)}), "
      f"{weight} bytes transferred ({body} bytes of bodies)")
print(f"time to interactive, first visit: DOM interactive {t['dom_interactive_ms']:.1f} ms, "
      f"file list shown {t['ready_ms']:.1f} ms after navigation start")
w = t["warm"]
print(f"time to interactive, reload: DOM interactive {w['dom_interactive_ms']:.1f} ms, "
      f"file list shown {w['ready_ms']:.1f} ms")
def rate(ms):
    return photos / (ms / 1000)
mp = page["multipart"]
print(f"{photos} photos of {size_kib} KiB, files/s:")
print(f"  page (multipart batches of <= 20, 2 in flight):      "
      f"{rate(page['page_upload_ms']):7.1f}  ({page['page_upload_ms']:.0f} ms, "
      f"{page['page_failed']} failed)")
print(f"  page, one multipart request:                          "
      f"{rate(mp['ms']):7.1f}  ({mp['ms']:.0f} ms, HTTP {mp['status']}, {mp['stored']} stored)")
print(f"  curl, one multipart request:                          "
      f"{rate(curl_multipart_ms):7.1f}  ({curl_multipart_ms:.0f} ms)")
print(f"  curl, 4 parallel PUTs (xargs -P 4):                   "
      f"{rate(curl_put_ms):7.1f}  ({curl_put_ms:.0f} ms)")
bad = [c for c in codes if c != "200"]
print(f"curl replies: {len(codes)}, not 200: {len(bad)}")
offhost = [u for u in page["requests"] if not u.startswith("http://127.0.0.1")]
print(f"requests that left the host: {len(offhost)}")
EOF
