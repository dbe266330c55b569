#!/usr/bin/env bash
# The generic scenario suite (scenarios/generic/) against rampart and well-known servers, on
# loopback only (127.0.0.0/8), with one side-by-side table: legit goodput, p99 latency, the
# server's RSS growth and whether it was still alive, per attack per server. Installs
# nothing: a missing server is named and skipped with the reason.
#
# Usage: benches/robustness.sh [SERVER...]   default: every one of
#          rampart        rampart natively: the in-process server and rampart's legit client
#          rampart-tcp    `rampart serve`, driven as any TCP server (script driver: binary PING)
#          redis          redis-server, default configuration (but see below)
#          redis-limited  redis-server with `client-output-buffer-limit normal 64mb 16mb 10`
#          nginx          nginx with a minimal configuration serving one small page
#   env: RAMPART      the rampart binary (default: $CARGO_TARGET_DIR or target, release, built
#                     if absent)
#        FILTER       run only the generic scenarios whose name contains this
#        RSS_CAP_MB   (4096) a watchdog kills a server whose RSS passes this, so a server that
#                     buffers without bound cannot take the machine down; the table says so
#        KEEP=1       keep the work directory (JSON reports, server logs)
#
# Every server is started fresh for every scenario, on its own port, by this script, and
# stopped afterwards: a server that dies under one attack does not spoil the next row.
#
# redis runs with `--protected-mode no`: legit clients and attackers bind 127.0.0.x
# addresses, which protected mode refuses (it only trusts 127.0.0.1 and ::1) with DENIED. It
# still binds 127.0.0.1 only; persistence is off (`--save '' --appendonly no`). Nothing else
# is changed: `maxmemory` is not set, and client output buffers are unlimited (the
# default), which is what slow-read meets.

set -u
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT" || exit 1
TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
RAMPART=${RAMPART:-$TARGET_DIR/release/rampart}
SERVERS=${*:-rampart rampart-tcp redis redis-limited nginx}
RSS_CAP_MB=${RSS_CAP_MB:-4096}
FILTER=${FILTER:-}

