#!/usr/bin/env bash
# benches/load.sh — load comparison of pinhole, unbound and dnsmasq with dnsperf.
#
# Every server under test is configured alike (listen 127.0.0.1:5310, forward
# everything to one authoritative knotd on 127.0.0.1:5300, cache on), started
# fresh for every workload, pinned to CPU 0; dnsperf and knotd run on CPU 1.
# All figures come from one run of this script, so the ratios compare like
# with like on the same machine, kernel and moment.
#
# Workload miss-fw is the miss workload with pinhole's set writes on
# ([firewall] mode = "managed": every answered address goes into the nftables
# set inet pinhole allow4 before the answer leaves). So that nothing ever
# touches the host's ruleset, everything of a miss-fw run (knotd, the server
# under test, dnsperf, kdig, nft, curl) runs inside a network namespace this
# script creates (pinhole-bench-<pid>) and deletes on exit; unbound and dnsmasq
# run their miss-fw runs in it too (they write no sets), for like-for-like
# figures. After pinhole's miss-fw run the script counts the set's elements and
# reads pinhole's /metrics (nft write latency and batch size histograms).
#
# Usage:
#   benches/load.sh [--duration S] [--servers "pinhole unbound dnsmasq"]
#                   [--workloads "cached miss blocked miss-fw"] [--clients N] [--rounds N] [-h]
#
# Environment (flags win over environment):
#   DURATION=10            seconds of load per (server, workload)
#   SERVERS="pinhole unbound dnsmasq"   any subset, in any order
#   WORKLOADS="cached miss blocked miss-fw"   any subset, in any order
#   CLIENTS=4              dnsperf -c (UDP sockets)
#   OUTSTANDING=100        dnsperf -q (queries in flight at most)
#   MAX_QPS=               dnsperf -Q (empty: unlimited)
#   NAMES=200000           unique u<N>.bench.test names in the zone / miss workload
#   BLOCKED_NAMES=10000    distinct x<N>.blocked.test names (file is looped)
#   SERVER_CPU=0 LOAD_CPU=1  CPUs for the server under test / dnsperf + knotd
#   PINHOLE_BIN=           use this binary instead of building target/release/pinhole
#   SKIP_BUILD=0           1: do not run cargo build --release
#   SKIP_INSTALL=0         1: never apt-get install missing tools
#   PINHOLE_LOG=warn       RUST_LOG given to pinhole
#   OUT_DIR=<repo>/bench-results   where load-<date>.md is written
#   KEEP_TMP=0             1: keep the /tmp work dir (configs, logs, dnsperf output)
#   ROUNDS=1               repeat the whole matrix N times, interleaved; the
#                          table shows per-column medians, raw rounds follow
#
# Traffic goes only to 127.0.0.1 (ports 5300 and 5310; miss-fw: also 9153 for
# pinhole's /metrics), on the host's loopback or on the loopback of the
# namespace. Every dnsperf run is bounded by -l DURATION (and an outer
# `timeout`), every wait loop is bounded, and all processes started here are
# stopped on exit (trap EXIT), after which the namespace is deleted.

# shellcheck disable=SC2015  # `check && check || die` is intended
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
ORIG_CMD=$(printf '%q ' "$0" "$@")
ORIG_CMD=${ORIG_CMD% }

usage() { awk 'NR == 1 { next } !/^#/ { exit } { sub(/^# ?/, ""); print }' "${BASH_SOURCE[0]}"; }

while [ $# -gt 0 ]; do
    case "$1" in
        --duration) DURATION=$2; shift 2 ;;
        --servers) SERVERS=$2; shift 2 ;;
        --workloads) WORKLOADS=$2; shift 2 ;;
        --clients) CLIENTS=$2; shift 2 ;;
        --rounds) ROUNDS=$2; shift 2 ;;
        -h|--help) usage; exit 0 ;;
        *) echo "load.sh: unknown argument: $1 (see --help)" >&2; exit 2 ;;
    esac
done

DURATION=${DURATION:-10}
SERVERS=${SERVERS:-"pinhole unbound dnsmasq"}
WORKLOADS=${WORKLOADS:-"cached miss blocked miss-fw"}
CLIENTS=${CLIENTS:-4}
OUTSTANDING=${OUTSTANDING:-100}
MAX_QPS=${MAX_QPS:-}
NAMES=${NAMES:-200000}
BLOCKED_NAMES=${BLOCKED_NAMES:-10000}
SERVER_CPU=${SERVER_CPU:-0}
LOAD_CPU=${LOAD_CPU:-1}
PINHOLE_BIN=${PINHOLE_BIN:-}
SKIP_BUILD=${SKIP_BUILD:-0}
SKIP_INSTALL=${SKIP_INSTALL:-0}
PINHOLE_LOG=${PINHOLE_LOG:-warn}
OUT_DIR=${OUT_DIR:-$ROOT/bench-results}
KEEP_TMP=${KEEP_TMP:-0}
ROUNDS=${ROUNDS:-1}

# Fixed on purpose: this script must only ever talk to loopback.
ADDR=127.0.0.1
UP_PORT=5300
PORT=5310
CACHE_ENTRIES=500000      # pinhole max_entries and dnsmasq --cache-size
CACHED_ADDR=192.0.2.1     # answer data only (TEST-NET-1), never contacted
METRICS_PORT=9153         # pinhole's /metrics in the miss-fw namespace
FW_TABLE=pinhole          # miss-fw: pinhole's managed table (inside the namespace only)

export PATH="$PATH:/usr/sbin:/sbin"

die() { echo "load.sh: $*" >&2; exit 1; }
log() { echo "load.sh: $*" >&2; }

# ---------------------------------------------------------------- validation
is_uint() { [[ $1 =~ ^[0-9]+$ ]]; }
is_uint "$DURATION" && [ "$DURATION" -ge 1 ] && [ "$DURATION" -le 3600 ] || die "DURATION must be 1..3600 seconds"
is_uint "$CLIENTS" && [ "$CLIENTS" -ge 1 ] || die "CLIENTS must be a positive integer"
is_uint "$OUTSTANDING" && [ "$OUTSTANDING" -ge 1 ] || die "OUTSTANDING must be a positive integer"
is_uint "$ROUNDS" && [ "$ROUNDS" -ge 1 ] && [ "$ROUNDS" -le 20 ] || die "ROUNDS must be 1..20"
[ -z "$MAX_QPS" ] || is_uint "$MAX_QPS" || die "MAX_QPS must be empty or an integer"
is_uint "$NAMES" && [ "$NAMES" -ge 1 ] && [ "$NAMES" -lt 16777216 ] || die "NAMES must be 1..16777215"
is_uint "$BLOCKED_NAMES" && [ "$BLOCKED_NAMES" -ge 1 ] || die "BLOCKED_NAMES must be a positive integer"
is_uint "$SERVER_CPU" && is_uint "$LOAD_CPU" || die "SERVER_CPU/LOAD_CPU must be CPU numbers"
for s in $SERVERS; do
    case $s in pinhole|unbound|dnsmasq) ;; *) die "unknown server '$s' (pinhole unbound dnsmasq)" ;; esac
