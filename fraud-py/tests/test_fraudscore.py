"""The fraudscore package against the real libraries: imported XGBoost and LightGBM models
predict and explain exactly as their libraries do; inputs of every supported kind; the
errors a user meets; metrics against scikit-learn; the simulator and loaders."""

from __future__ import annotations

import os
import threading

import numpy as np
import pandas as pd
import pytest

import fraudscore
from fraudscore import metrics

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..")


def data(n: int = 3000, m: int = 6, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, m))
    x[rng.random((n, m)) < 0.05] = np.nan
    logit = 1.5 * np.nan_to_num(x[:, 0]) - np.nan_to_num(x[:, 1]) * np.nan_to_num(x[:, 2]) - 2
    y = (rng.random(n) < 1 / (1 + np.exp(-logit))).astype(float)
    return x, y


@pytest.fixture(scope="module")
def xgb_pair():
    xgb = pytest.importorskip("xgboost")
    x, y = data()
    names = [f"f{i}" for i in range(x.shape[1])]
    booster = xgb.train({"objective": "binary:logistic", "max_depth": 4, "eta": 0.3, "nthread": 2, "seed": 1},
                        xgb.DMatrix(x, label=y, feature_names=names), num_boost_round=30)
    return booster, fraudscore.from_xgboost(booster), x, names


def test_xgboost_import_predicts_and_explains_exactly(xgb_pair):
    import xgboost as xgb

    booster, model, x, names = xgb_pair
    d = xgb.DMatrix(x, feature_names=names)
    assert model.feature_names == names
    np.testing.assert_allclose(model.predict(x), booster.predict(d), rtol=0, atol=1e-6)
    np.testing.assert_allclose(model.predict_margin(x), booster.predict(d, output_margin=True), atol=1e-5)
    contrib = model.explain(x)
    assert contrib.shape == (x.shape[0], x.shape[1] + 1)
    np.testing.assert_allclose(contrib, booster.predict(d, pred_contribs=True), atol=1e-5)
    np.testing.assert_allclose(contrib.sum(axis=1), model.predict_margin(x), atol=1e-5)


def test_an_early_stopped_xgboost_model_scores_as_predict_proba(tmp_path):
    """XGBClassifier(early_stopping_rounds) keeps every tree but predicts up to its
    best_iteration: the import must do the same (it differed by up to 0.998 before)."""
    xgb = pytest.importorskip("xgboost")
    x, y = data(n=4000, seed=5)
    flip = np.random.default_rng(6).random(len(y)) < 0.3  # noisy labels: it overfits early
    y = np.where(flip, 1 - y, y)
    clf = xgb.XGBClassifier(n_estimators=300, max_depth=6, learning_rate=0.5, early_stopping_rounds=10,
                            n_jobs=2, random_state=1)
    clf.fit(x[:3000], y[:3000], eval_set=[(x[3000:], y[3000:])], verbose=False)
    booster = clf.get_booster()
    assert clf.best_iteration + 1 < booster.num_boosted_rounds(), "early stopping did not stop early"
    model = fraudscore.from_xgboost(clf)
    np.testing.assert_allclose(model.predict(x), clf.predict_proba(x)[:, 1], rtol=0, atol=1e-6)
    said = model.metadata["attributes"]["fraud_imported_iterations"]
    assert f"0..{clf.best_iteration + 1} of {booster.num_boosted_rounds()}" in said, said
    # Every iteration, when asked, as XGBoost's own iteration_range.
    everything = fraudscore.from_xgboost(clf, iteration_range=(0, 0))
    d = xgb.DMatrix(x)
    np.testing.assert_allclose(everything.predict(x), booster.predict(d, iteration_range=(0, 0)), atol=1e-6)
    part = fraudscore.from_xgboost(clf, iteration_range=(2, 7))
    np.testing.assert_allclose(part.predict_margin(x), booster.predict(d, iteration_range=(2, 7), output_margin=True),
                               atol=1e-5)
    # The same through a saved file and the command line, which says what it imported.
    path = tmp_path / "es.json"
    booster.save_model(str(path))
    np.testing.assert_allclose(fraudscore.from_xgboost(str(path)).predict(x), clf.predict_proba(x)[:, 1], atol=1e-6)
    fraud = os.environ.get("FRAUD_BIN")
    if fraud:
        import subprocess

        out = subprocess.run([fraud, "import", "--format", "xgboost", str(path), "-o", str(tmp_path / "es.fgb")],
                             capture_output=True, text=True, check=True).stdout
        assert f"best_iteration {clf.best_iteration}" in out, out
        shown = subprocess.run([fraud, "inspect", str(tmp_path / "es.fgb")], capture_output=True, text=True,
                               check=True).stdout
        assert "imported:" in shown and "best_iteration" in shown, shown


