#!/usr/bin/env bash
# The ground cluster mode (SPEC §8) is tested on: a throwaway PostgreSQL and a throwaway
# Ceph cluster (1 mon, 1 mgr, 3 memstore OSDs in one pool size 3, 1 RGW with an S3 user),
# all on 127.0.0.1 on free ports the script picks, all state and logs in one directory.
#
# usage: scripts/cluster-fixture.sh COMMAND [ARGS]
#   install          apt-get installs what is missing (postgresql-15; ceph-mon, ceph-mgr,
#                    ceph-osd, radosgw); runs apt-get update only when a package is unknown
#   check            exit 0 when everything `up` needs is installed, else name what is not
#   up DIR           starts both in DIR (created; idempotent: a fixture whose daemons all
#                    run is kept, one with a daemon down is made anew),
#                    prints one line per service and writes DIR/cluster.env (KEY=value:
#                    RHINOBOX_PG_URL, RHINOBOX_S3_CLUSTER_URL, ..._ACCESS_KEY, ..._SECRET_KEY,
#                    ..._BUCKET, ..._REGION, RHINOBOX_CEPH_CONF) for tests to source
#   status DIR       prints the service lines again (exit 1 when a daemon is not running)
#   down DIR         stops every daemon of DIR and removes DIR (nothing there: exit 0)
#   kill-osd DIR N   kill -9 of osd.N, waits until the monitors mark it down
#   start-osd DIR N  osd.N back, empty (memstore keeps nothing over a kill), waits until up
#   pg-stop DIR      stops PostgreSQL (fast shutdown): connections are refused
#   pg-start DIR     starts it again on the same port, waits until it accepts connections
# env: CLUSTER_FIXTURE_WAIT_S  bound on each wait for a service, seconds (default 90)
# Progress and errors go to stderr; a failure names the service and its log, and exits 1.
# PostgreSQL refuses to run as root: under root it runs as the system user `postgres`
# (created as `rhinobox-pg` when absent), and DIR is made traversable (o+x) for it.
# Nothing here is durable: memstore OSDs lose their objects when killed. Test use only.
case "${1:-}" in -h | --help | "") sed -n '2,/^[^#]/s/^# \{0,1\}//p' "$0"; exit 0 ;; esac
set -euo pipefail

PG_BIN=${PG_BIN:-/usr/lib/postgresql/15/bin}
WAIT_S=${CLUSTER_FIXTURE_WAIT_S:-90}
OSD_COUNT=3
BUCKET=rhinobox
REGION=us-east-1
CEPH_PACKAGES=(ceph-mon ceph-mgr ceph-osd radosgw)

say() { echo "cluster-fixture: $*" >&2; }
die() {
    echo "cluster-fixture: error: $*" >&2
    exit 1
}

# One failed service: what, why, where its log is, and the end of that log.
fail_service() { # service log reason
    echo "cluster-fixture: error: $1: $3 (log: $2)" >&2
    for file in "$2" "${2%.log}.stderr"; do
        [ -s "$file" ] && tail -n 15 "$file" | sed "s#^#  $(basename "$file") | #" >&2
    done
    exit 1
}

is_root() { [ "$(id -u)" -eq 0 ]; }
as_root() { if is_root; then "$@"; else sudo "$@"; fi; }

# ---------------------------------------------------------------------------- install

# The packages to install: the ones whose programs are missing.
missing_packages() {
    [ -x "$PG_BIN/initdb" ] || echo postgresql-15
    command -v psql >/dev/null || echo postgresql-client-15
    command -v ceph-mon >/dev/null || echo ceph-mon
    command -v ceph-mgr >/dev/null || echo ceph-mgr
    command -v ceph-osd >/dev/null || echo ceph-osd
    command -v radosgw >/dev/null || echo radosgw
    command -v curl >/dev/null || echo curl
    command -v python3 >/dev/null || echo python3
}