done
for w in $WORKLOADS; do
    case $w in cached|miss|blocked|miss-fw) ;; *) die "unknown workload '$w' (cached miss blocked miss-fw)" ;; esac
done
[ -n "${SERVERS// /}" ] || die "SERVERS is empty"
[ -n "${WORKLOADS// /}" ] || die "WORKLOADS is empty"
has_server() { [[ " $SERVERS " == *" $1 "* ]]; }
has_workload() { [[ " $WORKLOADS " == *" $1 "* ]]; }
# miss-fw runs in a network namespace; every other workload on the host's loopback.
NEED_NS=0; NEED_HOST=0
for w in $WORKLOADS; do if [ "$w" = miss-fw ]; then NEED_NS=1; else NEED_HOST=1; fi; done
if [ "$NEED_NS" = 1 ] && [ "$(id -u)" != 0 ]; then die "workload miss-fw needs root (network namespace, nftables)"; fi

NCPU=$(nproc --all 2>/dev/null || getconf _NPROCESSORS_ONLN)
if [ "$SERVER_CPU" -ge "$NCPU" ] || [ "$LOAD_CPU" -ge "$NCPU" ]; then
    die "SERVER_CPU=$SERVER_CPU / LOAD_CPU=$LOAD_CPU do not exist on this ${NCPU}-CPU machine"
fi
[ "$SERVER_CPU" != "$LOAD_CPU" ] || log "warning: server and load generator share CPU $SERVER_CPU"

