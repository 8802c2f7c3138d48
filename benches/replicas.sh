#!/usr/bin/env bash
# Several replicas, one system (issue 24): replicas of `fraud serve` sharing a PostgreSQL
# decision store ([store] backend = "postgres") and Redis entity state, under an open-loop
# load from wrk2 (coordinated omission corrected): one wrk2 per replica, each at its share of
# RATE, all at once (no sticky routing: the cards of benches/wrk2/score.lua go to every
# replica). Runs 1 replica at RATE, then 2 replicas at RATE (RATE/2 each), each measured after
# a 10 s warm-up at the same rate. Prints, per run, the worst p50 / p99 / p99.9 / max of the
# wrk2 processes, answers per second, errors, and CPU per answer of the replicas, PostgreSQL
# and Redis (from /proc schedstat).
#
#   WRK2=/path/to/wrk [REPLICAS="1 2"] [PG_STATS=1] [REDIS_STATS=1] benches/replicas.sh [FRAUD_BINARY] [RATE (3000)] [SECONDS (30)]
#
# PG_STATS=1 also loads pg_stat_statements and auto_explain into PostgreSQL and prints, per
# run, the statements executed while measured (how many, their execution time, the three
# costliest) and keeps the server's log, with the plans of statements slower than 10 ms, in
# benches/replicas-pg.log. REDIS_STATS=1 prints Redis's commands over the measured seconds
# (`INFO commandstats`: calls and microseconds of each, the scripts' inner calls included).
#
# PostgreSQL and redis-server come from Debian's packages (postgresql, redis-server); wrk2 is
# built from source: https://github.com/giltene/wrk2 (make; needs libssl-dev).
set -euo pipefail
fraud=$(realpath "${1:-target/release/fraud}")
rate=${2:-3000}
seconds=${3:-30}
wrk=${WRK2:-wrk}
here=$(cd "$(dirname "$0")" && pwd)
work=$(mktemp -d)
pids=()
pg_pid=
redis_pid=
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2> /dev/null || true; done
    [ -n "$redis_pid" ] && kill "$redis_pid" 2> /dev/null
    [ -n "$pg_pid" ] && kill -INT "$pg_pid" 2> /dev/null && sleep 1
    rm -rf "$work"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
