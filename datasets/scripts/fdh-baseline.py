#!/usr/bin/env python3
"""The Fraud Detection Handbook's baseline experiment, with this project's tools.

Reads the Handbook's simulated transactions in place (../shared/datasets/fdh-simulated, or
$FDH_DIR; never copied), converts them with labels reported 7 days after each fraud
(`fraud convert --format fdh --report-delay 7d`), computes the features point in time with a
feature spec (the default one, or --spec), and follows the book's split
(`get_train_test_set`): train on the 7 days from 2018-07-25, a 7-day gap, test on the next 7
days, leaving out of each test day the customers already known to be compromised (frauds of
the training days, then of the test day minus 7 days as their labels arrive). Trains with
`fraud train` at its defaults and evaluates with `fraud evaluate` (ROC-AUC, average
precision, card precision@100 per day, the Handbook's definition).

    python3 datasets/scripts/fdh-baseline.py [--fraud target/release/fraud] [--spec spec.toml]

Needs pandas. Prints one Markdown table row.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile

import pandas as pd


def main() -> int:
    here = os.path.dirname(os.path.abspath(__file__))
    root = os.path.abspath(os.path.join(here, "..", ".."))
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--fraud", default=os.path.join(root, "target", "release", "fraud"))
    ap.add_argument("--spec", default=None, help="feature spec (default: the default spec)")
    ap.add_argument("--data", default=os.environ.get("FDH_DIR", os.path.join(root, "..", "shared", "datasets", "fdh-simulated")))
    ap.add_argument("--label", default="default spec")
    ap.add_argument("--param", action="append", default=[], help="a `fraud train` parameter")
    a = ap.parse_args()
    raw = os.path.join(a.data, "fdh_simulated_transactions.csv.gz")
    if not os.path.exists(raw):
        print(f"the Handbook's data is not at {raw}", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory() as work:
        def fraud(*args: str) -> str:
            return subprocess.run([a.fraud, *args], check=True, capture_output=True, text=True).stdout

        tx = os.path.join(work, "tx.csv")
        fraud("convert", "--format", "fdh", "--input", raw, "--report-delay", "7d", "-o", tx)
        feats = os.path.join(work, "f.csv")
        spec = ["--spec", a.spec] if a.spec else []
        fraud("features", "--input", tx, "--output", feats, *spec,
              "--keep", "timestamp,card_token,customer_id,is_fraud,fraud_scenario")
        f = pd.read_csv(feats, dtype={"customer_id": str})
        day = pd.to_datetime(f["timestamp"], utc=True).dt.tz_convert(None).dt.normalize()
        start = pd.Timestamp("2018-07-25")
        train = f[(day >= start) & (day < start + pd.Timedelta(days=7))]
        # Test: days 14..20 after the start, without the customers known to be compromised.
        known = set(train.loc[train["is_fraud"] == 1, "customer_id"])
        parts = []
        for d in range(7):
            test_day = start + pd.Timedelta(days=14 + d)
            # Frauds of the day `delay` before this test day become known.
            delayed = f[(day == test_day - pd.Timedelta(days=7)) & (f["is_fraud"] == 1)]
            known |= set(delayed["customer_id"])
            today = f[day == test_day]
            parts.append(today[~today["customer_id"].isin(known)])
        test = pd.concat(parts)
        exclude = "transaction_id,timestamp,card_token,customer_id,fraud_scenario"
        train_csv, test_csv = os.path.join(work, "train.csv"), os.path.join(work, "test.csv")
        train.to_csv(train_csv, index=False)
        test.to_csv(test_csv, index=False)
        model = os.path.join(work, "m.fgb")
        params = [x for p in a.param for x in ("--param", p)]
        fraud("train", "--input", train_csv, "--label", "is_fraud", "--exclude", exclude, *params, "-o", model)
        out = json.loads(fraud("evaluate", "--model", model, "--input", test_csv, "--label", "is_fraud"))
    cp = out.get("card_precision_at_100_per_day")
    print(f"| {a.label} | {len(train):,} / {len(test):,} | {out['roc_auc']:.3f} | {out['average_precision']:.3f} "
          f"| {cp:.3f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