cmd_install() {
    local need
    mapfile -t need < <(missing_packages)
    if [ "${#need[@]}" -eq 0 ]; then
        say "install: everything is installed"
        return
    fi
    # Lists absent or too old to know a package: refresh them once.
    local package
    for package in "${need[@]}"; do
        if ! apt-cache show "$package" >/dev/null 2>&1; then
            say "install: apt-get update ($package unknown)"
            as_root apt-get update -q
            break
        fi
    done
    # Keep package scripts from starting services (postgresql-15 would start a cluster on
    # 5432): the Debian policy-rc.d hook, only when the image has none of its own.
    local policy=/usr/sbin/policy-rc.d added_policy=0
    if [ ! -e "$policy" ]; then
        as_root sh -c "printf '#!/bin/sh\nexit 101\n' >$policy && chmod 755 $policy"
        added_policy=1
    fi
    say "install: ${need[*]}"
    local status=0
    as_root env DEBIAN_FRONTEND=noninteractive \
        apt-get install -y -q --no-install-recommends "${need[@]}" || status=$?
    [ "$added_policy" -eq 0 ] || as_root rm -f "$policy"
    [ "$status" -eq 0 ] || die "install: apt-get install ${need[*]} failed ($status)"
    mapfile -t need < <(missing_packages)
    [ "${#need[@]}" -eq 0 ] || die "install: still missing after apt-get: ${need[*]}"
}

require_installed() {
    local need
    mapfile -t need < <(missing_packages)
    [ "${#need[@]}" -eq 0 ] ||
        die "not installed: ${need[*]} (run: scripts/cluster-fixture.sh install)"
}

# ----------------------------------------------------------------------------- layout

# Every path of a fixture, from its directory (absolute).
set_paths() { # DIR
    [ -n "${1:-}" ] || die "missing DIR argument (see --help)"
    dir=$(realpath -m -- "$1")
    state=$dir/state
    logs=$dir/log
    run=$dir/run
    pg_dir=$dir/pg
    pg_data=$pg_dir/data
    pg_log=$pg_dir/postgresql.log
    ceph_dir=$dir/ceph
    conf=$ceph_dir/ceph.conf
    env_file=$dir/cluster.env
}

# Only a fixture's own directory is ever cleared or removed: empty, or holding nothing
# but what `up` makes (so `down /tmp` by mistake removes nothing).
is_fixture_dir() {
    local entry
    for entry in "$dir"/* "$dir"/.[!.]*; do
        [ -e "$entry" ] || continue
        case ${entry##*/} in state | log | run | pg | ceph | cluster.env | cluster.env.tmp) ;;
        *) return 1 ;;
        esac
    done
}

load_state() {
    [ -f "$state" ] || die "no fixture in $dir (run: scripts/cluster-fixture.sh up $dir)"
    # shellcheck disable=SC1090
    . "$state"
}

# `count` free TCP ports on 127.0.0.1, all different (held open together while chosen).
free_ports() { # count
    python3 - "$1" <<'PY'
import socket, sys
held = []
for _ in range(int(sys.argv[1])):
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    held.append(s)
print(" ".join(str(s.getsockname()[1]) for s in held))
PY
}

# Seconds since `up` began, to a tenth: where its time goes.
elapsed() { python3 -c "import time; print(f'{time.time() - $up_started:.1f}')"; }
step() { say "up: $1 ($(elapsed) s)"; }

random_hex() { od -An -N"$1" -tx1 /dev/urandom | tr -d ' \n'; }

# A daemon of the fixture is alive when its pid runs a command line naming DIR (so a
# recycled pid of another program is never taken for it, nor killed).
pid_alive() { # pidfile
    local pid
    [ -f "$1" ] && pid=$(cat "$1") && [ -n "$pid" ] && [ -r "/proc/$pid/cmdline" ] &&
        tr '\0' ' ' <"/proc/$pid/cmdline" | grep -qF -- "$dir"
}

# Starts a foreground daemon in the background, stdin closed, output to its .stderr file
# (a caller reading our stdout must not wait on it), pid in run/NAME.pid.
start_daemon() { # name command...
    local name=$1
    shift
    "$@" </dev/null >>"$logs/$name.stderr" 2>&1 &
    echo $! >"$run/$name.pid"
    # Not a job of this shell: no "Killed" line from bash when down or a failed up kills it.
    disown $!
}

