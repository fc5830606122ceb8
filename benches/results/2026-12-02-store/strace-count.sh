#!/bin/bash
# $1 = binary, $2 = tag: 300 single 4 KiB multipart uploads of new content, strace -c -f of the daemon
# usage: strace-count.sh BINARY TAG
case "${1:-}" in -h | --help) sed -n '2,/^[^#]/s/^# \{0,1\}//p' "$0"; exit 0 ;; esac
bin=$1; tag=$2; dir=/tmp/sc/$tag; rm -rf $dir; mkdir -p $dir
strace -f -c -o /tmp/sc/$tag.strace $bin --addr 127.0.0.1:18777 --data-dir $dir/data --workers 2 --durability batch --io-engine uring 2>$dir/log &
sleep 2
for i in $(seq 1 300); do printf '%08d' $i | cat - /tmp/sc/seed.bin > $dir/f.bin; curl -s -o /dev/null -F "file=@$dir/f.bin;filename=f$i.bin" http://127.0.0.1:18777/ingest/media; done
pkill -INT -f "addr 127.0.0.1:18777"; sleep 3
