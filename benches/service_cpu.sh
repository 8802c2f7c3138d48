#!/usr/bin/env bash
# Server CPU per scored request of two `fraud` builds, side by side: runs alternate A, B,
# A, B, ... each on a fresh data directory, `write` durability, the workers pinned, under
# the same open-loop load (loadgen at RATE/s for SECONDS after a warm-up); the server's CPU
# is summed over its threads from /proc schedstat (exact, not sampled). Prints each run and
# the medians, and B's median over A's.
#
#   benches/service_cpu.sh OLD_FRAUD NEW_FRAUD [RUNS (5)] [RATE (8000)] [SECONDS (8)]
#
# LOADGEN (default target/release/loadgen) is the load generator of this crate.
set -euo pipefail
a=$1
b=$2
runs=${3:-5}
rate=${4:-8000}
seconds=${5:-8}
loadgen=${LOADGEN:-target/release/loadgen}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

one() {
    local bin=$1 dir port pid out
    dir=$(mktemp -d -p "$work")
    port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
    FRAUD_DATA_DIR="$dir" FRAUD_RATE_PER_KEY=1000000 FRAUD_LOG_DURABILITY=write \
        FRAUD_PIN_WORKERS=1 "$bin" serve --bind "127.0.0.1:$port" > "$dir/server.out" 2>&1 &
    pid=$!
    for _ in $(seq 1 300); do
        if curl -sf "http://127.0.0.1:$port/healthz" > /dev/null; then break; fi
        sleep 0.1
    done
    out=$("$loadgen" --url "http://127.0.0.1:$port" --key-file "$dir/dev-api-key" \
        --rate "$rate" --seconds "$seconds" --connections 32 --warmup 3 --server-pid "$pid")
    kill "$pid"
    wait "$pid" 2> /dev/null || true
    echo "$out" | sed -n 's/^server CPU per answer: \([0-9.]*\) us.*/\1/p'
}

median() { sort -n | awk '{v[NR]=$1} END {print (NR % 2 ? v[(NR+1)/2] : (v[NR/2] + v[NR/2+1]) / 2)}'; }

: > "$work/a"
: > "$work/b"
for i in $(seq 1 "$runs"); do
    x=$(one "$a")
    y=$(one "$b")
    echo "run $i: A $x us, B $y us"
    echo "$x" >> "$work/a"
    echo "$y" >> "$work/b"
done
ma=$(median < "$work/a")
mb=$(median < "$work/b")
echo "median server CPU per request at $rate/s: A $ma us, B $mb us, B/A $(awk -v a="$ma" -v b="$mb" 'BEGIN {printf "%.3f", b / a}')"