# ------------------------------------------------------------------- install
install_missing() {
    local pkgs=()
    command -v dnsperf >/dev/null || pkgs+=(dnsperf)
    command -v knotd >/dev/null || pkgs+=(knot)
    command -v kdig >/dev/null || pkgs+=(knot-dnsutils)
    command -v taskset >/dev/null || pkgs+=(util-linux)
    if [ "$NEED_NS" = 1 ]; then
        command -v ip >/dev/null || pkgs+=(iproute2)
        command -v nft >/dev/null || pkgs+=(nftables)
        command -v curl >/dev/null || pkgs+=(curl)
        command -v python3 >/dev/null || pkgs+=(python3)
    fi
    if has_server unbound; then command -v unbound >/dev/null || pkgs+=(unbound); fi
    # dnsmasq-base is the binary without the system service (which would try
    # to take port 53); it is what the `dnsmasq` package depends on.
    if has_server dnsmasq; then command -v dnsmasq >/dev/null || pkgs+=(dnsmasq-base); fi
    [ ${#pkgs[@]} -gt 0 ] || return 0
    [ "$SKIP_INSTALL" = 1 ] && die "missing tools (${pkgs[*]}) and SKIP_INSTALL=1"
    [ "$(id -u)" = 0 ] || die "missing packages: ${pkgs[*]} (install them, or run as root)"
    log "installing ${pkgs[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${pkgs[@]}" >/dev/null
}
install_missing

# --------------------------------------------------------- process handling
TMP=$(mktemp -d /tmp/pinhole-load.XXXXXX)
PIDS=()
NS=pinhole-bench-$$    # the miss-fw network namespace (created below only if needed)
NS_MADE=0
NSX=                   # "ip netns exec $NS" while a miss-fw run is set up or measured
stop_pid() {
    local pid=$1
    kill -0 "$pid" 2>/dev/null || { wait "$pid" 2>/dev/null || true; return 0; }
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 50); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    kill -0 "$pid" 2>/dev/null && kill -KILL "$pid" 2>/dev/null
    wait "$pid" 2>/dev/null || true
}
forget_pid() {
    local keep=() p
    for p in "${PIDS[@]}"; do [ "$p" = "$1" ] || keep+=("$p"); done
    PIDS=("${keep[@]+"${keep[@]}"}")
}
cleanup() {
    local rc=$? p
    trap - EXIT INT TERM
    for p in "${PIDS[@]+"${PIDS[@]}"}"; do stop_pid "$p"; done
    # Only after every process in it has stopped; this also frees pinhole's table
    # in there. The host's own ruleset is never touched.
    if [ "$NS_MADE" = 1 ]; then ip netns del "$NS" 2>/dev/null || log "could not delete network namespace $NS"; fi
    if [ "$KEEP_TMP" = 1 ] || [ $rc -ne 0 ]; then
        log "work dir kept: $TMP"
    else
        rm -rf "$TMP"
    fi
    exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

if [ "$NEED_NS" = 1 ]; then
    ip netns add "$NS" || die "ip netns add $NS failed"
    NS_MADE=1
    ip -n "$NS" link set lo up || die "could not bring up lo in $NS"
    log "network namespace $NS for miss-fw (deleted on exit)"
fi

port_busy() {
    command -v ss >/dev/null || return 1
    [ -n "$(ss -Hlnu "sport = :$1" 2>/dev/null)$(ss -Hlnt "sport = :$1" 2>/dev/null)" ]
}

# kdig_q PORT NAME -> prints "RCODE ADDR..." ; bounded to ~1 s.
kdig_q() {
    local out rcode addrs
    # shellcheck disable=SC2086  # $NSX is empty or "ip netns exec NS"
    out=$($NSX kdig @"$ADDR" -p "$1" +retry=0 +time=1 +noall +answer +header "$2" A 2>/dev/null) || return 1
    rcode=$(sed -n 's/.*status: \([A-Z]*\).*/\1/p' <<<"$out" | head -1)
    addrs=$(awk '$4 == "A" { print $5 }' <<<"$out" | tr '\n' ' ')
    [ -n "$rcode" ] || return 1
    echo "$rcode ${addrs% }"
}

# wait_ready NAME PID PORT QNAME EXPECTED_ADDR LOGFILE ; at most 60 s.
wait_ready() {
    local name=$1 pid=$2 port=$3 q=$4 want=$5 logf=$6 r=
    for _ in $(seq 120); do
        if ! kill -0 "$pid" 2>/dev/null; then
            tail -n 30 "$logf" >&2 || true
            die "$name exited during start-up (log above)"
        fi
        if r=$(kdig_q "$port" "$q") && [ "$r" = "NOERROR $want" ]; then return 0; fi
        sleep 0.5
    done
    tail -n 30 "$logf" >&2 || true
    die "$name did not answer $q with $want on port $port within 60 s (last: ${r:-none})"
}

cpu_ticks() {  # utime + stime of the whole process (all threads), in clock ticks
    local s
    s=$(cat "/proc/$1/stat") || return 1
    s=${s##*) }   # drop "pid (comm) ", comm may contain spaces
    awk '{ print $12 + $13 }' <<<"$s"   # fields 14 and 15 of the full line
}
cpu_jiffies() {  # "busy total" jiffies of one CPU from /proc/stat (busy = all but idle+iowait)
    awk -v c="cpu$1" '$1 == c { t = 0; for (i = 2; i <= 9 && i <= NF; i++) t += $i; print t - $5 - $6, t }' /proc/stat
}
# "A B": user+nice+system jiffies of all CPUs (A), and the CPU ticks of our own
# helpers (B): knotd (both, with miss-fw), ksoftirqd/N, and every child this script has reaped
# (dnsperf via timeout, kdig, awk...). A - B - server ticks over a run is CPU
# used by processes that are not part of the benchmark.
acct_snapshot() {
    local st ch k=0 p t
    st=$(cat "/proc/$$/stat"); st=${st##*) }
    ch=$(awk '{ print $14 + $15 }' <<<"$st")   # cutime + cstime
    for p in "${KNOT_PIDS[@]}" $(pgrep '^ksoftirqd/' || true); do
        t=$(cpu_ticks "$p" 2>/dev/null) && k=$((k + t))
    done
    awk -v own=$((ch + k)) '$1 == "cpu" { print $2 + $3 + $4, own; exit }' /proc/stat
}
hwm_kib() { awk '/^VmHWM:/ { print $2 }' "/proc/$1/status"; }
CLK_TCK=$(getconf CLK_TCK)

# ------------------------------------------------------------ build pinhole
if has_server pinhole; then
    if [ -z "$PINHOLE_BIN" ]; then
        PINHOLE_BIN=$ROOT/target/release/pinhole
        if [ "$SKIP_BUILD" != 1 ]; then
            log "cargo build --release (in $ROOT)"
            (cd "$ROOT" && cargo build --release --quiet --bin pinhole) || die "cargo build --release failed"
        fi
    fi
    [ -x "$PINHOLE_BIN" ] || die "pinhole binary not found: $PINHOLE_BIN (build it, or run with SERVERS=\"unbound dnsmasq\")"
fi

if [ "$NEED_HOST" = 1 ]; then
    for p in $UP_PORT $PORT; do
        port_busy "$p" && die "port $p on loopback is already in use; stop whatever listens there"
    done
fi

# How busy are the two CPUs before anything of ours runs? Another build or
# test on the machine skews every figure; the report records this baseline.
b_s0=$(cpu_jiffies "$SERVER_CPU"); b_l0=$(cpu_jiffies "$LOAD_CPU")
sleep 2
b_s1=$(cpu_jiffies "$SERVER_CPU"); b_l1=$(cpu_jiffies "$LOAD_CPU")
busy_pct() { awk -v a="$1" -v b="$2" 'BEGIN { split(a, x); split(b, y); p = 0; if (y[2] > x[2]) p = (y[1] - x[1]) / (y[2] - x[2]) * 100; printf "%.0f", p }'; }
BASE_S=$(busy_pct "$b_s0" "$b_s1"); BASE_L=$(busy_pct "$b_l0" "$b_l1")
if [ "$BASE_S" -gt 10 ] || [ "$BASE_L" -gt 10 ]; then
    log "warning: machine not idle before the run (CPU $SERVER_CPU ${BASE_S}% busy, CPU $LOAD_CPU ${BASE_L}% busy); figures will be skewed"
fi

# ----------------------------------------------------------- generate data
log "work dir $TMP; generating zone with $NAMES names"
mkdir -p "$TMP/knot" "$TMP/queries"
# u<N> gets 10.(v>>16).(v>>8&255).(v&255) with v = N * 2654435761 mod 2^24:
# an odd multiplier is a bijection mod 2^24, so every name has its own address,
# spread over the whole of 10.0.0.0/8. These are answer data only.
{
    cat <<EOF
\$ORIGIN bench.test.
\$TTL 3600
@       IN SOA ns.bench.test. hostmaster.bench.test. 1 3600 900 604800 3600
@       IN NS  ns.bench.test.
ns      IN A   127.0.0.1
cached  IN A   $CACHED_ADDR
EOF
    awk -v n="$NAMES" 'BEGIN {
        for (i = 1; i <= n; i++) {
            v = (i * 2654435761) % 16777216
            printf "u%d IN A 10.%d.%d.%d\n", i, int(v / 65536), int(v / 256) % 256, v % 256
        }
    }'
} >"$TMP/knot/bench.test.zone"
expected_addr() {  # address of u<N>, same formula as above
    awk -v i="$1" 'BEGIN { v = (i * 2654435761) % 16777216; printf "10.%d.%d.%d", int(v / 65536), int(v / 256) % 256, v % 256 }'
}
echo "cached.bench.test A" >"$TMP/queries/cached.txt"
awk -v n="$NAMES" 'BEGIN { for (i = 1; i <= n; i++) printf "u%d.bench.test A\n", i }' >"$TMP/queries/miss.txt"
awk -v n="$BLOCKED_NAMES" 'BEGIN { for (i = 1; i <= n; i++) printf "x%d.blocked.test A\n", i }' >"$TMP/queries/blocked.txt"

# ------------------------------------------------------------ start upstream
# One knotd on the host's loopback (cached, miss, blocked) and, for miss-fw,
# one inside the namespace; both serve the same zone file, each with its own
# run dir and database.
KNOT_PIDS=()
KNOT_CMD=; KNOT_NS_CMD=
start_knot() {  # start_knot DIR PREFIX ; PREFIX is "" or "ip netns exec NS"
    local dir=$1 pfx=$2 cmd pid
    mkdir -p "$dir/run" "$dir/db"
    cat >"$dir/knot.conf" <<EOF
server:
    rundir: "$dir/run"
    listen: $ADDR@$UP_PORT
    udp-workers: 1
    tcp-workers: 1
    background-workers: 1
database:
    storage: "$dir/db"
log:
  - target: stderr
    any: warning
template:
  - id: default
    storage: "$TMP/knot"
    zonefile-sync: -1
    zonefile-load: whole
    journal-content: none
zone:
  - domain: bench.test.
    file: "bench.test.zone"
EOF
    cmd="${pfx:+$pfx }taskset -c $LOAD_CPU knotd -c $dir/knot.conf"
    log "starting knotd on $ADDR:$UP_PORT (CPU $LOAD_CPU)${pfx:+ in $NS}"
    $cmd >"$dir/knotd.log" 2>&1 &
    pid=$!
    PIDS+=("$pid"); KNOT_PIDS+=("$pid")
    NSX=$pfx
    wait_ready knotd "$pid" "$UP_PORT" "u$NAMES.bench.test" "$(expected_addr "$NAMES")" "$dir/knotd.log"
    check_comm "$pid" knotd
    # knotd pins its UDP worker threads to CPUs itself, over the taskset above:
    # put every thread back on the load CPU so that it never shares the server's.
    taskset -a -p -c "$LOAD_CPU" "$pid" >/dev/null
    NSX=
    if [ -z "$pfx" ]; then KNOT_CMD=$cmd; else KNOT_NS_CMD=$cmd; fi
}
# check_comm PID NAME: the PID we recorded must be the program itself (ip netns
# exec and taskset exec it, they do not fork), or CPU figures would be wrong.
check_comm() {
    local c
    c=$(cat "/proc/$1/comm" 2>/dev/null) || die "process $1 ($2) is gone"
    [ "$c" = "${2:0:15}" ] || die "PID $1 is '$c', not $2: the CPU figures would not be the server's"
}
if [ "$NEED_HOST" = 1 ]; then start_knot "$TMP/knot/host" ""; fi
if [ "$NEED_NS" = 1 ]; then start_knot "$TMP/knot/ns" "ip netns exec $NS"; fi

# ----------------------------------------------------- server configurations
mkdir -p "$TMP/pinhole/zones" "$TMP/pinhole/zones-fw" "$TMP/unbound" "$TMP/dnsmasq"
# pinhole_config ZONES_DIR [EXTRA]: the common config; EXTRA (miss-fw) adds
# [firewall] and [metrics]. The control socket goes to the work dir so that a
# pinhole running on this host keeps its own (/run/pinhole/control.sock);
# without PINHOLE_CONTROL=1 the [control] section is left out (for binaries
# that predate it).
PINHOLE_CONTROL=1
pinhole_config() {
    cat <<EOF
[server]
listen = ["$ADDR:$PORT"]
[upstream]
servers = ["$ADDR:$UP_PORT"]
[cache]
max_entries = $CACHE_ENTRIES
[policy]
zones_dir = "$1"
default_action = "refuse"
EOF
    if [ "$PINHOLE_CONTROL" = 1 ]; then printf '[control]\nsocket = "%s"\n' "$TMP/pinhole/control.sock"; fi
    printf '%s' "${2:-}"
}
FW_CONFIG="[firewall]
mode = \"managed\"
table = \"$FW_TABLE\"
state_dir = \"$TMP/pinhole-state\"
write_deadline_ms = 1000
[metrics]
listen = \"$ADDR:$METRICS_PORT\"
"
write_pinhole_configs() {
    pinhole_config "$TMP/pinhole/zones" >"$TMP/pinhole/config.toml"
    pinhole_config "$TMP/pinhole/zones-fw" "$FW_CONFIG" >"$TMP/pinhole/config-fw.toml"
}
write_pinhole_configs
cat >"$TMP/pinhole/zones/bench.toml" <<'EOF'
[[zone]]
name = "bench"
description = "load test"
action = "allow"
hosts = ["*.bench.test"]
EOF
# miss-fw: the same zone with a port, so every answered address becomes one
# element (addr . tcp . 443) of set allow4.
cat >"$TMP/pinhole/zones-fw/bench.toml" <<'EOF'
[[zone]]
name = "bench"
description = "load test"
action = "allow"
ports = ["tcp/443"]
hosts = ["*.bench.test"]
EOF
cat >"$TMP/unbound/unbound.conf" <<EOF
server:
    interface: $ADDR
    port: $PORT
    do-ip6: no
    do-daemonize: no
    use-syslog: no
    logfile: ""
    verbosity: 0
    username: ""
    chroot: ""
    directory: "$TMP/unbound"
    pidfile: ""
    num-threads: 1
    access-control: 127.0.0.0/8 allow
    # upstream is on loopback: unbound refuses to query 127.0.0.0/8 by default
    do-not-query-localhost: no
    # unbound serves test. itself (RFC 6761) unless told not to
    local-zone: "test." nodefault
    local-zone: "blocked.test." refuse
    module-config: "iterator"
    qname-minimisation: no
    prefetch: no
    msg-cache-size: 256m
    rrset-cache-size: 512m
remote-control:
    control-enable: no
forward-zone:
    name: "."
    forward-addr: $ADDR@$UP_PORT
EOF

if has_server pinhole; then
    for cfg in config config-fw; do
        [ "$cfg" = config ] || has_workload miss-fw || continue
        if ! "$PINHOLE_BIN" check --config "$TMP/pinhole/$cfg.toml" >"$TMP/pinhole/check.log" 2>&1; then
            if [ "$PINHOLE_CONTROL" = 1 ] && grep -q control "$TMP/pinhole/check.log"; then
                log "this pinhole does not know [control]; configs without it"
                PINHOLE_CONTROL=0; write_pinhole_configs
                "$PINHOLE_BIN" check --config "$TMP/pinhole/$cfg.toml" >"$TMP/pinhole/check.log" 2>&1 && continue
            fi
            cat "$TMP/pinhole/check.log" >&2; die "pinhole check rejected the generated $cfg.toml"
        fi
    done
fi

server_cmd() {  # server_cmd SERVER WORKLOAD
    local pfx="" cfg=config
    [ "$2" = miss-fw ] && pfx="ip netns exec $NS " && cfg=config-fw
    case $1 in
        pinhole) echo "${pfx}taskset -c $SERVER_CPU $PINHOLE_BIN run --config $TMP/pinhole/$cfg.toml" ;;
        unbound) echo "${pfx}taskset -c $SERVER_CPU unbound -d -c $TMP/unbound/unbound.conf" ;;
        dnsmasq) echo "${pfx}taskset -c $SERVER_CPU dnsmasq -k --log-facility=- --conf-file=/dev/null --no-resolv --no-hosts --server=$ADDR#$UP_PORT --cache-size=$CACHE_ENTRIES --dns-forward-max=1000 --port=$PORT --listen-address=$ADDR --bind-interfaces --address=/blocked.test/ --pid-file" ;;
    esac
}

