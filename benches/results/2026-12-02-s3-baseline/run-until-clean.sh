#!/usr/bin/env bash
# Per shape, "$(dirname "$0")/run-shape.sh" until three runs saw no rustc (at most 10 tries per shape);
# disturbed runs are kept as <shape>-disturbed-N.txt (moved to disturbed/ afterwards).
# usage: run-until-clean.sh SHAPE...   e.g. run-until-clean.sh put get get-large multipart
case "${1:-}" in -h | --help) sed -n '2,/^[^#]/s/^# \{0,1\}//p' "$0"; exit 0 ;; esac
out=/work/h-bench/benches/results/2026-12-02-s3-baseline
for shape in "$@"; do
    clean=0
    for try in 1 2 3 4 5 6 7 8 9 10; do
        n=$((clean + 1))
        "$(dirname "$0")/run-shape.sh" "$shape" "$n"
        if grep -q "seconds with a rustc running during the run: 0 of" "$out/$shape-run$n.txt"; then
            clean=$n; echo "$shape run $n clean (try $try)"
        else
            mv "$out/$shape-run$n.txt" "$out/$shape-disturbed-$try.txt"
            mv "$out/$shape-run$n.json" "$out/$shape-disturbed-$try.json" 2>/dev/null
            echo "$shape try $try disturbed"
        fi
        [ "$clean" -eq 3 ] && break
    done
done
echo done
