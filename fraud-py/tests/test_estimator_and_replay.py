"""GBDTClassifier as scikit-learn expects it, and features.replay identical to the service's
`fraud features`."""

from __future__ import annotations

import os
import pickle
import subprocess

import numpy as np
import pandas as pd
import pytest

sk = pytest.importorskip("sklearn")
from sklearn.base import clone  # noqa: E402
from sklearn.model_selection import cross_val_score  # noqa: E402
from sklearn.pipeline import Pipeline  # noqa: E402
from sklearn.preprocessing import StandardScaler  # noqa: E402
from sklearn.utils.estimator_checks import parametrize_with_checks  # noqa: E402

import fraudscore  # noqa: E402
from fraudscore import GBDTClassifier  # noqa: E402

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..")
FRAUD = os.environ.get("FRAUD_BIN", os.path.join(ROOT, "target", "debug", "fraud"))


@parametrize_with_checks([GBDTClassifier(n_estimators=10, random_state=0)])
def test_scikit_learn_estimator_checks(estimator, check):
    check(estimator)


def make(n=3000, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, 6))
    y = (X[:, 0] + X[:, 1] * X[:, 2] + rng.normal(scale=0.5, size=n) > 1).astype(int)
    return X, y


def test_pipeline_cross_validation_clone_and_pickle():
    X, y = make()
    pipe = Pipeline([("scale", StandardScaler()), ("gbdt", GBDTClassifier(n_estimators=40, random_state=1))])
    scores = cross_val_score(pipe, X, y, cv=3, scoring="roc_auc")
    assert scores.min() > 0.9
    est = GBDTClassifier(n_estimators=30, learning_rate=0.2)
    c = clone(est)
    assert c.get_params() == est.get_params() and c is not est
    c.set_params(num_leaves=7)
    assert c.num_leaves == 7
    c.fit(X, y)
    again = pickle.loads(pickle.dumps(c))
    np.testing.assert_array_equal(again.predict_proba(X), c.predict_proba(X))
    assert c.feature_importances_.shape == (6,) and abs(c.feature_importances_.sum() - 1) < 1e-9
    assert list(c.classes_) == [0, 1]
    np.testing.assert_array_equal(c.predict(X), (c.predict_proba(X)[:, 1] > 0.5).astype(int))


def test_early_stopping_on_eval_set_and_same_seed_same_model():
    X, y = make(4000, 2)
    a = GBDTClassifier(n_estimators=500, learning_rate=0.3, early_stopping_rounds=10, random_state=3)
    a.fit(X[:3000], y[:3000], eval_set=[(X[3000:], y[3000:])])
    assert a.best_iteration_ is not None and a.best_iteration_ < 500
    assert a.model_.num_trees == a.best_iteration_
    b = GBDTClassifier(n_estimators=500, learning_rate=0.3, early_stopping_rounds=10, random_state=3)
    b.fit(X[:3000], y[:3000], eval_set=[(X[3000:], y[3000:])])
    assert a.model_.to_bytes() == b.model_.to_bytes() or np.array_equal(a.predict_proba(X), b.predict_proba(X))
    # The fitted model explains like any other.
    contrib = a.model_.explain(X[:10])
    np.testing.assert_allclose(contrib.sum(axis=1), a.decision_function(X[:10]), atol=1e-5)


def test_dataframes_and_categorical_columns():
    X, y = make(2000, 4)
    df = pd.DataFrame(X, columns=[f"c{i}" for i in range(6)])
    df["c5"] = np.random.default_rng(0).integers(0, 4, len(df)).astype(float)
    est = GBDTClassifier(n_estimators=20).fit(df, y, categorical_features=["c5"])
    assert list(est.feature_names_in_) == list(df.columns)
    assert est.model_.feature_names == list(df.columns)
    assert est.model_.categorical_features == ["c5"]
    with pytest.raises(ValueError, match="binary"):
        GBDTClassifier().fit(X, np.arange(len(X)) % 3)


def test_replay_is_the_services_feature_pipeline(tmp_path):
    if not os.path.exists(FRAUD):
        pytest.fail(f"the fraud binary is not at {FRAUD} (set FRAUD_BIN)")
    sample = os.path.join(ROOT, "datasets", "samples", "transactions.csv")
    out = tmp_path / "features.csv"
    subprocess.run([FRAUD, "features", "--input", sample, "--output", str(out)], check=True, capture_output=True)
    want = pd.read_csv(out)
    tx = pd.read_csv(sample, dtype=str, keep_default_na=False).replace("", np.nan)
    got = fraudscore.features.replay(tx)
    assert list(got.columns) == list(want.columns[1:])
    np.testing.assert_allclose(got.to_numpy(), want.iloc[:, 1:].to_numpy(dtype=float), rtol=1e-12, atol=1e-12, equal_nan=True)
    # Labels given separately replace the history's own.
    labels = tx.loc[tx.is_fraud == "1", ["transaction_id"]].assign(is_fraud=1, reported_at="2018-04-02T00:00:00Z")
    with_labels = fraudscore.features.replay(tx, labels=labels)
    assert with_labels.shape == got.shape
    with pytest.raises(KeyError):
        fraudscore.features.replay(tx, labels=labels.drop(columns=["is_fraud"]))
    with pytest.raises(ValueError, match="row 1"):
        fraudscore.features.replay(tx.assign(amount="-3"))
    with pytest.raises(TypeError):
        fraudscore.features.replay(tx.to_numpy())


