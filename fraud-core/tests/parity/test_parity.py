"""Live import parity: fresh models from the installed XGBoost and LightGBM, scored by `fraud`.

For every case in parity_models, a model is trained now (with a different seed and more rows
than the committed fixtures), imported with `fraud import`, and scored with `fraud predict`.
Every row must reach the same leaf in every tree as the library's `pred_leaf`, and the
probability must be within 1e-6 of the library's own `predict`.

FRAUD_BIN points at the `fraud` binary (the test command sets it).
"""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from parity_models import ALL_CASES, make_case  # noqa: E402

FRAUD = os.environ.get("FRAUD_BIN", "target/debug/fraud")


def fraud(*args: str, ok: bool = True) -> subprocess.CompletedProcess:
    p = subprocess.run([FRAUD, *args], capture_output=True, text=True)
    if ok:
        assert p.returncode == 0, f"fraud {' '.join(args)} failed: {p.stderr}"
    return p


def read_csv(path: str) -> tuple[list[str], np.ndarray]:
    with open(path) as f:
        header = f.readline().strip().split(",")
    return header, np.loadtxt(path, delimiter=",", skiprows=1, ndmin=2)


@pytest.mark.parametrize("case", ALL_CASES)
def test_import_is_exact(case: str, tmp_path) -> None:
    d = str(tmp_path)
    make_case(case, d, seed=1234, n_train=6000, n_test=2000)
    fmt, src = ("xgboost", "model.json") if case.startswith("xgb") else ("lightgbm", "model.txt")
    art = os.path.join(d, "model.fgb")
    fraud("import", "--format", fmt, os.path.join(d, src), "-o", art)
    out, leaves = os.path.join(d, "scores.csv"), os.path.join(d, "leaves.csv")
    fraud("predict", "--model", art, "--input", os.path.join(d, "rows.csv"), "--output", out,
          "--leaves", leaves, "--threads", "2")

    header, scores = read_csv(out)
    assert header == ["score"]
    _, expected = read_csv(os.path.join(d, "expected.csv"))
    _, ours_leaves = read_csv(leaves)
    assert scores.shape[0] == expected.shape[0]
    mismatched = np.nonzero((ours_leaves != expected[:, 1:]).any(axis=1))[0]
    assert len(mismatched) == 0, f"{case}: leaves differ on rows {mismatched[:10]}"
    diff = np.abs(scores[:, 0] - expected[:, 0])
    assert diff.max() <= 1e-6, f"{case}: worst probability difference {diff.max():e}"


def test_predict_names_a_missing_column(tmp_path) -> None:
    d = str(tmp_path)
    make_case("lgb_shallow", d, n_train=500, n_test=50)
    art = os.path.join(d, "m.fgb")
    fraud("import", "--format", "lightgbm", os.path.join(d, "model.txt"), "-o", art)
    rows = os.path.join(d, "rows.csv")
    with open(rows) as f:
        lines = f.read().splitlines()
    # Drop the column num_3, reorder the rest, add an extra one: only the missing one matters.
    header = lines[0].split(",")
    keep = [i for i, h in enumerate(header) if h != "num_3"][::-1]
    bad = os.path.join(d, "bad.csv")
    with open(bad, "w") as f:
        for line in lines:
            cells = line.split(",")
            f.write(",".join([cells[i] for i in keep] + ["x"]) + "\n")
    p = fraud("predict", "--model", art, "--input", bad, ok=False)
    assert p.returncode != 0
    assert "num_3" in p.stderr and "missing" in p.stderr
    assert "panicked" not in p.stderr


def test_any_column_order_and_extra_columns(tmp_path) -> None:
    d = str(tmp_path)
    make_case("xgb_missing", d, n_train=800, n_test=100)
    art = os.path.join(d, "m.fgb")
    fraud("import", "--format", "xgboost", os.path.join(d, "model.json"), "-o", art)
    rows = os.path.join(d, "rows.csv")
    with open(rows) as f:
        lines = f.read().splitlines()
    shuffled = os.path.join(d, "shuffled.csv")
    n = len(lines[0].split(","))
    order = list(range(n))[::-1]
    with open(shuffled, "w") as f:
        for k, line in enumerate(lines):
            cells = line.split(",")
            f.write(",".join(["id" if k == 0 else str(k)] + [cells[i] for i in order]) + "\n")
    a = fraud("predict", "--model", art, "--input", rows).stdout
    b = fraud("predict", "--model", art, "--input", shuffled).stdout
    assert a == b and a.startswith("score\n")


