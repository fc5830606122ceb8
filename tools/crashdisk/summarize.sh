#!/usr/bin/env bash
# Per run (base seed), file system, and engine (and "all" engines together), from crashdisk
# output: crash states, states with a violation, and the 1-based index of the first state
# that caught one (counted among that row's states).
#   tools/crashdisk/summarize.sh LOG...
case "${1:-}" in -h | --help) sed -n '2,/^[^#]/s/^# \{0,1\}//p' "$0"; exit 0 ;; esac
awk '
function hit(k) {
    if (last[k] != n[k]) { bad[k]++; last[k] = n[k]; if (!(k in first)) first[k] = n[k] }
}
/^powerloss: base seed/ { section = $4 }
/^ci: seed/ { section = $3; sub(/,$/, "", section) }
/^powerloss fs=/ {
    split($2, f, "="); split($4, e, "=")
    cur = "seed " section " " f[2] " " e[2]; all = "seed " section " " f[2] " all"
    n[cur]++; n[all]++
    if ($0 ~ /DAEMON DOES NOT START/) { hit(cur); hit(all) }
    next
}
/^killloop/ { cur = "" }
/^  VIOLATION/ && cur != "" { hit(cur); hit(all) }
END {
    for (k in n)
        printf "%-28s states %4d, with a violation %4d, first caught at state %s\n",
            k, n[k], bad[k] + 0, (k in first) ? first[k] : "-"
}' "$@" | sort
