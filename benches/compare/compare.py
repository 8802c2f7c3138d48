"""Side-by-side batch prediction speed: fraud-core against XGBoost, LightGBM, Treelite
(TL2cgen) and lleaves, on the same model and the same rows, in one run.

    benches/compare/run.sh            # installs the engines into .venv, builds, runs this
    python benches/compare/compare.py --fraud target/release/fraud [--rows 1000000] ...

Data: a synthetic, seeded binary classification set (rows x 30 features, a few percent
positives, non-linear signal). Models: LightGBM (300 trees, 63 leaves) and XGBoost of the same
shape (lossguide, 63 leaves, 300 trees). Every engine scores the same held-out rows at 1 and 2
threads; the best of several passes is kept. The LightGBM model is scored by LightGBM,
Treelite, lleaves and fraud-core; the XGBoost model by XGBoost `inplace_predict` and
fraud-core. Output: ns/row per engine and thread count, and each engine's time divided by
fraud-core's (a ratio above 1 means fraud-core is faster). Trained models are cached under
benches/compare/work/.

Other data and shapes: `--data fdh` (the Fraud Detection Handbook's engineered features, read
in place), `--data categorical` (four categorical features of 50 to 1,000 codes, split as
categories by both libraries), `--depth 8` (depth-wise trees of up to 256 leaves instead of
leaf-wise ones). `--kernels walk,bitvector,bitvector-avx2` also times fraud-core's batch
kernels forced one by one (its own choice is the line the ratios use).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))


def make_data(rows: int, features: int, seed: int):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(rows, features))
    x[:, 0] = np.exp(rng.normal(3.5, 1.3, size=rows))  # amount-like
    x[:, 1] = rng.integers(0, 24, size=rows)  # hour-like
    w = rng.normal(size=features) / np.sqrt(features)
    logit = x[:, 2:] @ w[2:] + 0.8 * np.sin(2 * x[:, 3]) * x[:, 4] + 0.002 * x[:, 0] + 0.5 * (x[:, 1] < 6) - 3.0
    y = (rng.random(rows) < 1 / (1 + np.exp(-logit))).astype(np.float64)
    x[rng.random(x.shape) < 0.02] = np.nan  # some missing values
    return x, y


FDH_DIR = os.environ.get("FDH_DIR", os.path.join(HERE, "..", "..", "..", "shared", "datasets", "fdh-simulated"))


def make_categorical(rows: int, features: int, seed: int):
    """The synthetic set with its first four features made categorical (50, 200, 500 and 1,000
    category codes, each code with its own effect on the log-odds): models with many
    categorical splits."""
    rng = np.random.default_rng(seed)
    x, _ = make_data(rows, features, seed)
    logit = -3.0 + x[:, 4:] @ (rng.normal(size=features - 4) / np.sqrt(features))
    for j, k in enumerate((50, 200, 500, 1000)):
        codes = rng.zipf(1.3, size=rows) % k
        x[:, j] = codes
        logit += rng.normal(0, 1.0, size=k)[codes]
    y = (rng.random(rows) < 1 / (1 + np.exp(-logit))).astype(np.float64)
    return x, y


def load_fdh():
    """The Fraud Detection Handbook's engineered features for one week (66,989 transactions,
    read in place, never copied into the repository), with the amount and the label joined
    from its raw transactions by TRANSACTION_ID: 15 features, in the file's (time) order."""
    import csv
    import gzip

    with gzip.open(os.path.join(FDH_DIR, "fdh_transformed_features_2018-06-04_to_2018-06-10.csv.gz"), "rt") as f:
        r = csv.reader(f)
        head = next(r)
        t = np.array([[float(v) for v in row] for row in r])
    ids = t[:, 0].astype(np.int64)
    need = set(ids.tolist())
    amount, fraud = {}, {}
    with gzip.open(os.path.join(FDH_DIR, "fdh_simulated_transactions.csv.gz"), "rt") as f:
        r = csv.reader(f)
        raw = next(r)
        iid, ia, ifr = raw.index("TRANSACTION_ID"), raw.index("TX_AMOUNT"), raw.index("TX_FRAUD")
        for row in r:
            i = int(row[iid])
            if i in need:
                amount[i], fraud[i] = float(row[ia]), float(row[ifr])
    x = np.column_stack([np.array([amount[i] for i in ids]), t[:, 1:]])
    y = np.array([fraud[i] for i in ids])
    return x, y, ["TX_AMOUNT"] + head[1:]