SERVER_PID=
start_server() {  # start_server SERVER WORKLOAD
    local s=$1 cmd
    cmd=$(server_cmd "$s" "$2")
    if [ "$s" = pinhole ]; then
        RUST_LOG=$PINHOLE_LOG $cmd >"$TMP/$s/server.log" 2>&1 &
    else
        $cmd >"$TMP/$s/server.log" 2>&1 &
    fi
    SERVER_PID=$!
    PIDS+=("$SERVER_PID")
    wait_ready "$s" "$SERVER_PID" "$PORT" cached.bench.test "$CACHED_ADDR" "$TMP/$s/server.log"
    if [ "$s" = pinhole ]; then check_comm "$SERVER_PID" "$(basename "$PINHOLE_BIN")"; else check_comm "$SERVER_PID" "$s"; fi
}
stop_server() { stop_pid "$SERVER_PID"; forget_pid "$SERVER_PID"; SERVER_PID=; }

dnsperf_cmd() {  # workload -> dnsperf command line (without the outer timeout)
    local w=$1 extra="" pfx="" f=$1
    [ "$w" = miss-fw ] && pfx="ip netns exec $NS " && f=miss
    [ "$f" = miss ] && extra=" -n 1"
    [ -n "$MAX_QPS" ] && extra="$extra -Q $MAX_QPS"
    echo "${pfx}taskset -c $LOAD_CPU dnsperf -s $ADDR -p $PORT -d $TMP/queries/$f.txt -l $DURATION -c $CLIENTS -T 1 -q $OUTSTANDING -t 2$extra"
}

