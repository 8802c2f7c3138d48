#!/usr/bin/env bash
# The figures of datasets/README.md: on 1.76 million generated transactions (the Fraud
# Detection Handbook's population: 5,000 customers, 183 days), how much the windowed features
# add. Trains four models on April-July and tests on 8 August - 30 September (a week's gap, as
# labels arrive late), then prints their metrics side by side:
#   logistic regression on the stateless features (the baseline),
#   logistic regression on all features,
#   boosted trees on the stateless features,
#   boosted trees on all features (stateless + windowed + delayed label rates).
#
#   datasets/scripts/compare-baselines.sh [WORKDIR]
set -euo pipefail
cd "$(dirname "$0")/../.."
work=${1:-$(mktemp -d)}
mkdir -p "$work"
cargo build --release --locked -p fraud-server
fraud=target/release/fraud
$fraud generate --customers 5000 --days 183 --seed 1 -o "$work/tx.csv"
$fraud features --input "$work/tx.csv" --output "$work/features.csv" \
    --keep timestamp,card_token,is_fraud,fraud_scenario
awk -F, 'NR == 1 || $2 < "2018-08-01"' "$work/features.csv" > "$work/train.csv"
awk -F, 'NR == 1 || $2 >= "2018-08-08"' "$work/features.csv" > "$work/test.csv"
ids=transaction_id,timestamp,card_token,fraud_scenario
stateless=log_amount,hour,weekday,night,cross_border,channel,mcc
train() { # name algorithm [feature list]
    local name=$1 algo=$2 list=${3:-}
    $fraud train --input "$work/train.csv" --label is_fraud --exclude "$ids" \
        --algorithm "$algo" ${list:+--features "$list"} \
        $( [ "$algo" = gbdt ] && echo "--categorical channel,mcc --param num_iterations=300" ) \
        -o "$work/$name.fgb" >/dev/null 2>&1
    $fraud evaluate --model "$work/$name.fgb" --input "$work/test.csv" --label is_fraud \
        > "$work/$name.json"
}
train logistic-stateless logistic "$stateless"
train logistic-all logistic
train gbdt-stateless gbdt "$stateless"
train gbdt-all gbdt
printf '| model | ROC-AUC | average precision | card precision@100 per day | recall at 1%% FPR |\n'
printf '| --- | --- | --- | --- | --- |\n'
for m in logistic-stateless logistic-all gbdt-stateless gbdt-all; do
    python3 - "$work/$m.json" "$m" <<'PY'
import json, sys
v = json.load(open(sys.argv[1]))
print(f"| {sys.argv[2]} | {v['roc_auc']:.4f} | {v['average_precision']:.4f} | "
      f"{v['card_precision_at_100_per_day']:.4f} | {v['recall_at_fpr']['0.01']:.4f} |")
PY
done
echo
echo "Recall per scenario at 1% FPR (boosted trees, all features):"
python3 - "$work/gbdt-all.json" <<'PY'
import json, sys
for r in json.load(open(sys.argv[1]))["recall_by_scenario_at_1pct_fpr"]:
    print(f"| {r['scenario']} | {r['frauds']} | {r['recall']:.4f} |")
PY
