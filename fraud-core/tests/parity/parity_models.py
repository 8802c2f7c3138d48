"""Models and data for the XGBoost / LightGBM import parity checks.

Used twice: `make_fixtures.py` writes small committed fixtures (read by the Rust test
`fraud-core/tests/import_parity.rs`), and `test_parity.py` trains fresh models with the
libraries installed by the test command and checks the `fraud` binary against them.

Every case writes, into a directory:
  model.json / model.txt   the library's own saved model
  rows.csv                 held-out rows (empty cell = missing), shortest round-trip decimals
  expected.csv             the library's probability and the leaf reached in every tree
"""

from __future__ import annotations

import json
import math
import os
import struct

import numpy as np


def _f32_neighbours(t: float) -> list[float]:
    """t and the floats around it, in f64 and in f32, to probe comparison precision."""
    out = [t, math.nextafter(t, math.inf), math.nextafter(t, -math.inf)]
    f = struct.unpack("f", struct.pack("f", t))[0] if abs(t) < 3e38 else t
    out += [f, math.nextafter(f, math.inf), math.nextafter(f, -math.inf)]
    bits = struct.unpack("I", struct.pack("f", f))[0] if abs(f) < 3e38 else None
    if bits is not None and bits not in (0, 0x80000000):
        for b in (bits - 1, bits + 1):
            out.append(struct.unpack("f", struct.pack("I", b & 0xFFFFFFFF))[0])
        # Midpoints between neighbouring f32 values: where f64 -> f32 rounding ties.
        up = struct.unpack("f", struct.pack("I", bits + 1))[0]
        down = struct.unpack("f", struct.pack("I", bits - 1))[0]
        out += [(f + up) / 2, (f + down) / 2]
    return [v for v in out if math.isfinite(v)]


def make_data(seed: int, n: int, n_num: int, n_cat: int, missing: float, zeros: float = 0.0):
    """Synthetic fraud-like data: numeric columns with signal, categorical codes, NaNs."""
    rng = np.random.default_rng(seed)
    x_num = rng.normal(size=(n, n_num))
    x_num[:, 0] = np.exp(rng.normal(3.0, 1.2, size=n))  # amount-like, heavy tail
    cats = []
    for j in range(n_cat):
        k = 5 + 7 * j
        cats.append(rng.integers(0, k, size=n).astype(np.float64))
    x = np.column_stack([x_num] + cats) if n_cat else x_num
    logit = 0.8 * x_num[:, 1] - 0.6 * x_num[:, 2] + 0.002 * x_num[:, 0] + 0.3 * np.sin(3 * x_num[:, 3])
    for j in range(n_cat):
        logit += np.where(np.isin(cats[j], [1, 3, 4]), 1.2, -0.4)
    y = (rng.random(n) < 1 / (1 + np.exp(-(logit - 1.0)))).astype(np.float64)
    if zeros:
        mask = rng.random(x.shape) < zeros
        mask[:, n_num:] = False
        x[mask] = 0.0
    if missing:
        mask = rng.random(x.shape) < missing
        x[mask] = np.nan
    return x, y


def probe_rows(x: np.ndarray, thresholds: dict[int, list[float]], seed: int, n: int,
               specials: tuple[float, ...] = ()) -> np.ndarray:
    """Rows whose values sit exactly on, and just beside, the model's split thresholds."""
    rng = np.random.default_rng(seed)
    rows = x[rng.integers(0, len(x), size=n)].copy()
    feats = [f for f, ts in thresholds.items() if ts]
    if not feats:
        return rows
    for i in range(n):
        for _ in range(3):
            f = feats[rng.integers(0, len(feats))]
            t = thresholds[f][rng.integers(0, len(thresholds[f]))]
            cands = _f32_neighbours(t)
            rows[i, f] = cands[rng.integers(0, len(cands))]
        if rng.random() < 0.3:
            # Values at and around zero: LightGBM reads |x| <= 1e-35 as 0.0.
            f = feats[rng.integers(0, len(feats))]
            rows[i, f] = NEAR_ZERO[rng.integers(0, len(NEAR_ZERO))]
        if specials and rng.random() < 0.2:
            f = feats[rng.integers(0, len(feats))]
            rows[i, f] = specials[rng.integers(0, len(specials))]
    return rows


NEAR_ZERO = [0.0, -0.0, 1e-36, -1e-36, 1.0000000180025095e-35, -1.0000000180025095e-35,
             math.nextafter(1.0000000180025095e-35, 1), math.nextafter(-1.0000000180025095e-35, -1),
             1e-34, -1e-34, 5e-324, -5e-324]


