#!/usr/bin/env bash
# Side-by-side comparison of rampart with the tools a user would otherwise pick (issue 6's
# targets 1 to 8, and the durable-throughput targets: rampart against redis with
# `--appendonly yes --appendfsync always`), on loopback only (127.0.0.0/8). Installs nothing: a
# missing peer is named and its comparison skipped.
#
# Usage: benches/compare.sh [ITEM...]      items 1 1c 2 cli 3 to 8, tls and pg, default all
#   env: RUNS (3)         runs per side for items 1, 1c, 2 and 3; the median is reported
#        OPS (200000)     operations per run for items 1 and 2
#        OPS1 (20000)     operations per run for item 1c (one client)
#        CLI_RUNS (100)   hyperfine runs per command for item cli (after 5 warm-up runs)
#        IDLE (10000)     idle connections for item 4, from IDLE_SOURCES (40) addresses
#        ROWS (1000000)   rows of the synthetic training CSV for item 8
#        RAMPART          the rampart binary (default: target/release/rampart, built if absent)
#        TLS_UPLOAD (1073741824)  bytes of the upload of item tls
#        KEEP=1           keep the work directory
#
# Items:
#   1   64 B messages, 64 clients, no pipelining: rampart `load` vs redis-benchmark SET, both
#       against redis without fsync (context) and redis with appendfsync always (the peer that,
#       like rampart, acknowledges only after an fsync; target >= 1.0 against it).
#   2   the same with 16 requests in flight per client (`--pipeline 16`, redis `-P 16`).
#   1c  the same with one client, no pipelining (OPS1 operations per run).
#       Items 1, 1c and 2 also report the server CPU per acknowledged message, for rampart and
#       for redis with appendfsync always: user + system time summed over every thread of the
#       server process (/proc/PID/task/*/stat, in ticks of `getconf CLK_TCK`) before and after
#       each run, divided by the messages acknowledged in that run; medians over the runs.
#       Targets: <= 25 us without pipelining, <= 5 us pipelined. A thread that ends during a
#       run takes its time out of that sum, so for rampart the line also gives the process's
#       total from /proc/PID/stat, which keeps it, and that total net of the run's password
#       logins (one argon2 verification per client): the CPU of a run of one message per
#       client, measured once after a warm-up run, subtracted.
#   cli one command end to end, process start to exit, with hyperfine: `rampart client ...
#       message bench hola` logging in with a saved resume ticket (the password is not in its
#       environment) vs `redis-cli SET k hola` against redis with appendfsync always; medians,
#       target <= 1.5x. The ticket file lives in the work directory, never in ~/.config.
#   3   1 GiB upload vs iperf3 on loopback and dd conv=fsync.
#   4   idle authenticated connections, memory per connection, vs redis.
#   5-7 rampart's criterion benches (decoder, guard, recorder).
#   8   k-means training vs scikit-learn.
#   tls rampart and redis with and without TLS.
#   pg  rampart with its PostgreSQL store (`store.url`) against its SQLite store: 64 B
#       messages at 64 clients and at one, ratio PostgreSQL/SQLite (docs/FLEET.md).
#
# rampart runs with every defence, the detection model and the activity recorder on, from its
# defaults, except for one config file (written below) that raises the per-connection/user/
# source frame rates, the login rates and the per-source accept rate, and allow-lists the
# benchmark's addresses so the firewall cannot block them (the items with 64 clients also raise
# the per-user session cap): the benchmark is one user on one address logging in thousands of
# times and sending far more than a single real user may. Every limiter still runs on every
# frame, connection and login, and the firewall and model still score every window.
# Acknowledgements still wait for a durable commit (WAL, synchronous=FULL). Its data
# directories and the durable redis's append-only files are all in the work directory (under
# /tmp), on the same disk; the header names that disk's filesystem (on tmpfs an fsync costs
# nothing and the durable columns mean little).
#
# Peers: redis-server and redis-benchmark (items 1, 1c, 2, 4), redis-cli and hyperfine (item
# cli), iperf3 (item 3), python3 with scikit-learn (item 8). Items 5 to 7 are rampart's
# criterion benches (cargo). Item tls runs rampart with and without TLS side by side (messages
# per second at 64 clients, upload MB/s), and redis with and without TLS when redis-server was
# built with TLS (Debian's is). redis runs without snapshots, and the durable one without
# automatic AOF rewrites, so no background save or rewrite lands inside a measurement.

set -u
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT" || exit 1
RUNS=${RUNS:-3}
OPS=${OPS:-200000}
OPS1=${OPS1:-20000}
CLI_RUNS=${CLI_RUNS:-100}
IDLE=${IDLE:-10000}
IDLE_SOURCES=${IDLE_SOURCES:-40}
ROWS=${ROWS:-1000000}
TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
RAMPART=${RAMPART:-$TARGET_DIR/release/rampart}
ITEMS=${*:-1 1c 2 cli 3 4 5 6 7 8 tls pg}
TLS_UPLOAD=${TLS_UPLOAD:-1073741824}
PASSWORD=bench-pw
export RAMPART_PASSWORD=$PASSWORD