# ------------------------------------------------------- miss-fw: set checks
# metrics_get FILE: pinhole's /metrics from inside the namespace (bounded).
metrics_get() {
    if command -v curl >/dev/null; then
        ip netns exec "$NS" curl -s --max-time 5 "http://$ADDR:$METRICS_PORT/metrics" >"$1" 2>/dev/null && return 0
    fi
    # shellcheck disable=SC2016  # expanded by the inner bash
    timeout 5 ip netns exec "$NS" bash -c 'exec 3<>"/dev/tcp/$0/$1" && printf "GET /metrics HTTP/1.0\r\n\r\n" >&3 && cat <&3' \
        "$ADDR" "$METRICS_PORT" >"$1" 2>/dev/null
}
# metric FILE NAME: a counter's value, or "n/a".
metric() { awk -v n="$2" '$1 == n { v = $2 } END { print (v == "" ? "n/a" : v) }' "$1"; }
# hist FILE NAME: "p50 p99 mean count" of a Prometheus histogram; p50/p99 are
# bucket upper bounds (the first bucket whose cumulative count reaches
# ceil(q * count)), "+Inf" beyond the last bound; "n/a n/a n/a 0" when absent.
hist() {
    awk -v n="$2" '
        index($1, n "_bucket{le=\"") == 1 { le = $1; sub(/.*le="/, "", le); sub(/".*/, "", le); k++; b[k] = le; c[k] = $2 }
        $1 == n "_sum" { sum = $2 }
        $1 == n "_count" { cnt = $2 }
        function q(x,    want, i) { want = x * cnt; if (want > int(want)) want = int(want) + 1
            for (i = 1; i <= k; i++) if (c[i] + 0 >= want) return b[i]; return "n/a" }
        END { if (cnt + 0 == 0) { print "n/a n/a n/a 0"; exit }
              printf "%s %s %.1f %d\n", q(0.5), q(0.99), sum / cnt, cnt }' "$1"
}
# fw_collect ROUND DNSPERF_OUT: after pinhole's miss-fw run, while it still
# runs: the elements in set allow4 against the names dnsperf sent, and the
# writer's metrics; one row of $FWRAW.
fw_collect() {
    local round=$1 out=$2 base=$TMP/pinhole/miss-fw.round$1 sent completed lost noerror setc m w b tries=0 b0 b1
    sent=$(awk '/Queries sent:/ { print $3 }' "$out"); completed=$(awk '/Queries completed:/ { print $3 }' "$out")
    lost=$(awk '/Queries lost:/ { print $3 }' "$out")
    noerror=$(awk '/Response codes:/ { for (i = 1; i < NF; i++) if ($i == "NOERROR" || $i == "NOERROR,") { v = $(i + 1); sub(/,$/, "", v); print v; exit } }' "$out")
    noerror=${noerror:-0}
    metrics_get "$base.metrics" || : >"$base.metrics"
    # Right after a burst of ~200,000 inserts the kernel's dump of the set can
    # be inconsistent (seen on 6.18: the first listing repeated ~20,000 elements
    # and left as many others out, same total; a listing 1-2 s later was
    # complete, so it is the dump, not the set). List again, at most 15 times
    # 1 s apart, until a listing has no element twice.
    while :; do
        tries=$((tries + 1))
        ip netns exec "$NS" nft -j list set inet "$FW_TABLE" allow4 >"$base.set.json" 2>"$base.set.err" || true
        setc=$(fw_count "$base.set.json" "${sent:-0}")
        [ "${setc##* }" = 0 ] || [ "${setc##* }" = n/a ] || [ "$tries" -ge 15 ] && break
        log "  set listing $tries had ${setc##* } elements twice; listing again"
        sleep 1
    done
    metrics_get "$base.metrics2" || : >"$base.metrics2"
    b0=$(metric "$base.metrics" pinhole_nft_batches_total); b1=$(metric "$base.metrics2" pinhole_nft_batches_total)
    m=$base.metrics
    w=$(hist "$m" pinhole_nft_write_microseconds); b=$(hist "$m" pinhole_nft_batch_elements)
    # A binary whose histograms stay empty still has the counters: the means
    # follow from them (write µs total / batches, elements / batches).
    if [ "${w##* }" = 0 ]; then
        w="n/a n/a $(awk -v t="$(metric "$m" pinhole_nft_write_micros_total)" -v n="$(metric "$m" pinhole_nft_batches_total)" 'BEGIN { if (n + 0 > 0 && t != "n/a") printf "%.1f", t / n; else print "n/a" }') 0"
    fi
    if [ "${b##* }" = 0 ]; then
        b="n/a n/a $(awk -v t="$(metric "$m" pinhole_nft_elements_total)" -v n="$(metric "$m" pinhole_nft_batches_total)" 'BEGIN { if (n + 0 > 0 && t != "n/a") printf "%.1f", t / n; else print "n/a" }') 0"
    fi
    printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$round" "${sent:-0}" "${completed:-0}" "${lost:-0}" "$noerror" \
        "${setc// /$'\t'}" "$(metric "$m" pinhole_nft_batches_total)" "$(metric "$m" pinhole_nft_elements_total)" \
        "$(metric "$m" pinhole_nft_errors_total)" "$(metric "$m" pinhole_firewall_failures_total)" "$(metric "$m" pinhole_nft_repairs_total)" \
        "${w// /$'\t'}" "${b// /$'\t'}" "$tries" "$(awk -v a="$b0" -v b="$b1" 'BEGIN { print (a == "n/a" || b == "n/a") ? "n/a" : b - a }')" \
        "$(grep -c -E '(WARN|ERROR)' "$TMP/pinhole/server.log" || true)" >>"$FWRAW"
    # columns: 1 round, 2 sent, 3 completed, 4 lost, 5 NOERROR, 6 elements in set,
    # 7 of them u<N> addresses, 8 u<N> addresses sent but missing, 9 unexpected,
    # 10 elements listed twice (last listing), 11 batches, 12 elements written,
    # 13 nft errors, 14 firewall failures, 15 repairs, 16-19 write µs p50 p99 mean
    # count, 20-23 elements/batch p50 p99 mean count, 24 set listings needed,
    # 25 batches written while the set was listed, 26 lines pinhole logged at
    # WARN or ERROR in this run (e.g. ENOBUFS, failed writes)
    tail -n 1 "$FWRAW" | awk -F'\t' '{ printf "load.sh:   set allow4: %s elements (%s of the u<N> addresses, %s missing, %s unexpected, %s listed twice; %s listing(s)) for %s NOERROR answers; batches %s, errors %s, firewall failures %s; write us p50<=%s p99<=%s mean %s; elements/batch p50<=%s p99<=%s mean %s; %s warning/error lines logged\n", $6, $7, $8, $9, $10, $24, $5, $11, $13, $14, $16, $17, $18, $20, $21, $22, $26 }' >&2
}
# fw_count FILE SENT: "listed u_in_set u_missing unexpected listed_twice" for an
# `nft -j list set` output; the u<N> addresses expected are those of
# u1..u<SENT> (dnsperf -n 1 sends the file in order).
fw_count() {
    python3 - "$1" "$2" "$CACHED_ADDR" <<'EOF'
import json, sys
path, sent, cached = sys.argv[1], int(sys.argv[2]), sys.argv[3]
try:
    doc = json.load(open(path))
except Exception:
    print("n/a n/a n/a n/a n/a"); sys.exit(0)
elems = []
for o in doc.get("nftables", []):
    if "set" in o:
        elems = o["set"].get("elem", [])
def addr(e):
    v = e.get("elem", e) if isinstance(e, dict) else e
    v = v.get("val", v) if isinstance(v, dict) else v
    if isinstance(v, dict) and "concat" in v:
        v = v["concat"][0]
    return v
have = [addr(e) for e in elems]
hs = set(have)
want = set()
for i in range(1, sent + 1):
    v = (i * 2654435761) % 16777216
    want.add("10.%d.%d.%d" % (v >> 16, (v >> 8) & 255, v & 255))
extra = len([a for a in hs if a not in want and a != cached])
print(len(have), len(hs & want), len(want - hs), extra, len(have) - len(hs))
EOF
}

# --------------------------------------------------------------- run loads
RAW=$TMP/raw.tsv
RESULTS=$TMP/results.tsv
FWRAW=$TMP/fw.tsv
: >"$RAW"; : >"$FWRAW"
for round in $(seq "$ROUNDS"); do
  for s in $SERVERS; do
    for w in $WORKLOADS; do
        NSX=
        if [ "$w" = miss-fw ]; then
            NSX="ip netns exec $NS"
            # A clean slate for every round: no table left by the last round
            # (inside the namespace; the host's ruleset is never touched) and
            # no journal to restore elements from.
            ip netns exec "$NS" nft delete table inet "$FW_TABLE" 2>/dev/null || true
            rm -rf "$TMP/pinhole-state"
        fi
        log "round $round/$ROUNDS: $s / $w: fresh start, pinned to CPU $SERVER_CPU${NSX:+, in $NS}"
        start_server "$s" "$w"
        # The readiness probe above already asked cached.bench.test once, which
        # is the warm-up for the cached workload; u<N> names were never asked.
        r=$(kdig_q "$PORT" probe.blocked.test) || r="no answer"
        case $r in NOERROR*) die "$s answered probe.blocked.test with NOERROR; blocking is not configured" ;; esac
        sleep 0.2
        c0=$(cpu_ticks "$SERVER_PID")
        s0=$(cpu_jiffies "$SERVER_CPU"); l0=$(cpu_jiffies "$LOAD_CPU"); a0=$(acct_snapshot)
        out=$TMP/$s/$w.round$round.dnsperf
        # In the background + wait, so that a signal to this script is acted
        # on at once (bash runs traps only between foreground commands).
        # shellcheck disable=SC2046
        timeout -k 5 $((DURATION + 30)) $(dnsperf_cmd "$w") >"$out" 2>&1 &
        LOAD_PID=$!
        PIDS+=("$LOAD_PID")
        wait "$LOAD_PID" || log "dnsperf exited non-zero for $s/$w"
        forget_pid "$LOAD_PID"
        kill -0 "$SERVER_PID" 2>/dev/null || { tail -n 30 "$TMP/$s/server.log" >&2; die "$s died during the $w run"; }
        c1=$(cpu_ticks "$SERVER_PID")
        s1=$(cpu_jiffies "$SERVER_CPU"); l1=$(cpu_jiffies "$LOAD_CPU"); a1=$(acct_snapshot)
        hwm=$(hwm_kib "$SERVER_PID")
        if [ "$w" = miss-fw ] && [ "$s" = pinhole ]; then fw_collect "$round" "$out"; fi
        stop_server
        NSX=
        cp "$TMP/$s/server.log" "$TMP/$s/$w.round$round.log" 2>/dev/null || true   # each run's log, for KEEP_TMP=1
        grep -q 'Queries completed:' "$out" || { cat "$out" >&2; die "no dnsperf statistics for $s/$w"; }
        awk -v s="$s" -v w="$w" -v round="$round" -v c0="$c0" -v c1="$c1" -v tck="$CLK_TCK" -v hwm="$hwm" \
            -v s0="$s0" -v s1="$s1" -v l0="$l0" -v l1="$l1" -v a0="$a0" -v a1="$a1" '
            /Queries sent:/        { sent = $3 }
            /Queries completed:/   { done_ = $3 }
            /Queries lost:/        { lost = $3 }
            /Response codes:/      { sub(/.*Response codes:[ \t]*/, ""); n = split($0, parts, /, /)
                                     rc = ""; for (i = 1; i <= n; i++) { split(parts[i], f, " "); gsub(/[()]/, "", f[3])
                                     rc = rc (rc == "" ? "" : ", ") f[1] " " f[3] } }
            /Run time \(s\):/      { rt = $4 }
            /Queries per second:/  { qps = $4 }
            /Average Latency \(s\):/ { lat = $4 }
            END {
                cpu = (c1 - c0) / tck
                us = done_ > 0 ? cpu / done_ * 1e6 : 0
                pct = rt > 0 ? cpu / rt * 100 : 0
                if (rc == "") rc = "none"
                split(s0, a); split(s1, b); sb = b[2] > a[2] ? (b[1] - a[1]) / (b[2] - a[2]) * 100 : 0
                split(l0, a); split(l1, b); lb = b[2] > a[2] ? (b[1] - a[1]) / (b[2] - a[2]) * 100 : 0
                el = b[2] - a[2]                         # jiffies elapsed on one CPU
                split(a0, a); split(a1, b)
                oth = (b[1] - a[1]) - (b[2] - a[2]) - (c1 - c0)
                oth = el > 0 && oth > 0 ? oth / el * 100 : 0
                printf "%s\t%s\t%.0f\t%d\t%d\t%d\t%s\t%.3f\t%.3f\t%.2f\t%.0f\t%.2f\t%.1f\t%.0f\t%.0f\t%.0f\t%d\n", s, w, qps, sent, done_, lost, rc, lat * 1000, rt, cpu, pct, us, hwm / 1024, sb, lb, oth, round
            }' "$out" >>"$RAW"
        tail -n 1 "$RAW" | awk -F'\t' '{ printf "load.sh:   %s qps, rcodes %s, %s us CPU/query, server CPU %s%%, peak RSS %s MiB, CPU busy %s%%/%s%%, other processes %s%% of a CPU\n", $3, $7, $12, $11, $13, $14, $15, $16 }' >&2
    done
  done