cpu_ns() { for p in "$@"; do cat /proc/"$p"/task/*/schedstat 2> /dev/null; done | awk '{s += $1} END {printf "%.0f\n", s}'; }

# PostgreSQL of its own (as nobody when run as root: it refuses root).
as_owner=()
if [ "$(id -u)" = 0 ]; then
    chown nobody "$work"
    as_owner=(setpriv --reuid=65534 --regid=65534 --clear-groups --)
fi
pgbin=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)
"${as_owner[@]}" "$pgbin/initdb" -D "$work/pg" -U fraud --auth=trust -E UTF8 > /dev/null
pg_port=$(free_port)
pg_opts=()
if [ "${PG_STATS:-0}" = 1 ]; then
    pg_opts=(-c shared_preload_libraries=pg_stat_statements,auto_explain
        -c auto_explain.log_min_duration=10ms -c auto_explain.log_analyze=on)
fi
"${as_owner[@]}" "$pgbin/postgres" -D "$work/pg" -p "$pg_port" -k "$work" \
    -c listen_addresses=127.0.0.1 "${pg_opts[@]}" > "$work/pg.log" 2>&1 &
pg_pid=$!
until "$pgbin/pg_isready" -q -h 127.0.0.1 -p "$pg_port"; do sleep 0.1; done
redis_port=$(free_port)
redis-server --port "$redis_port" --save "" --appendonly no --bind 127.0.0.1 > /dev/null &
redis_pid=$!
until redis-cli -p "$redis_port" ping > /dev/null 2>&1; do sleep 0.1; done
store_url="postgres://fraud@127.0.0.1:$pg_port/postgres"
if [ "${PG_STATS:-0}" = 1 ]; then
    psql -q "$store_url" -c "CREATE EXTENSION IF NOT EXISTS pg_stat_statements" > /dev/null
fi

ports=()
keys=()
start() { # replicas
    ports=()
    keys=()
    pids=()
    redis-cli -p "$redis_port" flushall > /dev/null
    psql -q "$store_url" -c "DROP TABLE IF EXISTS fraud_records, fraud_claims" > /dev/null 2>&1
    for i in $(seq 1 "$1"); do
        local dir=$work/replica-$1-$i port
        mkdir -p "$dir"
        port=$(free_port)
        # Replicas sharing one machine share its cores: HTTP workers = cores / replicas.
        FRAUD_WORKERS=$(( $(nproc) / $1 > 0 ? $(nproc) / $1 : 1 )) \
        FRAUD_DATA_DIR="$dir" FRAUD_RATE_PER_KEY=1000000 FRAUD_STATE_BACKEND=redis \
            FRAUD_REDIS_URL="redis://127.0.0.1:$redis_port/" FRAUD__STATE__REDIS_TIMEOUT_MS=1000 \
            FRAUD__STORE__BACKEND=postgres FRAUD_STORE_URL="$store_url" \
            "$fraud" serve --bind "127.0.0.1:$port" > "$dir/server.out" 2>&1 &
        pids+=($!)
        for _ in $(seq 1 300); do
            if curl -sf "http://127.0.0.1:$port/healthz" > /dev/null; then break; fi
            sleep 0.1
        done
        ports+=("$port")
        keys+=("$(cat "$dir/dev-api-key")")
    done
}

stop() {
    for p in "${pids[@]}"; do kill "$p" 2> /dev/null || true; wait "$p" 2> /dev/null || true; done
    pids=()
}

# The replicas, Redis, and PostgreSQL's postmaster with every backend it started.
server_pids() { echo "${pids[@]}" "$redis_pid" "$pg_pid" $(pgrep -P "$pg_pid"); }

measure() { # label
    local n=${#ports[@]} before after answers=0 p50=0 p99=0 p999=0 max=0 errors=""
    load warm 10 /dev/null
    before=$(cpu_ns $(server_pids))
    local b_rep b_pg b_redis
    b_rep=$(cpu_ns "${pids[@]}")
    b_pg=$(cpu_ns "$pg_pid" $(pgrep -P "$pg_pid"))
    b_redis=$(cpu_ns "$redis_pid")
    if [ "${PG_STATS:-0}" = 1 ]; then
        psql -qAt "$store_url" -c "SELECT pg_stat_statements_reset()" > /dev/null
    fi
    if [ "${REDIS_STATS:-0}" = 1 ]; then
        redis-cli -p "$redis_port" config resetstat > /dev/null
    fi
    load m "$seconds" "$work/wrk-%d.out"
    after=$(cpu_ns $(server_pids))
    local a_rep a_pg a_redis
    a_rep=$(cpu_ns "${pids[@]}")
    a_pg=$(cpu_ns "$pg_pid" $(pgrep -P "$pg_pid"))
    a_redis=$(cpu_ns "$redis_pid")
    for i in $(seq 0 $((n - 1))); do
        local out=$work/wrk-$i.out
        answers=$((answers + $(awk '/requests in/ {print $1}' "$out")))
        p50=$(worst "$p50" "$(awk '$1 == "50.000%" {print $2}' "$out")")
        p99=$(worst "$p99" "$(awk '$1 == "99.000%" {print $2}' "$out")")
        p999=$(worst "$p999" "$(awk '$1 == "99.900%" {print $2}' "$out")")
        max=$(worst "$max" "$(awk '$1 == "100.000%" {print $2}' "$out")")
        errors="$errors$(awk '/^errors:/ {sub(/^errors: /, ""); print}' "$out"); non-2xx $(awk '/Non-2xx/ {print $5}' "$out"); "
    done
    printf '%-24s p50 %8.2fms  p99 %8.2fms  p99.9 %8.2fms  max %8.2fms  %6.0f/s  CPU %6.1f us/answer (replicas, PostgreSQL, Redis)  %s\n' \
        "$1" "$p50" "$p99" "$p999" "$max" "$(echo "$answers / $seconds" | bc -l)" \
        "$(echo "($after - $before) / 1000 / $answers" | bc -l)" "$errors"
    printf '%-24s CPU us/answer: replicas %.1f, PostgreSQL %.1f, Redis %.1f\n' "" \
        "$(echo "($a_rep - $b_rep) / 1000 / $answers" | bc -l)" \
        "$(echo "($a_pg - $b_pg) / 1000 / $answers" | bc -l)" \
        "$(echo "($a_redis - $b_redis) / 1000 / $answers" | bc -l)"
    if [ "${PG_STATS:-0}" = 1 ]; then
        # Every statement but these queries' own, then the three that took longest in all.
        psql -qAt -F' ' "$store_url" -c "SELECT sum(calls), round(sum(total_exec_time)) FROM pg_stat_statements WHERE query NOT LIKE '%pg_stat_statements%'" |
            awk '{printf "%-24s PostgreSQL: %d statements, %d ms executing; the costliest (calls | ms | mean ms | statement):\n", "", $1, $2}'
        psql -qAt -F' | ' "$store_url" -c "SELECT calls, round(total_exec_time), round(mean_exec_time::numeric, 3), left(regexp_replace(query, '\s+', ' ', 'g'), 90) FROM pg_stat_statements WHERE query NOT LIKE '%pg_stat_statements%' ORDER BY total_exec_time DESC LIMIT 3" |
            sed 's/^/                           /'
        cp "$work/pg.log" "$here/replicas-pg.log"
    fi
    if [ "${REDIS_STATS:-0}" = 1 ]; then
        echo "                         Redis (command: calls, us in all, us a call):"
        redis-cli -p "$redis_port" info commandstats | tr -d '\r' | grep '^cmdstat_' |
            sed -E 's/^cmdstat_([^:]*):calls=([0-9]+),usec=([0-9]+),usec_per_call=([0-9.]+).*/\3 \1 \2 \4/' |
            sort -rn | awk '{printf "                           %-20s %9d %11d %9.2f\n", $2, $3, $1, $4}'
    fi
}