# Polls `command` every 0.2 s until it succeeds; a daemon that exits or a deadline passed
# is a failure of that service.
wait_for() { # service log pidfile-or-"" limit_s command...
    local service=$1 log=$2 pidfile=$3 limit=$4
    shift 4
    local deadline=$((SECONDS + limit))
    until "$@" >/dev/null 2>&1; do
        if [ -n "$pidfile" ] && ! pid_alive "$pidfile"; then
            fail_service "$service" "$log" "exited while starting"
        fi
        [ "$SECONDS" -lt "$deadline" ] || fail_service "$service" "$log" "not ready after ${limit}s"
        sleep 0.2
    done
}

# ------------------------------------------------------------------------- PostgreSQL

# The user PostgreSQL runs as: ourselves, or under root a system user (it refuses root).
pg_user() {
    if ! is_root; then
        id -un
    elif id postgres >/dev/null 2>&1; then
        echo postgres
    else
        id rhinobox-pg >/dev/null 2>&1 ||
            useradd --system --no-create-home --shell /usr/sbin/nologin rhinobox-pg
        echo rhinobox-pg
    fi
}

as_pg() { if is_root; then runuser -u "$pg_owner" -- "$@"; else "$@"; fi; }

pg_ctl_() { as_pg "$PG_BIN/pg_ctl" -D "$pg_data" -l "$pg_log" "$@"; }

pg_ready() { "$PG_BIN/pg_isready" -q -h 127.0.0.1 -p "$pg_port" -d rhinobox -U rhinobox; }

pg_up() {
    pg_owner=$(pg_user)
    # The server user must reach DIR/pg through DIR (a test's tempdir is 0700).
    chmod o+x "$dir"
    as_pg test -x "$dir" ||
        die "postgresql: user $pg_owner cannot reach $dir (a parent directory is closed to it)"
    install -d -m 700 -o "$pg_owner" "$pg_dir"
    as_pg "$PG_BIN/initdb" -D "$pg_data" -U postgres --auth-local=trust \
        --auth-host=scram-sha-256 -E UTF8 --locale=C --no-sync >"$logs/initdb.log" 2>&1 ||
        fail_service postgresql "$logs/initdb.log" "initdb failed"
    # TCP on loopback for clients; the socket in DIR/pg for this script (trust, superuser).
    cat >>"$pg_data/postgresql.conf" <<EOF
listen_addresses = '127.0.0.1'
port = $pg_port
unix_socket_directories = '$pg_dir'
max_connections = 200
EOF
    pg_start
    as_pg "$PG_BIN/psql" -X -q -v ON_ERROR_STOP=1 -h "$pg_dir" -p "$pg_port" -U postgres \
        -d postgres -c "CREATE ROLE rhinobox LOGIN PASSWORD '$pg_password'" \
        -c "CREATE DATABASE rhinobox OWNER rhinobox" >>"$logs/initdb.log" 2>&1 ||
        fail_service postgresql "$logs/initdb.log" "creating role and database failed"
}

pg_start() {
    pg_ctl_ -w -t "$WAIT_S" start >>"$logs/pg_ctl.log" 2>&1 ||
        fail_service postgresql "$pg_log" "pg_ctl start failed"
    wait_for postgresql "$pg_log" "" "$WAIT_S" pg_ready
}

pg_running() { [ -f "$pg_data/postmaster.pid" ] && pg_ctl_ status >/dev/null 2>&1; }

cmd_pg_stop() {
    set_paths "$1" && load_state
    if pg_running; then
        pg_ctl_ -w -t "$WAIT_S" -m fast stop >>"$logs/pg_ctl.log" 2>&1 ||
            fail_service postgresql "$pg_log" "pg_ctl stop failed"
    fi
    say "postgresql stopped (127.0.0.1:$pg_port refuses connections)"
}