done
for p in "${KNOT_PIDS[@]}"; do stop_pid "$p"; forget_pid "$p"; done

# One row per (server, workload): the median of each numeric column over the
# rounds (the figure itself when ROUNDS=1); response codes from the first round.
awk -F'\t' -v OFS='\t' '
    function median(list,    n, v, i, j, t) {
        n = split(list, v, " ")
        for (i = 2; i <= n; i++) { t = v[i] + 0; for (j = i - 1; j >= 1 && v[j] + 0 > t; j--) v[j + 1] = v[j]; v[j + 1] = t }
        return n % 2 ? v[(n + 1) / 2] : (v[n / 2] + v[n / 2 + 1]) / 2
    }
    {
        k = $1 OFS $2
        if (!(k in rc)) { order[++nk] = k; rc[k] = $7 }
        for (c = 3; c <= 16; c++) if (c != 7) vals[k, c] = vals[k, c] " " $c
    }
    END {
        split("x x %.0f %d %d %d x %.3f %.3f %.2f %.0f %.2f %.1f %.0f %.0f %.0f", fmt, " ")
        for (i = 1; i <= nk; i++) {
            k = order[i]; line = k
            for (c = 3; c <= 16; c++) line = line OFS (c == 7 ? rc[k] : sprintf(fmt[c], median(vals[k, c])))
            print line
        }
    }' "$RAW" >"$RESULTS"