WORK=$(mktemp -d /tmp/rampart-robustness.XXXXXX)
# nginx's workers drop root and must read the page.
chmod 755 "$WORK"
PIDS=()
cleanup() {
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null; done
    wait 2>/dev/null
    if [ "${KEEP:-0}" = 1 ]; then echo "work directory kept: $WORK"; else rm -rf "$WORK"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

have() { command -v "$1" >/dev/null 2>&1; }
PORT=20000
next_port() { PORT=$((PORT + 1)); }

if [ ! -x "$RAMPART" ]; then
    echo "building $RAMPART"
    cargo build --release --quiet || exit 1
fi

SCENARIOS=()
for f in scenarios/generic/*.toml; do
    case "$(basename "$f" .toml)" in *"$FILTER"*) SCENARIOS+=("$f") ;; esac
done
[ ${#SCENARIOS[@]} -gt 0 ] || { echo "no generic scenario matches '$FILTER'"; exit 1; }

# Waits until something listens on 127.0.0.1:$1 (up to 10 s).
wait_port() {
    for _ in $(seq 100); do
        (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
        sleep 0.1
    done
    return 1
}

# Kills $1 if its RSS passes RSS_CAP_MB, noting it in $2; ends when $1 does.
watchdog() {
    local pid=$1 note=$2 kib
    while kill -0 "$pid" 2>/dev/null; do
        kib=$(awk '/^VmRSS/ {print $2}' "/proc/$pid/status" 2>/dev/null || echo 0)
        if [ "${kib:-0}" -gt $((RSS_CAP_MB * 1024)) ]; then
            echo "killed by the bench at ${RSS_CAP_MB} MiB" >"$note"
            kill -9 "$pid" 2>/dev/null
            return
        fi
        sleep 0.1
    done
}

# Stops a server started by start_* (its pid in SERVER_PID) and its watchdog.
stop_server() {
    kill "$SERVER_PID" 2>/dev/null
    for _ in $(seq 50); do kill -0 "$SERVER_PID" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$SERVER_PID" 2>/dev/null
    wait "$SERVER_PID" 2>/dev/null
    wait "$WATCH_PID" 2>/dev/null
}

start_redis() { # $1: extra config
    local dir="$WORK/redis-$PORT"
    mkdir -p "$dir"
    # shellcheck disable=SC2086
    redis-server --port "$PORT" --bind 127.0.0.1 --protected-mode no --save '' \
        --appendonly no --dir "$dir" --logfile "$dir/redis.log" $1 &
    SERVER_PID=$!
    RSS_PID=$SERVER_PID
}

start_nginx() {
    local dir="$WORK/nginx-$PORT"
    mkdir -p "$dir/www" "$dir/tmp"
    chmod 755 "$dir" "$dir/www"
    # A small page, about what a health check or a landing page returns.
    head -c 600 /dev/zero | tr '\0' 'x' >"$dir/www/index.html"
    cat >"$dir/nginx.conf" <<EOF
worker_processes 1;
daemon off;
pid $dir/nginx.pid;
error_log $dir/error.log;
events { worker_connections 4096; }
http {
    access_log off;
    client_body_temp_path $dir/tmp;
    server {
        listen 127.0.0.1:$PORT;
        root $dir/www;
    }
}
EOF
    nginx -p "$dir" -c "$dir/nginx.conf" 2>"$dir/stderr" &
    SERVER_PID=$!
    # The worker serves: its memory is what an attack grows.
    RSS_PID=""
    for _ in $(seq 50); do
        RSS_PID=$(pgrep -P "$SERVER_PID" | head -1)
        [ -n "$RSS_PID" ] && break
        sleep 0.1
    done
    RSS_PID=${RSS_PID:-$SERVER_PID}
}

start_rampart() {
    local dir="$WORK/rampart-$PORT"
    mkdir -p "$dir"
    "$RAMPART" serve --data-dir "$dir" --listen "127.0.0.1:$PORT" >"$dir/serve.log" 2>&1 &
    SERVER_PID=$!
    RSS_PID=$SERVER_PID
}

# Runs one scenario against server $1 (redis, redis-limited, nginx, rampart-tcp), writing
# $WORK/$1.<scenario>.json.
run_tcp() {
    local server=$1 file=$2 name args
    name=$(basename "$file" .toml)
    next_port
    case $server in
        redis) start_redis ""; args=(--legit resp) ;;
        redis-limited) start_redis "--client-output-buffer-limit normal 64mb 16mb 10"; args=(--legit resp) ;;
        nginx) start_nginx; args=(--legit http) ;;
        rampart-tcp)
            start_rampart
            # PING (request id 2) and its PONG, allowed before AUTH: docs/PROTOCOL.md.
            args=(--legit script --legit-opt 'steps=[{send_hex="524d0102 00000002 0000 00000000"},{expect_hex="524d0182 00000002 0000 00000000"}]')
            ;;
    esac
    if ! wait_port "$PORT"; then
        echo "  $server did not start on port $PORT"
        stop_server
        return
    fi
    local note="$WORK/$server.$name.capped"
    watchdog "$RSS_PID" "$note" &
    WATCH_PID=$!
    "$RAMPART" scenario run "$file" --quiet --target "tcp://127.0.0.1:$PORT" \
        --target-pid "$RSS_PID" "${args[@]}" --json "$WORK/$server.$name.json" \
        >"$WORK/$server.$name.out" 2>&1
    stop_server
    tail -n +1 "$WORK/$server.$name.out" | grep -E '^(pass|FAIL) ' | head -1 | sed "s/^/  $server: /"
}

run_native() {
    local file=$1 name
    name=$(basename "$file" .toml)
    "$RAMPART" scenario run "$file" --quiet --json "$WORK/rampart.$name.json" \
        >"$WORK/rampart.$name.out" 2>&1
    grep -E '^(pass|FAIL) ' "$WORK/rampart.$name.out" | head -1 | sed "s/^/  rampart: /"
}

RAN=()
for server in $SERVERS; do
    case $server in
        rampart | rampart-tcp) ;;
        redis | redis-limited)
            if ! have redis-server; then echo "skipping $server: redis-server is not installed"; continue; fi ;;
        nginx)
            if ! have nginx; then echo "skipping $server: nginx is not installed"; continue; fi ;;
        *) echo "unknown server $server"; continue ;;
    esac
    RAN+=("$server")
done

echo "rampart: $("$RAMPART" --version 2>/dev/null || echo "$RAMPART")"
have redis-server && echo "redis: $(redis-server --version)"
have nginx && echo "nginx: $(nginx -v 2>&1)"
echo "load average: $(cut -d' ' -f1-3 /proc/loadavg) (before)"
for file in "${SCENARIOS[@]}"; do
    echo "$(basename "$file" .toml)"
    for server in "${RAN[@]}"; do
        if [ "$server" = rampart ]; then run_native "$file"; else run_tcp "$server" "$file"; fi
    done
done
echo "load average: $(cut -d' ' -f1-3 /proc/loadavg) (after)"

# One table: a row per scenario, a column per server; each cell is legit goodput, p99
# latency, the server's RSS growth and whether it was alive at the end.
python3 - "$WORK" "${RAN[@]}" <<'EOF'
import json, os, sys
work, servers = sys.argv[1], sys.argv[2:]
rows = sorted({f.split(".")[1] for f in os.listdir(work) if f.endswith(".json")})
print()
print("cell: legit goodput / p99 ms / RSS growth MiB / alive")
print("| scenario | " + " | ".join(servers) + " |")
print("|---|" + "---|" * len(servers))
for row in rows:
    cells = []
    for server in servers:
        path = os.path.join(work, f"{server}.{row}.json")
        try:
            s = json.load(open(path))["scenarios"][0]
        except (OSError, ValueError, KeyError, IndexError):
            cells.append("-")
            continue
        m = s["metrics"]
        growth = m.get("rss_growth_mb")
        alive = "alive" if m["server_alive"] else "DEAD"
        if os.path.exists(os.path.join(work, f"{server}.{row}.capped")):
            alive = "KILLED at cap"
        cell = "{:.3f} / {:.1f} / {} / {}".format(
            m["legit_goodput"], m["latency_p99_ms"],
            "-" if growth is None else "{:.0f}".format(growth), alive)
        if not s["passed"]:
            cell += " (FAIL)"
        cells.append(cell)
    print(f"| {row} | " + " | ".join(cells) + " |")
EOF