cmd_pg_start() {
    set_paths "$1" && load_state
    pg_running || pg_start
    wait_for postgresql "$pg_log" "" "$WAIT_S" pg_ready
    say "postgresql running on 127.0.0.1:$pg_port"
}

# ------------------------------------------------------------------------------- Ceph

ceph_() { timeout 60 ceph -c "$conf" --connect-timeout 20 "$@"; }

write_ceph_conf() {
    # Loopback, no cephx (nothing else can reach it), small PG counts and an OSD failure
    # domain so 3 OSDs on one host satisfy size 3; failure detection within seconds for
    # the one-OSD-killed test. Every path inside DIR so fixtures run side by side.
    cat >"$conf" <<EOF
[global]
fsid = $fsid
mon host = [v2:127.0.0.1:$mon_port_v2,v1:127.0.0.1:$mon_port_v1]
auth cluster required = none
auth service required = none
auth client required = none
# (no cephx: the reclaim warning would keep the health at WARN)
auth allow insecure global id reclaim = false
keyring = $ceph_dir/keyring
run dir = $run
admin socket = $run/\$name.asok
pid file = $run/\$name.ceph-pid
log file = $logs/\$name.log
mon cluster log file = $logs/cluster.log
crash dir = $ceph_dir/crash
log to stderr = false
err to stderr = true
osd pool default size = 3
osd pool default min size = 2
osd pool default pg num = 8
osd pool default pgp num = 8
osd pool default pg autoscale mode = off
mon max pg per osd = 1000
osd crush chooseleaf type = 0
mon allow pool delete = true
mon osd min down reporters = 1
mon osd reporter subtree level = osd
osd heartbeat interval = 1
osd heartbeat grace = 6
# A restarted OSD backfills at full speed (the hdd default sleeps 0.1 s per recovery op).
osd recovery sleep = 0
mon data avail warn = 2
mon data avail crit = 1
# Map changes (pool create, osd new, crush add, boots) commit every 0.1 s, not every 1 s:
# the first radosgw start makes ~12 of them in a row.
paxos propose interval = 0.1
# Daemons talk to the monitor in "secure" mode only by default, which needs cephx session
# keys: without cephx radosgw never connects (send_auth_request ... returned -13).
ms mon client mode = crc
[mon]
mon data = $ceph_dir/\$name
[mgr]
mgr data = $ceph_dir/\$name
public addr = 127.0.0.1
[osd]
osd data = $ceph_dir/\$name
osd objectstore = memstore
memstore device bytes = 1073741824
osd class update on start = false
osd crush update on start = false
public addr = 127.0.0.1
cluster addr = 127.0.0.1
[client.rgw.a]
rgw frontends = beast endpoint=127.0.0.1:$rgw_port
rgw data = $ceph_dir/\$name
EOF
}

mon_up() {
    ceph-authtool --create-keyring "$ceph_dir/keyring" --gen-key -n mon. --cap mon 'allow *' \
        >"$logs/mkfs.log" 2>&1 || fail_service ceph-mon "$logs/mkfs.log" "ceph-authtool failed"
    monmaptool --create --fsid "$fsid" --enable-all-features --set-min-mon-release pacific \
        --addv a "[v2:127.0.0.1:$mon_port_v2,v1:127.0.0.1:$mon_port_v1]" \
        "$ceph_dir/monmap" >>"$logs/mkfs.log" 2>&1 ||
        fail_service ceph-mon "$logs/mkfs.log" "monmaptool failed"
    ceph-mon -c "$conf" -i a --mkfs --monmap "$ceph_dir/monmap" >>"$logs/mkfs.log" 2>&1 ||
        fail_service ceph-mon "$logs/mkfs.log" "ceph-mon --mkfs failed"
    start_daemon mon.a ceph-mon -c "$conf" -i a -f
    wait_for ceph-mon "$logs/mon.a.log" "$run/mon.a.pid" "$WAIT_S" ceph_ mon stat
}

mgr_up() {
    mkdir -p "$ceph_dir/mgr.x"
    start_daemon mgr.x ceph-mgr -c "$conf" -i x -f
}

mgr_available() { ceph_ mgr stat | grep -q '"available": true'; }

