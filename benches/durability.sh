#!/usr/bin/env bash
# Durable by default at full speed (issue 23), measured with wrk2 (an independent open-loop
# load generator, coordinated omission corrected), in one run:
#   1. /healthz at RATE/s on a `sync` service: the floor of the harness and the VM;
#   2. /v1/score at RATE/s, `sync` durability (the default: fsynced before the answer);
#   3. /v1/score at RATE/s, `write` durability.
# Unique transactions, 50,000 cards, a heavy-tailed merchant mix (benches/wrk2/score.lua).
# Each service starts on a fresh data directory; each measured run follows a warm-up at the
# same rate. Prints p50 / p99 / p99.9 / max, errors, answers per second and the server's CPU
# per answer (summed over its threads from /proc schedstat).
#
#   WRK2=/path/to/wrk benches/durability.sh [FRAUD_BINARY] [RATE (10000)] [SECONDS (30)]
#
# Two builds side by side: COMPARE="BEFORE_BINARY AFTER_BINARY" [ROUNDS=3] runs /v1/score with
# `write` then `sync` durability on each build in turn, ROUNDS times (alternated, so that the
# VM's drift falls on both), instead of the three runs above; then each build's mean CPU per
# answer per durability.
#
# wrk2 is built from source: https://github.com/giltene/wrk2 (make; needs libssl-dev).
set -euo pipefail
fraud=${1:-target/release/fraud}
rate=${2:-10000}
seconds=${3:-30}
wrk=${WRK2:-wrk}
here=$(cd "$(dirname "$0")" && pwd)
work=$(mktemp -d)
pid=
trap '[ -n "$pid" ] && kill "$pid" 2> /dev/null; rm -rf "$work"' EXIT

cpu_ns() { cat /proc/"$1"/task/*/schedstat 2> /dev/null | awk '{s += $1} END {printf "%.0f\n", s}'; }

start() { # durability [binary]
    local dir=$work/$1-$RANDOM
    mkdir -p "$dir"
    port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
    FRAUD_DATA_DIR="$dir" FRAUD_RATE_PER_KEY=1000000 FRAUD_LOG_DURABILITY=$1 \
        "${2:-$fraud}" serve --bind "127.0.0.1:$port" > "$dir/server.out" 2>&1 &
    pid=$!
    for _ in $(seq 1 300); do
        if curl -sf "http://127.0.0.1:$port/healthz" > /dev/null; then break; fi
        sleep 0.1
    done
    export FRAUD_API_KEY
    FRAUD_API_KEY=$(cat "$dir/dev-api-key")
}

stop() {
    kill "$pid"
    wait "$pid" 2> /dev/null || true
    pid=
}

measure() { # label path
    local script=() out before after
    if [ "$2" = /v1/score ]; then script=(-s "$here/wrk2/score.lua"); fi
    RUN=warm "$wrk" -t2 -c64 -d10s -R"$rate" "${script[@]}" "http://127.0.0.1:$port$2" > /dev/null
    before=$(cpu_ns "$pid")
    out=$(RUN=m "$wrk" -t2 -c64 -d"${seconds}s" -R"$rate" --latency "${script[@]}" "http://127.0.0.1:$port$2")
    after=$(cpu_ns "$pid")
    local answers p50 p99 p999 max errors non2xx
    answers=$(echo "$out" | awk '/requests in/ {print $1}')
    p50=$(echo "$out" | awk '$1 == "50.000%" {print $2}')
    p99=$(echo "$out" | awk '$1 == "99.000%" {print $2}')
    p999=$(echo "$out" | awk '$1 == "99.900%" {print $2}')
    max=$(echo "$out" | awk '$1 == "100.000%" {print $2}')
    errors=$(echo "$out" | awk '/^errors:/ {sub(/^errors: /, ""); print}')
    non2xx=$(echo "$out" | awk '/Non-2xx/ {print $5}')
    printf '%-22s p50 %8s  p99 %8s  p99.9 %8s  max %8s  %6.0f/s  CPU %6.1f us/answer  non-2xx %s  %s\n' \
        "$1" "$p50" "$p99" "$p999" "$max" "$(echo "$answers / $seconds" | bc -l)" \
        "$(echo "($after - $before) / 1000 / $answers" | bc -l)" "${non2xx:-0}" "${errors:-}"
}

if [ -n "${COMPARE:-}" ]; then
    echo "wrk2 -t2 -c64 -R$rate, ${seconds} s measured after 10 s at the same rate; $(nproc) cores; builds: $COMPARE"
    declare -A total
    for round in $(seq 1 "${ROUNDS:-3}"); do
        for mode in write sync; do
            for build in $COMPARE; do
                start "$mode" "$build"
                line=$(measure "$round $(basename "$build") $mode" /v1/score)
                echo "$line"
                stop
                cpu=$(echo "$line" | awk '{for (i = 1; i < NF; i++) if ($i == "CPU") print $(i + 1)}')
                total["$build $mode"]=$(echo "${total["$build $mode"]:-0} + $cpu" | bc -l)
            done
        done
    done
    for mode in write sync; do
        for build in $COMPARE; do
            printf 'mean of %s rounds: %-24s %-5s CPU %6.1f us/answer\n' "${ROUNDS:-3}" \
                "$(basename "$build")" "$mode" "$(echo "${total["$build $mode"]} / ${ROUNDS:-3}" | bc -l)"
        done
    done
    exit 0
fi
echo "wrk2 -t2 -c64 -R$rate, ${seconds} s measured after 10 s at the same rate; $(nproc) cores; $fraud"
start sync
measure "/healthz (sync)" /healthz
stop
start sync
measure "/v1/score sync" /v1/score
stop
start write
measure "/v1/score write" /v1/score
stop
