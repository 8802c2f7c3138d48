"""From generated transactions to a model `fraud serve` runs, in one script:

    python fraud-py/examples/end_to_end.py [--customers 2000] [--days 90] [--out model.fgb]

1. generate card transactions with six labelled fraud scenarios (fraudscore.datasets);
2. compute the service's features, point in time (fraudscore.features.replay: labels count
   only once they are known);
3. train GBDTClassifier on the first two thirds of the days, with early stopping on the next
   weeks, leaving a week's gap before the test days (labels arrive late);
4. evaluate: ROC-AUC, average precision, recall at 1% false positives, card precision@100
   per day, recall per fraud scenario;
5. explain the riskiest test transaction (TreeSHAP);
6. save the model: `fraud serve` takes it (`FRAUD_MODEL=model.fgb fraud serve`, or
   `POST /v1/models`), since its features are the default feature spec's.
"""

from __future__ import annotations

import argparse

import numpy as np
import pandas as pd

import fraudscore
from fraudscore import GBDTClassifier, datasets, features, metrics


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--customers", type=int, default=2000)
    ap.add_argument("--days", type=int, default=90)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--out", default="model.fgb")
    a = ap.parse_args()

    tx, summary = datasets.generate(a.customers, a.days, seed=a.seed, return_summary=True)
    print(f"{len(tx):,} transactions, {summary['frauds']:,} frauds ({100 * summary['frauds'] / len(tx):.2f}%)")

    X = features.replay(tx)
    y = tx["is_fraud"].to_numpy()
    day = (pd.to_datetime(tx["timestamp"]) - pd.to_datetime(tx["timestamp"]).min()).dt.days.to_numpy()
    cut = int(a.days * 2 / 3)
    train, valid = day < cut - 14, (day >= cut - 14) & (day < cut)
    test = day >= cut + 7
    clf = GBDTClassifier(n_estimators=400, learning_rate=0.05, num_leaves=31, max_depth=6,
                         early_stopping_rounds=40, random_state=0)
    clf.fit(X[train], y[train], eval_set=[(X[valid], y[valid])], categorical_features=["channel", "mcc"])
    print(f"trained {clf.model_.num_trees} trees (best iteration {clf.best_iteration_})")

    p = clf.predict_proba(X[test])[:, 1]
    yt = y[test]
    cp, _ = metrics.card_precision_at_k(yt, p, tx.loc[test, "card_token"].tolist(), day[test].tolist(), 100)
    print(f"test: ROC-AUC {metrics.roc_auc(yt, p):.4f}  average precision {metrics.average_precision(yt, p):.4f}  "
          f"recall at 1% FPR {metrics.recall_at_fpr(yt, p, 0.01):.4f}  card precision@100/day {cp:.4f}")
    names = dict(enumerate(datasets.SCENARIOS, start=1))
    flagged = p >= np.quantile(p[yt == 0], 0.99)
    scen = tx.loc[test, "fraud_scenario"].to_numpy()
    for s in sorted(set(scen[yt == 1])):
        mask = (scen == s) & (yt == 1)
        print(f"  recall {names[s]:<24} {flagged[mask].mean():.3f} ({mask.sum()} frauds)")

    riskiest = X[test].iloc[[int(np.argmax(p))]]
    why = clf.model_.explain(riskiest).iloc[0].drop("bias")
    top = why.reindex(why.abs().sort_values(ascending=False).index)[:5]
    print("riskiest test transaction, top reasons:")
    for f, c in top.items():
        print(f"  {f:<40} value {riskiest.iloc[0][f]!s:<12} contribution {c:+.3f}")

    clf.model_.save(a.out)
    again = fraudscore.Model.load(a.out)
    assert np.allclose(again.predict(X[test]), p)
    print(f"saved {a.out}: run it with `FRAUD_MODEL={a.out} fraud serve`")


if __name__ == "__main__":
    main()