WORK=$(mktemp -d /tmp/rampart-compare.XXXXXX)
PIDS=()
cleanup() {
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null; done
    wait 2>/dev/null
    if [ "${KEEP:-0}" = 1 ]; then echo "work directory kept: $WORK"; else rm -rf "$WORK"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# 10,000 idle connections need 10,000 descriptors on each side.
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

have() { command -v "$1" >/dev/null 2>&1; }
want() { case " $ITEMS " in *" $1 "*) return 0 ;; esac; return 1; }
load() { echo "load average: $(cut -d' ' -f1-3 /proc/loadavg) ($1)"; }
median() { printf '%s\n' "$@" | sort -g | awk '{a[NR]=$1} END {if (NR==0) print "nan"; else if (NR%2) printf "%.1f\n", a[(NR+1)/2]; else printf "%.1f\n", (a[NR/2]+a[NR/2+1])/2}'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN {if (b+0 == 0) print "nan"; else printf "%.2f", a/b}'; }
# A number field of a one-line JSON object: jnum KEY < file
jnum() { grep -o "\"$1\":[[:space:]]*[-0-9.e+]*" | tail -1 | sed 's/.*:[[:space:]]*//'; }
rss_kib() { awk '/^VmRSS:/ {print $2}' "/proc/$1/status"; }
# cpu_us PID: user + system CPU time of every thread of process PID so far, in microseconds,
# summed over /proc/PID/task/*/stat. The command name (field 2) is in parentheses and may
# itself hold spaces and parentheses, so fields are counted after the last ") ": utime and
# stime, fields 14 and 15, are the 12th and 13th after it. A thread that ends between two
# readings takes its time out of the sum; cpu_proc_us reads /proc/PID/stat, whose totals keep
# the time of ended threads, as a cross-check.
CLK_TCK=$(getconf CLK_TCK 2>/dev/null || echo 100)
stat_us() {
    cat "$@" 2>/dev/null | awk -v hz="$CLK_TCK" '
        { s = $0; sub(/.*\) /, "", s); split(s, f, " "); t += f[12] + f[13] }
        END { printf "%.0f\n", t * 1e6 / hz }'
}
cpu_us() { stat_us /proc/"$1"/task/*/stat; }
cpu_proc_us() { stat_us "/proc/$1/stat"; }
# per_op BEFORE_US AFTER_US OPS: microseconds per operation
per_op() {
    awk -v a="$1" -v b="$2" -v n="$3" 'BEGIN {if (n+0 <= 0) print "nan"; else printf "%.2f", (b-a)/n}'
}
free_port() {
    # A port nothing listens on: ask the kernel by binding port 0, if python3 is here;
    # otherwise pick from a quiet range.
    if have python3; then
        python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
    else
        echo $((20000 + RANDOM % 20000))
    fi
}
wait_for() { # wait_for SECONDS COMMAND...: poll until COMMAND succeeds
    local deadline=$((SECONDS + $1)); shift
    until "$@"; do
        [ $SECONDS -ge $deadline ] && return 1
        sleep 0.2
    done
}

summary=()
record() { summary+=("$1"); echo ">> $1"; }

if [ ! -x "$RAMPART" ]; then
    echo "building rampart (cargo build --release)"
    cargo build --release --quiet || exit 1
fi

cat > "$WORK/bench.toml" <<'EOF'
# Every defence on; only the rates one benchmark user on one address needs are raised, and the
# benchmark's own addresses are allow-listed. The firewall and the detection model still score
# every window of their traffic (a benchmark is a flood by the model's standards, and it blocks
# 127.0.0.1 within a second otherwise); allow-listed sources are only never blocked.
[ip]
allow = ["127.0.0.1", "127.0.2.0/24"]

[rates]
frames_per_s_per_conn = 1_000_000
frames_burst_per_conn = 100_000
frames_per_s_per_user = 10_000_000
frames_burst_per_user = 1_000_000
frames_per_s_per_ip = 10_000_000
frames_burst_per_ip = 1_000_000
logins_per_min_per_ip = 1_000_000
logins_burst_per_ip = 20_000
logins_per_min_per_user = 1_000_000
logins_burst_per_user = 20_000
accepts_per_s_per_ip = 100_000
accepts_burst_per_ip = 10_000
EOF
"$RAMPART" config check "$WORK/bench.toml" >/dev/null || exit 1
# 64 clients are 64 sessions of one user: above the default per-user session cap (32), raised
# in this file, which items 1, 1c, 2, cli and tls run on (tls adds its [tls] table to it).
{ cat "$WORK/bench.toml"; printf '\n[limits]\nmax_sessions_per_user = 128\n'; } \
    >"$WORK/bench-plain.toml"
"$RAMPART" config check "$WORK/bench-plain.toml" >/dev/null || exit 1

# start_rampart NAME [CONFIG]: a fresh data directory with user "bench" and a server on a
# kernel-chosen port, with CONFIG (default bench.toml); sets RAMPART_PID and RAMPART_ADDR.
start_rampart() {
    local dir=$WORK/$1 config=${2:-$WORK/bench.toml}
    mkdir -p "$dir"
    # With the server's configuration: a `store.url` in it puts the user in that database.
    echo "$PASSWORD" | "$RAMPART" user add bench --data-dir "$dir/data" --config "$config" \
        >/dev/null || exit 1
    "$RAMPART" serve --data-dir "$dir/data" --listen 127.0.0.1:0 --config "$config" \
        >"$dir/serve.out" 2>"$dir/serve.err" &
    RAMPART_PID=$!
    PIDS+=("$RAMPART_PID")
    wait_for 30 grep -q '^listening on ' "$dir/serve.out" || { echo "rampart did not start:"; cat "$dir/serve.err"; exit 1; }
    RAMPART_ADDR=$(sed -n 's/^listening on //p' "$dir/serve.out" | head -1)
}
stop() { kill "$1" 2>/dev/null; wait "$1" 2>/dev/null; }

# start_redis NAME [ARGS...]: sets REDIS_PID and REDIS_PORT. No snapshots, so a background
# save never lands inside a measurement; redis does not fsync writes either way by default.
start_redis() {
    local name=$1; shift
    REDIS_PORT=$(free_port)
    redis-server --bind 127.0.0.1 --port "$REDIS_PORT" --save '' --appendonly no \
        --dir "$WORK" --daemonize no "$@" >"$WORK/$name.log" 2>&1 &
    REDIS_PID=$!
    PIDS+=("$REDIS_PID")
    wait_for 10 redis_up || { echo "redis-server did not start:"; cat "$WORK/$name.log"; exit 1; }
}
# start_redis_durable NAME: redis that, like rampart, acknowledges a write only after an fsync
# (appendonly yes, appendfsync always), its append-only file in its own directory in the work
# directory, on the same disk as rampart's data directories. Sets REDIS_PID and REDIS_PORT.
start_redis_durable() {
    mkdir -p "$WORK/$1.aof"
    start_redis "$1" --appendonly yes --appendfsync always --auto-aof-rewrite-percentage 0 \
        --dir "$WORK/$1.aof"
}
redis_up() {
    if have redis-cli; then redis-cli -h 127.0.0.1 -p "$REDIS_PORT" ping >/dev/null 2>&1
    else (exec 3<>"/dev/tcp/127.0.0.1/$REDIS_PORT") 2>/dev/null; fi
}

echo "rampart compare: items $ITEMS, $RUNS runs per side, $(nproc) cores, $(date -u +%FT%TZ)"
echo "$("$RAMPART" --version 2>/dev/null) at commit $(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
echo "work directory $WORK on $(df -P "$WORK" | awk 'NR==2 {print $1}') ($(stat -f -c %T "$WORK"))"
load start

# ---- 1, 1c and 2: small messages vs redis SET, with and without appendfsync always ---------
# rampart_load CLIENTS OPS PIPELINE: one `rampart load` run of 64 B messages; prints its JSON.
rampart_load() {
    "$RAMPART" load --server "$RAMPART_ADDR" --user bench --clients "$1" --ops "$2" \
        --size 64 --pipeline "$3" --json
}
# redis_set PORT CLIENTS OPS PIPELINE: one redis-benchmark SET run; prints its CSV line.
redis_set() {
    redis-benchmark -h 127.0.0.1 -p "$1" -t set -c "$2" -d 64 -n "$3" -P "$4" -q --csv \
        2>/dev/null | grep -i '"SET"'
}
msg_item() { # msg_item ITEM CLIENTS PIPELINE OPS CPU_TARGET_US
    local item=$1 c=$2 p=$3 ops=$4 cpu_target=$5 r=() x=() d=() cr=() cdur=() i out
    local a b ap bp n rp xp dp errs=0
    if ! have redis-server || ! have redis-benchmark; then
        record "item $item: skipped, redis-server or redis-benchmark is not installed"; return
    fi
    start_rampart "msg$item" "$WORK/bench-plain.toml"; rp=$RAMPART_PID
    start_redis "redis$item"; xp=$REDIS_PID; local xport=$REDIS_PORT
    start_redis_durable "redis$item-always"; dp=$REDIS_PID; local dport=$REDIS_PORT
    # The fixed cost of a rampart run (connections, one password login per client): a run of
    # one message per client after a warm-up run of the same, so the net CPU per message
    # below does not count the logins.
    rampart_load "$c" "$c" "$p" >/dev/null
    a=$(cpu_proc_us "$rp"); out=$(rampart_load "$c" "$c" "$p"); b=$(cpu_proc_us "$rp")
    local fixed_us=$((b - a)) fixed_ops
    fixed_ops=$(echo "$out" | jnum ops); fixed_ops=${fixed_ops:-0}
    echo "  rampart fixed cost of a run ($c logins, $fixed_ops messages): $fixed_us us of server CPU"
    load "item $item before"
    # Per run: r, x, d: ops/s of rampart, redis, redis appendfsync always; cr: rampart's CPU
    # per message from /proc/PID/task/*/stat (threads alive at the end of the run); ce: from
    # /proc/PID/stat (with the threads that ended during the run); cn: ce net of the fixed
    # cost; cdur: redis appendfsync always's, from /proc/PID/task/*/stat.
    local ce=() cn=()
    for i in $(seq "$RUNS"); do
        a=$(cpu_us "$rp"); ap=$(cpu_proc_us "$rp")
        out=$(rampart_load "$c" "$ops" "$p")
        b=$(cpu_us "$rp"); bp=$(cpu_proc_us "$rp")
        n=$(echo "$out" | jnum ops); n=${n:-0}
        errs=$((errs + $(echo "$out" | jnum errors | sed 's/^$/0/')))
        r+=("$(echo "$out" | jnum ops_per_s)")
        cr+=("$(per_op "$a" "$b" "$n")")
        ce+=("$(per_op "$ap" "$bp" "$n")")
        cn+=("$(per_op "$((ap + fixed_us))" "$bp" "$((n - fixed_ops))")")
        echo "  rampart run $i: $out; server CPU per message: ${cr[-1]} us (threads), ${ce[-1]} us (process), ${cn[-1]} us net of the logins"
        out=$(redis_set "$xport" "$c" "$ops" "$p")
        x+=("$(echo "$out" | cut -d, -f2 | tr -d '"')")
        echo "  redis   run $i: $out"
        a=$(cpu_us "$dp"); ap=$(cpu_proc_us "$dp")
        out=$(redis_set "$dport" "$c" "$ops" "$p")
        b=$(cpu_us "$dp"); bp=$(cpu_proc_us "$dp")
        d+=("$(echo "$out" | cut -d, -f2 | tr -d '"')")
        cdur+=("$(per_op "$a" "$b" "$ops")")
        echo "  redis appendfsync always run $i: $out; server CPU per message: ${cdur[-1]} us (threads), $(per_op "$ap" "$bp" "$ops") us (process)"
    done
    load "item $item after"
    local mr mx md mcr mce mcn mcd clients=clients
    [ "$c" = 1 ] && clients=client
    mr=$(median "${r[@]}"); mx=$(median "${x[@]}"); md=$(median "${d[@]}")
    mcr=$(median "${cr[@]}"); mce=$(median "${ce[@]}"); mcn=$(median "${cn[@]}")
    mcd=$(median "${cdur[@]}")
    record "item $item: 64 B, $c $clients, pipeline $p: rampart $mr ops/s, redis $mx ops/s, ratio $(ratio "$mr" "$mx"); redis appendfsync always $md ops/s, ratio $(ratio "$mr" "$md") (target >= 1.0); server CPU per acknowledged message: rampart $mcr us (target <= $cpu_target) from the threads alive at the end of the run, $mce us with the threads that ended in it, $mcn us of that net of the logins; redis appendfsync always $mcd us$([ "$errs" -gt 0 ] && echo "; rampart errors: $errs")"
    stop "$rp"; stop "$xp"; stop "$dp"
}
want 1 && msg_item 1 64 1 "$OPS" 25
want 2 && msg_item 2 64 16 "$OPS" 5
want 1c && msg_item 1c 1 1 "$OPS1" 25

# ---- cli: one command, process start to exit, vs redis-cli SET with appendfsync always ----
if want cli; then
    if ! have hyperfine; then
        record "item cli: skipped, hyperfine is not installed"
    elif ! have redis-server || ! have redis-cli; then
        record "item cli: skipped, redis-server or redis-cli is not installed"
    else
        start_rampart cli "$WORK/bench-plain.toml"
        start_redis_durable redis-cli-always
        # The ticket file (and anything else the client keeps) in the work directory, never in
        # ~/.config. One login with the password saves a resume ticket; the measured runs have
        # no password in their environment, so each logs in with the ticket (and would fail,
        # not fall back to argon2, if the ticket were refused).
        tickets=$WORK/cli/tickets
        rcmd=$(printf '%q ' "$RAMPART" client --server "$RAMPART_ADDR" --user bench \
            --tickets "$tickets" message bench hola)
        ccmd=$(printf '%q ' redis-cli -h 127.0.0.1 -p "$REDIS_PORT" SET k hola)
        if ! XDG_CONFIG_HOME=$WORK/cli/config "$RAMPART" client --server "$RAMPART_ADDR" \
            --user bench --tickets "$tickets" message bench hola >"$WORK/cli/login.out" 2>&1 \
            || [ ! -s "$tickets" ]; then
            record "item cli: the first login saved no resume ticket ($(tr '\n' ' ' <"$WORK/cli/login.out" | head -c 200))"
        else
            load "item cli before"
            if env -u RAMPART_PASSWORD XDG_CONFIG_HOME="$WORK/cli/config" hyperfine -N \
                --warmup 5 --runs "$CLI_RUNS" --export-json "$WORK/cli.json" \
                -n "rampart client message" "$rcmd" -n "redis-cli SET" "$ccmd" \
                >"$WORK/cli.out" 2>&1; then
                sed 's/^/  /' "$WORK/cli.out"
                # Seconds, in the order of the commands.
                mapfile -t med < <(grep -o '"median":[[:space:]]*[-0-9.e+]*' "$WORK/cli.json" \
                    | sed 's/.*:[[:space:]]*//')
                if [ "${#med[@]}" -ge 2 ]; then
                    ms_r=$(awk -v s="${med[0]}" 'BEGIN {printf "%.2f", s*1000}')
                    ms_c=$(awk -v s="${med[1]}" 'BEGIN {printf "%.2f", s*1000}')
                    record "item cli: one command, process start to exit (hyperfine, $CLI_RUNS runs): rampart client message with a resume ticket $ms_r ms, redis-cli SET on redis appendfsync always $ms_c ms, ratio $(ratio "${med[0]}" "${med[1]}") (target <= 1.5)"
                else
                    record "item cli: no medians in hyperfine's $WORK/cli.json"
                fi
            else
                sed 's/^/  /' "$WORK/cli.out"
                record "item cli: hyperfine failed (see above)"
            fi
            load "item cli after"
        fi
        stop "$RAMPART_PID"; stop "$REDIS_PID"
    fi
fi

# ---- 3: 1 GiB upload vs min(iperf3 loopback, dd conv=fsync) -----------------------------
if want 3; then
    if ! have iperf3; then
        record "item 3: skipped, iperf3 is not installed"
    else
        start_rampart upload
        load "item 3 before"
        r=(); t=(); d=()
        for i in $(seq "$RUNS"); do
            out=$("$RAMPART" load --server "$RAMPART_ADDR" --user bench --clients 1 --ops 1 \
                --kind file --size 1073741824 --json)
            r+=("$(echo "$out" | jnum mb_per_s)")
            echo "  rampart run $i: $out"
            port=$(free_port)
            # No probe connection: it would count as the test's client.
            iperf3 -s -B 127.0.0.1 -p "$port" >/dev/null 2>&1 &
            ip=$!
            sleep 1
            bps=$(iperf3 -c 127.0.0.1 -p "$port" -n 1G -J 2>/dev/null | jnum bits_per_second)
            stop "$ip"
            t+=("$(awk -v b="$bps" 'BEGIN {printf "%.1f", b/8/1e6}')")
            echo "  iperf3  run $i: ${t[-1]} MB/s"
            start=$(date +%s.%N)
            dd if=/dev/zero of="$WORK/upload/dd.bin" bs=1M count=1024 conv=fsync status=none
            end=$(date +%s.%N)
            rm -f "$WORK/upload/dd.bin"
            d+=("$(awk -v s="$start" -v e="$end" 'BEGIN {printf "%.1f", 1073.741824/(e-s)}')")
            echo "  dd      run $i: ${d[-1]} MB/s (bs=1M count=1024 conv=fsync, same disk as the data directory)"
        done
        load "item 3 after"
        mr=$(median "${r[@]}"); mt=$(median "${t[@]}"); md=$(median "${d[@]}")
        floor=$(awk -v a="$mt" -v b="$md" 'BEGIN {print (a<b)?a:b}')
        record "item 3: 1 GiB upload: rampart $mr MB/s, iperf3 $mt MB/s, dd conv=fsync $md MB/s, ratio to the slower $(ratio "$mr" "$floor") (target >= 0.8)"
        stop "$RAMPART_PID"
    fi
fi

# ---- 4: idle authenticated connections, memory per connection, vs redis ------------------
if want 4; then
    start_rampart idle
    # Warm up: a few logins and messages, so the argon2 workers' buffers and the runtime's
    # threads exist before the baseline.
    "$RAMPART" load --server "$RAMPART_ADDR" --user bench --clients 4 --ops 400 --json >/dev/null
    sleep 1
    load "item 4 before"
    before=$(rss_kib "$RAMPART_PID")
    "$RAMPART" load --server "$RAMPART_ADDR" --user bench --idle "$IDLE" \
        --sources 127.0.2.0/24 --source-count "$IDLE_SOURCES" --hold 10 --json \
        >"$WORK/idle.json" 2>"$WORK/idle.err" &
    lp=$!
    if wait_for 1800 grep -q '^holding ' "$WORK/idle.err"; then
        sleep 2
        during=$(rss_kib "$RAMPART_PID")
        held=$(sed -n 's/^holding \([0-9]*\) .*/\1/p' "$WORK/idle.err" | head -1)
    else
        during=$before; held=0
    fi
    wait "$lp"
    echo "  rampart: $(cat "$WORK/idle.json")"
    load "item 4 after"
    per=$(awk -v a="$before" -v b="$during" -v n="$held" 'BEGIN {if (n>0) printf "%.0f", (b-a)*1024/n; else print "nan"}')
    line="item 4: $held idle authenticated connections from $IDLE_SOURCES sources: rampart RSS $before -> $during KiB, $per B per connection (target <= 8192)"
    stop "$RAMPART_PID"
    if have redis-server && have redis-benchmark; then
        start_redis idle --maxclients $((IDLE + 100))
        rb=$(rss_kib "$REDIS_PID")
        redis-benchmark -h 127.0.0.1 -p "$REDIS_PORT" -I -c "$IDLE" >/dev/null 2>&1 &
        bp=$!
        PIDS+=("$bp")
        if have redis-cli; then
            wait_for 120 bash -c "[ \$(redis-cli -h 127.0.0.1 -p $REDIS_PORT info clients | sed -n 's/^connected_clients:\([0-9]*\).*/\1/p') -ge $IDLE ]"
        else
            sleep 20
        fi
        sleep 2
        rd=$(rss_kib "$REDIS_PID")
        rper=$(awk -v a="$rb" -v b="$rd" -v n="$IDLE" 'BEGIN {printf "%.0f", (b-a)*1024/n}')
        stop "$bp"; stop "$REDIS_PID"
        line="$line; redis RSS $rb -> $rd KiB, $rper B per connection; redis/rampart bytes per connection $(ratio "$rper" "$per")"
    else
        line="$line; redis comparison skipped, redis-server or redis-benchmark is not installed"
    fi
    record "$line"
fi

# ---- 5 to 7: criterion benches (medians from target/criterion) ---------------------------
est() { # est GROUP/FUNCTION/...: criterion's median in ns
    grep -oE '"median":\{"confidence_interval":\{[^}]*\},"point_estimate":[-0-9.e+]+' \
        "$TARGET_DIR/criterion/$1/new/estimates.json" 2>/dev/null | sed 's/.*://'
}
bench() { cargo bench --quiet --bench "$1" -- --warm-up-time 1 --measurement-time 3 >"$WORK/bench-$1.log" 2>&1; }
if want 5; then
    load "item 5 before"
    if bench decoder; then
        line="item 5: decoder vs LengthDelimitedCodec (LDC time / rampart time, target >= 1.0):"
        for s in 64 1024 65536; do
            a=$(est "decode/rampart/$s"); b=$(est "decode/length_delimited/$s")
            line="$line $s B $(ratio "$b" "$a") ($(printf %.0f "$a") vs $(printf %.0f "$b") ns per batch);"
        done
        m=$(est decode/memcpy/65536); a=$(est decode/rampart/65536)
        record "$line 64 KiB rampart/memcpy time $(ratio "$a" "$m") (target <= 2)"
    else record "item 5: cargo bench --bench decoder failed (see $WORK/bench-decoder.log)"; fi
    load "item 5 after"
fi
if want 6; then
    load "item 6 before"
    if bench guard; then
        record "item 6: guard per frame with 100,000 tracked sources (thread CPU time): admit_frame $(printf %.0f "$(est guard/admit_frame_active)") ns from 64 busy sources, $(printf %.0f "$(est guard/admit_frame)") ns jumping over all 100,000; with a blocklist lookup $(printf %.0f "$(est guard/frame_admission_active)") / $(printf %.0f "$(est guard/frame_admission)") ns (target <= 100)"
    else record "item 6: cargo bench --bench guard failed (see $WORK/bench-guard.log)"; fi
    load "item 6 after"
fi
if want 7; then
    load "item 7 before"
    if bench recorder; then
        ns=$(est recorder/record_and_commit)
        n=65536
        db=$(est recorder/db_insert)
        record "item 7: recorder $(awk -v ns="$ns" -v n=$n 'BEGIN {printf "%.0f", n/(ns/1e9)}') events/s through Recorder::record + commit (wall time), SQLite inserts alone $(awk -v ns="$db" -v n=$n 'BEGIN {printf "%.0f", n/(ns/1e9)}') events/s of CPU time (target >= 500000)"
    else record "item 7: cargo bench --bench recorder failed (see $WORK/bench-recorder.log)"; fi
    load "item 7 after"
fi

# ---- 8: training vs scikit-learn KMeans ---------------------------------------------------
if want 8; then
    if ! have python3 || ! python3 -c 'import sklearn' 2>/dev/null; then
        record "item 8: skipped, python3 with scikit-learn is not installed"
    else
        cargo build --release --quiet --example model_train || exit 1
        ex=$TARGET_DIR/release/examples/model_train
        "$ex" --synth "$ROWS" --write "$WORK/synth.csv" >/dev/null || exit 1
        load "item 8 before"
        ro=$("$ex" --csv "$WORK/synth.csv" --k 8 --seed 42 --repeat 3 | grep '^rampart kmeans')
        so=$(python3 benches/sklearn_kmeans.py "$WORK/synth.csv" --k 8 --seed 42 --repeat 3 | grep '^sklearn kmeans')
        load "item 8 after"
        echo "  $ro"; echo "  $so"
        rt=$(echo "$ro" | sed 's/.*fit \([0-9.]*\) s.*/\1/'); st=$(echo "$so" | sed 's/.*fit \([0-9.]*\) s.*/\1/')
        record "item 8: k-means k=8 on $ROWS rows: rampart $rt s, scikit-learn $st s, speed ratio $(ratio "$st" "$rt") (target >= 1.0)"
    fi
fi

# ---- tls: rampart and redis with and without TLS ----------------------------------------
# The same work over plaintext and over TLS 1.3 (rustls, ECDSA P-256 certificate), one after
# the other, RUNS times each; medians. Clients trust the server's certificate as their CA.
tls_side() { # tls_side LABEL CONFIG [LOAD FLAGS...]: sets TM (ops/s) and TU (MB/s) medians
    local label=$1 config=$2 m=() u=() i out; shift 2
    start_rampart "tls-$label" "$config"
    for i in $(seq "$RUNS"); do
        out=$("$RAMPART" load --server "$RAMPART_ADDR" --user bench --clients 64 --ops "$OPS" \
            --size 64 --json "$@")
        m+=("$(echo "$out" | jnum ops_per_s)")
        echo "  rampart $label messages run $i: $out"
        out=$("$RAMPART" load --server "$RAMPART_ADDR" --user bench --clients 1 --ops 1 \
            --kind file --size "$TLS_UPLOAD" --json "$@")
        u+=("$(echo "$out" | jnum mb_per_s)")
        echo "  rampart $label upload run $i: $out"
    done
    stop "$RAMPART_PID"
    TM=$(median "${m[@]}"); TU=$(median "${u[@]}")
}
if want tls; then
    "$RAMPART" cert generate --name 127.0.0.1 --out "$WORK/cert" >/dev/null || exit 1
    # 64 clients are 64 TLS handshakes from one address: above the default per-source
    # handshake cap (8), raised here; the session cap is raised in bench-plain.toml.
    { cat "$WORK/bench-plain.toml"; printf '\n[tls]\ncert = "%s"\nkey = "%s"\nmax_handshakes_per_ip = 128\n' \
        "$WORK/cert/cert.pem" "$WORK/cert/key.pem"; } >"$WORK/bench-tls.toml"
    "$RAMPART" config check "$WORK/bench-tls.toml" >/dev/null || exit 1
    load "item tls before"
    tls_side plain "$WORK/bench-plain.toml"; pm=$TM; pu=$TU
    tls_side tls "$WORK/bench-tls.toml" --tls --ca "$WORK/cert/cert.pem"; tm=$TM; tu=$TU
    load "item tls after"
    record "item tls: rampart 64 B messages, 64 clients: plaintext $pm ops/s, TLS $tm ops/s, ratio $(ratio "$tm" "$pm"); upload of $TLS_UPLOAD B: plaintext $pu MB/s, TLS $tu MB/s, ratio $(ratio "$tu" "$pu")"
    if ! have redis-server || ! have redis-benchmark; then
        record "item tls: redis skipped, redis-server or redis-benchmark is not installed"
    else
        x=(); y=()
        start_redis redis-plain
        for i in $(seq "$RUNS"); do
            out=$(redis-benchmark -h 127.0.0.1 -p "$REDIS_PORT" -t set -c 64 -d 64 -n "$OPS" \
                -q --csv 2>/dev/null | grep -i '"SET"')
            x+=("$(echo "$out" | cut -d, -f2 | tr -d '"')")
            echo "  redis plain run $i: $out"
        done
        stop "$REDIS_PID"
        # redis serves TLS on --tls-port with --port 0; a build without TLS refuses the flag.
        TLS_REDIS_PORT=$(free_port)
        redis-server --bind 127.0.0.1 --port 0 --tls-port "$TLS_REDIS_PORT" \
            --tls-cert-file "$WORK/cert/cert.pem" --tls-key-file "$WORK/cert/key.pem" \
            --tls-ca-cert-file "$WORK/cert/cert.pem" --tls-auth-clients no \
            --save '' --appendonly no --dir "$WORK" --daemonize no >"$WORK/redis-tls.log" 2>&1 &
        rp=$!
        PIDS+=("$rp")
        sleep 1
        if ! kill -0 "$rp" 2>/dev/null; then
            record "item tls: redis over TLS skipped, this redis-server has no TLS ($(head -c 200 "$WORK/redis-tls.log" | tr '\n' ' '))"
        else
            for i in $(seq "$RUNS"); do
                out=$(redis-benchmark -h 127.0.0.1 -p "$TLS_REDIS_PORT" --tls \
                    --cacert "$WORK/cert/cert.pem" -t set -c 64 -d 64 -n "$OPS" -q --csv \
                    2>/dev/null | grep -i '"SET"')
                y+=("$(echo "$out" | cut -d, -f2 | tr -d '"')")
                echo "  redis TLS run $i: $out"
            done
            stop "$rp"
            mx=$(median "${x[@]}"); my=$(median "${y[@]}")
            record "item tls: redis SET 64 B, 64 clients: plaintext $mx ops/s, TLS $my ops/s, ratio $(ratio "$my" "$mx")"
        fi
    fi
fi

# ---- pg: rampart's PostgreSQL store against its SQLite store ------------------------------
# The same server and load (64 B messages; 64 clients, then one), once with the default store
# (SQLite in the data directory) and once with `store.url` naming a throwaway PostgreSQL
# cluster under /tmp (.ci/postgres.sh; RAMPART_TEST_POSTGRES names another server instead),
# RUNS times each, one after the other; medians and the ratio PostgreSQL/SQLite. Both
# acknowledge only after a durable commit: SQLite's group commit, PostgreSQL's
# synchronous_commit = on (its WAL on the same disk as the data directories).
pg_side() { # pg_side LABEL CONFIG: sets PM (ops/s at 64 clients) and P1 (ops/s at 1 client)
    local label=$1 config=$2 m=() o=() i out
    start_rampart "pg-$label" "$config"
    for i in $(seq "$RUNS"); do
        out=$(rampart_load 64 "$OPS" 1)
        m+=("$(echo "$out" | jnum ops_per_s)")
        echo "  rampart $label 64 clients run $i: $out"
        out=$(rampart_load 1 "$OPS1" 1)
        o+=("$(echo "$out" | jnum ops_per_s)")
        echo "  rampart $label 1 client run $i: $out"
    done
    stop "$RAMPART_PID"
    PM=$(median "${m[@]}"); P1=$(median "${o[@]}")
}
if want pg; then
    # A directory of its own: PostgreSQL runs as its own user, who cannot enter $WORK.
    pgdir=$(mktemp -d /tmp/rampart-compare-pg.XXXXXX)
    if ! url=$(PGPORT=$(free_port) bash "$ROOT/.ci/postgres.sh" start "$pgdir" 2>"$WORK/pg.err"); then
        record "item pg: skipped, no PostgreSQL server could be started ($(tail -n 1 "$WORK/pg.err"))"
    else
        db="rampart_bench_$$"
        psql "$url" -qc "CREATE DATABASE $db" >/dev/null || exit 1
        { cat "$WORK/bench-plain.toml"; printf '\n[store]\nurl = "%s"\n' "${url%/*}/$db"; } \
            >"$WORK/bench-pg.toml"
        "$RAMPART" config check "$WORK/bench-pg.toml" >/dev/null || exit 1
        load "item pg before"
        pg_side sqlite "$WORK/bench-plain.toml"; sm=$PM; s1=$P1
        pg_side postgres "$WORK/bench-pg.toml"; gm=$PM; g1=$P1
        load "item pg after"
        bash "$ROOT/.ci/postgres.sh" stop "$pgdir" 2>/dev/null
        [ -n "${KEEP:-}" ] || rm -rf "$pgdir"
        record "item pg: rampart 64 B messages: 64 clients SQLite $sm ops/s, PostgreSQL $gm ops/s, ratio $(ratio "$gm" "$sm"); 1 client SQLite $s1 ops/s, PostgreSQL $g1 ops/s, ratio $(ratio "$g1" "$s1")"
    fi
fi

load end
echo
echo "summary"
for s in "${summary[@]}"; do echo "  $s"; done