NOISY=$(awk -F'\t' '$16 > 5 { n++ } END { print n + 0 }' "$RAW")
[ "$NOISY" -eq 0 ] || log "warning: in $NOISY run(s) other processes used more than 5% of a CPU; those figures are skewed"

# ------------------------------------------------------------------ report
STAMP=$(date +%Y%m%d-%H%M%S)
mkdir -p "$OUT_DIR"
REPORT=$OUT_DIR/load-$STAMP.md
ver() { dpkg-query -W -f '${Version}' "$1" 2>/dev/null || echo "?"; }
GIT_REV=$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo "no commit")
[ -n "$(git -C "$ROOT" status --porcelain 2>/dev/null | head -1)" ] && GIT_REV="$GIT_REV (dirty tree)"
# The miss-fw section of the report: pinhole vs the others on miss-fw, the
# cost of the set writes (pinhole miss-fw - miss), and the set checks per round.
fw_report() {
    local o qa qb ca cb cm okq okset
    echo "## Set writes (miss-fw)"
    echo
    echo "pinhole with \`[firewall] mode = \"managed\"\`: every address it answers for an approved name is written into \`set inet $FW_TABLE allow4\` (as \`addr . tcp . 443\`) and acknowledged by the kernel before the answer leaves; a write that fails or misses \`write_deadline_ms\` turns the answer into SERVFAIL (fail-closed). unbound and dnsmasq write no sets. pinhole's CPU includes its netlink writes (made on its own threads), and the kernel's time for the nftables transactions, which run in pinhole's sendmsg() on the netlink socket, is charged to pinhole's stime too."
    echo
    echo "| server | QPS | CPU µs/query | pinhole ÷ server, QPS | pinhole ÷ server, CPU µs/query |"
    echo "|---|---:|---:|---:|---:|"
    qa=$(awk -F'\t' '$1 == "pinhole" && $2 == "miss-fw" { print $3 }' "$RESULTS")
    ca=$(awk -F'\t' '$1 == "pinhole" && $2 == "miss-fw" { print $12 }' "$RESULTS")
    for o in $SERVERS; do
        qb=$(awk -F'\t' -v o="$o" '$1 == o && $2 == "miss-fw" { print $3 }' "$RESULTS")
        cb=$(awk -F'\t' -v o="$o" '$1 == o && $2 == "miss-fw" { print $12 }' "$RESULTS")
        [ "$o" = pinhole ] && { echo "| $o | $qb | $cb | — | — |"; continue; }
        echo "| $o | $qb | $cb | $(awk -v a="$qa" -v b="$qb" 'BEGIN { if (a == "" || b + 0 == 0) print "n/a"; else printf "%.2f", a / b }') | $(awk -v a="$ca" -v b="$cb" 'BEGIN { if (a == "" || b + 0 == 0) print "n/a"; else printf "%.2f", a / b }') |"
    done
    echo
    cm=$(awk -F'\t' '$1 == "pinhole" && $2 == "miss" { print $12 }' "$RESULTS")
    if [ -n "$cm" ]; then
        echo "Cost of the set writes: pinhole miss-fw $ca µs/query vs miss $cm µs/query = $(awk -v a="$ca" -v b="$cm" 'BEGIN { printf "%+.2f", a - b }') µs per answered address (both medians of this run)."
        echo
    fi
    echo "pinhole's set after each miss-fw run (nft -j list set, while pinhole still ran) and its /metrics. Elements in set counts every element; the readiness probe's cached.bench.test ($CACHED_ADDR) is one of them. \"u<N> addresses missing\" = addresses of the names dnsperf sent that are not in the set. \"set listings\" = nft listings needed until one had no element twice (the first dump right after the load can be inconsistent; the last one counts); \"writes while listing\" = batches pinhole wrote meanwhile (0 = the set did not change). Write latency = send of a batch to the kernel's acknowledgement (pinhole_nft_write_microseconds); p50/p99 are histogram bucket upper bounds."
    echo
    echo "| round | completed | NOERROR | elements in set | u<N> addresses in set | u<N> addresses missing | unexpected elements | = NOERROR answers? | set listings | writes while listing | batches | elements written | nft errors | firewall failures | warn/error log lines | write µs p50 | write µs p99 | write µs mean | elements/batch p50 | elements/batch p99 | elements/batch mean |"
    echo "|---:|---:|---:|---:|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    awk -F'\t' '
        function le(v) { return v == "n/a" ? v : "≤ " v }
        { eq = $7 == $5 && $9 == 0 && $10 == 0 ? "yes" : ($9 == 0 && $10 == 0 && $7 > $5 && $7 - $5 <= $4 ? sprintf("+%d (answers lost in flight)", $7 - $5) : "**no**")
          if ($10 + 0 > 0) eq = eq sprintf(" (%d listed twice)", $10)
          printf "| %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s |\n", $1, $3, $5, $6, $7, $8, $9, eq, $24, $25, $11, $12, $13, $14, $26, le($16), le($17), $18, le($20), le($21), $22 }' "$FWRAW"
    echo
    if awk -F'\t' '$19 == 0 && $11 + 0 > 0 { f = 1 } END { exit !f }' "$FWRAW"; then
        echo "This pinhole's /metrics has empty nft histograms although it wrote batches: p50/p99 are n/a; the means come from the counters (pinhole_nft_write_micros_total and pinhole_nft_elements_total over pinhole_nft_batches_total)."
        echo
    fi
    if awk -F'\t' '$4 + 0 > 0 { f = 1 } END { exit !f }' "$FWRAW"; then
        echo "Some queries were lost (no answer within dnsperf's run): an address whose write finished but whose answer did not arrive is in the set without a counted answer, and a lost query's address may be missing from the set legitimately."
        echo
    fi
    okq=$(awk -F'\t' '$2 == "miss-fw" && $1 == "pinhole" { p = $3 } $2 == "miss-fw" && $1 == "unbound" { u = $3 } END { print (p != "" && u != "" ? (p + 0 >= u + 0 ? "yes" : "no") : "n/a") }' "$RESULTS")
    okset=$(awk -F'\t' '{ n++; if ($5 == $3 && $8 == 0 && $4 == 0 && $7 == $5 && $9 == 0 && $10 == 0 && $13 == 0 && $14 == 0) ok++ } END { print (n > 0 && ok == n ? "yes" : "no") }' "$FWRAW")
    echo "Goal: pinhole at least unbound's queries per second in the same run, with zero answers whose addresses were missing from the set, and the set holding one element per distinct answered address afterwards."
    echo
    qb=$(awk -F'\t' '$1 == "unbound" && $2 == "miss-fw" { print $3 }' "$RESULTS")
    echo "- QPS ≥ unbound (medians, miss-fw): **$okq** (pinhole $qa, unbound ${qb:-not run})"
    echo "- every round: 100 % NOERROR, nothing lost, no u<N> address missing, one element per answer, no nft error or firewall failure: **$okset**"
    echo
}

