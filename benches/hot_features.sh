#!/usr/bin/env bash
# `fraud features` on N transactions within 24 hours, once all of ONE card (a card-testing
# attack) and once spread over 20,000 cards, side by side in one run (issue 23's target: the
# one card at most 2x the spread). The histories are generated here, deterministically.
#
#     benches/hot_features.sh [N] [FRAUD_BINARY]
#
# The binary defaults to target/python/fraud (`cargo build --profile python -p fraud-server
# --bin fraud`).
set -euo pipefail
n=${1:-100000}
fraud=${2:-target/python/fraud}
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT

history() { # cards out
    awk -v n="$n" -v cards="$1" 'BEGIN {
        print "transaction_id,timestamp,amount,currency,card_token,customer_id,merchant_id,terminal_id,device_id";
        for (i = 0; i < n; i++) {
            s = int(i * 86400 / n);
            c = (i * 7919) % cards;
            printf "t%d,2026-01-01T%02d:%02d:%02dZ,%d.%02d,EUR,tok_%032x,cust%d,m%d,term%d,dev%d\n",
                i, int(s / 3600), int(s / 60) % 60, s % 60, 1 + (i * 31) % 500, i % 100,
                c, c, (i * 13) % 100, (i * 17) % 1000, c;
        }
    }' > "$2"
}

history 1 "$dir/hot.csv"
history 20000 "$dir/spread.csv"

run() {
    local start end
    start=$(date +%s.%N)
    "$fraud" features --input "$1" --output "$dir/out.csv" > /dev/null || exit 1
    end=$(date +%s.%N)
    echo "$end - $start" | bc -l
}

hot=$(run "$dir/hot.csv")
spread=$(run "$dir/spread.csv")
printf '%d transactions within 24 h, default spec, `fraud features` (parsing and writing included)\n' "$n"
printf 'one card %.2f s, 20,000 cards %.2f s, ratio %.2f\n' "$hot" "$spread" "$(echo "$hot / $spread" | bc -l)"
