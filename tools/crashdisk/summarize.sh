#!/usr/bin/env bash
# Per run (base seed), file system and engine, from crashdisk output: crash states, states with a violation,
# and the index (1-based) of the first state that caught one.
#   tools/crashdisk/summarize.sh LOG...
awk '
/^powerloss: base seed/ { section = $4 }
/^ci: seed/ { section = $3 }
/^powerloss fs=/ {
    split($2, f, "="); split($4, e, "="); key = "seed " section " " f[2] " " e[2]
    n[key]++; cur = key; idx = n[key]
    if ($0 ~ /DAEMON DOES NOT START/) { bad[key]++; if (!(key in first)) first[key] = idx }
    next
}
/^  VIOLATION/ && cur != "" {
    if (last[cur] != n[cur]) { bad[cur]++; last[cur] = n[cur]; if (!(cur in first)) first[cur] = n[cur] }
}
END {
    for (k in n) printf "%-28s states %4d, with a violation %4d, first caught at state %s\n", k, n[k], bad[k] + 0, (k in first) ? first[k] : "-"
}' "$@" | sort