def test_replay_takes_polars_lazyframes_and_arrow_without_a_csv_round_trip(monkeypatch):
    pl = pytest.importorskip("polars")
    pa = pytest.importorskip("pyarrow")
    sample = os.path.join(ROOT, "datasets", "samples", "transactions.csv")
    tx = pd.read_csv(sample, dtype=str, keep_default_na=False).replace("", np.nan)
    want = fraudscore.features.replay(tx)

    # From here on, the CSV path is forbidden: every frame goes through Arrow.
    native = fraudscore.features._fraudscore.replay

    def no_csv(source, *args, **kwargs):
        assert not isinstance(source, bytes), "went through CSV"
        return native(source, *args, **kwargs)

    monkeypatch.setattr(fraudscore.features._fraudscore, "replay", no_csv)
    typed = pd.read_csv(sample, keep_default_na=True)
    typed["timestamp"] = pd.to_datetime(typed["timestamp"], utc=True)
    typed["fraud_reported_at"] = pd.to_datetime(typed["fraud_reported_at"], utc=True)
    frames = {
        "pandas (text)": tx,
        "pandas (typed)": typed,
        "pyarrow": pa.Table.from_pandas(typed, preserve_index=False),
        "polars": pl.from_pandas(typed),
        "polars lazy": pl.from_pandas(typed).lazy(),
        "polars categorical": pl.from_pandas(typed).with_columns(pl.col("merchant_id").cast(pl.Categorical)),
    }
    for name, frame in frames.items():
        got = fraudscore.features.replay(frame)
        values = got.to_numpy()
        assert list(got.columns) == list(want.columns), name
        np.testing.assert_allclose(values, want.to_numpy(), rtol=1e-12, atol=1e-12, equal_nan=True, err_msg=name)
        if name.startswith("polars"):
            assert isinstance(got, pl.DataFrame), name
        else:
            assert isinstance(got, pd.DataFrame), name
    # A pandas frame's index is the answer's index.
    indexed = typed.set_axis(range(100, 100 + len(typed)))
    assert list(fraudscore.features.replay(indexed).index) == list(indexed.index)
    # Naive datetimes are refused unless their offset is given, as in `fraud features --tz`.
    naive = typed.assign(timestamp=typed["timestamp"].dt.tz_localize(None),
                         fraud_reported_at=typed["fraud_reported_at"].dt.tz_localize(None))
    with pytest.raises(ValueError, match="timestamp"):
        fraudscore.features.replay(naive)
    np.testing.assert_allclose(fraudscore.features.replay(naive, tz="UTC").to_numpy(), want.to_numpy(),
                               rtol=1e-12, atol=1e-12, equal_nan=True)
    shifted = fraudscore.features.replay(naive, tz="+02:00")
    assert not np.allclose(shifted["hour"].to_numpy(), want["hour"].to_numpy())
    # Float noise in amounts: refused, or rounded when asked.
    noisy = typed.assign(amount=typed["amount"] + 1e-9)
    with pytest.raises(ValueError, match="amount"):
        fraudscore.features.replay(noisy)
    np.testing.assert_allclose(fraudscore.features.replay(noisy, round_amounts=True).to_numpy(), want.to_numpy(),
                               rtol=1e-12, atol=1e-12, equal_nan=True)
    with pytest.raises(ValueError, match="tz"):
        fraudscore.features.replay(typed, tz="Paris")
    # A polars labels frame works as a pandas one.
    labels = pl.DataFrame({"transaction_id": tx.loc[tx.is_fraud == "1", "transaction_id"].tolist()}).with_columns(
        is_fraud=pl.lit(1), reported_at=pl.lit("2018-04-02T00:00:00Z"))
    via_pl = fraudscore.features.replay(frames["polars"], labels=labels)
    monkeypatch.undo()
    via_pd = fraudscore.features.replay(tx, labels=labels.to_pandas())
    np.testing.assert_allclose(via_pl.to_numpy(), via_pd.to_numpy(), equal_nan=True)


