#!/usr/bin/env bash
# Where a server's CPU goes per request: the C reference and concur's event loops
# under the load of benches/models.sh (64-byte echo, server on core 0, load on
# core 1), counted and sampled with perf on the server's process only:
#
#   benches/profile.sh                      # reference uring epoll, 100 connections
#   CONNS=1000 benches/profile.sh reference uring
#
# Per model it prints, per request: the server's CPU (perf's task-clock over the
# load run), system calls (all, and the I/O ones by name), io_uring submissions and
# completions and completions per io_uring_enter, malloc calls (a uprobe on libc's
# malloc, when perf can place one), and where the CPU time goes, from call chains
# sampled at 4 kHz:
#
#   send      tcp_sendmsg and all below it; on loopback that includes delivering the
#             segment to the client's socket (softirq on the sender's core) and
#             waking the client
#   recv      tcp_recvmsg and all below it (copying the request out)
#   loop      everything else the serving costs, in the kernel (system call entry
#             and exit, the socket layer above TCP, epoll or io_uring's own work:
#             polls, task work, completions; the scheduler) and in user space
#
# The requests are the load's own count (it runs inside the sampled window), so
# the figures are exact per request. Needs perf (linux-perf) with tracepoints and
# call graphs allowed for the user running it (root, or perf_event_paranoid <= 1).
# KEEP=1 keeps the perf data and the call chains (the folder is printed);
# CONCUR=path/to/concur profiles that binary instead of building this tree's.
set -euo pipefail
cd "$(dirname "$0")/.."

DUR=${DUR:-5}
CONNS=${CONNS:-100}
SIZE=${SIZE:-64}
MODELS=${*:-reference uring epoll}

command -v perf >/dev/null || { echo "error: perf is not installed (apt-get install linux-perf)" >&2; exit 2; }
if [ -z "${CONCUR:-}" ]; then
    cargo build --release --quiet --bin concur
    CONCUR=$PWD/target/release/concur
fi
REF=$PWD/target/echo_epoll
cc -O2 -Wall -o "$REF" benches/reference/echo_epoll.c

WORK=$(mktemp -d)
SERVER=""
PROBE=""
cleanup() {
    [ -z "$SERVER" ] || kill "$SERVER" 2>/dev/null || true
    [ -z "$PROBE" ] || perf probe -q -d "$PROBE" 2>/dev/null || true
    [ -n "${KEEP:-}" ] && echo "kept $WORK" >&2 || rm -rf "$WORK"
}
trap cleanup EXIT

# malloc calls, if a uprobe can be placed on this libc's malloc.
LIBC=$(ldd "$CONCUR" | awk '/libc\.so/ { print $3 }')
MALLOC_EVENT=""
if [ -n "$LIBC" ] && perf probe -q -x "$LIBC" --add concur_malloc=malloc 2>/dev/null; then
    PROBE=probe_libc:concur_malloc
    MALLOC_EVENT=",$PROBE"
fi

EVENTS="raw_syscalls:sys_enter"
for call in read write recvfrom sendto epoll_wait io_uring_enter; do
    EVENTS="$EVENTS,syscalls:sys_enter_$call"
done
EVENTS="$EVENTS,io_uring:io_uring_submit_req,io_uring:io_uring_complete$MALLOC_EVENT"

# start MODEL OUT: the server pinned to core 0; sets SERVER and ADDR.
start() {
    if [ "$1" = reference ]; then
        taskset -c 0 "$REF" 0 >"$2/server" 2>/dev/null &
    else
        taskset -c 0 "$CONCUR" serve --model "$1" --service echo --prefix '' \
            --addr 127.0.0.1:0 --workers 1 >"$2/server" 2>/dev/null &
    fi
    SERVER=$!
    for _ in $(seq 100); do
        grep -q '^listening on' "$2/server" 2>/dev/null && break
        sleep 0.05
    done
    ADDR=$(sed -nE 's/^listening on ([^ ]+) .*/\1/p' "$2/server")
    [ -n "$ADDR" ] || { echo "error: $1 did not start" >&2; exit 1; }
}

