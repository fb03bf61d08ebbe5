#!/usr/bin/env bash
# Sluice benchmark harness: Sluice, HAProxy and nginx doing the same proxy job on the same
# cores, side by side, in one run (Sluice on its defaults). See bench/README.md.
#
#   bench/run.sh [--quick] [--only SCENARIO[,SCENARIO...]] [--rounds N] [--duration SECONDS]
#                [--cpu-cap PERCENT] [--out DIR] [--no-build]
#
# Scenarios: ka1k browse ka10k ka64k close1k post1m paced1k tunnel idle tls_ka1k tls_handshake
# h2tls h2h2 h2bulk h2idle (all by default). Environment: SLUICE_BIN=PATH uses that binary and skips the build;
# SLUICE_BASELINE_BIN=PATH measures a second Sluice binary alongside (an A/B of a change);
# BENCH_LOAD_CPU and BENCH_PROXY_CPU (default 0 and 1) choose the cores; BENCH_DELAY_MS
# (default 10) paces paced1k; BENCH_KEEP_LOGS=DIR keeps the run's logs there (client output,
# proxy logs, Sluice's metrics at each stop, nginx error logs). In the capacity scenarios
# (ka1k browse ka10k ka64k close1k post1m tls_ka1k h2tls h2h2) each proxy runs in a cgroup with
# a CPU quota of PERCENT of one core (10 ms periods; default 50), so that the proxy rather than
# the load generator is the bottleneck; --cpu-cap 0 runs them uncapped. paced1k, tunnel, idle,
# tls_handshake, h2bulk and h2idle always run uncapped.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(dirname "$HERE")
TOOLS=$HERE/tools
PEERS=$HERE/peers

ALL_SCENARIOS=(ka1k browse ka10k ka64k close1k post1m paced1k tunnel idle tls_ka1k tls_handshake h2tls h2h2 h2bulk h2idle)
# SLUICE_BASELINE_BIN=PATH also measures that Sluice binary (proxy `sluice_base`) wherever
# Sluice runs, in the same rounds: an old-against-new comparison for a change.
BASE=()
[[ -n ${SLUICE_BASELINE_BIN:-} ]] && BASE=(sluice_base)
# TLS scenarios: Sluice intercepts, HAProxy terminates with a static certificate (no nginx peer).
TLS_PROXIES=(sluice "${BASE[@]}" haproxy)
# HTTP/2 scenarios: the client speaks h2 over TLS to every proxy. nginx terminates h2 too,
# but its proxy module speaks only HTTP/1.x to origins: it is in h2tls only. h2bulk compares
# with the direct transfer (the same client straight to the origin's h2 listener).
H2_PROXIES=(sluice "${BASE[@]}" haproxy nginx)
H2_ORIGIN_PROXIES=(sluice "${BASE[@]}" haproxy)
PROXIES=(sluice "${BASE[@]}" haproxy nginx)
# ka1k and browse also measure haproxy_tcp, HAProxy in `mode tcp`: a plain relay of the same
# bytes to the upstream with no HTTP work, the floor an HTTP proxy is compared with.
FLOOR_SCENARIOS=(ka1k browse)
proxies_for() { # the proxies a wrk scenario measures, in the order of its first round
    if [[ " ${FLOOR_SCENARIOS[*]} " == *" $1 "* ]]; then
        echo sluice "${BASE[@]}" haproxy haproxy_tcp nginx
    elif [[ $1 == ka10k ]] && ! ka10k_nginx_fits; then
        echo sluice "${BASE[@]}" haproxy
    else
        echo "${PROXIES[@]}"
    fi
}
# nginx counts every client connection and every upstream connection against its
# worker_connections (the open-files limit, less 100). With 10,000 busy clients it holds up to
# one upstream connection per request in flight, beyond its idle cached ones: below room for
# twice the clients it runs out, closes keep-alive clients ("worker_connections are not
# enough, reusing connections") and wrk counts read errors. It is left out of ka10k then.
ka10k_nginx_fits() { ((NOFILE >= 2 * KA10K_CONNS + 2000)); }

usage() {
    sed -n '2,17p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'
    exit "${1:-0}"
}

CMDLINE="bench/run.sh${*:+ $*}"
MODE=full
ONLY=""
ROUNDS=""
DURATION=""
OUT_DIR=$HERE/results
BUILD=1
CPU_CAP=""
DEFAULT_CPU_CAP=50
# Scenarios that measure capacity (CPU per request and req/s with the proxy as the
# bottleneck). tls_handshake is not one: its Python client is slower than any proxy, and
# a quota would only throttle the peer whose handshakes cost more.
CAPPED_SCENARIOS=(ka1k browse ka10k ka64k close1k post1m tls_ka1k h2tls h2h2)
[[ -n "${SLUICE_BIN:-}" ]] && BUILD=0
while (($#)); do
    case $1 in
        --quick) MODE=quick ;;
        --only) ONLY=${2:?--only needs a scenario}; shift ;;
        --only=*) ONLY=${1#*=} ;;
        --rounds) ROUNDS=${2:?}; shift ;;
        --duration) DURATION=${2:?}; shift ;;
        --out) OUT_DIR=${2:?}; shift ;;
        --cpu-cap) CPU_CAP=${2:?}; shift ;;
        --no-build) BUILD=0 ;;
        -h|--help) usage 0 ;;
        *) echo "bench: unknown argument: $1" >&2; usage 2 >&2 ;;
    esac
    shift
done

if [[ $MODE == quick ]]; then
    : "${ROUNDS:=1}" "${DURATION:=3}"
    WARMUP=1
    TUNNEL_BYTES=$((1 << 30))
    IDLE_COUNT=2000
    KA10K_CONNS=10000
    H2IDLE_COUNT=1000
else
    : "${ROUNDS:=3}" "${DURATION:=8}"
    WARMUP=1
    TUNNEL_BYTES=$((3 << 30))
    IDLE_COUNT=10000
    KA10K_CONNS=10000
    H2IDLE_COUNT=5000
fi
# h2bulk: one download of this size over one h2 stream (the issue's 1 GiB in both modes).
H2BULK_BYTES=$((1 << 30))
[[ $ROUNDS =~ ^[1-9][0-9]*$ ]] || { echo "bench: --rounds must be a positive integer" >&2; exit 2; }
[[ $DURATION =~ ^[1-9][0-9]*$ ]] || { echo "bench: --duration must be whole seconds" >&2; exit 2; }
[[ -z $CPU_CAP || ($CPU_CAP =~ ^[0-9]+$ && CPU_CAP -le 100) ]] || { echo "bench: --cpu-cap must be a percentage, 0 (off) to 100" >&2; exit 2; }
CAP_ASKED=${CPU_CAP:+1}
: "${CPU_CAP:=$DEFAULT_CPU_CAP}"
[[ $CPU_CAP == 0 ]] && CPU_CAP=
# Shorter runs get a proportionally smaller tunnel transfer (the smoke test uses 2 s).
if ((DURATION < 3)); then TUNNEL_BYTES=$((256 << 20)); IDLE_COUNT=500; H2IDLE_COUNT=250; H2BULK_BYTES=$((256 << 20)); fi

SCENARIOS=()
if [[ -n $ONLY ]]; then
    IFS=, read -r -a wanted <<<"$ONLY"
    for s in "${wanted[@]}"; do
        [[ " ${ALL_SCENARIOS[*]} " == *" $s "* ]] || { echo "bench: unknown scenario '$s' (one of: ${ALL_SCENARIOS[*]})" >&2; exit 2; }
        SCENARIOS+=("$s")
    done
else
    SCENARIOS=("${ALL_SCENARIOS[@]}")
fi

LOAD_CPU=${BENCH_LOAD_CPU:-0}
PROXY_CPU=${BENCH_PROXY_CPU:-1}
DELAY_MS=${BENCH_DELAY_MS:-10}
export BENCH_DELAY_MS=$DELAY_MS # read by tools/paced.lua
NCPU=$(nproc)
if ((NCPU < 2)); then
    echo "bench: only one CPU: load and proxy share it; figures are not comparable to a 2-core run" >&2
    LOAD_CPU=0 PROXY_CPU=0
fi

log() { printf '[bench %s] %s\n' "$(date +%T)" "$*" >&2; }
die() { printf 'bench: %s\n' "$*" >&2; exit 1; }