# The OSDs created in the map (uuids kept in DIR/ceph/osd.N.uuid) and placed in the crush
# map by hand (a started OSD does not place itself here), in one ceph CLI run: its
# interactive mode reads commands from stdin, and each start of the CLI costs ~0.5 s. That
# mode exits 0 whatever happens, so its output is checked.
osds_create() {
    local id uuid commands="" out
    for id in $(seq 0 $((OSD_COUNT - 1))); do
        uuid=$(cat /proc/sys/kernel/random/uuid)
        echo "$uuid" >"$ceph_dir/osd.$id.uuid"
        commands+="osd new $uuid $id"$'\n'
        commands+="osd crush add osd.$id 1.0 root=default host=localhost"$'\n'
    done
    out=$(ceph_ <<<"$commands" 2>&1) || true
    echo "$out" >>"$logs/mkfs.log"
    if grep -q Error <<<"$out" || [ "$(grep -c 'add item' <<<"$out")" -ne "$OSD_COUNT" ]; then
        fail_service ceph-osd "$logs/mkfs.log" "creating the OSDs in the map failed"
    fi
}

osd_mkfs_start() { # N
    local id=$1
    rm -rf "$ceph_dir/osd.$id"
    mkdir -p "$ceph_dir/osd.$id"
    ceph-osd -c "$conf" -i "$id" --mkfs --osd-uuid "$(cat "$ceph_dir/osd.$id.uuid")" \
        >>"$logs/mkfs.log" 2>&1 ||
        fail_service "ceph-osd.$id" "$logs/mkfs.log" "ceph-osd --mkfs failed"
    start_daemon "osd.$id" ceph-osd -c "$conf" -i "$id" -f
}

# The OSD's state in the osdmap: "1" up, "0" down.
osd_up_state() { # N
    ceph_ osd dump -f json | python3 -c '
import json, sys
osds = {o["osd"]: o["up"] for o in json.load(sys.stdin)["osds"]}
print(osds.get(int(sys.argv[1]), -1))' "$1"
}

osds_all_up() {
    ceph_ osd stat -f json | python3 -c '
import json, sys
s = json.load(sys.stdin)
sys.exit(0 if s["num_up_osds"] == s["num_osds"] == int(sys.argv[1]) else 1)' "$OSD_COUNT"
}

rgw_answers() {
    [ "$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$rgw_port/")" = 200 ]
}

# S3 call signed with the fixture's user (curl's SigV4).
s3_curl() { # curl args...
    curl -sS --aws-sigv4 "aws:amz:$REGION:s3" -u "$access_key:$secret_key" \
        -H "x-amz-content-sha256: UNSIGNED-PAYLOAD" "$@"
}

rgw_up() {
    mkdir -p "$ceph_dir/client.rgw.a"
    start_daemon client.rgw.a radosgw -c "$conf" -n client.rgw.a -f
    # The first start creates RGW's pools and waits for their placement groups.
    wait_for radosgw "$logs/client.rgw.a.log" "$run/client.rgw.a.pid" "$WAIT_S" rgw_answers
    radosgw-admin -c "$conf" user create --uid rhinobox --display-name rhinobox \
        --access-key "$access_key" --secret-key "$secret_key" >>"$logs/mkfs.log" 2>&1 ||
        fail_service radosgw "$logs/mkfs.log" "radosgw-admin user create failed"
    local code
    code=$(s3_curl -o "$logs/create-bucket.xml" -w '%{http_code}' -X PUT \
        "http://127.0.0.1:$rgw_port/$BUCKET") || code=000
    [ "$code" = 200 ] || fail_service radosgw "$logs/create-bucket.xml" \
        "creating bucket $BUCKET answered $code"
}

# ---------------------------------------------------------------------- the whole thing

all_pidfiles() {
    echo "$run/mon.a.pid" "$run/mgr.x.pid" "$run/client.rgw.a.pid"
    local id
    for id in $(seq 0 $((OSD_COUNT - 1))); do echo "$run/osd.$id.pid"; done
}