ENV_PREFIX="DURATION=$DURATION ROUNDS=$ROUNDS SERVERS=\"$SERVERS\" WORKLOADS=\"$WORKLOADS\" CLIENTS=$CLIENTS OUTSTANDING=$OUTSTANDING NAMES=$NAMES"
[ -n "$MAX_QPS" ] && ENV_PREFIX="$ENV_PREFIX MAX_QPS=$MAX_QPS"

REF=pinhole
has_server pinhole || REF=$(awk '{ print $1 }' <<<"$SERVERS")
OTHERS=()
for s in $SERVERS; do [ "$s" = "$REF" ] || OTHERS+=("$s"); done

{
    echo "# Load comparison — $(date -u '+%Y-%m-%d %H:%M UTC')"
    echo
    echo "- Command: \`$ENV_PREFIX $ORIG_CMD\`"
    echo "- Kernel: \`$(uname -srm)\`"
    echo "- CPU: $(awk -F': ' '/^model name/ { print $2; exit }' /proc/cpuinfo), $NCPU CPUs; server on CPU $SERVER_CPU, dnsperf + knotd on CPU $LOAD_CPU"
    echo "- Idle baseline (2 s before the run): CPU $SERVER_CPU ${BASE_S}% busy, CPU $LOAD_CPU ${BASE_L}% busy$( [ "$BASE_S" -gt 10 ] || [ "$BASE_L" -gt 10 ] && echo ' — **machine was not idle, figures are skewed**')"
    echo "- Versions: dnsperf $(ver dnsperf), knot $(ver knot), unbound $(ver unbound), dnsmasq $(ver dnsmasq-base), pinhole $GIT_REV"
    echo "- Load: $DURATION s per run, $ROUNDS round(s), dnsperf -c $CLIENTS -T 1 -q $OUTSTANDING -t 2${MAX_QPS:+ -Q $MAX_QPS}, UDP to $ADDR:$PORT; upstream knotd $ADDR:$UP_PORT, zone bench.test. with $NAMES unique names (TTL 3600)"
    echo "- Workloads: cached = cached.bench.test A repeated (after one warm-up query); miss = u1..u$NAMES.bench.test A once each (dnsperf -n 1, fresh server); blocked = x1..x$BLOCKED_NAMES.blocked.test A looped$(has_workload miss-fw && echo "; miss-fw = miss with pinhole's set writes on ([firewall] mode = \"managed\", zone ports = [\"tcp/443\"]: one element per answered address in set inet $FW_TABLE allow4, written before the answer), every process of it (knotd, server, dnsperf) in network namespace $NS; unbound and dnsmasq run miss-fw in that namespace too and write no sets")"
    echo "- Every (server, workload) run starts the server afresh. CPU = utime+stime of the server process from /proc/PID/stat (all threads) across the dnsperf run; CPU % = CPU s / run time; peak RSS = VmHWM at the end of the run. CPU N busy % = share of that CPU not idle during the run (/proc/stat; includes softirq and every process on it): a load CPU near 100 % with a server CPU % well under 100 % means dnsperf, not the server, set the QPS. Other procs % = CPU used during the run by processes that are not the server, knotd, ksoftirqd or this script's children, in % of one CPU: above ~5 % the machine was not quiet and that run is skewed."
    echo
    echo "## Results"
    echo
    [ "$NOISY" -gt 0 ] && echo "**Warning: in $NOISY run(s) other processes used more than 5 % of a CPU (column \"other procs %\"); those figures are skewed. Re-run on a quiet machine.**" && echo
    [ "$ROUNDS" -gt 1 ] && echo "Median of $ROUNDS interleaved rounds for every numeric column (response codes from round 1)." && echo
    echo "| server | workload | QPS | completed | lost | response codes | avg latency ms | run s | server CPU s | server CPU % | CPU µs/query | peak RSS MiB | CPU $SERVER_CPU busy % | CPU $LOAD_CPU busy % | other procs % |"
    echo "|---|---|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    awk -F'\t' '{ printf "| %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s |\n", $1, $2, $3, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16 }' "$RESULTS"
    echo
    if [ ${#OTHERS[@]} -gt 0 ]; then
        echo "## Ratios ($REF ÷ other)"
        echo
        echo "QPS: higher is better for $REF; CPU µs/query and peak RSS: lower is better for $REF."
        echo
        hdr="| workload | metric |"; sep="|---|---|"
        for o in "${OTHERS[@]}"; do hdr="$hdr $REF/$o |"; sep="$sep---:|"; done
        echo "$hdr"; echo "$sep"
        for w in $WORKLOADS; do
            for m in "QPS:3" "CPU µs/query:12" "peak RSS:13"; do
                name=${m%:*}; col=${m##*:}
                row="| $w | $name |"
                for o in "${OTHERS[@]}"; do
                    row="$row $(awk -F'\t' -v r="$REF" -v o="$o" -v w="$w" -v c="$col" '
                        $2 == w && $1 == r { a = $c } $2 == w && $1 == o { b = $c }
                        END { if (a == "" || b == "" || b + 0 == 0) print "n/a"; else printf "%.2f", a / b }' "$RESULTS") |"
                done
                echo "$row"
            done
        done
        echo
    fi
    if has_workload miss-fw && has_server pinhole && [ -s "$FWRAW" ]; then
        fw_report
    fi
    if [ "$ROUNDS" -gt 1 ]; then
        echo "## Every round"
        echo
        echo "| round | server | workload | QPS | response codes | CPU µs/query | server CPU % | peak RSS MiB | CPU $SERVER_CPU busy % | CPU $LOAD_CPU busy % | other procs % |"
        echo "|---:|---|---|---:|---|---:|---:|---:|---:|---:|---:|"
        awk -F'\t' '{ printf "| %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s |\n", $17, $1, $2, $3, $7, $12, $11, $13, $14, $15, $16 }' "$RAW"
        echo
    fi
    echo "## Commands"
    echo
    echo '```'
    [ -z "$KNOT_CMD" ] || echo "$KNOT_CMD"
    if [ "$NEED_HOST" = 1 ]; then for s in $SERVERS; do server_cmd "$s" ""; done; fi
    if [ "$NEED_NS" = 1 ]; then
        echo "ip netns add $NS; ip -n $NS link set lo up    # ip netns del $NS at exit"
        echo "$KNOT_NS_CMD"
        for s in $SERVERS; do server_cmd "$s" miss-fw; done
        if has_server pinhole; then
            echo "ip netns exec $NS nft -j list set inet $FW_TABLE allow4    # after pinhole's run"
            echo "ip netns exec $NS curl -s http://$ADDR:$METRICS_PORT/metrics"
        fi
    fi
    for w in $WORKLOADS; do echo "timeout -k 5 $((DURATION + 30)) $(dnsperf_cmd "$w")"; done
    echo '```'
    echo
    echo "Paths under \`$TMP\` are a temporary work dir (removed at exit unless KEEP_TMP=1)."
} >"$REPORT"

cat "$REPORT"
log "report written to $REPORT"