# ------------------------------------------------------------------------------------
# Cleanup: every process we start is tracked by PID and stopped on exit, whatever happens.
# ------------------------------------------------------------------------------------
STARTED=()
TMP=""
CGROUP=""
PORTS=()
cleanup() {
    local rc=$? pid all=()
    trap - EXIT INT TERM
    for pid in "${STARTED[@]}"; do
        kill -0 "$pid" 2>/dev/null || continue
        mapfile -t kids < <(python3 "$TOOLS/proc.py" tree "$pid" 2>/dev/null || echo "$pid")
        all+=("${kids[@]}")
        kill -TERM "$pid" 2>/dev/null || true
    done
    if ((${#all[@]})); then
        for _ in $(seq 50); do
            local alive=0
            for pid in "${all[@]}"; do kill -0 "$pid" 2>/dev/null && alive=1; done
            ((alive)) || break
            sleep 0.1
        done
        for pid in "${all[@]}"; do kill -KILL "$pid" 2>/dev/null || true; done
        for pid in "${STARTED[@]}"; do wait "$pid" 2>/dev/null || true; done
    fi
    if ((${#PORTS[@]})) && ! busy=$(python3 "$TOOLS/proc.py" listening "${PORTS[@]}"); then
        echo "bench: warning: still listening after cleanup: $busy" >&2
    fi
    [[ -n $CGROUP && -d $CGROUP ]] && { rmdir "$CGROUP" 2>/dev/null || echo "bench: warning: could not remove $CGROUP" >&2; }
    if [[ -n ${BENCH_KEEP_LOGS:-} && -n $TMP && -d $TMP/logs ]]; then
        mkdir -p "$BENCH_KEEP_LOGS" && cp -r "$TMP/logs/." "$BENCH_KEEP_LOGS/" &&
            for f in upstream nginx-proxy nginx-h2; do [[ -f $TMP/$f/error.log ]] && cp "$TMP/$f/error.log" "$BENCH_KEEP_LOGS/$f-error.log"; done
        echo "bench: logs kept in $BENCH_KEEP_LOGS" >&2
    fi
    [[ -n $TMP && -d $TMP ]] && rm -rf "$TMP"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# Runs a command in the background and waits for it, so that a signal to this script is
# handled at once (bash defers traps until a foreground command ends) and the command is
# stopped by the cleanup with everything else.
run_fg() {
    "$@" &
    local pid=$! rc=0
    STARTED+=("$pid")
    wait "$pid" || rc=$?
    forget "$pid"
    return "$rc"
}

forget() { # forget a PID we stopped ourselves
    local keep=() p
    for p in "${STARTED[@]}"; do [[ $p == "$1" ]] || keep+=("$p"); done
    STARTED=("${keep[@]}")
}

# ------------------------------------------------------------------------------------
# Tools: install what is missing (Debian packages), build the release binary.
# ------------------------------------------------------------------------------------
install_missing() {
    local pkgs=()
    command -v wrk >/dev/null || pkgs+=(wrk)
    command -v h2load >/dev/null || pkgs+=(nghttp2-client)
    command -v haproxy >/dev/null || [[ -x /usr/sbin/haproxy ]] || pkgs+=(haproxy)
    command -v nginx >/dev/null || [[ -x /usr/sbin/nginx ]] || pkgs+=(nginx)
    command -v python3 >/dev/null || pkgs+=(python3)
    command -v taskset >/dev/null || pkgs+=(util-linux)
    ((${#pkgs[@]})) || return 0
    log "installing ${pkgs[*]}"
    local sudo=()
    ((EUID == 0)) || sudo=(sudo)
    # Keep the packages' own services (nginx on :80, haproxy) from being started.
    local policy=/usr/sbin/policy-rc.d made_policy=0
    if [[ ! -e $policy ]]; then
        printf '#!/bin/sh\nexit 101\n' | "${sudo[@]}" tee "$policy" >/dev/null && "${sudo[@]}" chmod +x "$policy" && made_policy=1
    fi
    local ok=0
    DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -q "${pkgs[@]}" && ok=1
    if ((!ok)); then
        "${sudo[@]}" apt-get update -q && DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -q "${pkgs[@]}" && ok=1
    fi
    ((made_policy)) && "${sudo[@]}" rm -f "$policy"
    ((ok)) || die "could not install ${pkgs[*]}"
}

install_missing
export PATH=$PATH:/usr/sbin:/sbin
CLK_TCK=$(getconf CLK_TCK)

if ((BUILD)); then
    command -v cargo >/dev/null || die "cargo not found (install Rust with rustup), or set SLUICE_BIN"
    log "building the release binary"
    (cd "$ROOT" && cargo build --release --quiet --bin sluice) || die "cargo build --release failed"
    SLUICE_BIN=$ROOT/target/release/sluice
fi
SLUICE_BIN=${SLUICE_BIN:-$ROOT/target/release/sluice}
[[ -x $SLUICE_BIN ]] || die "no Sluice binary at $SLUICE_BIN"
[[ -z ${SLUICE_BASELINE_BIN:-} || -x $SLUICE_BASELINE_BIN ]] || die "no Sluice binary at $SLUICE_BASELINE_BIN"
# The proxies start from the run's own directories: a path relative to where bench/run.sh
# was started would name nothing there.
SLUICE_BIN=$(realpath "$SLUICE_BIN")
[[ -n ${SLUICE_BASELINE_BIN:-} ]] && SLUICE_BASELINE_BIN=$(realpath "$SLUICE_BASELINE_BIN")

# CPU cap: a cgroup (v1 cpu controller, or v2 cpu.max) with a quota per 10 ms period. An
# explicit --cpu-cap that cannot be set up is fatal; the default one is skipped with a
# warning (the report then says the run was uncapped).
setup_cgroup() {
    if [[ -w /sys/fs/cgroup/cpu/cgroup.procs ]]; then
        CGROUP=/sys/fs/cgroup/cpu/sluice-bench-$$
        if ! { mkdir "$CGROUP" && echo 10000 >"$CGROUP/cpu.cfs_period_us" && echo $((CPU_CAP * 100)) >"$CGROUP/cpu.cfs_quota_us"; }; then
            CGROUP_ERR="could not set up the cgroup"
            return 1
        fi
    elif [[ -f /sys/fs/cgroup/cgroup.controllers ]] && grep -qw cpu /sys/fs/cgroup/cgroup.controllers; then
        grep -qw cpu /sys/fs/cgroup/cgroup.subtree_control || echo +cpu >/sys/fs/cgroup/cgroup.subtree_control ||
            { CGROUP_ERR="could not enable the cgroup v2 cpu controller"; return 1; }
        CGROUP=/sys/fs/cgroup/sluice-bench-$$
        if ! { mkdir "$CGROUP" && echo "$((CPU_CAP * 100)) 10000" >"$CGROUP/cpu.max"; }; then
            CGROUP_ERR="could not set up the cgroup"
            return 1
        fi
    else
        CGROUP_ERR="no writable cgroup cpu controller (v1 /sys/fs/cgroup/cpu or v2 cpu.max)"
        return 1
    fi
}
CGROUP_ERR=""
CAP_THIS=0 # 1 while a capped scenario runs: start_proxy moves the proxy into the cgroup
if [[ -n $CPU_CAP ]] && ! setup_cgroup; then
    [[ -n $CAP_ASKED ]] && die "--cpu-cap: $CGROUP_ERR"
    log "warning: $CGROUP_ERR; the capacity scenarios run uncapped (the proxy may not be the bottleneck)"
    [[ -n $CGROUP && -d $CGROUP ]] && rmdir "$CGROUP" 2>/dev/null
    CPU_CAP=""
    CGROUP=""
fi

# Open files: the idle scenario holds one descriptor per client in the client and in the
# proxy. Raise the soft limit as far as the hard one goes.
ulimit -n "$(ulimit -Hn | sed 's/unlimited/1048576/')" 2>/dev/null || true
NOFILE=$(ulimit -n)
if ((IDLE_COUNT > NOFILE - 1000)); then
    log "open-files limit is $NOFILE: idle scenario reduced from $IDLE_COUNT to $((NOFILE - 1000)) clients"
    IDLE_COUNT=$((NOFILE - 1000))
fi
# ka10k: wrk and the proxy each hold one descriptor per client, the proxy also one per
# upstream connection (as many as it has requests in flight to the origin at once): leave
# it 2,000 of those under the limit (each process has its own).
if ((KA10K_CONNS > NOFILE - 2000)); then
    log "open-files limit is $NOFILE: ka10k reduced from $KA10K_CONNS to $((NOFILE - 2000)) clients"
    KA10K_CONNS=$((NOFILE - 2000))
fi
# Sluice on its defaults holds as many clients per worker as the limit allows at two
# descriptors each, after 64 + limit/8 kept aside (`limits.max_connections_per_worker`,
# src/sys.rs): past that it closes new clients, which wrk reconnects at once, so a row
# above the cap measures a reconnect storm, not 10,000 busy clients. Every proxy gets the
# same, smaller, number then.
SLUICE_CAP=$(((NOFILE - 64 - NOFILE / 8) / 2))
if ((KA10K_CONNS > SLUICE_CAP)); then
    log "open-files limit is $NOFILE: ka10k reduced from $KA10K_CONNS to $SLUICE_CAP clients (Sluice's default client cap at this limit)"
    KA10K_CONNS=$SLUICE_CAP
fi
# The same for idle: clients past the cap are refused, and the row reported them as
# failed (bytes per connection are over the clients that stayed, so the figure held).
if ((IDLE_COUNT > SLUICE_CAP)); then
    log "open-files limit is $NOFILE: idle reduced from $IDLE_COUNT to $SLUICE_CAP clients (Sluice's default client cap at this limit)"
    IDLE_COUNT=$SLUICE_CAP
fi

# ------------------------------------------------------------------------------------
# Scratch directory, ports, rendered configs.
# ------------------------------------------------------------------------------------
if [[ -d /dev/shm && -w /dev/shm ]]; then TMP=$(mktemp -d /dev/shm/sluice-bench.XXXXXX); else TMP=$(mktemp -d); fi
chmod 755 "$TMP" # nginx workers run as an unprivileged user and read the bodies from here
mkdir -p "$TMP/www" "$TMP/upstream" "$TMP/nginx-proxy" "$TMP/nginx-h2" "$TMP/logs" "$TMP/run" "$TMP/CA" "$TMP/tls"
read -r UP_PORT PROXY_PORT ADMIN_PORT TCP_PORT SINK_PORT ORIGIN_TLS_PORT ORIGIN_H2_PORT < <(python3 "$TOOLS/proc.py" ports 7)
PORTS=("$UP_PORT" "$PROXY_PORT" "$ADMIN_PORT" "$TCP_PORT" "$SINK_PORT" "$ORIGIN_TLS_PORT" "$ORIGIN_H2_PORT")

# TLS material for the tls_* scenarios, made fresh for every run (EC P-256, like the
# certificates Sluice forges): a test CA; the origin's certificate, signed by it, for
# origin.test and *.bench.test (served by the upstream nginx on ORIGIN_TLS_PORT, trusted by
# Sluice with --upstream-ca and by HAProxy with ca-file); HAProxy's client-side certificate
# is the same static one (combined.pem: certificate and key).
TLS=$TMP/tls
make_tls() {
    local ec=(-newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes)
    openssl req -x509 "${ec[@]}" -keyout "$TLS/ca.key" -out "$TLS/ca.pem" -days 2 -subj "/CN=Sluice bench test CA" &&
        openssl req "${ec[@]}" -keyout "$TLS/origin.key" -out "$TLS/origin.csr" -subj "/CN=origin.test" &&
        printf 'subjectAltName=DNS:origin.test,DNS:*.bench.test\nbasicConstraints=CA:FALSE\nkeyUsage=digitalSignature\nextendedKeyUsage=serverAuth\n' >"$TLS/ext.cnf" &&
        openssl x509 -req -in "$TLS/origin.csr" -CA "$TLS/ca.pem" -CAkey "$TLS/ca.key" -CAcreateserial \
            -out "$TLS/origin.pem" -days 2 -extfile "$TLS/ext.cnf" &&
        cat "$TLS/origin.pem" "$TLS/origin.key" >"$TLS/combined.pem" && chmod -R a+rX "$TLS"
}
make_tls >"$TMP/logs/openssl.log" 2>&1 || { cat "$TMP/logs/openssl.log" >&2; die "could not make the TLS test certificates"; }

render() { # render TEMPLATE OUTPUT [SED-EXPRESSION...]: replaces the @NAME@ placeholders
    local extra=() e
    for e in "${@:3}"; do extra+=(-e "$e"); done
    sed "${extra[@]}" -e "s#@TMP@#$TMP#g" -e "s/@UPSTREAM_PORT@/$UP_PORT/g" -e "s/@PROXY_PORT@/$PROXY_PORT/g" \
        -e "s/@TCP_PORT@/$TCP_PORT/g" -e "s/@SINK_PORT@/$SINK_PORT/g" -e "s/@NOFILE@/$NOFILE/g" \
        -e "s/@WORKER_CONNECTIONS@/$((NOFILE - 100))/g" -e "s#@WWW@#$TMP/www#g" \
        -e "s/@ORIGIN_TLS_PORT@/$ORIGIN_TLS_PORT/g" -e "s/@ORIGIN_H2_PORT@/$ORIGIN_H2_PORT/g" \
        -e "s#@TLS@#$TLS#g" "$1" >"$2"
    if grep -q '@[A-Z_]*@' "$2"; then die "unrendered placeholder in $2: $(grep -o '@[A-Z_]*@' "$2" | head -1)"; fi
}
render "$HERE/upstream/nginx.conf.tmpl" "$TMP/upstream.conf"
render "$PEERS/haproxy.cfg.tmpl" "$TMP/haproxy.cfg"
render "$PEERS/haproxy-tcp.cfg.tmpl" "$TMP/haproxy-tcp.cfg"
render "$PEERS/haproxy-tls.cfg.tmpl" "$TMP/haproxy-tls.cfg"
render "$PEERS/nginx-proxy.conf.tmpl" "$TMP/nginx-proxy.conf"
# HTTP/2 peers: HAProxy towards the HTTP/1.1 TLS origin (h2tls, h2bulk, h2idle) and towards
# the origin's h2 listener (h2h2); nginx towards the HTTP/1.1 TLS origin (h2tls).
render "$PEERS/haproxy-h2.cfg.tmpl" "$TMP/haproxy-h2.cfg" "s/@H2_ORIGIN_PORT@/$ORIGIN_TLS_PORT/g" "s/ @H2_ORIGIN_ALPN@//g"
render "$PEERS/haproxy-h2.cfg.tmpl" "$TMP/haproxy-h2h2.cfg" "s/@H2_ORIGIN_PORT@/$ORIGIN_H2_PORT/g" "s/@H2_ORIGIN_ALPN@/alpn h2/g" \
    "s#haproxy-h2.pid#haproxy-h2h2.pid#"
render "$PEERS/nginx-h2.conf.tmpl" "$TMP/nginx-h2.conf"
render "$PEERS/sluice.toml.tmpl" "$TMP/sluice.toml"

# Bodies: 1 KiB and 64 KiB of printable bytes; the browse scenario's site: 20 resources of
# a shop's product page, 4-30 KiB each (mean 14.5 KiB), listed with their kind (which Accept
# and Sec-Fetch-* headers tools/browse.lua sends for them) in BROWSE_LIST; a 64 MiB source
# for the tunnel transfers.
BROWSE_LIST=$TMP/browse.list
export BENCH_BROWSE_LIST=$BROWSE_LIST # read by tools/browse.lua
python3 - "$TMP/www" "$BROWSE_LIST" <<'EOF'
import sys, os, random
d, listing = sys.argv[1], sys.argv[2]
pattern = bytes(range(33, 127))
for name, size in (("1k", 1024), ("64k", 65536)):
    with open(os.path.join(d, name), "wb") as f:
        f.write((pattern * (size // len(pattern) + 1))[:size])
SITE = [  # path, kind (tools/browse.lua), KiB
    ("/b/index.html", "document", 27), ("/b/css/main.css", "style", 22), ("/b/css/theme.css", "style", 6),
    ("/b/js/vendor.js", "script", 30), ("/b/js/app.js", "script", 18), ("/b/js/analytics.js", "script", 9),
    ("/b/img/logo.svg", "image", 4), ("/b/img/hero.webp", "image", 29), ("/b/img/p1.webp", "image", 12),
    ("/b/img/p2.webp", "image", 15), ("/b/img/p3.webp", "image", 10), ("/b/img/p4.webp", "image", 19),
    ("/b/img/p5.webp", "image", 8), ("/b/img/p6.webp", "image", 14), ("/b/img/icons.svg", "image", 5),
    ("/b/img/banner.webp", "image", 21), ("/b/fonts/inter.woff2", "font", 25), ("/b/api/cart.json", "empty", 4.5),
    ("/b/api/recs.json", "empty", 7), ("/b/favicon.ico", "image", 4),
]
rnd = random.Random(11)
with open(listing, "w") as out:
    for path, kind, kib in SITE:
        f = os.path.join(d, path.lstrip("/"))
        os.makedirs(os.path.dirname(f), exist_ok=True)
        with open(f, "wb") as g:
            g.write(bytes(rnd.choice(pattern) for _ in range(int(kib * 1024))))
        out.write("%s %s %d\n" % (path, kind, int(kib * 1024)))
EOF
chmod -R a+rX "$TMP/www"
TUNNEL_SRC=$TMP/tunnel.src
head -c $((64 << 20)) /dev/urandom >"$TUNNEL_SRC"
# h2bulk's download and warm-up: sparse files (zeros; TLS encrypts them like any bytes, and
# the upstream reads them without sendfile over TLS), so /dev/shm holds no 1 GiB.
truncate -s "$H2BULK_BYTES" "$TMP/www/bulk"
truncate -s $((256 << 20)) "$TMP/www/bulk-warmup"

# ------------------------------------------------------------------------------------
# Output files, run metadata.
# ------------------------------------------------------------------------------------
DATE=$(date +%Y-%m-%d)
STEM=$DATE-$MODE
[[ -n $ONLY ]] && STEM=$STEM-${ONLY//,/-}
RAW=$TMP/raw.jsonl # copied next to the report at the end; an interrupted run leaves nothing
META=$TMP/meta.txt
{
    echo "date=$(date '+%Y-%m-%d %H:%M:%S %Z')"
    echo "mode=$MODE"
    echo "command=$CMDLINE"
    echo "rounds=$ROUNDS"
    echo "duration=$DURATION"
    echo "warmup=$WARMUP"
    echo "tunnel_bytes=$TUNNEL_BYTES"
    echo "idle_count=$IDLE_COUNT"
    echo "h2idle_count=$H2IDLE_COUNT"
    echo "h2bulk_bytes=$H2BULK_BYTES"
    echo "ka10k_conns=$KA10K_CONNS"
    echo "delay_ms=$DELAY_MS"
    echo "load_cpu=$LOAD_CPU"
    echo "proxy_cpu=$PROXY_CPU"
    echo "cpu_cap=$CPU_CAP"
    echo "capped_scenarios=$(IFS=,; echo "${CAPPED_SCENARIOS[*]}")"
    echo "loadavg_start=$(cut -d' ' -f1-3 /proc/loadavg)"
    echo "nproc=$NCPU"
    echo "cpu_model=$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//')"
    echo "kernel=$(uname -sr)"
    echo "memory=$(awk '/MemTotal/ {printf "%.1f GiB", $2/1048576}' /proc/meminfo)"
    echo "clk_tck=$CLK_TCK"
    echo "nofile=$NOFILE"
    echo "sluice=$(cd "$ROOT" && git describe --always --dirty --abbrev=12 2>/dev/null || echo unknown) ($("$SLUICE_BIN" --version 2>/dev/null | head -1))"
    echo "haproxy=$(haproxy -v 2>&1 | head -1)"
    echo "nginx=$(nginx -v 2>&1 | head -1)"
    echo "wrk=$(wrk -v 2>&1 | head -1)"
    echo "h2load=$(h2load --version 2>&1 | head -1)"
    echo "openssl=$(openssl version 2>&1 | head -1)"
    echo "python=$(python3 --version 2>&1)"
} >"$META"

# ------------------------------------------------------------------------------------
# Processes.
# ------------------------------------------------------------------------------------
LOGN=0
start_bg() { # start_bg CPU LOG CMD... ; sets BG_PID
    local cpu=$1 logf=$2
    shift 2
    (cd "$TMP/run" && exec taskset -c "$cpu" "$@") >"$logf" 2>&1 &
    BG_PID=$!
    STARTED+=("$BG_PID")
}

start_upstream() { # stopped by the cleanup on exit, with everything else
    start_bg "$LOAD_CPU" "$TMP/logs/upstream.log" nginx -c "$TMP/upstream.conf" -p "$TMP/upstream"
    python3 "$TOOLS/proc.py" wait-port "$UP_PORT" 10 || { cat "$TMP/logs/upstream.log" >&2; die "upstream nginx did not start"; }
    local got
    got=$(python3 - "$UP_PORT" <<'EOF'
import sys, urllib.request
port = sys.argv[1]
sizes = [len(urllib.request.urlopen("http://127.0.0.1:%s/%s" % (port, p)).read()) for p in ("1k", "64k")]
req = urllib.request.Request("http://127.0.0.1:%s/post" % port, data=b"x" * 1048576, method="POST")
print(*sizes, urllib.request.urlopen(req).status)
EOF
    ) || die "upstream nginx answers wrongly"
    [[ $got == "1024 65536 200" ]] || die "upstream nginx answers wrongly: $got"
    got=$(python3 - "$ORIGIN_TLS_PORT" "$TLS/ca.pem" <<'EOF'
import socket, ssl, sys
ctx = ssl.create_default_context(cafile=sys.argv[2])
with socket.create_connection(("127.0.0.1", int(sys.argv[1]))) as raw, ctx.wrap_socket(raw, server_hostname="origin.test") as s:
    s.sendall(b"GET /1k HTTP/1.1\r\nHost: origin.test\r\nConnection: close\r\n\r\n")
    data = b""
    while (b := s.recv(65536)):
        data += b
print(data.split(b" ")[1].decode(), len(data.split(b"\r\n\r\n", 1)[1]))
EOF
    ) || die "upstream nginx answers wrongly over TLS"
    [[ $got == "200 1024" ]] || die "upstream nginx answers wrongly over TLS: $got"
    # The HTTP/2 origin picks h2 in ALPN (and the HTTP/1.1 one does not); h2bulk's file is there.
    got=$(python3 - "$ORIGIN_TLS_PORT" "$ORIGIN_H2_PORT" "$TLS/ca.pem" "$UP_PORT" <<'EOF'
import http.client, socket, ssl, sys
ctx = ssl.create_default_context(cafile=sys.argv[3])
ctx.set_alpn_protocols(["h2", "http/1.1"])
alpn = []
for port in sys.argv[1:3]:
    with socket.create_connection(("127.0.0.1", int(port))) as raw, ctx.wrap_socket(raw, server_hostname="origin.test") as s:
        alpn.append(s.selected_alpn_protocol() or "none")
c = http.client.HTTPConnection("127.0.0.1", int(sys.argv[4]), timeout=5)
c.request("HEAD", "/bulk")
r = c.getresponse()
print(*alpn, r.status, r.getheader("Content-Length"))
EOF
    ) || die "upstream nginx answers wrongly (HTTP/2 listener)"
    [[ $got == "http/1.1 h2 200 $H2BULK_BYTES" ]] || die "upstream nginx answers wrongly (ALPN of the TLS and h2 listeners, /bulk): $got"
    # The browse site: every resource at its size, with the static-asset headers; and the
    # request counter ka10k reads.
    got=$(python3 - "$UP_PORT" "$BROWSE_LIST" <<'EOF'
import http.client, sys
port, listing = int(sys.argv[1]), sys.argv[2]
c = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
bad, nheaders = [], set()
for line in open(listing):
    path, kind, size = line.split()
    c.request("GET", path)
    r = c.getresponse()
    body = r.read()
    nheaders.add(len(r.getheaders()))
    if r.status != 200 or len(body) != int(size) or not r.getheader("ETag") or not r.getheader("Cache-Control"):
        bad.append("%s: %s, %d bytes" % (path, r.status, len(body)))
c.request("GET", "/bench-status")
r = c.getresponse()
status = r.read().decode()
if r.status != 200 or "requests" not in status:
    bad.append("/bench-status: %s" % r.status)
print("; ".join(bad) or "ok %s" % ",".join(map(str, sorted(nheaders))))
EOF
    ) || die "upstream nginx answers wrongly (browse site)"
    [[ $got == ok* ]] || die "upstream nginx answers wrongly (browse site): $got"
    BROWSE_RESPONSE_HEADERS=${got#ok }
}

# start_proxy NAME TAG: starts a proxy pinned to PROXY_CPU; sets PROXY_PID, PROXY_PIDS,
# PROXY_LOG. Returns 1 (and records the failure) if it does not come up.
PROXY_PID=""
PROXY_PIDS=() # the proxy's process and its children (nginx's workers)
PROXY_NAME=""
PROXY_LOG=""
PROXY_TLS=0 # 1 in the tls_* and h2* scenarios: Sluice gets the origin's CA and name, HAProxy its TLS config
PROXY_H2="" # h1origin or h2origin in the h2* scenarios: HAProxy and nginx get their HTTP/2 configs
start_proxy() {
    local name=$1 tag=$2
    PROXY_NAME=$name
    LOGN=$((LOGN + 1))
    PROXY_LOG=$TMP/logs/$LOGN-$name-$tag.log
    case $name in
        sluice | sluice_base)
            local tls_args=() bin=$SLUICE_BIN
            [[ $name == sluice_base ]] && bin=$SLUICE_BASELINE_BIN
            ((PROXY_TLS)) && tls_args=(--upstream-ca "$TLS/ca.pem" --resolve origin.test:127.0.0.1)
            start_bg "$PROXY_CPU" "$PROXY_LOG" "$bin" run --listen "127.0.0.1:$PROXY_PORT" \
                --admin "127.0.0.1:$ADMIN_PORT" --workers 1 --ca-dir "$TMP/CA" --config "$TMP/sluice.toml" "${tls_args[@]}" ;;
        haproxy)
            local cfg=$TMP/haproxy.cfg
            ((PROXY_TLS)) && cfg=$TMP/haproxy-tls.cfg
            [[ $PROXY_H2 == h1origin ]] && cfg=$TMP/haproxy-h2.cfg
            [[ $PROXY_H2 == h2origin ]] && cfg=$TMP/haproxy-h2h2.cfg
            start_bg "$PROXY_CPU" "$PROXY_LOG" haproxy -f "$cfg" -db ;;
        haproxy_tcp)
            start_bg "$PROXY_CPU" "$PROXY_LOG" haproxy -f "$TMP/haproxy-tcp.cfg" -db ;;
        nginx)
            if [[ -n $PROXY_H2 ]]; then
                start_bg "$PROXY_CPU" "$PROXY_LOG" nginx -c "$TMP/nginx-h2.conf" -p "$TMP/nginx-h2"
            else
                start_bg "$PROXY_CPU" "$PROXY_LOG" nginx -c "$TMP/nginx-proxy.conf" -p "$TMP/nginx-proxy"
            fi ;;
    esac
    PROXY_PID=$BG_PID
    PROXY_PIDS=("$BG_PID")
    local port=$PROXY_PORT
    if ! python3 "$TOOLS/proc.py" wait-port "$port" 10 || ! kill -0 "$PROXY_PID" 2>/dev/null; then
        return 1
    fi
    sleep 0.2 # let nginx fork its worker
    mapfile -t PROXY_PIDS < <(python3 "$TOOLS/proc.py" tree "$PROXY_PID")
    if [[ -n $CGROUP ]] && ((CAP_THIS)); then
        local p
        for p in "${PROXY_PIDS[@]}"; do echo "$p" 2>/dev/null >"$CGROUP/cgroup.procs" || true; done
    fi
    return 0
}

# start_measured NAME SCENARIO ROUND: start_proxy for one measurement; when the proxy does
# not come up, record the failure, clean up and return 1 (the caller skips this round).
start_measured() {
    local name=$1 sc=$2 r=$3 st=0
    start_proxy "$name" "$sc-r$r" && return 0
    record --set "scenario=$sc" --set "proxy=$name" --set "round=$r" --log "$PROXY_LOG" --error "the proxy did not start"
    stop_proxy || st=$?
    return 1
}

# stop_proxy: SIGTERM, wait; prints nothing, returns the exit status (0 or 143 are clean).
stop_proxy() {
    local pid=$PROXY_PID rc=0 p
    [[ -n $pid ]] || return 0
    # Sluice's counters (pool hits and misses, evictions, errors...), kept with its log.
    if [[ $PROXY_NAME == sluice* ]]; then
        python3 -c 'import sys, urllib.request; sys.stdout.write(urllib.request.urlopen(sys.argv[1], timeout=5).read().decode())' \
            "http://127.0.0.1:$ADMIN_PORT/metrics" >"$PROXY_LOG.metrics" 2>&1 || true
    fi
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -0 "$pid" 2>/dev/null && kill -KILL "${PROXY_PIDS[@]}" 2>/dev/null
    wait "$pid" 2>/dev/null || rc=$?
    for p in "${PROXY_PIDS[@]}"; do kill -0 "$p" 2>/dev/null && kill -KILL "$p" 2>/dev/null; done
    forget "$pid"
    PROXY_PID=""
    # The port must be free again before the next proxy binds it.
    for _ in $(seq 50); do python3 "$TOOLS/proc.py" listening "$PROXY_PORT" "$TCP_PORT" "$ADMIN_PORT" >/dev/null && break; sleep 0.1; done
    return "$rc"
}

snap() { python3 "$TOOLS/proc.py" snap "$LOAD_CPU" "$PROXY_CPU" "$@"; }
# snap, plus the upstream's counters of requests served and connections accepted (its
# stub_status): the HTTP scenarios record the connections each proxy opened to the upstream.
snapreq() { python3 "$TOOLS/proc.py" snapreq "$UP_PORT" "$LOAD_CPU" "$PROXY_CPU" "$@"; }
record() { python3 "$TOOLS/record.py" --out "$RAW" --clk-tck "$CLK_TCK" "$@"; }

# proxy_died SCENARIO NAME ROUND: if the proxy is gone, record it and return 0.
proxy_died() {
    kill -0 "$PROXY_PID" 2>/dev/null && return 1
    local rc=0
    wait "$PROXY_PID" 2>/dev/null || rc=$?
    forget "$PROXY_PID"
    PROXY_PID=""
    record --set "scenario=$1" --set "proxy=$2" --set "round=$3" --log "$PROXY_LOG" \
        --error "the proxy exited (status $rc) during the measurement"
    return 0
}

# after_stop SCENARIO NAME ROUND STATUS: a proxy that does not stop cleanly is a problem too.
after_stop() {
    local st=$4
    if [[ $st != 0 && $st != 143 ]]; then
        record --set "scenario=$1" --set "proxy=$2" --set "round=$3" --set kind=stop --log "$PROXY_LOG" \
            --error "the proxy exited with status $st when stopped with SIGTERM"
    fi
}

rotate() { # rotate ROUND ITEMS... : the items starting at position ROUND (alternation)
    local r=$1
    shift
    local items=("$@") n=$# i
    for ((i = 0; i < n; i++)); do printf '%s\n' "${items[$(((i + r) % n))]}"; done
}

# ------------------------------------------------------------------------------------
# Scenarios.
# ------------------------------------------------------------------------------------
WRK_ARGS=()
WRK_TIMEOUT=5s
wrk_args() {
    local host=(-H "Host: 127.0.0.1:$UP_PORT")
    WRK_TIMEOUT=5s
    case $1 in
        ka1k) WRK_ARGS=(-c64 "${host[@]}" "http://127.0.0.1:$PROXY_PORT/1k") ;;
        browse) WRK_ARGS=(-c256 "${host[@]}" -s "$TOOLS/browse.lua" "http://127.0.0.1:$PROXY_PORT/") ;;
        # Latencies above wrk's --timeout are left out of its percentiles: with 10,000
        # clients queued on one proxy a request waits about 10,000 / (req/s) on average.
        ka10k) WRK_ARGS=(-c"$KA10K_CONNS" "${host[@]}" "http://127.0.0.1:$PROXY_PORT/1k"); WRK_TIMEOUT=60s ;;
        ka64k) WRK_ARGS=(-c64 "${host[@]}" "http://127.0.0.1:$PROXY_PORT/64k") ;;
        close1k) WRK_ARGS=(-c64 "${host[@]}" -H "Connection: close" "http://127.0.0.1:$PROXY_PORT/1k") ;;
        post1m) WRK_ARGS=(-c16 "${host[@]}" -s "$TOOLS/post.lua" "http://127.0.0.1:$PROXY_PORT/post") ;;
        paced1k) WRK_ARGS=(-c64 "${host[@]}" -s "$TOOLS/paced.lua" "http://127.0.0.1:$PROXY_PORT/1k") ;;
    esac
}

run_wrk() { # run_wrk SECONDS OUTFILE
    run_fg taskset -c "$LOAD_CPU" wrk -t1 -d"$1s" --timeout "$WRK_TIMEOUT" --latency "${WRK_ARGS[@]}" >"$2" 2>&1
}

scenario_wrk() {
    local sc=$1 r name out c0 c1 st proxies
    wrk_args "$sc"
    read -r -a proxies <<<"$(proxies_for "$sc")"
    for ((r = 1; r <= ROUNDS; r++)); do
        for name in $(rotate $((r - 1)) "${proxies[@]}"); do
            log "$sc: round $r/$ROUNDS: $name"
            start_measured "$name" "$sc" "$r" || continue
            out=$TMP/logs/$LOGN-$name-$sc-r$r.wrk
            run_wrk "$WARMUP" "$out.warmup" || true
            if proxy_died "$sc" "$name" "$r"; then continue; fi
            c0=$(snapreq "${PROXY_PIDS[@]}")
            if ! run_wrk "$DURATION" "$out"; then
                record --set "scenario=$sc" --set "proxy=$name" --set "round=$r" --log "$PROXY_LOG" \
                    --error "wrk failed: $(tail -3 "$out" | tr '\n' ' ')"
            else
                c1=$(snapreq "${PROXY_PIDS[@]}")
                if ! proxy_died "$sc" "$name" "$r"; then
                    record --set "scenario=$sc" --set "proxy=$name" --set "round=$r" --snap "$c0" "$c1" \
                        --wrk "$out" --log "$PROXY_LOG"
                fi
            fi
            st=0; stop_proxy || st=$?
            after_stop "$sc" "$name" "$r" "$st"
        done
    done
}

# ka10k: KA10K_CONNS keep-alive clients, all busy (one wrk thread: a thread drives 10,000
# connections; a second wrk on the same load core would add no capacity). The 10,000
# connection set-ups are kept out of the measurement: wrk runs until it is stopped; once
# every client is connected (established sockets on the proxy port) and WARMUP more seconds
# have passed, the window of DURATION seconds starts, and its requests are counted at the
# upstream (nginx stub_status, read with each CPU snapshot), since wrk only counts over its
# whole run. Latencies are wrk's, over its whole run.
scenario_ka10k() {
    local sc=ka10k r name out c0 c1 st wpid proxies
    wrk_args "$sc"
    read -r -a proxies <<<"$(proxies_for "$sc")"
    for ((r = 1; r <= ROUNDS; r++)); do
        for name in $(rotate $((r - 1)) "${proxies[@]}"); do
            log "$sc: round $r/$ROUNDS: $name ($KA10K_CONNS clients)"
            start_measured "$name" "$sc" "$r" || continue
            out=$TMP/logs/$LOGN-$name-$sc-r$r.wrk
            start_bg "$LOAD_CPU" "$out" wrk -t1 -d3600s --timeout "$WRK_TIMEOUT" --latency "${WRK_ARGS[@]}"
            wpid=$BG_PID
            c0=""
            if ! python3 "$TOOLS/proc.py" wait-conns "$PROXY_PORT" "$KA10K_CONNS" 60 >"$out.conns"; then
                proxy_died "$sc" "$name" "$r" ||
                    record --set "scenario=$sc" --set "proxy=$name" --set "round=$r" --log "$PROXY_LOG" \
                        --error "only $(cat "$out.conns") of $KA10K_CONNS clients connected after 60 s"
            else
                run_fg sleep "$WARMUP"
                if ! proxy_died "$sc" "$name" "$r"; then
                    c0=$(snapreq "${PROXY_PIDS[@]}")
                    run_fg sleep "$DURATION"
                    c1=$(snapreq "${PROXY_PIDS[@]}")
                fi
            fi
            kill -INT "$wpid" 2>/dev/null || true # wrk prints its summary on SIGINT
            st=0; wait "$wpid" 2>/dev/null || st=$?
            forget "$wpid"
            if [[ -n $c0 ]] && ! proxy_died "$sc" "$name" "$r"; then
                if ((st != 0)) || ! grep -q 'requests in' "$out"; then
                    record --set "scenario=$sc" --set "proxy=$name" --set "round=$r" --log "$PROXY_LOG" \
                        --error "wrk failed: $(tail -3 "$out" | tr '\n' ' ')"
                else
                    record --set "scenario=$sc" --set "proxy=$name" --set "round=$r" --set "clients=$KA10K_CONNS" \
                        --snap "$c0" "$c1" --upstream-window --wrk "$out" --log "$PROXY_LOG"
                fi
            fi
            st=0; stop_proxy || st=$?
            after_stop "$sc" "$name" "$r" "$st"
        done
    done
}

scenario_tunnel() {
    local r name out c0 c1 st sink_pid args
    start_bg "$LOAD_CPU" "$TMP/logs/sink.log" python3 "$TOOLS/tunnel.py" sink --port "$SINK_PORT"
    sink_pid=$BG_PID
    python3 "$TOOLS/proc.py" wait-port "$SINK_PORT" 10 || die "tunnel sink did not start"
    for ((r = 1; r <= ROUNDS; r++)); do
        for name in $(rotate $((r - 1)) sluice "${BASE[@]}" haproxy direct); do
            log "tunnel: round $r/$ROUNDS: $name ($((TUNNEL_BYTES >> 20)) MiB)"
            case $name in
                sluice | sluice_base) args=(--to "127.0.0.1:$PROXY_PORT" --connect "127.0.0.1:$SINK_PORT") ;;
                haproxy) args=(--to "127.0.0.1:$TCP_PORT") ;;
                direct) args=(--to "127.0.0.1:$SINK_PORT") ;;
            esac
            PROXY_PIDS=() PROXY_LOG=/dev/null
            if [[ $name != direct ]] && ! start_proxy "$name" "tunnel-r$r"; then
                record --set scenario=tunnel --set "proxy=$name" --set "round=$r" --log "$PROXY_LOG" --error "the proxy did not start"
                st=0; stop_proxy || st=$?
                continue
            fi
            [[ $name == haproxy ]] && { python3 "$TOOLS/proc.py" wait-port "$TCP_PORT" 10 || true; }
            out=$TMP/logs/$LOGN-$name-tunnel-r$r.json
            # Warm-up: 256 MiB through the same path.
            run_fg taskset -c "$LOAD_CPU" python3 "$TOOLS/tunnel.py" send "${args[@]}" --bytes $((256 << 20)) --file "$TUNNEL_SRC" >/dev/null 2>"$out.err" || true
            c0=$(snap "${PROXY_PIDS[@]}")
            if run_fg taskset -c "$LOAD_CPU" python3 "$TOOLS/tunnel.py" send "${args[@]}" --bytes "$TUNNEL_BYTES" --file "$TUNNEL_SRC" >"$out" 2>"$out.err"; then
                c1=$(snap "${PROXY_PIDS[@]}")
                if [[ $name == direct ]] || ! proxy_died tunnel "$name" "$r"; then
                    record --set scenario=tunnel --set "proxy=$name" --set "round=$r" --json "$out" --snap "$c0" "$c1" --log "$PROXY_LOG"
                fi
            else
                if [[ $name == direct ]] || ! proxy_died tunnel "$name" "$r"; then
                    record --set scenario=tunnel --set "proxy=$name" --set "round=$r" --log "$PROXY_LOG" \
                        --error "transfer failed: $(tail -2 "$out.err" | tr '\n' ' ')"
                fi
            fi
            if [[ $name != direct ]]; then
                st=0; stop_proxy || st=$?
                after_stop tunnel "$name" "$r" "$st"
            fi
        done
    done
    kill -TERM "$sink_pid" 2>/dev/null || true
    wait "$sink_pid" 2>/dev/null || true
    forget "$sink_pid"
}

scenario_idle() {
    local r name out st
    for ((r = 1; r <= ROUNDS; r++)); do
        for name in $(rotate $((r - 1)) "${PROXIES[@]}"); do
            log "idle: round $r/$ROUNDS: $name ($IDLE_COUNT clients)"
            start_measured "$name" idle "$r" || continue
            out=$TMP/logs/$LOGN-$name-idle-r$r.json
            if run_fg taskset -c "$LOAD_CPU" python3 "$TOOLS/idle.py" --target "127.0.0.1:$PROXY_PORT" \
                --host "127.0.0.1:$UP_PORT" --path /1k --count "$IDLE_COUNT" \
                --pids "$(IFS=,; echo "${PROXY_PIDS[*]}")" >"$out" 2>"$out.err"; then
                if ! proxy_died idle "$name" "$r"; then
                    record --set scenario=idle --set "proxy=$name" --set "round=$r" --json "$out" --log "$PROXY_LOG"
                fi
            elif ! proxy_died idle "$name" "$r"; then
                record --set scenario=idle --set "proxy=$name" --set "round=$r" --log "$PROXY_LOG" \
                    --error "idle client failed: $(tail -2 "$out.err" | tr '\n' ' ')"
            fi
            st=0; stop_proxy || st=$?
            after_stop idle "$name" "$r" "$st"
        done
    done
}

# TLS scenarios. The client asks for https://origin.test:ORIGIN_TLS_PORT/... (SNI and Host
# origin.test) but connects to the proxy: Sluice forges a certificate for the server name and
# forwards to origin.test (pinned to 127.0.0.1) over TLS; HAProxy terminates with its static
# certificate and forwards over TLS. Both verify the origin against the run's test CA.
sluice_cert_counts() { # "MINTED HITS" from Sluice's admin metrics ("- -" for other proxies)
    [[ $1 == sluice* ]] || { echo "- -"; return; }
    python3 - "$ADMIN_PORT" <<'EOF' || echo "- -"
import sys, urllib.request
m = dict.fromkeys(("sluice_certs_minted_total", "sluice_cert_cache_hits_total"), "-")
for line in urllib.request.urlopen("http://127.0.0.1:%s/metrics" % sys.argv[1], timeout=5).read().decode().splitlines():
    k, _, v = line.partition(" ")
    if k in m:
        m[k] = v.split(".")[0]
print(m["sluice_certs_minted_total"], m["sluice_cert_cache_hits_total"])
EOF
}

certs_set() { # certs_set NAME BEFORE AFTER: --set arguments with the cert counter deltas
    local b a
    read -r -a b <<<"$2"
    read -r -a a <<<"$3"
    [[ ${b[0]} != - && ${a[0]} != - ]] || return 0
    echo "--set certs_minted=$((a[0] - b[0])) --set cert_cache_hits=$((a[1] - b[1]))"
}

run_h2load() { # run_h2load SECONDS OUTFILE [LOGFILE]
    local logargs=()
    [[ -n ${3:-} ]] && logargs=(--log-file="$3")
    run_fg taskset -c "$LOAD_CPU" h2load --h1 -c64 -t1 -D"$1" "${logargs[@]}" \
        --connect-to="127.0.0.1:$PROXY_PORT" "https://origin.test:$ORIGIN_TLS_PORT/1k" >"$2" 2>&1
}

scenario_tls_ka1k() {
    local sc=tls_ka1k r name out c0 c1 st m0 m1
    PROXY_TLS=1
    for ((r = 1; r <= ROUNDS; r++)); do
        for name in $(rotate $((r - 1)) "${TLS_PROXIES[@]}"); do
            log "$sc: round $r/$ROUNDS: $name"
            start_measured "$name" "$sc" "$r" || continue
            out=$TMP/logs/$LOGN-$name-$sc-r$r.h2load
            run_h2load "$WARMUP" "$out.warmup" || true
            if proxy_died "$sc" "$name" "$r"; then continue; fi
            m0=$(sluice_cert_counts "$name")
            c0=$(snap "${PROXY_PIDS[@]}")
            if ! run_h2load "$DURATION" "$out" "$out.log"; then
                record --set "scenario=$sc" --set "proxy=$name" --set "round=$r" --log "$PROXY_LOG" \
                    --error "h2load failed: $(tail -3 "$out" | tr '\n' ' ')"
            else
                c1=$(snap "${PROXY_PIDS[@]}")
                m1=$(sluice_cert_counts "$name")
                if ! proxy_died "$sc" "$name" "$r"; then
                    # shellcheck disable=SC2046
                    record --set "scenario=$sc" --set "proxy=$name" --set "round=$r" --snap "$c0" "$c1" \
                        --h2load "$out" --h2load-log "$out.log" --log "$PROXY_LOG" $(certs_set "$name" "$m0" "$m1")
                fi
            fi
            rm -f "$out.log"
            st=0; stop_proxy || st=$?
            after_stop "$sc" "$name" "$r" "$st"
        done
    done
    PROXY_TLS=0
}

# tls_handshake: one request per connection, a full TLS handshake each (tools/tlshs.py), with
# the same server name every time (tls_hs_hit: Sluice serves it from its certificate cache)
# or a new one every time (tls_hs_miss: n<N>.bench.test, Sluice mints one per connection).
# HAProxy serves its static certificate in both.
scenario_tls_handshake() {
    local r name out c0 c1 st m0 m1 variant sc sni
    PROXY_TLS=1
    for ((r = 1; r <= ROUNDS; r++)); do
        for variant in hit miss; do
            sc=tls_hs_$variant
            for name in $(rotate $((r - 1)) "${TLS_PROXIES[@]}"); do
                log "tls_handshake ($variant): round $r/$ROUNDS: $name"
                start_measured "$name" "$sc" "$r" || continue
                if [[ $variant == hit ]]; then sni=(--sni origin.test); else sni=(--sni-pattern '{prefix}{n}.bench.test'); fi
                out=$TMP/logs/$LOGN-$name-$sc-r$r.json
                # Warm-up: the same load (for "miss", other names: w<N>.bench.test).
                run_fg taskset -c "$LOAD_CPU" python3 "$TOOLS/tlshs.py" --to "127.0.0.1:$PROXY_PORT" \
                    --host "origin.test:$ORIGIN_TLS_PORT" --path /1k --seconds "$WARMUP" "${sni[@]}" --prefix w >/dev/null 2>&1 || true
                if proxy_died "$sc" "$name" "$r"; then continue; fi
                m0=$(sluice_cert_counts "$name")
                c0=$(snap "${PROXY_PIDS[@]}")
                if run_fg taskset -c "$LOAD_CPU" python3 "$TOOLS/tlshs.py" --to "127.0.0.1:$PROXY_PORT" \
                    --host "origin.test:$ORIGIN_TLS_PORT" --path /1k --seconds "$DURATION" "${sni[@]}" --prefix "r$r-n" >"$out" 2>"$out.err"; then
                    c1=$(snap "${PROXY_PIDS[@]}")
                    m1=$(sluice_cert_counts "$name")
                    if ! proxy_died "$sc" "$name" "$r"; then
                        # shellcheck disable=SC2046
                        record --set "scenario=$sc" --set "proxy=$name" --set "round=$r" --snap "$c0" "$c1" \
                            --json "$out" --log "$PROXY_LOG" $(certs_set "$name" "$m0" "$m1")
                    fi
                elif ! proxy_died "$sc" "$name" "$r"; then
                    record --set "scenario=$sc" --set "proxy=$name" --set "round=$r" --log "$PROXY_LOG" \
                        --error "handshake client failed: $(tail -2 "$out" "$out.err" | tr '\n' ' ')"
                fi
                st=0; stop_proxy || st=$?
                after_stop "$sc" "$name" "$r" "$st"
            done
        done
    done
    PROXY_TLS=0
}

# HTTP/2 scenarios. The client speaks h2 over TLS (ALPN h2) to the proxy, asking for
# https://origin.test:PORT/... (SNI origin.test, :authority origin.test:PORT): Sluice
# intercepts with a forged certificate and forwards each stream to the origin it names
# (origin.test pinned with --resolve, verified with --upstream-ca, as in the tls_* rows);
# HAProxy (peers/haproxy-h2.cfg.tmpl) and nginx (peers/nginx-h2.conf.tmpl) terminate with
# the static certificate and forward over TLS. PORT is the origin's HTTP/1.1 TLS listener,
# or its h2 listener in h2h2 (h2 on both legs). h2load checks ALPN: a run that did not speak
# h2 to the proxy is recorded as failed (record.py --expect-alpn).
sluice_h2_set() { # sluice_h2_set NAME: --set arguments with Sluice's origin-session and refusal counters
    [[ $1 == sluice* ]] || return 0
    python3 - "$ADMIN_PORT" <<'EOF' || true
import sys, urllib.request
keys = {"sluice_h2_origin_sessions_total": "h2_origin_sessions", "sluice_connections_rejected_total": "clients_refused"}
for line in urllib.request.urlopen("http://127.0.0.1:%s/metrics" % sys.argv[1], timeout=5).read().decode().splitlines():
    k, _, v = line.partition(" ")
    if k in keys:
        print("--set %s=%s" % (keys[k], v.split(".")[0]), end=" ")
EOF
}

run_h2mux() { # run_h2mux SECONDS OUTFILE LOGFILE URL: h2load -c10 -m100 through the proxy
    local logargs=()
    [[ -n $3 ]] && logargs=(--log-file="$3")
    run_fg taskset -c "$LOAD_CPU" h2load -c10 -m100 -t1 -D"$1" "${logargs[@]}" \
        --connect-to="127.0.0.1:$PROXY_PORT" "$4" >"$2" 2>&1
}

# h2tls / h2h2: 10 clients × 100 concurrent streams, 1 KiB responses, capped like the other
# capacity rows; CPU µs per request, req/s, latencies from h2load's --log-file, and the
# upstream's request and connection counters (snapreq) for the origin connections opened;
# for Sluice also the origin h2 sessions it opened and the clients it refused since it
# started (warm-up included: sessions are added one at a time while all are at the origin's
# stream limit, so about 8 in h2h2: 1,000 streams in flight, 128 per nginx connection).
scenario_h2mux() {
    local sc=$1 r name out c0 c1 st m0 m1 url proxies
    PROXY_TLS=1
    if [[ $sc == h2h2 ]]; then
        PROXY_H2=h2origin url="https://origin.test:$ORIGIN_H2_PORT/1k" proxies=("${H2_ORIGIN_PROXIES[@]}")
    else
        PROXY_H2=h1origin url="https://origin.test:$ORIGIN_TLS_PORT/1k" proxies=("${H2_PROXIES[@]}")
    fi
    for ((r = 1; r <= ROUNDS; r++)); do
        for name in $(rotate $((r - 1)) "${proxies[@]}"); do
            log "$sc: round $r/$ROUNDS: $name"
            start_measured "$name" "$sc" "$r" || continue
            out=$TMP/logs/$LOGN-$name-$sc-r$r.h2load
            run_h2mux "$WARMUP" "$out.warmup" "" "$url" || true
            if proxy_died "$sc" "$name" "$r"; then continue; fi
            m0=$(sluice_cert_counts "$name")
            c0=$(snapreq "${PROXY_PIDS[@]}")
            if ! run_h2mux "$DURATION" "$out" "$out.log" "$url"; then
                record --set "scenario=$sc" --set "proxy=$name" --set "round=$r" --log "$PROXY_LOG" \
                    --error "h2load failed: $(tail -3 "$out" | tr '\n' ' ')"
            else
                c1=$(snapreq "${PROXY_PIDS[@]}")
                m1=$(sluice_cert_counts "$name")
                if ! proxy_died "$sc" "$name" "$r"; then
                    # shellcheck disable=SC2046
                    record --set "scenario=$sc" --set "proxy=$name" --set "round=$r" --snap "$c0" "$c1" \
                        --h2load "$out" --h2load-log "$out.log" --expect-alpn h2 --log "$PROXY_LOG" $(certs_set "$name" "$m0" "$m1") \
                        $(sluice_h2_set "$name")
                fi
            fi
            rm -f "$out.log"
            st=0; stop_proxy || st=$?
            after_stop "$sc" "$name" "$r" "$st"
        done
    done
    PROXY_TLS=0 PROXY_H2=""
}

# h2bulk: one download of H2BULK_BYTES over one h2 stream (h2load -n1 -c1 -m1, its windows
# 2^30-1), through the proxy from the HTTP/1.1 TLS origin, or (direct) the same client
# straight to the origin's h2 listener. After a 256 MiB warm-up on the same path. Uncapped,
# like tunnel: GiB/s from h2load's data bytes over its time, proxy CPU-s per GiB.
run_h2bulk() { # run_h2bulk NAME PATH OUTFILE
    local to=127.0.0.1:$PROXY_PORT url=https://origin.test:$ORIGIN_TLS_PORT$2
    [[ $1 == direct ]] && to=127.0.0.1:$ORIGIN_H2_PORT url=https://origin.test:$ORIGIN_H2_PORT$2
    run_fg taskset -c "$LOAD_CPU" h2load -n1 -c1 -m1 -t1 --connect-to="$to" "$url" >"$3" 2>&1
}

scenario_h2bulk() {
    local sc=h2bulk r name out c0 c1 st
    PROXY_TLS=1 PROXY_H2=h1origin
    for ((r = 1; r <= ROUNDS; r++)); do
        for name in $(rotate $((r - 1)) "${H2_ORIGIN_PROXIES[@]}" direct); do
            log "$sc: round $r/$ROUNDS: $name ($((H2BULK_BYTES >> 20)) MiB)"
            PROXY_PIDS=() PROXY_LOG=/dev/null
            if [[ $name != direct ]] && ! start_measured "$name" "$sc" "$r"; then continue; fi
            out=$TMP/logs/$LOGN-$name-$sc-r$r.h2load
            run_h2bulk "$name" /bulk-warmup "$out.warmup" || true
            if [[ $name != direct ]] && proxy_died "$sc" "$name" "$r"; then continue; fi
            c0=$(snap "${PROXY_PIDS[@]}")
            if run_h2bulk "$name" /bulk "$out"; then
                c1=$(snap "${PROXY_PIDS[@]}")
                if [[ $name == direct ]] || ! proxy_died "$sc" "$name" "$r"; then
                    record --set "scenario=$sc" --set "proxy=$name" --set "round=$r" --snap "$c0" "$c1" \
                        --h2load "$out" --h2load-bulk "$H2BULK_BYTES" --expect-alpn h2 --log "$PROXY_LOG"
                fi
            elif [[ $name == direct ]] || ! proxy_died "$sc" "$name" "$r"; then
                record --set "scenario=$sc" --set "proxy=$name" --set "round=$r" --log "$PROXY_LOG" \
                    --error "h2load failed: $(tail -3 "$out" | tr '\n' ' ')"
            fi
            if [[ $name != direct ]]; then
                st=0; stop_proxy || st=$?
                after_stop "$sc" "$name" "$r" "$st"
            fi
        done
    done
    PROXY_TLS=0 PROXY_H2=""
}

# h2idle: memory per idle HTTP/2 client connection (tools/h2idle.py): H2IDLE_COUNT TLS
# connections with ALPN h2 send the preface and SETTINGS, acknowledge the proxy's SETTINGS,
# wait for the proxy's acknowledgement of theirs, and then stay silent; VmRSS before and after.
scenario_h2idle() {
    local sc=h2idle r name out st
    PROXY_TLS=1 PROXY_H2=h1origin
    for ((r = 1; r <= ROUNDS; r++)); do
        for name in $(rotate $((r - 1)) "${H2_ORIGIN_PROXIES[@]}"); do
            log "$sc: round $r/$ROUNDS: $name ($H2IDLE_COUNT clients)"
            start_measured "$name" "$sc" "$r" || continue
            out=$TMP/logs/$LOGN-$name-$sc-r$r.json
            if run_fg taskset -c "$LOAD_CPU" python3 "$TOOLS/h2idle.py" --target "127.0.0.1:$PROXY_PORT" \
                --sni origin.test --count "$H2IDLE_COUNT" \
                --pids "$(IFS=,; echo "${PROXY_PIDS[*]}")" >"$out" 2>"$out.err"; then
                if ! proxy_died "$sc" "$name" "$r"; then
                    record --set "scenario=$sc" --set "proxy=$name" --set "round=$r" --json "$out" --log "$PROXY_LOG"
                fi
            elif ! proxy_died "$sc" "$name" "$r"; then
                record --set "scenario=$sc" --set "proxy=$name" --set "round=$r" --log "$PROXY_LOG" \
                    --error "h2 idle client failed: $(tail -2 "$out.err" | tr '\n' ' ')"
            fi
            st=0; stop_proxy || st=$?
            after_stop "$sc" "$name" "$r" "$st"
        done
    done
    PROXY_TLS=0 PROXY_H2=""
}

# browse_check: one second of tools/browse.lua straight at the upstream, with the heads
# printed (`-- print`): the script works, every answer is a 200, and the run's metadata gets
# the size of the request heads and the number of response headers.
browse_check() {
    local out=$TMP/logs/browse-check.wrk got
    run_fg taskset -c "$LOAD_CPU" wrk -t1 -c4 -d1s -s "$TOOLS/browse.lua" -H "Host: 127.0.0.1:$UP_PORT" \
        "http://127.0.0.1:$UP_PORT/" -- print >"$out" 2>&1 || { tail -5 "$out" >&2; die "browse: wrk with tools/browse.lua failed"; }
    got=$(python3 - "$out" <<'EOF'
import re, sys
text = open(sys.argv[1], "rb").read().decode("latin-1")
heads = [h for h in re.findall(r"GET \S+ HTTP/1\.1\r\n.*?\r\n\r\n", text, re.S)]
if not heads or "Non-2xx" in text or "requests in" not in text:
    sys.exit("no heads or non-2xx answers")
sizes = [len(h) for h in heads]
counts = [h.count("\r\n") - 2 for h in heads]
print("%d-%d bytes (mean %.0f), %d-%d headers" % (min(sizes), max(sizes), sum(sizes) / len(sizes), min(counts), max(counts)))
EOF
    ) || { tail -5 "$out" >&2; die "browse: tools/browse.lua sent no heads or got non-2xx answers from the upstream"; }
    echo "browse_request_heads=$got" >>"$META"
    echo "browse_response_headers=$BROWSE_RESPONSE_HEADERS" >>"$META"
    log "browse: request heads $got; responses with $BROWSE_RESPONSE_HEADERS headers"
}

# ------------------------------------------------------------------------------------
# Main.
# ------------------------------------------------------------------------------------
log "$MODE run: ${SCENARIOS[*]}; $ROUNDS round(s) of ${DURATION}s; load on CPU $LOAD_CPU, proxies on CPU $PROXY_CPU${CPU_CAP:+ (capacity scenarios capped at $CPU_CAP%)}"
start_upstream
[[ " ${SCENARIOS[*]} " == *" browse "* ]] && browse_check
if [[ " ${SCENARIOS[*]} " == *" ka10k "* ]] && ! ka10k_nginx_fits; then
    log "ka10k: no nginx row: the open-files limit ($NOFILE) leaves nginx fewer worker_connections than $((2 * KA10K_CONNS + 2000)) (clients and upstream connections)"
fi
: >"$RAW"
T_START=$SECONDS
for sc in "${SCENARIOS[@]}"; do
    CAP_THIS=0
    [[ " ${CAPPED_SCENARIOS[*]} " == *" $sc "* ]] && CAP_THIS=1
    case $sc in
        ka10k) scenario_ka10k ;;
        tunnel) scenario_tunnel ;;
        idle) scenario_idle ;;
        tls_ka1k) scenario_tls_ka1k ;;
        tls_handshake) scenario_tls_handshake ;;
        h2tls | h2h2) scenario_h2mux "$sc" ;;
        h2bulk) scenario_h2bulk ;;
        h2idle) scenario_h2idle ;;
        *) scenario_wrk "$sc" ;;
    esac
done
echo "elapsed=$((SECONDS - T_START))" >>"$META"
echo "loadavg_end=$(cut -d' ' -f1-3 /proc/loadavg)" >>"$META"

mkdir -p "$OUT_DIR"
# A second run with the same date, mode and scenarios gets its own name (-2, -3, ...): an
# earlier run's report, which notes and bench/README.md may cite, is never overwritten.
if [[ -e $OUT_DIR/$STEM.md || -e $OUT_DIR/$STEM.jsonl ]]; then
    n=2
    while [[ -e $OUT_DIR/$STEM-$n.md || -e $OUT_DIR/$STEM-$n.jsonl ]]; do n=$((n + 1)); done
    STEM=$STEM-$n
fi
cp "$RAW" "$OUT_DIR/$STEM.jsonl"
python3 "$TOOLS/report.py" --raw "$RAW" --meta "$META" --md "$OUT_DIR/$STEM.md" --svg "$OUT_DIR/$STEM.svg"
log "results: $OUT_DIR/$STEM.md (chart $STEM.svg, raw measurements $STEM.jsonl)"
