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
        [--param num_leaves=15 ...] [--bound]

Needs pandas. Prints one Markdown table row. With --bound, also prints the card precision@100
an oracle would reach: one that ranks first, each test day, every compromised card whose fraud
the data can show at that time (scenarios other than the compromised terminal, and the
compromised terminals with a fraud label already reported in the previous 35 days), and the
other cards in the model's order. A compromised terminal's first week of fraud carries no
signal at all in this simulation (the amounts and customers are genuine; its labels arrive a
week later), so no model can exceed that bound.
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
    ap.add_argument("--bound", action="store_true", help="also print the oracle's card precision@100")
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
              "--keep", "timestamp,card_token,customer_id,terminal_id,is_fraud,fraud_scenario")
        f = pd.read_csv(feats, dtype={"customer_id": str, "terminal_id": str})
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
        exclude = "transaction_id,timestamp,card_token,customer_id,terminal_id,fraud_scenario"
        train_csv, test_csv = os.path.join(work, "train.csv"), os.path.join(work, "test.csv")
        train.to_csv(train_csv, index=False)
        test.to_csv(test_csv, index=False)
        model = os.path.join(work, "m.fgb")
        params = [x for p in a.param for x in ("--param", p)]
        fraud("train", "--input", train_csv, "--label", "is_fraud", "--exclude", exclude, *params, "-o", model)
        out = json.loads(fraud("evaluate", "--model", model, "--input", test_csv, "--label", "is_fraud"))
        if a.bound:
            scores = os.path.join(work, "s.csv")
            fraud("predict", "--model", model, "--input", test_csv, "--output", scores)
            test = test.assign(score=pd.read_csv(scores).iloc[:, -1].to_numpy())
            bound = oracle_card_precision(pd.read_csv(tx, dtype={"terminal_id": str}), test)
    cp = out.get("card_precision_at_100_per_day")
    print(f"| {a.label} | {len(train):,} / {len(test):,} | {out['roc_auc']:.3f} | {out['average_precision']:.3f} "
          f"| {cp:.3f} |")
    if a.bound:
        print(f"information bound on card precision@100 (oracle on every detectable fraud): {bound:.3f}")
    return 0


def oracle_card_precision(tx: pd.DataFrame, test: pd.DataFrame, k: int = 100) -> float:
    """Card precision@k per day, the Handbook's way (cards detected on an earlier day left out),
    of an oracle that puts first every fraud the data can show at its time."""
    tx = tx.assign(t=pd.to_datetime(tx["timestamp"], utc=True),
                   reported=pd.to_datetime(tx["fraud_reported_at"], utc=True))
    known = tx[tx["is_fraud"] == 1].groupby("terminal_id")
    t = pd.to_datetime(test["timestamp"], utc=True)

    def detectable(i: int) -> bool:
        if test["is_fraud"].iat[i] != 1:
            return False
        if test["fraud_scenario"].iat[i] != 2:
            return True
        term = test["terminal_id"].iat[i]
        if term not in known.groups:
            return False
        g = known.get_group(term)
        at = t.iat[i]
        return bool(((g["reported"] <= at) & (g["t"] >= at - pd.Timedelta(days=35))).any())

    flag = [detectable(i) for i in range(len(test))]
    ranked = test.assign(oracle=[1.0 + s if d else s for d, s in zip(flag, test["score"])],
                         day=t.dt.tz_convert(None).dt.normalize())
    removed: set = set()
    precisions = []
    for _, g in ranked.groupby("day"):
        g = g[~g["card_token"].isin(removed)]
        cards = g.groupby("card_token").agg(score=("oracle", "max"), fraud=("is_fraud", "max"))
        top = cards.sort_values("score", ascending=False, kind="mergesort").head(k)
        found = top[top["fraud"] == 1]
        removed |= set(found.index)
        precisions.append(len(found) / k)
    return sum(precisions) / len(precisions)


if __name__ == "__main__":
    sys.exit(main())