# One line per service: name, state, address, log.
print_services() {
    local down=0 pidfile name
    line() { printf '%-12s %-8s %-60s log %s\n' "$1" "$2" "$3" "$4"; }
    if pg_running; then
        line postgresql up "$pg_url" "$pg_log"
    else
        line postgresql down "$pg_url" "$pg_log"
        down=1
    fi
    for pidfile in $(all_pidfiles); do
        name=$(basename "$pidfile" .pid)
        local address
        case $name in
        mon.*) address="v2:127.0.0.1:$mon_port_v2 v1:127.0.0.1:$mon_port_v1" ;;
        client.rgw.*)
            address="http://127.0.0.1:$rgw_port bucket=$BUCKET"
            address+=" access_key=$access_key secret_key=$secret_key"
            ;;
        *) address="(ceph -c $conf)" ;;
        esac
        if pid_alive "$pidfile"; then
            line "$name" up "$address" "$logs/$name.log"
        else
            line "$name" down "$address" "$logs/$name.log"
            down=1
        fi
    done
    line env - "$env_file" "$logs"
    return $down
}

write_env() {
    cat >"$env_file.tmp" <<EOF
# written by scripts/cluster-fixture.sh up $dir ($(date -Is)); KEY=value, no quoting needed
RHINOBOX_PG_URL=$pg_url
RHINOBOX_S3_CLUSTER_URL=http://127.0.0.1:$rgw_port
RHINOBOX_S3_CLUSTER_ACCESS_KEY=$access_key
RHINOBOX_S3_CLUSTER_SECRET_KEY=$secret_key
RHINOBOX_S3_CLUSTER_BUCKET=$BUCKET
RHINOBOX_S3_CLUSTER_REGION=$REGION
RHINOBOX_CEPH_CONF=$conf
EOF
    mv "$env_file.tmp" "$env_file"
}

up_failed() {
    stop_all
    say "up failed: daemons stopped, logs kept in $logs (down $dir removes them)"
}

cmd_up() {
    set_paths "$1"
    if [ -f "$env_file" ] && load_state && print_services >/dev/null 2>&1; then
        say "up: already running in $dir"
        print_services
        return
    fi
    require_installed
    if [ -n "$(ls -A "$dir" 2>/dev/null)" ]; then
        is_fixture_dir || die "up: $dir is neither empty nor a fixture; not touching it"
        say "up: $dir holds a stopped or half-started fixture; clearing it"
        [ ! -f "$state" ] || load_state
        stop_all
        rm -rf "$dir"
    fi
    mkdir -p "$dir" "$logs" "$run" "$ceph_dir"
    up_started=$(date +%s.%N)
    read -r pg_port mon_port_v2 mon_port_v1 rgw_port <<<"$(free_ports 4)"
    pg_owner=$(pg_user)
    pg_password=$(random_hex 12)
    pg_url="postgres://rhinobox:$pg_password@127.0.0.1:$pg_port/rhinobox"
    fsid=$(cat /proc/sys/kernel/random/uuid)
    access_key=RBX$(random_hex 8 | tr a-f A-F)
    secret_key=$(random_hex 20)
    # Plain assignments: sourced inside a function they still set globals.
    local name
    for name in pg_port mon_port_v2 mon_port_v1 rgw_port pg_owner pg_password pg_url fsid \
        access_key secret_key; do
        printf '%s=%q\n' "$name" "${!name}"
    done >"$state"
    # A failed start stops what it started and keeps the logs (down DIR removes them).
    trap 'status=$?; [ $status -eq 0 ] || up_failed' EXIT
    write_ceph_conf
    # Ceph first (its start is the long part), PostgreSQL while the OSDs boot.
    mon_up
    step "ceph-mon answers"
    mgr_up
    # PostgreSQL in the background meanwhile: most of Ceph's start is waiting on the monitor.
    (pg_up) >"$logs/pg-up.out" 2>&1 &
    local pg_up_pid=$! id
    osds_create
    step "OSDs in the map"
    for id in $(seq 0 $((OSD_COUNT - 1))); do osd_mkfs_start "$id"; done
    step "OSDs made and started"
    wait "$pg_up_pid" || { cat "$logs/pg-up.out" >&2; exit 1; }
    step "postgresql accepts connections"
    wait_for ceph-osd "$logs/osd.0.log" "" "$WAIT_S" osds_all_up
    step "$OSD_COUNT OSDs up"
    rgw_up
    step "radosgw answers, user and bucket made"
    wait_for ceph-mgr "$logs/mgr.x.log" "$run/mgr.x.pid" "$WAIT_S" mgr_available
    write_env
    trap - EXIT
    step ready
    print_services
}