def test_example_end_to_end_makes_a_model_fraud_serve_runs(tmp_path):
    import sys

    out = tmp_path / "model.fgb"
    example = os.path.join(ROOT, "fraud-py", "examples", "end_to_end.py")
    run = subprocess.run([sys.executable, example, "--customers", "300", "--days", "45", "--out", str(out)],
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr
    assert "ROC-AUC" in run.stdout and "top reasons" in run.stdout
    from conftest import serve

    with serve(str(tmp_path / "data"), env={"FRAUD_MODEL": str(out)}) as service:
        answer = service.call("/v1/score", {
            "transaction_id": "e1", "timestamp": "2024-05-01T10:00:00Z", "amount": "950.00",
            "currency": "EUR", "card_token": "tok_" + "ab" * 16, "channel": "ecommerce", "mcc": "5732"})
        assert answer["model_version"] and answer["decision"] in ("approve", "review", "decline")
        assert answer["reasons"]


def test_a_constant_feature_is_trained_around_with_a_warning():
    """Data without some column's variety (no channel, no MCC, ...) trains at the defaults,
    as LightGBM does, instead of failing; the column is named and kept in the model."""
    from fraudscore import GBDTClassifier

    rng = np.random.default_rng(4)
    x = rng.normal(size=(2000, 3))
    x[:, 1] = 7.0
    y = (x[:, 0] + 0.3 * rng.normal(size=2000) > 1.0).astype(int)
    clf = GBDTClassifier(n_estimators=20)
    with pytest.warns(UserWarning, match="constant feature"):
        clf.fit(x, y)
    assert clf.model_.metadata["training"]["constant_features"] == ["f1"]
    assert clf.feature_importances_[1] == 0.0
    assert clf.predict_proba(x).shape == (2000, 2)


def test_defaults_are_the_command_lines_and_the_surface_is_scikit_learns():
    """One default everywhere (reg_lambda=1, as `fraud train`): with 0, weighted PaySim
    scored ROC-AUC 0.498. The usual scikit-learn / LightGBM arguments are there and used."""
    from fraudscore import GBDTClassifier

    assert GBDTClassifier().get_params()["reg_lambda"] == 1.0
    rng = np.random.default_rng(9)
    n = 3000
    x = rng.normal(size=(n, 3))
    y = (x[:, 0] - 0.5 * x[:, 1] + 0.8 * rng.normal(size=n) > 1.8).astype(int)
    xt, yt, xv, yv = x[:2000], y[:2000], x[2000:], y[2000:]
    clf = GBDTClassifier(n_estimators=200, learning_rate=0.3, early_stopping_rounds=5, eval_metric="binary_logloss",
                         class_weight="balanced", reg_alpha=0.1, min_child_weight=1.0, scale_pos_weight=2.0,
                         monotone_constraints={"f0": 1, "f1": -1})
    clf.fit(xt, yt, eval_set=[(xv, yv)])
    hist = clf.evals_result_["valid_0"]["binary_logloss"]
    assert len(hist) >= clf.best_iteration_ and min(hist) == hist[clf.best_iteration_ - 1]
    # Monotone in f0 (up) and f1 (down), whatever the other values.
    grid = np.zeros((50, 3))
    grid[:, 0] = np.linspace(-3, 3, 50)
    p = clf.predict_proba(grid)[:, 1]
    assert (np.diff(p) >= -1e-12).all()
    grid = np.zeros((50, 3))
    grid[:, 1] = np.linspace(-3, 3, 50)
    assert (np.diff(clf.predict_proba(grid)[:, 1]) <= 1e-12).all()
    # Predicting at an iteration: the first n rounds.
    first = clf.predict_proba(xv, iteration=1)[:, 1]
    assert not np.allclose(first, clf.predict_proba(xv)[:, 1])
    assert np.allclose(clf.predict_proba(xv, iteration=clf.model_.num_trees), clf.predict_proba(xv))
    with pytest.raises(ValueError, match="trees"):
        clf.predict_proba(xv, iteration=10_000)
    # Ignored arguments are said.
    with pytest.warns(UserWarning, match="early_stopping_rounds is ignored"):
        GBDTClassifier(n_estimators=5, early_stopping_rounds=3).fit(xt, yt)
    with pytest.warns(UserWarning, match="only the first"):
        GBDTClassifier(n_estimators=5).fit(xt, yt, eval_set=[(xv, yv), (xt, yt)])
    # Category codes must be codes.
    bad = xt.copy()
    bad[:, 2] = np.round(np.abs(bad[:, 2]) * 3)
    bad[7, 2] = 1.5
    with pytest.raises(ValueError, match="non-negative integers"):
        GBDTClassifier(n_estimators=5).fit(bad, yt, categorical_features=[2])
    bad[7, 2] = -1
    with pytest.raises(ValueError, match="non-negative integers"):
        GBDTClassifier(n_estimators=5).fit(bad, yt, categorical_features=[2])
