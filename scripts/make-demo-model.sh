#!/usr/bin/env bash
# Rebuilds the demo model that `fraud serve` runs on when started with no configuration, and
# its evaluation report, from generated data, with the project's own tools:
#
#   scripts/make-demo-model.sh
#
# writes datasets/demo/model.fgb, datasets/demo/report/ and the small committed sample
# datasets/samples/transactions.csv (100 customers, 30 days). Byte-for-byte reproducible:
# the data come from a fixed seed, training is deterministic, and SOURCE_DATE_EPOCH fixes the
# creation time recorded in the model.
#
# Data: 2,000 customers over 120 days (about 460,000 transactions, six fraud scenarios).
# Features: the default feature spec, replayed point in time (labels count only once known).
# Training: days 1-75; validation (early stopping): days 83-97, after a 7-day gap as labels
# arrive late; test (the report): days 105-120.
set -euo pipefail
cd "$(dirname "$0")/.."
export SOURCE_DATE_EPOCH=1767225600   # 2026-01-01T00:00:00Z
cargo build --release --locked -p fraud-server
fraud=target/release/fraud
$fraud generate --customers 100 --days 30 --seed 7 -o datasets/samples/transactions.csv
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
$fraud generate --customers 2000 --days 120 --seed 42 --start 2018-04-01 -o "$work/tx.csv"
$fraud features --input "$work/tx.csv" --output "$work/features.csv" \
    --keep timestamp,card_token,is_fraud,fraud_scenario
split() { # from (inclusive) to (exclusive) out
    awk -F, -v from="$1" -v to="$2" 'NR == 1 || ($2 >= from && $2 < to)' "$work/features.csv" > "$3"
}
split 2018-04-01 2018-06-15 "$work/train.csv"
split 2018-06-22 2018-07-07 "$work/valid.csv"
split 2018-07-14 2018-07-30 "$work/test.csv"
$fraud train --input "$work/train.csv" --valid "$work/valid.csv" --label is_fraud \
    --exclude transaction_id,timestamp,card_token,fraud_scenario \
    --categorical channel,mcc \
    --feature-spec fraud-core/src/features/default_spec.toml \
    --param num_iterations=400 --param learning_rate=0.05 --param num_leaves=31 --param max_depth=6 \
    --param early_stopping_round=40 --param seed=42 --param num_threads=2 \
    -o datasets/demo/model.fgb
rm -rf datasets/demo/report
$fraud report --model datasets/demo/model.fgb --input "$work/test.csv" --label is_fraud \
    -o datasets/demo/report