def write_rows(path: str, names: list[str], x: np.ndarray) -> None:
    with open(path, "w") as out:
        out.write(",".join(names) + "\n")
        for row in x:
            out.write(",".join("" if math.isnan(v) else repr(float(v)) for v in row) + "\n")


def write_expected(path: str, prob: np.ndarray, leaves: np.ndarray) -> None:
    with open(path, "w") as out:
        out.write("score," + ",".join(f"tree_{t}" for t in range(leaves.shape[1])) + "\n")
        for p, lv in zip(prob, leaves):
            out.write(repr(float(p)) + "," + ",".join(str(int(v)) for v in lv) + "\n")


# ----------------------------------------------------------------------------- XGBoost

XGB_CASES = {
    # name: (params, rounds, data kwargs)
    "xgb_shallow": ({"max_depth": 2, "eta": 0.3}, 40, dict(n_num=6, n_cat=0, missing=0.0)),
    "xgb_deep": ({"max_depth": 10, "eta": 0.1, "min_child_weight": 0.5}, 15, dict(n_num=8, n_cat=0, missing=0.0)),
    "xgb_missing": ({"max_depth": 6, "eta": 0.2}, 60, dict(n_num=8, n_cat=0, missing=0.2)),
    "xgb_lossguide": ({"grow_policy": "lossguide", "max_leaves": 63, "max_depth": 0, "eta": 0.1}, 25, dict(n_num=10, n_cat=0, missing=0.05)),
    "xgb_categorical": ({"max_depth": 5, "eta": 0.2, "max_cat_to_onehot": 1}, 50, dict(n_num=5, n_cat=3, missing=0.1)),
    "xgb_base_score": ({"max_depth": 4, "eta": 0.3, "base_score": 0.037}, 30, dict(n_num=6, n_cat=0, missing=0.1)),
}


def xgb_thresholds(booster) -> dict[int, list[float]]:
    model = json.loads(booster.save_raw("json"))
    out: dict[int, list[float]] = {}
    for tree in model["learner"]["gradient_booster"]["model"]["trees"]:
        for i, left in enumerate(tree["left_children"]):
            if left != -1 and tree.get("split_type", [0] * (i + 1))[i] == 0:
                out.setdefault(tree["split_indices"][i], []).append(float(tree["split_conditions"][i]))
    return out