# One wrk2 per replica at its share of the rate, all at once, until all end: run prefix,
# seconds, output file (`%d`: the replica's number).
load() {
    local n=${#ports[@]} loads=() i
    for i in $(seq 0 $((n - 1))); do
        # shellcheck disable=SC2059
        FRAUD_API_KEY=${keys[$i]} RUN=$1$i "$wrk" -t1 -c32 -d"$2s" -R"$((rate / n))" --latency \
            -s "$here/wrk2/score.lua" "http://127.0.0.1:${ports[$i]}/v1/score" > "$(printf "$3" "$i")" &
        loads+=($!)
    done
    wait "${loads[@]}"
}

# wrk2 prints latencies with units (us, ms, s): in milliseconds, the larger of two.
worst() {
    python3 - "$1" "$2" << 'EOF'
import sys
def ms(v):
    v = v.strip() or "0"
    for unit, f in (("us", 1e-3), ("ms", 1.0), ("s", 1e3)):
        if v.endswith(unit):
            return float(v[: -len(unit)]) * f
    return float(v)
print(max(ms(sys.argv[1]), ms(sys.argv[2])))
EOF
}

echo "wrk2 open loop, ${rate}/s in all, ${seconds} s measured after 10 s at the same rate; $(nproc) cores; $fraud"
echo "PostgreSQL $("$pgbin/postgres" --version | awk '{print $3}'), $(redis-server --version | awk '{print $3}')"
# REPLICAS="2" (say) runs only those counts.
for n in ${REPLICAS:-1 2}; do
    start "$n"
    measure "$n replica(s)"
    stop
done