def test_unsupported_models_are_refused_by_name(tmp_path) -> None:
    import lightgbm as lgb
    import xgboost as xgb

    rng = np.random.default_rng(0)
    x = rng.normal(size=(300, 4))
    y = rng.integers(0, 3, size=300)
    b = xgb.train({"objective": "multi:softprob", "num_class": 3}, xgb.DMatrix(x, label=y), 3)
    p = str(tmp_path / "multi.json")
    b.save_model(p)
    r = fraud("import", "--format", "xgboost", p, "-o", str(tmp_path / "o"), ok=False)
    assert r.returncode != 0 and "multi:softprob" in r.stderr

    b = xgb.train({"objective": "reg:squarederror"}, xgb.DMatrix(x, label=y), 3)
    b.save_model(p)
    r = fraud("import", "--format", "xgboost", p, "-o", str(tmp_path / "o"), ok=False)
    assert "reg:squarederror" in r.stderr

    m = lgb.train({"objective": "multiclass", "num_class": 3, "verbose": -1}, lgb.Dataset(x, label=y), 3)
    p = str(tmp_path / "multi.txt")
    m.save_model(p)
    r = fraud("import", "--format", "lightgbm", p, "-o", str(tmp_path / "o"), ok=False)
    assert r.returncode != 0 and "multiclass" in r.stderr

    m = lgb.train({"objective": "binary", "linear_tree": True, "verbose": -1},
                  lgb.Dataset(x, label=(y > 0).astype(float)), 3)
    m.save_model(p)
    r = fraud("import", "--format", "lightgbm", p, "-o", str(tmp_path / "o"), ok=False)
    assert r.returncode != 0 and "linear" in r.stderr
    assert not os.path.exists(str(tmp_path / "o"))


def test_damaged_artifacts_are_refused_clearly(tmp_path) -> None:
    d = str(tmp_path)
    make_case("lgb_shallow", d, n_train=500, n_test=20)
    art = os.path.join(d, "m.fgb")
    fraud("import", "--format", "lightgbm", os.path.join(d, "model.txt"), "-o", art)
    ok = fraud("inspect", art).stdout
    assert "trees:" in ok and "num_0" in ok
    data = open(art, "rb").read()
    cases = {
        "truncated": data[: len(data) // 2],
        "corrupted": data[:100] + bytes([data[100] ^ 1]) + data[101:],
        "version": data[:8] + b"\x07\x00\x00\x00" + data[12:],
        "foreign": b"PK\x03\x04 not a model at all",
    }
    for what, blob in cases.items():
        p = os.path.join(d, what + ".fgb")
        open(p, "wb").write(blob)
        for cmd in (["inspect", p], ["predict", "--model", p, "--input", os.path.join(d, "rows.csv")]):
            r = fraud(*cmd, ok=False)
            assert r.returncode == 1, (what, r.stderr)
            assert "panicked" not in r.stderr
            assert {"truncated": "truncated", "corrupted": "checksum", "version": "version 7",
                    "foreign": "not a fraud model"}[what] in r.stderr, (what, r.stderr)


@pytest.mark.parametrize("case", ALL_CASES)
def test_treeshap_matches_library_contributions(case: str, tmp_path) -> None:
    """`fraud predict --contributions` (fraud-core's exact TreeSHAP) against the library's own
    `pred_contribs` / `pred_contrib`: every contribution and the bias within 1e-5."""
    d = str(tmp_path)
    make_case(case, d, seed=4321, n_train=3000, n_test=600)
    fmt, src = ("xgboost", "model.json") if case.startswith("xgb") else ("lightgbm", "model.txt")
    art = os.path.join(d, "model.fgb")
    fraud("import", "--format", fmt, os.path.join(d, src), "-o", art)
    out = os.path.join(d, "contribs_fraud.csv")
    fraud("predict", "--model", art, "--input", os.path.join(d, "rows.csv"),
          "--output", os.path.join(d, "scores.csv"), "--margin", "--contributions", out)
    header, ours = read_csv(out)
    assert header[-1] == "bias"
    theirs = np.loadtxt(os.path.join(d, "contribs.csv"), delimiter=",", ndmin=2)
    if case == "lgb_rf":
        # LightGBM averages a random forest's trees in `predict` but not in `pred_contrib`:
        # its contributions sum to (trees x margin). Ours explain the averaged margin.
        from parity_models import LGB_CASES
        theirs = theirs / LGB_CASES[case][1]
    assert ours.shape == theirs.shape, (ours.shape, theirs.shape)
    diff = np.abs(ours - theirs)
    worst = np.unravel_index(np.argmax(diff), diff.shape)
    assert diff.max() <= 1e-5, f"{case}: worst difference {diff.max():e} at row {worst[0]}, column {header[worst[1]]}"
    # They explain the margin: contributions and bias sum to it.
    _, scores = read_csv(os.path.join(d, "scores.csv"))
    assert np.abs(ours.sum(axis=1) - scores[:, 1]).max() <= 1e-4
