#!/usr/bin/env bash
# Runs the standard benchmark suite and files the results under
# benches/results/<date>-<host>[-<fs>]/: setup.txt (CPU, cores, kernel, file system and
# mount options of the data dir, drive, durability, load), the raw JSON and console
# output of every harness run, and summary.md (the tables).
#
# usage: scripts/bench.sh [--fs root|ext4|xfs|tmpfs] [--scale N] [--quick] [-- HARNESS ARGS]
#   --fs root   data dirs under /var/tmp on the root file system (default)
#   --fs ext4   a fresh loop-mounted ext4 (with journal) image under /var/tmp (root only)
#   --fs xfs    the same with XFS (installs xfsprogs if missing)
#   --fs tmpfs  memory only: an upper bound, not durable
#   --scale N   multiplies every request count (1 = a few minutes on 2 cores)
#   --quick     seed and durability groups only
#
# The harness starts ./target/release/rhinobox itself, once per scenario group, on a
# fresh data dir, and stops it after the group. Data dirs are removed only at the very
# end: on ext4 without a journal, file creation runs 5-10x slower for ~30 s after a
# mass delete, which would poison the next run.
set -euo pipefail

fs=root
scale=1
groups=standard
extra=()
while [ $# -gt 0 ]; do
    case "$1" in
        --fs) fs=$2; shift 2 ;;
        --scale) scale=$2; shift 2 ;;
        --quick) groups=seed,durability; shift ;;
        --) shift; extra=("$@"); break ;;
        -h | --help) sed -n '2,/^[^#]/s/^# \{0,1\}//p' "$0"; exit 0 ;;
        *) echo "bench.sh: unknown argument $1 (--help for the usage)" >&2; exit 2 ;;
    esac
done

cd "$(dirname "$0")/.."

cargo build --release --bin rhinobox --bin rhinobox-bench

host=$(hostname -s 2>/dev/null || cat /proc/sys/kernel/hostname)
out="benches/results/$(date +%Y-%m-%d)-$host"
[ "$fs" = root ] || out="$out-$fs"
mkdir -p "$out"

mount_point=""
image=""
cleanup() {
    if [ -n "$mount_point" ]; then
        umount "$mount_point" 2>/dev/null || true
        rmdir "$mount_point" 2>/dev/null || true
    fi
    [ -z "$image" ] || rm -f "$image"
}
trap cleanup EXIT

case "$fs" in
    root)
        work=$(mktemp -d /var/tmp/rhinobox-bench-work.XXXXXX)
        ;;
    ext4 | xfs)
        if [ "$fs" = xfs ] && ! command -v mkfs.xfs >/dev/null; then
            apt-get install -y xfsprogs >/dev/null
        fi
        image=/var/tmp/rhinobox-bench-$fs-$$.img
        truncate -s 16G "$image"
        if [ "$fs" = ext4 ]; then mkfs.ext4 -q -F "$image"; else mkfs.xfs -q -f "$image"; fi
        mount_point=/mnt/rhinobox-bench-$fs-$$
        mkdir -p "$mount_point"
        mount -o loop,noatime "$image" "$mount_point"
        work=$mount_point
        ;;
    tmpfs)
        mount_point=/mnt/rhinobox-bench-tmpfs-$$
        mkdir -p "$mount_point"
        mount -t tmpfs -o size=8g tmpfs "$mount_point"
        work=$mount_point
        ;;
    *) echo "bench.sh: unknown --fs $fs" >&2; exit 2 ;;
esac

# setup.txt: everything needed to judge the numbers later.
{
    echo "date:        $(date -Is)"
    echo "commit:      $(git rev-parse --short HEAD 2>/dev/null)$(git diff --quiet 2>/dev/null || echo ' (dirty tree)')"
    echo "host:        $host"
    echo "cpu:         $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //')"
    echo "cores:       $(nproc)"
    echo "memory:      $(free -m | awk '/Mem:/ {print $2 " MiB"}')"
    echo "kernel:      $(uname -srmv)"
    echo "data dir fs: $fs; $(findmnt -n -o SOURCE,FSTYPE,OPTIONS -T "$work")"
    src=$(findmnt -n -o SOURCE -T "$work")
    dev=$(basename "$src")
    if [ -e "/sys/class/block/$dev" ]; then
        parent=$(basename "$(readlink -f "/sys/class/block/$dev/..")")
        [ -e "/sys/block/$dev" ] && parent=$dev
        echo "drive:       $parent model=$(cat /sys/block/$parent/device/model 2>/dev/null || echo '?')" \
            "rotational=$(cat /sys/block/$parent/queue/rotational 2>/dev/null)" \
            "scheduler=$(cat /sys/block/$parent/queue/scheduler 2>/dev/null)"
    fi
    [ "$fs" = root ] || echo "backing:     $(findmnt -n -o SOURCE,FSTYPE,OPTIONS -T /var/tmp)"
    echo "durability:  standard suite with batch (the daemon default); seed/latency again with none"
    echo "memlock:     $(ulimit -l)"
    echo "load before: $(cat /proc/loadavg)"
    echo "scale:       $scale"
} > "$out/setup.txt"

run() {
    local name=$1
    shift
    echo "== rhinobox-bench $* (-> $out/$name.json)"
    ./target/release/rhinobox-bench --work-dir "$work" --keep-data --scale "$scale" \
        --json "$out/$name.json" "$@" "${extra[@]}" 2>&1 | tee "$out/$name.txt"
}

status=0
run standard-batch --scenarios "$groups" --durability batch || status=1
run seed-none --scenarios seed,latency --durability none || status=1

echo "load after:  $(cat /proc/loadavg)" >> "$out/setup.txt"

{
    echo "# Benchmark run $(basename "$out")"
    echo
    echo '```'
    cat "$out/setup.txt"
    echo '```'
    for name in standard-batch seed-none; do
        echo
        echo "## $name"
        echo
        echo '```'
        grep -E '^\S+/\S+ +\[' "$out/$name.txt" || true
        grep -E '^index/' "$out/$name.txt" || true
        echo '```'
        sed -n '/^### /,$p' "$out/$name.txt"
    done
} > "$out/summary.md"

# Remove the data last (see above); on the root fs, in the background.
if [ "$fs" = root ]; then
    (rm -rf "$work" &)
fi
echo "results in $out"
exit $status
