#!/usr/bin/env bash
# A planted bug without a rebuild: the daemon, told `--durability none` whatever the harness
# asks (no sync before any reply). Run the harness with it as the daemon; every check of
# `batch` (native and S3) must then report lost acknowledgements after a power cut:
#
#   CRASHDISK_DAEMON=tools/crashdisk/planted-durability-none.sh tools/crashdisk/run-ci.sh
#   crashdisk powerloss --daemon tools/crashdisk/planted-durability-none.sh --fs xfs \
#       --states 2 --s3-workers 4          # S3 only
#
# The real binary: $CRASHDISK_REAL_DAEMON, default target/release/rhinobox of this tree.
case "${1:-}" in -h | --help) sed -n '2,/^[^#]/s/^# \{0,1\}//p' "$0"; exit 0 ;; esac
set -euo pipefail
here=$(cd "$(dirname "$0")/../.." && pwd)
real=${CRASHDISK_REAL_DAEMON:-$here/target/release/rhinobox}
args=()
for arg in "$@"; do
    [[ $arg == batch ]] && arg=none
    args+=("$arg")
done
exec "$real" "${args[@]}"