# measure MODEL OUT RUN PERF_ARGS...: the load run with perf attached to the server.
measure() {
    local model=$1 out=$2 run=$3 perf_pids=()
    shift 3
    start "$model" "$out"
    perf stat -x, -p "$SERVER" -o "$out/$run.stat" "$@" &
    perf_pids+=($!)
    if [ "$run" = profile ]; then
        perf record -q -F 4000 -g -e cpu-clock -p "$SERVER" -o "$out/perf.data" >/dev/null 2>&1 &
        perf_pids+=($!)
    fi
    sleep 0.5 # perf attached
    taskset -c 1 "$CONCUR" load --addr "$ADDR" --service echo --prefix '' --conns "$CONNS" \
        --size "$SIZE" --duration "${DUR}s" --json >"$out/$run.json" 2>/dev/null || true
    kill -INT "${perf_pids[@]}"
    wait "${perf_pids[@]}" 2>/dev/null || true
    kill -TERM "$SERVER" 2>/dev/null || true
    wait "$SERVER" 2>/dev/null || true
    SERVER=""
}

# Two runs per model: counting tracepoints costs the server time of its own, so the
# CPU time and its split come from a second run that only samples.
for model in $MODELS; do
    out=$WORK/$model
    mkdir -p "$out"
    measure "$model" "$out" counts -e "$EVENTS"
    measure "$model" "$out" profile -e task-clock
    perf script -i "$out/perf.data" -F ip,sym,dso 2>/dev/null >"$out/script"
done

python3 - "$WORK" "$CONNS" "$SIZE" $MODELS <<'EOF'
import json, os, sys
work, conns, size, models = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4:]

def stat(path):
    counts = {}
    for line in open(path):
        parts = line.strip().split(",")
        if len(parts) > 2 and parts[0] and not line.startswith("#"):
            try:
                counts[parts[2]] = float(parts[0])
            except ValueError:
                pass
    return counts

def split(path):
    """Samples by where the time went (see the header of this script)."""
    parts = {"send": 0, "recv": 0, "loop_kernel": 0, "loop_user": 0}
    frames = []
    def classify():
        names = {name for name, _ in frames}
        if "tcp_sendmsg" in names:
            parts["send"] += 1
        elif "tcp_recvmsg" in names:
            parts["recv"] += 1
        elif frames and frames[0][1] == "[kernel.kallsyms]":
            parts["loop_kernel"] += 1
        elif frames:
            parts["loop_user"] += 1
    for line in open(path):
        line = line.strip()
        if not line:
            classify()
            frames = []
            continue
        fields = line.split(None, 1)
        if len(fields) == 2:
            sym, _, dso = fields[1].rpartition(" (")
            frames.append((sym.split("+")[0], dso.rstrip(")")))
    classify()
    return parts

rows = []
for m in models:
    d = os.path.join(work, m)
    load = json.load(open(os.path.join(d, "counts.json")))
    req = load["requests_ok"]
    s = stat(os.path.join(d, "counts.stat"))
    profile = json.load(open(os.path.join(d, "profile.json")))
    cpu_us = stat(os.path.join(d, "profile.stat")).get("task-clock", 0) * 1e3 / profile["requests_ok"]
    p = split(os.path.join(d, "script"))
    total = sum(p.values()) or 1
    per = lambda k: s.get(k, 0) / req
    enters = s.get("syscalls:sys_enter_io_uring_enter", 0)
    done = s.get("io_uring:io_uring_complete", 0)
    rows.append((m, profile["req_per_s"], cpu_us, per("raw_syscalls:sys_enter"),
                 per("syscalls:sys_enter_read") + per("syscalls:sys_enter_recvfrom"),
                 per("syscalls:sys_enter_write") + per("syscalls:sys_enter_sendto"),
                 per("syscalls:sys_enter_epoll_wait"), per("syscalls:sys_enter_io_uring_enter"),
                 per("io_uring:io_uring_submit_req"), per("io_uring:io_uring_complete"),
                 done / enters if enters else 0,
                 per("probe_libc:concur_malloc") if "probe_libc:concur_malloc" in s else None,
                 {k: v / total * cpu_us for k, v in p.items()}))

print(f"\n{conns} connections, {size}-byte echo; per request unless said")
print("| server | req/s | CPU µs | syscalls | reads | writes | epoll_wait | io_uring_enter | SQEs | CQEs | CQEs per enter | mallocs | send µs | recv µs | loop: kernel µs | loop: user µs |")
print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
for r in rows:
    m, rps, cpu, sc, rd, wr, ew, ie, sq, cq, cpe, ma, t = r
    mal = "n/a" if ma is None else f"{ma:.2f}"
    print(f"| {m} | {rps:,.0f} | {cpu:.2f} | {sc:.3f} | {rd:.3f} | {wr:.3f} | {ew:.4f} | {ie:.4f} | {sq:.2f} | {cq:.2f} | {cpe:.0f} | {mal} | {t['send']:.2f} | {t['recv']:.2f} | {t['loop_kernel']:.2f} | {t['loop_user']:.2f} |")
EOF