def best_of(fn, passes: int) -> float:
    best = float("inf")
    for _ in range(passes):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--fraud", default="target/release/fraud")
    ap.add_argument("--rows", type=int, default=1_000_000, help="training rows")
    ap.add_argument("--features", type=int, default=30)
    ap.add_argument("--trees", type=int, default=300)
    ap.add_argument("--leaves", type=int, default=63)
    ap.add_argument("--score-rows", type=int, default=100_000)
    ap.add_argument("--passes", type=int, default=5)
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--only", default="", help="comma list of engines to run (default all)")
    ap.add_argument("--json", default="", help="also write the results to this file")
    ap.add_argument("--kernels", default="",
                    help="also time fraud-core with these batch kernels forced (comma list of walk, "
                         "bitvector); the ratios stay relative to its own choice")
    ap.add_argument("--depth", type=int, default=0,
                    help="grow depth-wise to this depth (LightGBM max_depth with 2^depth leaves, "
                         "XGBoost depthwise max_depth) instead of leaf-wise with --leaves")
    ap.add_argument("--data", choices=["synthetic", "fdh", "categorical"], default="synthetic",
                    help="fdh: the Fraud Detection Handbook's features (FDH_DIR), the first two "
                         "thirds for training, the rest scored")
    a = ap.parse_args()
    threads = [int(t) for t in a.threads.split(",")]
    only = set(filter(None, a.only.split(",")))
    want = lambda e: not only or e in only  # noqa: E731

    if a.depth:
        a.leaves = 2 ** a.depth
    shape = f"t{a.trees}_l{a.leaves}" + (f"_d{a.depth}" if a.depth else "") + f"_s{a.seed}"
    categorical: list[int] = []
    if a.data == "fdh":
        work = os.path.join(HERE, "work", f"fdh_{shape}")
        x, y, names = load_fdh()
        a.rows, a.features = len(x) * 2 // 3, x.shape[1]
    else:
        prefix = "cat_" if a.data == "categorical" else ""
        work = os.path.join(HERE, "work", f"{prefix}r{a.rows}_f{a.features}_{shape}")
        if a.data == "categorical":
            x, y = make_categorical(a.rows + a.score_rows, a.features, a.seed)
            categorical = [0, 1, 2, 3]
        else:
            x, y = make_data(a.rows + a.score_rows, a.features, a.seed)
        names = [f"f{i}" for i in range(a.features)]
    os.makedirs(work, exist_ok=True)
    xtr, ytr, xte = x[: a.rows], y[: a.rows], np.ascontiguousarray(x[a.rows :])

    import lightgbm as lgb
    import xgboost as xgb

    lgb_path = os.path.join(work, "model.txt")
    if not os.path.exists(lgb_path):
        t = time.time()
        booster = lgb.train(
            {"objective": "binary", "num_leaves": a.leaves, "learning_rate": 0.05, "min_data_in_leaf": 50,
             "max_depth": a.depth or -1, "num_threads": 2, "seed": a.seed, "verbose": -1,
             "deterministic": True},
            lgb.Dataset(xtr, label=ytr, feature_name=names, categorical_feature=categorical or "auto"),
            num_boost_round=a.trees)
        booster.save_model(lgb_path)
        print(f"trained LightGBM in {time.time() - t:.0f}s", file=sys.stderr)
    xgb_path = os.path.join(work, "model.json")
    if not os.path.exists(xgb_path) and (want("xgboost") or want("fraud-core")):
        t = time.time()
        shape_params = ({"grow_policy": "depthwise", "max_depth": a.depth} if a.depth else
                        {"grow_policy": "lossguide", "max_leaves": a.leaves, "max_depth": 0})
        types = ["c" if j in categorical else "q" for j in range(len(names))]
        booster = xgb.train(
            {"objective": "binary:logistic", "tree_method": "hist", "eta": 0.05, "nthread": 2,
             "seed": a.seed, "max_cat_to_onehot": 1, **shape_params},
            xgb.DMatrix(xtr, label=ytr, feature_names=names, feature_types=types,
                        enable_categorical=bool(categorical)),
            num_boost_round=a.trees)
        booster.save_model(xgb_path)
        print(f"trained XGBoost in {time.time() - t:.0f}s", file=sys.stderr)
    rows_csv = os.path.join(work, "rows.csv")
    if not os.path.exists(rows_csv):
        np.savetxt(rows_csv, xte, delimiter=",", header=",".join(names), comments="", fmt="%.17g")
        # np.savetxt writes nan; fraud reads NaN/nan as missing.

    results: dict[str, dict[int, float]] = {}

    def record(engine: str, nthreads: int, seconds: float) -> None:
        ns = seconds / len(xte) * 1e9
        results.setdefault(engine, {})[nthreads] = ns
        print(f"  {engine:<28} {nthreads} thread(s): {ns:9.1f} ns/row", file=sys.stderr)

    lgb_model = lgb.Booster(model_file=lgb_path)
    ref_lgb = lgb_model.predict(xte, num_threads=1)

    # fraud-core, through the CLI's in-process benchmark (parsing excluded).
    for src, fmt, path in (("lightgbm", "lightgbm", lgb_path), ("xgboost", "xgboost", xgb_path)):
        if not want("fraud-core") or not os.path.exists(path):
            continue
        art = os.path.join(work, f"{src}.fgb")
        subprocess.run([a.fraud, "import", "--format", fmt, path, "-o", art], check=True, capture_output=True)
        for kernel in ["auto"] + [k for k in a.kernels.split(",") if k]:
            for n in threads:
                out = subprocess.run([a.fraud, "bench", "--model", art, "--input", rows_csv, "--threads", str(n),
                                      "--passes", str(a.passes), "--kernel", kernel,
                                      "--single-rows", "20000" if kernel == "auto" else "1"],
                                     check=True, capture_output=True, text=True).stdout
                rep = json.loads(out)
                name = f"fraud-core ({src} model)" if kernel == "auto" else f"fraud-core ({src}, {kernel} forced)"
                record(name, n, rep["batch_ns_per_row"] * len(xte) / 1e9)
                if kernel == "auto":
                    print(f"  fraud-core ({src} model) chose the {rep['batch_kernel']} kernel", file=sys.stderr)
                if n == 1 and kernel == "auto":
                    results.setdefault(f"fraud-core ({src} model) single-row p50/p99 us", {})[1] = (
                        rep["single_row_us_p50"], rep["single_row_us_p99"])
        # Same scores as the library.
        with tempfile.TemporaryDirectory() as tmp:
            out = os.path.join(tmp, "s.csv")
            subprocess.run([a.fraud, "predict", "--model", art, "--input", rows_csv, "--output", out], check=True)
            ours = np.loadtxt(out, skiprows=1)
        if src == "lightgbm":
            ref = ref_lgb
        else:
            ref = xgb.Booster(model_file=xgb_path).inplace_predict(xte)
        print(f"  fraud-core ({src} model) max |p - library p| = {np.abs(ours - ref).max():.2e}", file=sys.stderr)

    if want("lightgbm"):
        for n in threads:
            record("lightgbm predict", n, best_of(lambda: lgb_model.predict(xte, num_threads=n), a.passes))

    if want("xgboost") and os.path.exists(xgb_path):
        xb = xgb.Booster(model_file=xgb_path)
        for n in threads:
            xb.set_param({"nthread": n})
            record("xgboost inplace_predict", n, best_of(lambda: xb.inplace_predict(xte), a.passes))

    if want("treelite"):
        try:
            import tl2cgen
            import treelite

            tl = treelite.frontend.load_lightgbm_model(lgb_path)
            # quantize=1 is TL2cgen's fastest setting here (about 2.6x faster than without;
            # branch annotation from training data added nothing).
            lib = os.path.join(work, "tl2cgen_model_q.so")
            if not os.path.exists(lib):
                tl2cgen.export_lib(tl, toolchain="gcc", libpath=lib,
                                   params={"quantize": 1, "parallel_comp": 8}, nthread=2)
            dmat = tl2cgen.DMatrix(xte, dtype="float64")
            for n in threads:
                pred = tl2cgen.Predictor(lib, nthread=n)
                record("treelite/tl2cgen", n, best_of(lambda: pred.predict(dmat), a.passes))
        except Exception as e:  # noqa: BLE001
            print(f"  treelite skipped: {e}", file=sys.stderr)

    if want("lleaves"):
        try:
            import lleaves

            ll = lleaves.Model(model_file=lgb_path)
            ll.compile(cache=os.path.join(work, "lleaves.o"))
            for n in threads:
                record("lleaves", n, best_of(lambda: ll.predict(xte, n_jobs=n), a.passes))
        except Exception as e:  # noqa: BLE001
            print(f"  lleaves skipped: {e}", file=sys.stderr)

    ours = {src: results.get(f"fraud-core ({src} model)", {}) for src in ("lightgbm", "xgboost")}
    print()
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores; data {a.data}, "
          f"{a.rows} x {a.features} training rows, {a.trees} trees, {a.leaves} leaves, {len(xte)} rows scored")
    print(f"{'engine':<46}" + "".join(f"{str(n) + ' thr ns/row':>16}{'ratio':>8}" for n in threads))
    for engine, by_n in results.items():
        if "single-row" in engine:
            continue
        base = ours["xgboost"] if "xgboost" in engine else ours["lightgbm"]
        cells = ""
        for n in threads:
            v = by_n.get(n)
            r = v / base[n] if v and base.get(n) else None
            cells += f"{v:16.1f}" if v else f"{'-':>16}"
            cells += f"{r:8.2f}" if r else f"{'-':>8}"
        print(f"{engine:<46}{cells}")
    for engine, by_n in results.items():
        if "single-row" in engine:
            p50, p99 = by_n[1]
            print(f"{engine}: {p50:.2f} / {p99:.2f}")
    print("ratio = engine ns/row / fraud-core ns/row on the same model (above 1: fraud-core is faster)")
    if a.json:
        with open(a.json, "w") as f:
            json.dump({k: {str(n): v for n, v in d.items()} for k, d in results.items()}, f, indent=1)


if __name__ == "__main__":
    main()
