"""Checked by mypy in the test command (not run): the public API is typed, not `Any`."""

from __future__ import annotations

from typing import Any, assert_type

import numpy as np

import fraudscore
from fraudscore import GBDTClassifier, Model, datasets, features, metrics

clf = GBDTClassifier(n_estimators=10)
assert_type(clf, GBDTClassifier)
assert_type(clf.fit(np.zeros((4, 2)), np.array([0, 1, 0, 1])), GBDTClassifier)
assert_type(clf.predict_proba(np.zeros((1, 2))), np.ndarray)
model = Model.load("model.fgb")
assert_type(model, Model)
assert_type(model.predict(np.zeros((1, 2))), np.ndarray)
assert_type(model.categories, dict[str, list[Any]])
assert_type(fraudscore.from_xgboost("m.json"), Model)
assert_type(fraudscore.default_spec(), str)
assert_type(metrics.roc_auc([0, 1], [0.1, 0.9]), float)
assert_type(metrics.card_precision_at_k([0, 1], [0.1, 0.9], ["a", "b"], [0, 0], 1), tuple[float, list[tuple[int, float]]])
frame, summary = datasets.generate(10, 2, return_summary=True)
assert_type(summary, dict[str, Any])
replayed = features.replay(frame)

import pandas as pd  # noqa: E402
import polars as pl  # noqa: E402

assert_type(replayed, pd.DataFrame)
assert_type(features.replay(pl.DataFrame({"a": [1]}).lazy()), pl.DataFrame)
from fraudscore import _cli  # noqa: E402

assert_type(_cli.main(["--version"]), int)

policy = fraudscore.Policy.from_toml("fraud.toml")
assert_type(policy, fraudscore.Policy)
scorer = fraudscore.Scorer(model, policy)
assert_type(scorer.score({"transaction_id": "t"}), dict[str, Any])
assert_type(scorer.score_many(frame), pd.DataFrame)