# Kills every daemon of DIR (ceph: SIGKILL, nothing of a memstore is worth saving;
# PostgreSQL: immediate shutdown), bounded.
stop_all() {
    local pidfile pid
    for pidfile in $(all_pidfiles); do
        if pid_alive "$pidfile"; then kill -9 "$(cat "$pidfile")" 2>/dev/null || true; fi
    done
    if [ -f "$pg_data/postmaster.pid" ]; then
        pg_owner=${pg_owner:-$(pg_user)}
        pg_ctl_ -w -t 20 -m immediate stop >>"$logs/pg_ctl.log" 2>&1 || true
        pid=$(head -n 1 "$pg_data/postmaster.pid" 2>/dev/null || true)
        [ -z "$pid" ] || ! tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -qF -- "$dir" ||
            kill -9 "$pid" 2>/dev/null || true
    fi
    local deadline=$((SECONDS + 20))
    for pidfile in $(all_pidfiles); do
        while pid_alive "$pidfile"; do
            [ "$SECONDS" -lt "$deadline" ] ||
                die "down: $(basename "$pidfile" .pid) (pid $(cat "$pidfile")) does not exit"
            sleep 0.1
        done
    done
}

cmd_down() {
    set_paths "$1"
    if [ ! -e "$dir" ]; then
        say "down: nothing in $dir"
        return
    fi
    is_fixture_dir || die "down: $dir is not a fixture directory; not removing it"
    [ ! -f "$state" ] || load_state
    stop_all
    rm -rf "$dir"
    say "down: stopped and removed $dir"
}

cmd_status() {
    set_paths "$1" && load_state
    print_services
}

osd_id_arg() { # N
    [[ "${1:-}" =~ ^[0-9]+$ ]] && [ "$1" -lt "$OSD_COUNT" ] ||
        die "OSD number must be 0..$((OSD_COUNT - 1)), got '${1:-}'"
}

osd_is() { [ "$(osd_up_state "$1")" = "$2" ]; }

cmd_kill_osd() {
    set_paths "$1" && load_state && osd_id_arg "${2:-}"
    local id=$2 started=$SECONDS
    if pid_alive "$run/osd.$id.pid"; then kill -9 "$(cat "$run/osd.$id.pid")"; fi
    wait_for "ceph-osd.$id" "$logs/mon.a.log" "" "$WAIT_S" osd_is "$id" 0
    say "osd.$id killed, marked down after $((SECONDS - started)) s"
}

cmd_start_osd() {
    set_paths "$1" && load_state && osd_id_arg "${2:-}"
    local id=$2 started=$SECONDS
    pid_alive "$run/osd.$id.pid" || osd_mkfs_start "$id"
    wait_for "ceph-osd.$id" "$logs/osd.$id.log" "$run/osd.$id.pid" "$WAIT_S" osd_is "$id" 1
    say "osd.$id up after $((SECONDS - started)) s"
}

command=$1
shift
case $command in
install) cmd_install ;;
check) require_installed ;;
up) cmd_up "${1:-}" ;;
status) cmd_status "${1:-}" ;;
down) cmd_down "${1:-}" ;;
kill-osd) cmd_kill_osd "${1:-}" "${2:-}" ;;
start-osd) cmd_start_osd "${1:-}" "${2:-}" ;;
pg-stop) cmd_pg_stop "${1:-}" ;;
pg-start) cmd_pg_start "${1:-}" ;;
*) die "unknown command '$command' (see --help)" ;;
esac
