#!/usr/bin/env bash
# Every `concur serve` model against a minimal C echo server on edge-triggered epoll
# (benches/reference/echo_epoll.c), side by side in one run:
#
#   benches/models.sh                 # 3 rounds of 5 s per model (ROUNDS, DUR)
#   HOLD=10000 benches/models.sh      # also RSS per idle connection (concur hold)
#
# Per model: 64-byte plain echo requests (--prefix ''), 100 connections, closed
# loop, the server pinned to core 0 (taskset -c 0) and `concur load` to core 1.
# Reports req/s, p99, and the server's CPU time per request, as `concur load
# --server-pid` accounts it (every thread and child the server ran, exited ones
# included; see docs/load-and-hold.md).
# Ratios are to the C reference in the same run. Each figure is the median of
# ROUNDS rounds (every model once per round), which tames a noisy machine; the
# "best of rounds" column compares each model's best round (highest req/s, lowest
# CPU per request) with the reference's best: interference only ever makes a
# round worse, so the best rounds are the least disturbed.
#
# The models and their facts come from the binary (`concur models`, the registry in
# src/models/mod.rs), so a new model is measured the day it is added. Models that
# serve one client at a time are left out: 99 of the 100 connections would wait
# for the whole run. The bounded pools (ceiling "workers") get a worker per
# connection; every other model gets --workers 1. HOLD measures the models whose
# only ceiling is the descriptor limit.
#
#   MODELS="reference epoll async" benches/models.sh   # a subset
#   PLAN_ONLY=1 benches/models.sh                      # print the plan, run nothing
#   BASE=old/concur benches/models.sh                  # before/after: each model also
#       runs as MODEL@base on the binary BASE, in the same round, and a last table
#       gives this tree's figures as ratios to BASE's (a change must not slow a model)
#
# Builds this tree's concur unless CONCUR=path/to/concur; the load runs on the same
# binary or CONCUR_LOAD=path/to/concur (it needs `load` and `hold`).
# Run it on a quiet machine: anything else on cores 0 and 1 shows up in the numbers.
set -euo pipefail
cd "$(dirname "$0")/.."

DUR=${DUR:-5}
ROUNDS=${ROUNDS:-3}
CONNS=${CONNS:-100}
SIZE=${SIZE:-64}
HOLD=${HOLD:-0}

if [ -z "${CONCUR:-}" ]; then
    cargo build --release --quiet --bin concur
    CONCUR=$PWD/target/release/concur
fi
REGISTRY=$("$CONCUR" models)

# fact MODEL COLUMN: the registry's COLUMN (a header of `concur models`) for MODEL.
fact() {
    awk -v m="$1" -v col="$2" '
        NR == 1 { for (i = 1; i <= NF; i++) if ($i == col) c = i; next }
        $1 == m && c { print $c; found = 1 }
        END { exit !found }' <<<"$REGISTRY"
}
# models_where COLUMN VALUE: the models whose COLUMN is VALUE, in registry order.
models_where() {
    awk -v col="$1" -v want="$2" '
        NR == 1 { for (i = 1; i <= NF; i++) if ($i == col) c = i; next }
        $c == want { print $1 }' <<<"$REGISTRY"
}

MODELS=${MODELS:-"reference $(models_where one_at_a_time no | tr '\n' ' ')"}
HOLD_MODELS=${HOLD_MODELS:-"reference $(models_where ceiling descriptors | tr '\n' ' ')"}

# The --workers a model gets: one per connection (and some to spare) for a pool
# whose workers serve one client each, else one.
workers_for() {
    if [ "$(fact "${1%@base}" ceiling)" = workers ]; then
        echo $((CONNS + 28))
    else
        echo 1
    fi
}

if [ -n "${BASE:-}" ]; then
    with_base=""
    for model in $MODELS; do
        with_base="$with_base $model"
        [ "$model" = reference ] || with_base="$with_base $model@base"
    done
    MODELS=$with_base
fi

for model in $MODELS $HOLD_MODELS; do
    model=${model%@base}
    if [ "$model" != reference ] && ! fact "$model" model >/dev/null; then
        echo "error: unknown model '$model'; concur models lists them" >&2
        exit 2
    fi
done
if [ -n "${PLAN_ONLY:-}" ]; then
    for model in $MODELS; do
        if [ "$model" = reference ]; then
            echo reference
        else
            echo "$model --workers $(workers_for "$model")"
        fi
    done
    exit 0
fi

LOAD=${CONCUR_LOAD:-$CONCUR}
if ! "$LOAD" load --help >/dev/null 2>&1; then
    echo "error: $LOAD has no 'load' command; set CONCUR_LOAD to a concur that has" >&2
    exit 2
fi
REF=$PWD/target/echo_epoll
cc -O2 -Wall -o "$REF" benches/reference/echo_epoll.c

WORK=$(mktemp -d)
SERVER=""
cleanup() {
    if [ -n "$SERVER" ]; then
        kill "$SERVER" 2>/dev/null || true
    fi
    rm -rf "$WORK"
}
trap cleanup EXIT
# Start model $1 pinned to core 0 (MODEL@base: on the binary $BASE); sets SERVER and ADDR.
start() {
    local model=${1%@base} out=$WORK/$1.out binary=$CONCUR
    [ "$1" = "$model" ] || binary=$BASE
    : >"$out" # empty it here: the last round's line must not be read as this one's
    if [ "$model" = reference ]; then
        taskset -c 0 "$REF" 0 >"$out" 2>/dev/null &
    else
        taskset -c 0 "$binary" serve --model "$model" --service echo --prefix '' \
            --addr 127.0.0.1:0 --workers "$(workers_for "$model")" >"$out" 2>/dev/null &
    fi
    SERVER=$!
    for _ in $(seq 100); do
        grep -q '^listening on' "$out" 2>/dev/null && break
        sleep 0.05
    done
    ADDR=$(sed -nE 's/^listening on ([^ ]+) .*/\1/p' "$out")
    [ -n "$ADDR" ] || { echo "error: $model did not start" >&2; exit 1; }
}