def make_xgb_case(name: str, outdir: str, seed: int = 7, n_train: int = 4000, n_test: int = 600) -> None:
    import xgboost as xgb

    params, rounds, dkw = XGB_CASES[name]
    x, y = make_data(seed, n_train + n_test, **dkw)
    n_num, n_cat = dkw["n_num"], dkw["n_cat"]
    names = [f"num_{i}" for i in range(n_num)] + [f"cat_{j}" for j in range(n_cat)]
    types = ["float"] * n_num + ["c"] * n_cat
    xtr, ytr, xte = x[:n_train], y[:n_train], x[n_train:]
    use_names = name != "xgb_shallow"  # one case without names: features become f0, f1, ...
    dtrain = xgb.DMatrix(
        xtr, label=ytr, feature_names=names if use_names else None,
        feature_types=types if n_cat else None, enable_categorical=bool(n_cat),
    )
    booster = xgb.train(
        {"objective": "binary:logistic", "tree_method": "hist", "seed": seed, "nthread": 2, **params},
        dtrain, num_boost_round=rounds,
    )
    probe = probe_rows(xtr, xgb_thresholds(booster), seed + 1, n_test // 2)
    if n_cat:
        probe[:, n_num:] = xte[: len(probe), n_num:]  # XGBoost rejects invalid category codes
    xtest = np.vstack([xte, probe])
    dtest = xgb.DMatrix(
        xtest, feature_names=names if use_names else None,
        feature_types=types if n_cat else None, enable_categorical=bool(n_cat),
    )
    prob = booster.predict(dtest)
    leaves = booster.predict(dtest, pred_leaf=True)
    contribs = booster.predict(dtest, pred_contribs=True)
    os.makedirs(outdir, exist_ok=True)
    booster.save_model(os.path.join(outdir, "model.json"))
    write_rows(os.path.join(outdir, "rows.csv"), names if use_names else [f"f{i}" for i in range(len(names))], xtest)
    write_expected(os.path.join(outdir, "expected.csv"), prob, leaves.reshape(len(xtest), -1))
    np.savetxt(os.path.join(outdir, "contribs.csv"), contribs, delimiter=",", fmt="%.17g")


# ----------------------------------------------------------------------------- LightGBM

LGB_CASES = {
    "lgb_shallow": ({"num_leaves": 4, "learning_rate": 0.3}, 40, dict(n_num=6, n_cat=0, missing=0.0)),
    "lgb_deep": ({"num_leaves": 255, "min_data_in_leaf": 3, "learning_rate": 0.1}, 15, dict(n_num=8, n_cat=0, missing=0.0)),
    "lgb_missing_nan": ({"num_leaves": 31, "learning_rate": 0.1}, 60, dict(n_num=8, n_cat=0, missing=0.2)),
    "lgb_zero_as_missing": ({"num_leaves": 31, "zero_as_missing": True}, 40, dict(n_num=8, n_cat=0, missing=0.1, zeros=0.2)),
    "lgb_no_missing": ({"num_leaves": 15, "use_missing": False}, 40, dict(n_num=6, n_cat=0, missing=0.1, zeros=0.1)),
    "lgb_categorical": ({"num_leaves": 31, "cat_smooth": 1, "min_data_per_group": 5, "max_cat_to_onehot": 4}, 50, dict(n_num=5, n_cat=3, missing=0.1)),
    "lgb_sigmoid2": ({"num_leaves": 15, "sigmoid": 2.0}, 30, dict(n_num=6, n_cat=0, missing=0.05)),
    "lgb_rf": ({"boosting": "rf", "num_leaves": 31, "bagging_freq": 1, "bagging_fraction": 0.7, "feature_fraction": 0.8}, 20, dict(n_num=6, n_cat=0, missing=0.05)),
}


def lgb_thresholds(booster) -> dict[int, list[float]]:
    out: dict[int, list[float]] = {}

    def walk(node):
        if "split_index" not in node:
            return
        if node.get("decision_type") == "<=":
            t = float(node["threshold"])
            if math.isfinite(t):
                out.setdefault(node["split_feature"], []).append(t)
        walk(node["left_child"])
        walk(node["right_child"])

    for tree in booster.dump_model()["tree_info"]:
        walk(tree["tree_structure"])
    return out


def make_lgb_case(name: str, outdir: str, seed: int = 11, n_train: int = 4000, n_test: int = 600) -> None:
    import lightgbm as lgb

    params, rounds, dkw = LGB_CASES[name]
    x, y = make_data(seed, n_train + n_test, **dkw)
    n_num, n_cat = dkw["n_num"], dkw["n_cat"]
    names = [f"num_{i}" for i in range(n_num)] + [f"cat_{j}" for j in range(n_cat)]
    cat_idx = list(range(n_num, n_num + n_cat))
    xtr, ytr, xte = x[:n_train], y[:n_train], x[n_train:]
    dtrain = lgb.Dataset(xtr, label=ytr, feature_name=names, categorical_feature=cat_idx or "auto", free_raw_data=False)
    booster = lgb.train(
        {"objective": "binary", "seed": seed, "num_threads": 2, "verbose": -1, "deterministic": True, **params},
        dtrain, num_boost_round=rounds,
    )
    probe = probe_rows(xtr, lgb_thresholds(booster), seed + 1, n_test // 2,
                       specials=(math.inf, -math.inf, 1.7e308, -1.7e308))
    if n_cat:
        # Unseen, negative, fractional and huge category codes: LightGBM defines them all.
        rng = np.random.default_rng(seed + 2)
        odd = np.array([-1.0, -0.5, 0.5, 2.7, 97.0, 1e10, -3e9, 40.0])
        for j in cat_idx:
            pick = rng.random(len(probe)) < 0.3
            probe[pick, j] = odd[rng.integers(0, len(odd), size=pick.sum())]
    xtest = np.vstack([xte, probe])
    prob = booster.predict(xtest)
    leaves = booster.predict(xtest, pred_leaf=True)
    contribs = booster.predict(xtest, pred_contrib=True)
    os.makedirs(outdir, exist_ok=True)
    booster.save_model(os.path.join(outdir, "model.txt"))
    write_rows(os.path.join(outdir, "rows.csv"), names, xtest)
    write_expected(os.path.join(outdir, "expected.csv"), prob, leaves.reshape(len(xtest), -1))
    np.savetxt(os.path.join(outdir, "contribs.csv"), contribs, delimiter=",", fmt="%.17g")


def make_case(name: str, outdir: str, **kw) -> None:
    if name in XGB_CASES:
        make_xgb_case(name, outdir, **kw)
    else:
        make_lgb_case(name, outdir, **kw)


ALL_CASES = list(XGB_CASES) + list(LGB_CASES)
