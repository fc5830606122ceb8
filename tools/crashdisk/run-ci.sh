#!/usr/bin/env bash
# Power-loss and kill -9 tests of rhinobox, CI size: 20 crash states per file system
# (ext4, XFS), 20 kill -9 iterations, both io engines alternating, durability batch.
# Needs root (losetup, mount, FUSE). Exit status: 0 clean, 1 violations, 2 set-up error.
#
#   tools/crashdisk/run-ci.sh                 # CI mode
#   tools/crashdisk/run-ci.sh --long          # ≥ 200 crash states per fs, 100 kills
#   tools/crashdisk/run-ci.sh --seed 42       # replay a run (seeds are printed)
#   CRASHDISK_DAEMON=path/to/rhinobox tools/crashdisk/run-ci.sh   # test another build
# Extra arguments go to `crashdisk ci` (see `crashdisk` without arguments for the flags).
case "${1:-}" in -h | --help) sed -n '2,/^[^#]/s/^# \{0,1\}//p' "$0"; exit 0 ;; esac
set -euo pipefail
cd "$(dirname "$0")/../.."
root=$PWD
work=${CRASHDISK_WORK:-/tmp/crashdisk-work}

if [[ $(id -u) != 0 ]]; then
    echo "run-ci.sh: needs root (losetup, mount, /dev/fuse)" >&2
    exit 2
fi
missing=()
command -v mkfs.xfs >/dev/null || missing+=(xfsprogs)
command -v e2fsck >/dev/null || missing+=(e2fsprogs)
command -v fusermount3 >/dev/null || missing+=(fuse3)
if ((${#missing[@]})); then
    echo "run-ci.sh: installing ${missing[*]}" >&2
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi
[[ -e /dev/fuse ]] || { echo "run-ci.sh: no /dev/fuse" >&2; exit 2; }

daemon=${CRASHDISK_DAEMON:-}
if [[ -z $daemon ]]; then
    cargo build --release --quiet --bin rhinobox
    daemon=$root/target/release/rhinobox
fi
cargo build --release --quiet --manifest-path tools/crashdisk/Cargo.toml
# A copy, so a rebuild while this runs cannot swap the harness under it.
mkdir -p "$work"
cp tools/crashdisk/target/release/crashdisk "$work/crashdisk"

# Belt and braces: the harness undoes its own mounts, loop devices and processes on every
# exit path; this trap catches what a SIGKILL of the harness itself would leave.
cleanup() {
    local pid=${harness:-}
    [[ -n $pid ]] && kill "$pid" 2>/dev/null && wait "$pid" 2>/dev/null || true
    for m in $(awk -v w="$work/" 'index($2, w) == 1 { print $2 }' /proc/self/mounts | sort -r); do
        umount "$m" 2>/dev/null || umount -l "$m" 2>/dev/null || true
    done
    local loops
    loops=$(losetup -l -n -O NAME,BACK-FILE 2>/dev/null |
        awk -v w="$work/" 'index($2, w) == 1 { print $1 }')
    for dev in $loops; do
        losetup -d "$dev" 2>/dev/null || true
    done
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# Strays fail the run: since the store logs place intents, none may survive a start.
"$work/crashdisk" ci --daemon "$daemon" --work "$work" --strays-fail "$@" &
harness=$!
set +e
wait "$harness"
rc=$?
harness=
exit $rc