stop() {
    kill -TERM "$SERVER" 2>/dev/null || true
    wait "$SERVER" 2>/dev/null || true
    SERVER=""
}

echo "# $(date -u '+%Y-%m-%d %H:%M UTC'), $(nproc) cores, load average $(cut -d' ' -f1-3 /proc/loadavg)"
echo "# $CONNS connections, $SIZE-byte echo, median of $ROUNDS rounds of ${DUR} s per model; server on core 0, load on core 1"
for round in $(seq "$ROUNDS"); do
    for model in $MODELS; do
        start "$model"
        taskset -c 1 "$LOAD" load --addr "$ADDR" --service echo --prefix '' --conns "$CONNS" \
            --size "$SIZE" --duration "${DUR}s" --server-pid "$SERVER" --json \
            >"$WORK/$model.$round.json" 2>/dev/null || true
        stop
        echo "$model $round" >>"$WORK/runs"
    done
done

if [ "$HOLD" -gt 0 ]; then
    for model in $HOLD_MODELS; do
        start "$model"
        "$LOAD" hold --addr "$ADDR" --conns "$HOLD" --duration 2s --prefix '' \
            --pid "$SERVER" --json >"$WORK/$model.hold.json" 2>/dev/null || true
        stop
    done
fi

python3 - "$WORK" "$MODELS" "$HOLD" "$HOLD_MODELS" <<'EOF'
import json, os, sys
work, models, hold = sys.argv[1], sys.argv[2].split(), int(sys.argv[3])
rounds = [line.split() for line in open(os.path.join(work, "runs"))]

def find(d, key):
    if isinstance(d, dict):
        if key in d:
            return d[key]
        for v in d.values():
            r = find(v, key)
            if r is not None:
                return r
    return None

def median(xs):
    xs = sorted(xs)
    return xs[len(xs) // 2] if len(xs) % 2 else (xs[len(xs) // 2 - 1] + xs[len(xs) // 2]) / 2

rows = {}
for m in models:
    runs = []
    for mm, rnd in rounds:
        if mm != m:
            continue
        try:
            r = json.load(open(os.path.join(work, f"{m}.{rnd}.json")))
        except Exception:
            continue
        ok = r["requests_ok"]
        t = ((r.get("server") or {}).get("cpu_secs") or {}).get("value")
        if ok and t is not None:
            load_us = ((r.get("cpu") or {}).get("load") or {}).get("us_per_request", float("nan"))
            runs.append((r["req_per_s"], r["latency_us"]["p99"], t * 1e6 / ok, r["errors_total"], load_us))
    rows[m] = None if not runs else (
        median([x[0] for x in runs]),
        median([x[1] for x in runs]),
        median([x[2] for x in runs]),
        sum(x[3] for x in runs),
        max(x[0] for x in runs),
        min(x[2] for x in runs),
        median([x[4] for x in runs]),
    )
ref = rows.get("reference")
print()
print("| model | req/s | p99 (us) | server CPU per request (us) | req/s vs C | CPU/req vs C | best of rounds vs C: req/s, CPU/req | load CPU per request (us) | load / server CPU | errors |")
print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
for m in models:
    row = rows[m]
    if row is None:
        print(f"| {m} | failed | | | | | | | | |")
        continue
    rps, p99, us, errs, best_rps, best_us, load_us = row
    if ref:
        vs = (f"{rps / ref[0]:.2f}x", f"{us / ref[2]:.2f}x")
        best = f"{best_rps / ref[4]:.2f}x, {best_us / ref[5]:.2f}x"
    else:
        vs, best = ("", ""), ""
    print(f"| {m} | {rps:,.0f} | {p99:,.0f} | {us:.2f} | {vs[0]} | {vs[1]} | {best} | {load_us:.2f} | {load_us / us:.2f}x | {errs} |")
based = [m for m in models if m.endswith("@base") and rows.get(m) and rows.get(m[:-5])]
if based:
    print()
    print("| model | req/s vs base | server CPU per request vs base |")
    print("|---|---:|---:|")
    for b in based:
        new, old = rows[b[:-5]], rows[b]
        print(f"| {b[:-5]} | {new[0] / old[0]:.2f}x | {new[2] / old[2]:.2f}x |")
if hold:
    print()
    print(f"| model | RSS before | RSS holding {hold} | per connection |")
    print("|---|---:|---:|---:|")
    for m in sys.argv[4].split():
        path = os.path.join(work, m + ".hold.json")
        if not os.path.exists(path):
            continue
        try:
            r = json.load(open(path))
            b, h = find(r, "rss_before_bytes"), find(r, "rss_holding_bytes")
            print(f"| {m} | {b / 2**20:.1f} MiB | {h / 2**20:.1f} MiB | {(h - b) / hold:,.0f} B |")
        except Exception as e:
            print(f"| {m} | failed: {e} | | |")
EOF
