"""fraudscore's Model.predict against XGBoost inplace_predict and LightGBM predict, side by
side in one process, on the same imported models and the same thread count:

    .venv/bin/python benches/compare/python_predict.py [--rows 1000000] [--threads 2]

Batch: 1,000,000 rows of 30 features (median of 5 runs). Single row: the per-call time of
predicting one row (median of 20 x 2,000 calls). Prints a Markdown table with the ratios.
Requires the fraudscore package (pip install ./fraud-py), xgboost and lightgbm."""

from __future__ import annotations

import argparse
import os
import statistics
import time


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    os.environ["RAYON_NUM_THREADS"] = str(a.threads)  # fraudscore's pool, before import

    import lightgbm as lgb
    import numpy as np
    import xgboost as xgb

    import fraudscore

    rng = np.random.default_rng(0)
    m = 30
    xt = rng.normal(size=(50_000, m))
    yt = (xt[:, 0] + xt[:, 1] * xt[:, 2] - xt[:, 3] ** 2 + rng.normal(size=len(xt)) > 0).astype(float)
    x = np.ascontiguousarray(rng.normal(size=(a.rows, m)))
    x[rng.random(x.shape) < 0.02] = np.nan

    booster = xgb.train({"objective": "binary:logistic", "max_depth": 6, "eta": 0.1, "nthread": a.threads, "seed": 0},
                        xgb.DMatrix(xt, label=yt), num_boost_round=300)
    booster.set_param({"nthread": a.threads})
    lgbm = lgb.train({"objective": "binary", "num_leaves": 63, "learning_rate": 0.1, "num_threads": a.threads,
                      "verbose": -1, "seed": 0}, lgb.Dataset(xt, label=yt), num_boost_round=300)
    ours_x = fraudscore.from_xgboost(booster)
    ours_l = fraudscore.from_lightgbm(lgbm)

    def median(f, repeat: int = 5) -> float:
        f()
        times = []
        for _ in range(repeat):
            t = time.perf_counter()
            f()
            times.append(time.perf_counter() - t)
        return statistics.median(times)

    def per_call(f, calls: int = 2_000, repeat: int = 20) -> float:
        f()
        times = []
        for _ in range(repeat):
            t = time.perf_counter()
            for _ in range(calls):
                f()
            times.append((time.perf_counter() - t) / calls)
        return statistics.median(times)

    # Same answers first.
    assert np.allclose(ours_x.predict(x[:10_000]), booster.inplace_predict(x[:10_000]), atol=1e-6)
    assert np.allclose(ours_l.predict(x[:10_000]), lgbm.predict(x[:10_000], num_threads=a.threads), atol=1e-6)

    one = np.ascontiguousarray(x[:1])
    rows = [
        ("XGBoost model (300 trees, depth 6)",
         median(lambda: ours_x.predict(x)), median(lambda: booster.inplace_predict(x)),
         per_call(lambda: ours_x.predict(one)), per_call(lambda: booster.inplace_predict(one)), "XGBoost inplace_predict"),
        ("LightGBM model (300 trees, 63 leaves)",
         median(lambda: ours_l.predict(x)), median(lambda: lgbm.predict(x, num_threads=a.threads)),
         per_call(lambda: ours_l.predict(one)), per_call(lambda: lgbm.predict(one, num_threads=a.threads)), "LightGBM predict"),
    ]
    # The call itself: a one-tree model, one row (what a caller pays beyond the trees).
    stump = xgb.train({"objective": "binary:logistic", "max_depth": 1, "nthread": a.threads}, xgb.DMatrix(xt, label=yt), num_boost_round=1)
    ours_stump = fraudscore.from_xgboost(stump)
    overhead = per_call(lambda: ours_stump.predict(one))
    overhead_xgb = per_call(lambda: stump.inplace_predict(one))
    print(f"{a.rows:,} rows x {m} features, {a.threads} threads\n")
    print("| model | engine | batch (s) | rows/s | fraudscore faster by | one row (us) | fraudscore faster by |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for name, ob, tb, o1, t1, theirs in rows:
        print(f"| {name} | fraudscore Model.predict | {ob:.3f} | {a.rows / ob:,.0f} | | {o1 * 1e6:.2f} | |")
        print(f"| | {theirs} | {tb:.3f} | {a.rows / tb:,.0f} | {tb / ob:.2f}x | {t1 * 1e6:.2f} | {t1 / o1:.2f}x |")
    print(f"\nPer-call overhead (one row, a one-tree model): fraudscore {overhead * 1e6:.2f} us, "
          f"XGBoost inplace_predict {overhead_xgb * 1e6:.2f} us")


if __name__ == "__main__":
    main()
