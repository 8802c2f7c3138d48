"""A scikit-learn estimator over the engine's trainer: :class:`GBDTClassifier` (binary
classification with histogram gradient boosting, the same trainer as ``fraud train``). It
works in ``Pipeline``, ``cross_val_score``, ``clone`` and grid searches."""

from __future__ import annotations

import warnings

from typing import Any, Sequence

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.utils.multiclass import type_of_target
from sklearn.utils.validation import check_is_fitted, validate_data

from . import Model, _fraudscore

__all__ = ["GBDTClassifier"]


class GBDTClassifier(ClassifierMixin, BaseEstimator):
    """Gradient-boosted trees for binary classification (fraud / not fraud).

    Parameters follow LightGBM's scikit-learn names. ``fit`` accepts ``sample_weight``,
    ``eval_set=[(X_valid, y_valid)]`` (with ``early_stopping_rounds``: training stops when
    the validation metric has not improved for that many rounds, and the best round is kept)
    and ``categorical_features`` (column indices or names split as categories).

    After fitting: ``model_`` (a :class:`fraudscore.Model`, for ``explain``, ``save``, ...),
    ``classes_``, ``n_features_in_``, ``feature_names_in_`` (DataFrame input),
    ``feature_importances_`` (total split gain, normalised), ``best_iteration_``.
    """

    def __init__(
        self,
        n_estimators: int = 100,
        learning_rate: float = 0.1,
        num_leaves: int = 31,
        max_depth: int = -1,
        min_child_samples: int = 20,
        reg_lambda: float = 0.0,
        subsample: float = 1.0,
        colsample_bytree: float = 1.0,
        max_bin: int = 255,
        early_stopping_rounds: int | None = None,
        random_state: int | None = None,
        n_jobs: int | None = None,
    ) -> None:
        self.n_estimators = n_estimators
        self.learning_rate = learning_rate
        self.num_leaves = num_leaves
        self.max_depth = max_depth
        self.min_child_samples = min_child_samples
        self.reg_lambda = reg_lambda
        self.subsample = subsample
        self.colsample_bytree = colsample_bytree
        self.max_bin = max_bin
        self.early_stopping_rounds = early_stopping_rounds
        self.random_state = random_state
        self.n_jobs = n_jobs

    def __sklearn_tags__(self) -> Any:
        tags = super().__sklearn_tags__()
        tags.classifier_tags.multi_class = False
        tags.input_tags.allow_nan = True
        return tags

    def _params(self) -> list[tuple[str, str]]:
        p = {
            "num_iterations": self.n_estimators,
            "learning_rate": self.learning_rate,
            "num_leaves": self.num_leaves,
            "max_depth": self.max_depth,
            "min_data_in_leaf": self.min_child_samples,
            "lambda_l2": self.reg_lambda,
            "bagging_fraction": self.subsample,
            "feature_fraction": self.colsample_bytree,
            "max_bin": self.max_bin,
            "seed": 0 if self.random_state is None else int(self.random_state),
        }
        if self.subsample < 1.0:
            p["bagging_freq"] = 1
        if self.early_stopping_rounds:
            p["early_stopping_round"] = int(self.early_stopping_rounds)
        return [(k, str(v)) for k, v in p.items()]

    def _labels(self, y: Any) -> np.ndarray:
        kind = type_of_target(y, input_name="y", raise_unknown=True)
        if kind not in ("binary", "unary"):
            raise ValueError(f"Only binary classification is supported: y is {kind}")
        return y

    def fit(self, X: Any, y: Any, sample_weight: Any = None, eval_set: Sequence[tuple[Any, Any]] | None = None,
            categorical_features: Sequence[int | str] | None = None) -> "GBDTClassifier":
        """Trains on ``X`` (numbers; NaN is missing) and the binary labels ``y``."""
        X, y = validate_data(self, X, y, dtype=np.float64, ensure_all_finite="allow-nan", order="C")
        self._labels(y)
        self.classes_ = np.unique(y)
        if len(self.classes_) != 2:
            raise ValueError(f"y needs two classes to train on; got {len(self.classes_)} class")
        target = (y == self.classes_[1]).astype(np.float64)
        names = [str(c) for c in getattr(self, "feature_names_in_", [f"f{i}" for i in range(X.shape[1])])]
        cats: list[str] = []
        for c in categorical_features or []:
            cats.append(names[c] if isinstance(c, (int, np.integer)) else str(c))
        w = None
        if sample_weight is not None:
            w = np.ascontiguousarray(np.asarray(sample_weight, dtype=np.float64))
            if w.shape != (X.shape[0],):
                raise ValueError(f"sample_weight has shape {w.shape}; expected ({X.shape[0]},)")
            if not np.all(np.isfinite(w)) or (w < 0).any():
                raise ValueError("sample_weight must be finite and non-negative")
            if not (w > 0).any():
                raise ValueError("all sample weights are zero: nothing to train on")
        valid = None
        if eval_set:
            vx, vy = eval_set[0]
            vx = validate_data(self, vx, reset=False, dtype=np.float64, ensure_all_finite="allow-nan", order="C")
            valid = (np.ascontiguousarray(vx), (np.asarray(vy) == self.classes_[1]).astype(np.float64))
        native, best, importance = _fraudscore.train(
            np.ascontiguousarray(X), target, w, names, cats, self._params(), valid,
            0 if self.n_jobs in (None, -1) else int(self.n_jobs),
        )
        self.model_ = Model(native)
        self.best_iteration_ = best
        constant = (self.model_.metadata.get("training") or {}).get("constant_features") or []
        if constant:
            warnings.warn(
                f"{len(constant)} constant feature(s) (one value or all missing in the training data), "
                f"kept in the model and never split on: {', '.join(constant)}",
                UserWarning, stacklevel=2,
            )
        gains = np.array([g for (_, _, g) in importance], dtype=np.float64)
        total = gains.sum()
        self.feature_importances_ = gains / total if total > 0 else np.zeros_like(gains)
        return self

    def predict_proba(self, X: Any) -> np.ndarray:
        """Probabilities of each class, shape (rows, 2)."""
        check_is_fitted(self)
        X = validate_data(self, X, reset=False, dtype=np.float64, ensure_all_finite="allow-nan", order="C")
        p = self.model_._m.predict(X)
        return np.column_stack([1.0 - p, p])

    def predict(self, X: Any) -> np.ndarray:
        """The more likely class of each row."""
        p = self.predict_proba(X)[:, 1]
        return self.classes_[(p > 0.5).astype(int)]

    def decision_function(self, X: Any) -> np.ndarray:
        """The margin (log-odds of the second class)."""
        check_is_fitted(self)
        X = validate_data(self, X, reset=False, dtype=np.float64, ensure_all_finite="allow-nan", order="C")
        return self.model_._m.predict_margin(X)