def test_lightgbm_import_predicts_exactly(tmp_path):
    lgb = pytest.importorskip("lightgbm")
    x, y = data(seed=3)
    booster = lgb.train({"objective": "binary", "num_leaves": 15, "verbose": -1, "num_threads": 2, "seed": 1},
                        lgb.Dataset(x, label=y), num_boost_round=25)
    model = fraudscore.from_lightgbm(booster)
    np.testing.assert_allclose(model.predict(x), booster.predict(x), atol=1e-6)
    np.testing.assert_allclose(model.explain(x), booster.predict(x, pred_contrib=True), atol=1e-5)
    path = tmp_path / "model.txt"
    booster.save_model(str(path))
    np.testing.assert_array_equal(fraudscore.from_lightgbm(path).predict(x), model.predict(x))


def test_every_input_layout_gives_the_same_answer(xgb_pair):
    _, model, x, names = xgb_pair
    want = model.predict(x)
    np.testing.assert_array_equal(model.predict(np.asfortranarray(x)), want)
    np.testing.assert_array_equal(model.predict(x[::1, :].copy(order="C")), want)
    np.testing.assert_array_equal(model.predict(x.astype(np.float32)), model.predict(x.astype(np.float32).astype(np.float64)))
    np.testing.assert_array_equal(model.predict(x[::2]), want[::2])  # strided view
    df = pd.DataFrame(x, columns=names)
    shuffled = df[names[::-1]].assign(extra=1.0)
    np.testing.assert_array_equal(model.predict(shuffled), want)
    explained = model.explain(shuffled)
    assert list(explained.columns) == [*names, "bias"]
    assert (explained.index == df.index).all()
    # Threads share a model; the GIL is released while it works.
    out = [None] * 4
    def work(i: int) -> None:
        out[i] = model.predict(x)
    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for o in out:
        np.testing.assert_array_equal(o, want)


def test_errors_are_python_exceptions_with_clear_messages(xgb_pair, tmp_path):
    _, model, x, names = xgb_pair
    with pytest.raises(ValueError, match="X has 3 columns; the model has 6 features"):
        model.predict(x[:, :3])
    with pytest.raises(ValueError, match="1-D"):
        model.predict(x[0])
    with pytest.raises(KeyError, match="f5"):
        model.predict(pd.DataFrame(x[:, :5], columns=names[:5]))
    with pytest.raises(TypeError):
        model.predict(np.array([["a"] * 6]))
    with pytest.raises(FileNotFoundError):
        fraudscore.Model.load(tmp_path / "absent.fgb")
    bad = tmp_path / "bad.fgb"
    bad.write_bytes(b"not a model at all")
    with pytest.raises(ValueError, match="not a valid model"):
        fraudscore.Model.load(bad)
    good = tmp_path / "good.fgb"
    model.save(good)
    damaged = bytearray(good.read_bytes())
    damaged[len(damaged) // 2] ^= 0xFF
    bad.write_bytes(bytes(damaged))
    with pytest.raises(ValueError):
        fraudscore.Model.load(bad)
    with pytest.raises(ValueError, match="XGBoost"):
        fraudscore._fraudscore._Model.from_xgboost_json(b"{}")


def test_save_load_and_metadata(xgb_pair, tmp_path):
    _, model, x, _ = xgb_pair
    p = tmp_path / "m.fgb"
    model.save(p)
    again = fraudscore.Model.load(p)
    np.testing.assert_array_equal(again.predict(x), model.predict(x))
    assert fraudscore.Model.from_bytes(model.to_bytes()).feature_names == model.feature_names
    assert model.metadata["source"].startswith("xgboost")
    assert model.num_trees == 30
    assert "30 trees" in repr(model)


def test_demo_model_scores_simulated_data():
    model = fraudscore.Model.load(os.path.join(ROOT, "datasets", "demo", "model.fgb"))
    assert len(model.feature_names) == 68
    assert model.metadata["feature_spec"] is not None
    assert "channel" in model.categorical_features


def test_metrics_match_scikit_learn():
    sk = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(5)
    y = (rng.random(2000) < 0.1).astype(float)
    s = np.round(rng.random(2000) * 0.5 + 0.4 * y, 2)  # ties on purpose
    w = rng.random(2000) + 0.5
    assert metrics.roc_auc(y, s) == pytest.approx(sk.roc_auc_score(y, s), abs=1e-12)
    assert metrics.average_precision(y, s) == pytest.approx(sk.average_precision_score(y, s), abs=1e-12)
    assert metrics.roc_auc(y, s, w) == pytest.approx(sk.roc_auc_score(y, s, sample_weight=w), abs=1e-12)
    fpr, tpr, thr = sk.roc_curve(y, s)
    assert metrics.recall_at_fpr(y, s, 0.05) == pytest.approx(tpr[fpr <= 0.05].max(), abs=1e-12)
    order = np.argsort(-s, kind="stable")
    assert metrics.precision_at_k(y, s, 100) == pytest.approx(y[order[:100]].mean(), abs=0.02)
    mean, per_day = metrics.card_precision_at_k([1, 0, 0, 1], [0.9, 0.8, 0.1, 0.2], ["a", "b", "c", "c"], [0, 0, 0, 1], 2)
    assert per_day == [(0, 0.5), (1, 0.5)] and mean == 0.5
    assert metrics.population_stability_index(rng.normal(size=5000), rng.normal(size=5000)) < 0.05
    assert metrics.population_stability_index(rng.normal(size=5000), rng.normal(2, 1, size=5000)) > 0.25
    with pytest.raises(ValueError, match="0 or 1"):
        metrics.roc_auc([0, 2], [0.1, 0.2])
    with pytest.raises(ValueError, match="1-D"):
        metrics.roc_auc([[0, 1]], [[0.1, 0.2]])


def _handbook_card_precision(df: pd.DataFrame, k: int) -> float:
    """The Fraud Detection Handbook's card_precision_top_k (remove_detected_compromised_cards
    True), written as the book does, as an independent oracle."""
    detected: list = []
    per_day = []
    for day in sorted(df["day"].unique()):
        d = df[df["day"] == day].groupby("card")[["score", "fraud"]].max().reset_index()
        d = d[~d["card"].isin(detected)]
        d = d.sort_values(by=["score", "card"], ascending=[False, True]).head(k)
        found = list(d[d["fraud"] == 1]["card"])
        detected.extend(found)
        per_day.append(len(found) / k)
    return float(np.mean(per_day))


def test_card_precision_is_the_handbooks_and_takes_timestamps():
    rng = np.random.default_rng(11)
    n = 6000
    df = pd.DataFrame({
        "card": rng.integers(0, 300, n).astype(str),
        "day": rng.integers(0, 20, n),
        "score": rng.random(n),
    })
    df["fraud"] = (rng.random(n) < 0.05 + 0.4 * (df["card"].astype(int) < 15)).astype(int)
    mean, days = metrics.card_precision_at_k(df["fraud"], df["score"], df["card"], df["day"], k=10)
    assert mean == pytest.approx(_handbook_card_precision(df, 10), abs=1e-12)
    assert len(days) == 20
    kept, _ = metrics.card_precision_at_k(df["fraud"], df["score"], df["card"], df["day"], k=10,
                                          remove_detected=False)
    assert kept > mean, "keeping detected cards reads higher on repeat offenders"
    # Days as pandas Timestamps (and datetimes) give the same as day numbers.
    stamps = pd.Timestamp("2018-04-01") + pd.to_timedelta(df["day"], unit="D") + pd.Timedelta(hours=13)
    assert metrics.card_precision_at_k(df["fraud"], df["score"], df["card"], stamps, k=10)[0] == mean
    assert metrics.card_precision_at_k(df["fraud"], df["score"], df["card"], list(stamps.dt.to_pydatetime()),
                                       k=10)[0] == mean


def test_recall_at_fpr_refuses_a_percentage():
    y = np.array([0, 1, 0, 1, 0, 0])
    s = np.array([0.1, 0.9, 0.2, 0.8, 0.3, 0.4])
    for bad in [5, 1.0, 0.0, -0.01, float("nan")]:
        with pytest.raises(ValueError, match="between 0 and 1"):
            metrics.recall_at_fpr(y, s, bad)
    assert metrics.recall_at_fpr(y, s, 0.25) == 1.0


def test_simulator_is_deterministic_and_labelled():
    a, summary = fraudscore.datasets.generate(300, 20, seed=4, return_summary=True)
    b = fraudscore.datasets.generate(300, 20, seed=4)
    pd.testing.assert_frame_equal(a, b)
    assert len(a) == summary["transactions"]
    assert int(a["is_fraud"].sum()) == summary["frauds"]
    assert set(a["fraud_scenario"].unique()) <= set(range(7))
    assert (a.loc[a.is_fraud == 1, "fraud_reported_at"].notna()).all()
    c = fraudscore.datasets.generate(300, 20, seed=5)
    assert not a.equals(c)
    only = fraudscore.datasets.generate(300, 20, seed=4, scenarios=["card_testing"])
    assert set(only.loc[only.is_fraud == 1, "fraud_scenario"]) == {4}
    with pytest.raises(ValueError, match="unknown fraud scenario"):
        fraudscore.datasets.generate(10, 2, scenarios=["nope"])
    with pytest.raises(ValueError, match="days"):
        fraudscore.datasets.generate(10, 0)


def test_loaders_read_public_formats(tmp_path):
    fixtures = os.path.join(ROOT, "datasets", "tests", "fixtures")
    ps = fraudscore.datasets.load("paysim", os.path.join(fixtures, "paysim_small.csv.gz"), legit_weight=2.0)
    assert len(ps) == 6 and ps["is_fraud"].sum() == 3
    assert ps.loc[ps.is_fraud == 0, "weight"].eq(2.0).all()
    sp = fraudscore.datasets.load("sparkov", os.path.join(fixtures, "sparkov_small.csv"), key=b"k" * 32)
    cards = open(os.path.join(fixtures, "sparkov_cards.txt")).read().split()
    assert not sp.astype(str).apply(lambda col: col.str.contains("|".join(cards))).any().any()
    assert sp["card_token"].str.startswith("tok_").all()
    with pytest.raises(ValueError, match="not a ULB"):
        fraudscore.datasets.load("ulb", os.path.join(fixtures, "paysim_small.csv"))
    with pytest.raises(ValueError, match="tokenization key"):
        fraudscore.datasets.load("sparkov", os.path.join(fixtures, "sparkov_small.csv"))
    with pytest.raises(FileNotFoundError):
        fraudscore.datasets.load("ulb", tmp_path / "absent.csv")


def test_help_is_useful():
    assert "TreeSHAP" in fraudscore.Model.explain.__doc__
    assert fraudscore.metrics.card_precision_at_k.__doc__
    assert os.path.exists(os.path.join(os.path.dirname(fraudscore.__file__), "py.typed"))


def test_plots_draw_real_charts():
    matplotlib = pytest.importorskip("matplotlib")
    matplotlib.use("Agg")
    import io

    import matplotlib.pyplot as plt

    from fraudscore import plot

    rng = np.random.default_rng(2)
    y = (rng.random(1000) < 0.2).astype(int)
    s = np.clip(rng.random(1000) * 0.6 + 0.3 * y, 0, 1)
    for draw in (plot.roc_curve, plot.precision_recall_curve, plot.score_distribution):
        ax = draw(y, s)
        buf = io.BytesIO()
        ax.figure.savefig(buf, format="png")
        assert buf.getvalue().startswith(b"\x89PNG") and len(buf.getvalue()) > 5000
        assert ax.get_title()
        plt.close(ax.figure)
    ax = plot.feature_importance(["a", "b", "c"], [0.2, 0.5, 0.3])
    # Largest at the top: bars from the bottom are a (0.2), c (0.3), b (0.5).
    assert [t.get_text() for t in ax.get_yticklabels()] == ["a", "c", "b"]
    assert [round(p.get_width(), 3) for p in ax.patches] == [0.2, 0.3, 0.5]
    plt.close(ax.figure)
    x, _ = data(50)
    model = fraudscore.from_xgboost(pytest.importorskip("xgboost").train(
        {"objective": "binary:logistic", "max_depth": 2}, pytest.importorskip("xgboost").DMatrix(x, label=(x[:, 0] > 0).astype(float)), 5))
    contrib = model.explain(pd.DataFrame(x, columns=model.feature_names))
    ax = plot.shap_summary(contrib.iloc[[0]])
    assert len(ax.patches) == 6
    plt.close(ax.figure)
    with pytest.raises(ValueError, match="both classes"):
        plot.roc_curve([0, 0], [0.1, 0.2])
    with pytest.raises(ValueError, match="one transaction"):
        plot.shap_summary(contrib.iloc[:2])


def test_polars_input_matched_by_name(xgb_pair):
    pl = pytest.importorskip("polars")
    _, model, x, names = xgb_pair
    frame = pl.DataFrame({n: x[:, i] for i, n in enumerate(names)}).select(names[::-1])
    np.testing.assert_array_equal(model.predict(frame), model.predict(x))


def _categorical_frame(n: int, seed: int) -> tuple[pd.DataFrame, np.ndarray]:
    rng = np.random.default_rng(seed)
    kinds = ["CASH_IN", "CASH_OUT", "DEBIT", "PAYMENT", "TRANSFER"]
    df = pd.DataFrame({
        "amount": rng.lognormal(4, 1, n),
        "type": pd.Categorical(rng.choice(kinds, n, p=[0.2, 0.3, 0.05, 0.3, 0.15]), categories=kinds),
        "step": rng.integers(0, 50, n).astype(float),
    })
    logit = -3 + 2.5 * df["type"].isin(["TRANSFER", "CASH_OUT"]) + 0.01 * (df["amount"] - 50)
    y = (rng.random(n) < 1 / (1 + np.exp(-logit))).astype(int)
    return df, y


def test_categorical_models_score_frames_by_value():
    """A model trained on a pandas category column scores any frame by value: the same
    frame, a batch whose categories were inferred again (where `.cat.codes` differ), a
    polars frame, and an unseen category (missing, as both libraries). It failed with
    `could not convert string to float`, and `.cat.codes` was silently wrong (up to 0.997)."""
    xgb = pytest.importorskip("xgboost")
    lgb = pytest.importorskip("lightgbm")
    df, y = _categorical_frame(4000, 21)
    batch = df[df["type"] != "CASH_IN"].iloc[:300].copy()
    batch["type"] = pd.Categorical(batch["type"].astype(str))  # categories inferred again: codes shift
    assert (batch["type"].cat.codes.to_numpy() != df.loc[batch.index, "type"].cat.codes.to_numpy()).all()
    unseen = df.iloc[:4].copy()
    unseen["type"] = pd.Categorical(["TRANSFER", "REFUND", None, "CASH_OUT"])
    xclf = xgb.XGBClassifier(n_estimators=30, max_depth=4, enable_categorical=True, tree_method="hist",
                             n_jobs=2, random_state=0).fit(df, y)
    lclf = lgb.LGBMClassifier(n_estimators=30, num_leaves=15, verbose=-1, n_jobs=2, random_state=0).fit(df, y)
    for clf, model in [(xclf, fraudscore.from_xgboost(xclf)), (lclf, fraudscore.from_lightgbm(lclf))]:
        assert model.categories["type"] == ["CASH_IN", "CASH_OUT", "DEBIT", "PAYMENT", "TRANSFER"]
        for frame in (df, batch, unseen):
            np.testing.assert_allclose(model.predict(frame), clf.predict_proba(frame)[:, 1], atol=1e-6)
        # Codes of another encoding are refused, not scored silently wrong.
        codes = batch.assign(type=batch["type"].cat.codes)
        with pytest.raises(TypeError, match="not codes"):
            model.predict(codes)
    # The command line reads the same values from a CSV file.
    fraud = os.environ.get("FRAUD_BIN")
    if fraud:
        import subprocess
        import tempfile

        with tempfile.TemporaryDirectory() as d:
            fraudscore.from_lightgbm(lclf).save(os.path.join(d, "m.fgb"))
            batch.to_csv(os.path.join(d, "b.csv"), index=False)
            subprocess.run([fraud, "predict", "--model", os.path.join(d, "m.fgb"), "--input",
                            os.path.join(d, "b.csv"), "--output", os.path.join(d, "s.csv")], check=True)
            scores = pd.read_csv(os.path.join(d, "s.csv"))["score"].to_numpy()
        np.testing.assert_allclose(scores, lclf.predict_proba(batch)[:, 1], atol=1e-6)
    pl = pytest.importorskip("polars")
    model = fraudscore.from_lightgbm(lclf)
    polars_batch = pl.DataFrame({
        "amount": batch["amount"].to_numpy(),
        "type": pl.Series(batch["type"].astype(str).tolist(), dtype=pl.Categorical),
        "step": batch["step"].to_numpy(),
    })
    np.testing.assert_allclose(model.predict(polars_batch), lclf.predict_proba(batch)[:, 1], atol=1e-6)
    # The engine's own trainer keeps the frame's categories the same way.
    from fraudscore import GBDTClassifier

    own = GBDTClassifier(n_estimators=30, random_state=0).fit(df, y)
    assert own.model_.categories["type"] == list(df["type"].cat.categories)
    np.testing.assert_allclose(own.predict_proba(batch)[:, 1], own.predict_proba(df.loc[batch.index])[:, 1])
    np.testing.assert_allclose(own.model_.predict(batch), own.predict_proba(batch)[:, 1])
    strings = df.assign(type=df["type"].astype(str))
    np.testing.assert_allclose(own.predict_proba(strings.loc[batch.index])[:, 1], own.predict_proba(batch)[:, 1])
    np.testing.assert_allclose(own.predict_proba(polars_batch)[:, 1], own.predict_proba(batch)[:, 1])


def test_a_notebook_model_carries_its_feature_spec(tmp_path, xgb_pair):
    spec = fraudscore.default_spec()
    assert "[[windows]]" in spec or "windows" in spec
    demo = fraudscore.Model.load(os.path.join(ROOT, "datasets", "demo", "model.fgb"))
    demo.save(tmp_path / "m.fgb", feature_spec=spec)
    back = fraudscore.Model.load(tmp_path / "m.fgb")
    assert back.metadata["feature_spec"], "the spec is in the artifact"
    (tmp_path / "spec.toml").write_text(spec)
    demo.save(tmp_path / "m2.fgb", feature_spec=tmp_path / "spec.toml")
    # A model whose features the spec does not produce is refused by name.
    _, model, _, _ = xgb_pair
    with pytest.raises(ValueError, match="not produced by the feature spec"):
        model.save(tmp_path / "x.fgb", feature_spec=spec)
    # A spec path that does not exist says so (it is not read as TOML).
    with pytest.raises(FileNotFoundError, match="does not exist"):
        demo.save(tmp_path / "y.fgb", feature_spec=tmp_path / "nope.toml")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        fraudscore.features.replay(pd.DataFrame({"transaction_id": ["a"]}), spec="specs/missing.toml")


def test_explanations_as_data_scientists_use_them(xgb_pair):
    """A global summary plot over many rows; explain returns a frame of the input's kind
    (polars in, polars out) or shap's Explanation."""
    matplotlib = pytest.importorskip("matplotlib")
    matplotlib.use("Agg")
    import io

    import matplotlib.pyplot as plt

    from fraudscore import plot

    pl = pytest.importorskip("polars")
    _, model, x, names = xgb_pair
    frame = pl.DataFrame({n: x[:500, i] for i, n in enumerate(names)})
    contrib = model.explain(frame)
    assert isinstance(contrib, pl.DataFrame)
    assert contrib.columns == [*names, "bias"]
    np.testing.assert_allclose(contrib.to_numpy(), model.explain(x[:500]), atol=0)
    np.testing.assert_allclose(contrib.to_numpy().sum(axis=1), model.predict_margin(x[:500]), atol=1e-5)
    assert isinstance(model.explain(frame, output="numpy"), np.ndarray)
    with pytest.raises(ValueError, match="output"):
        model.explain(frame, output="table")
    ax = plot.shap_global(contrib, frame, top=4)
    labels = [t.get_text() for t in ax.get_yticklabels()]
    mean_abs = np.abs(contrib.to_numpy()[:, :-1]).mean(axis=0)
    assert labels[::-1] == [names[i] for i in np.argsort(-mean_abs, kind="stable")[:4]]
    assert len(ax.collections) == 4 and all(len(c.get_offsets()) == 500 for c in ax.collections)
    buf = io.BytesIO()
    ax.figure.savefig(buf, format="png")
    assert buf.getvalue().startswith(b"\x89PNG")
    plt.close(ax.figure)
    try:
        import shap
    except ImportError:  # optional: the error says what to install
        with pytest.raises(ImportError, match="pip install shap"):
            model.explain(x[:20], output="shap")
        return
    e = model.explain(x[:20], output="shap")
    assert isinstance(e, shap.Explanation) and e.values.shape == (20, len(names))


def test_fraud_command_installed_with_the_package(tmp_path):
    """`pip install fraudscore` puts the `fraud` command beside the interpreter: the engine's
    command line, run in process, with its exit codes."""
    import shutil
    import subprocess
    import sys

    exe = shutil.which("fraud", path=os.path.dirname(sys.executable))
    assert exe is not None, "the package did not install the fraud command"
    out = subprocess.run([exe, "--version"], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == f"fraud {fraudscore.__version__}"
    # An error is one line on stderr and exit code 1; a usage error is exit code 2.
    bad = subprocess.run([exe, "inspect", str(tmp_path / "missing.fgb")], capture_output=True, text=True)
    assert bad.returncode == 1 and "missing.fgb" in bad.stderr, bad
    usage = subprocess.run([exe, "no-such-command"], capture_output=True, text=True)
    assert usage.returncode == 2 and "no-such-command" in usage.stderr
    # A real command: generate a small history, written where asked.
    csv = tmp_path / "h.csv"
    subprocess.run([exe, "generate", "--customers", "20", "--days", "3", "--seed", "3", "--output", str(csv)],
                   capture_output=True, text=True, check=True)
    assert csv.read_text().startswith("transaction_id,")
    # The module entry point is the same command.
    again = subprocess.run([sys.executable, "-m", "fraudscore._cli", "--version"], capture_output=True, text=True)
    assert again.returncode == 0 and again.stdout.strip() == out.stdout.strip()
