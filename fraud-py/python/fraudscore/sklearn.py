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

    Parameters follow LightGBM's scikit-learn names, with the same defaults as ``fraud train``
    (one default everywhere: ``reg_lambda=1.0``, which keeps leaves with few positives from
    exploding on imbalanced or weighted data). ``fit`` accepts ``sample_weight``,
    ``eval_set=[(X_valid, y_valid)]`` (with ``early_stopping_rounds``: training stops when
    the validation metric, ``eval_metric``, has not improved for that many rounds, and the
    best round is kept) and ``categorical_features`` (column indices or names split as
    categories). ``class_weight`` (``"balanced"`` or ``{class: weight}``) and
    ``scale_pos_weight`` weigh the classes; ``monotone_constraints`` (one of -1, 0, 1 per
    feature, or ``{name: constraint}``) bounds how the score may move with a feature;
    ``verbose`` (n > 0) prints the round, time and validation metric every n rounds.
    Arguments that would be ignored are warned about.

    After fitting: ``model_`` (a :class:`fraudscore.Model`, for ``explain``, ``save``, ...),
    ``classes_``, ``n_features_in_``, ``feature_names_in_`` (DataFrame input),
    ``feature_importances_`` (total split gain, normalised), ``best_iteration_``,
    ``evals_result_`` (``{"valid_0": {metric: [value per round]}}`` with an eval set).
    ``predict_proba(X, iteration=n)`` predicts with the first ``n`` rounds.
    """

    def __init__(
        self,
        n_estimators: int = 100,
        learning_rate: float = 0.1,
        num_leaves: int = 31,
        max_depth: int = -1,
        min_child_samples: int = 20,
        min_child_weight: float = 1e-3,
        reg_lambda: float = 1.0,
        reg_alpha: float = 0.0,
        subsample: float = 1.0,
        colsample_bytree: float = 1.0,
        max_bin: int = 255,
        scale_pos_weight: float = 1.0,
        class_weight: str | dict[Any, float] | None = None,
        monotone_constraints: Sequence[int] | dict[str, int] | None = None,
        eval_metric: str | None = None,
        early_stopping_rounds: int | None = None,
        verbose: int = 0,
        random_state: int | None = None,
        n_jobs: int | None = None,
    ) -> None:
        self.n_estimators = n_estimators
        self.learning_rate = learning_rate
        self.num_leaves = num_leaves
        self.max_depth = max_depth
        self.min_child_samples = min_child_samples
        self.min_child_weight = min_child_weight
        self.reg_lambda = reg_lambda
        self.reg_alpha = reg_alpha
        self.subsample = subsample
        self.colsample_bytree = colsample_bytree
        self.max_bin = max_bin
        self.scale_pos_weight = scale_pos_weight
        self.class_weight = class_weight
        self.monotone_constraints = monotone_constraints
        self.eval_metric = eval_metric
        self.early_stopping_rounds = early_stopping_rounds
        self.verbose = verbose
        self.random_state = random_state
        self.n_jobs = n_jobs

    def __sklearn_tags__(self) -> Any:
        tags = super().__sklearn_tags__()
        tags.classifier_tags.multi_class = False
        tags.input_tags.allow_nan = True
        return tags

    def _params(self, names: list[str], with_valid: bool) -> list[tuple[str, str]]:
        p: dict[str, Any] = {
            "num_iterations": self.n_estimators,
            "learning_rate": self.learning_rate,
            "num_leaves": self.num_leaves,
            "max_depth": self.max_depth,
            "min_data_in_leaf": self.min_child_samples,
            "min_sum_hessian_in_leaf": self.min_child_weight,
            "lambda_l2": self.reg_lambda,
            "lambda_l1": self.reg_alpha,
            "bagging_fraction": self.subsample,
            "feature_fraction": self.colsample_bytree,
            "max_bin": self.max_bin,
            "scale_pos_weight": self.scale_pos_weight,
            "seed": 0 if self.random_state is None else int(self.random_state),
        }
        if self.subsample < 1.0:
            p["bagging_freq"] = 1
        if self.early_stopping_rounds:
            if with_valid:
                p["early_stopping_round"] = int(self.early_stopping_rounds)
            else:
                warnings.warn("early_stopping_rounds is ignored without an eval_set: every round is trained",
                              UserWarning, stacklevel=3)
        if self.eval_metric is not None:
            if self.eval_metric not in ("auc", "binary_logloss", "logloss"):
                raise ValueError(f"eval_metric is {self.eval_metric!r}; expected 'auc' or 'binary_logloss'")
            if with_valid:
                p["metric"] = self.eval_metric
            else:
                warnings.warn("eval_metric is ignored without an eval_set", UserWarning, stacklevel=3)
        if self.monotone_constraints is not None:
            mc = self.monotone_constraints
            if isinstance(mc, dict):
                unknown = [k for k in mc if str(k) not in names]
                if unknown:
                    raise ValueError(f"monotone_constraints names unknown features: {unknown}")
                values = [int(mc.get(n, 0)) for n in names]
            else:
                values = [int(v) for v in mc]
                if len(values) != len(names):
                    raise ValueError(f"monotone_constraints has {len(values)} values for {len(names)} features")
            if any(v not in (-1, 0, 1) for v in values):
                raise ValueError("monotone_constraints values must be -1, 0 or 1")
            p["monotone_constraints"] = ",".join(str(v) for v in values)
        return [(k, str(v)) for k, v in p.items()]

    def _encode(self, X: Any, fitting: bool) -> tuple[Any, dict[str, list[Any]]]:
        """A DataFrame's category columns replaced by their codes (a pandas DataFrame of
        floats for the rest of sklearn's checks). Fitting: the categories come from the frame
        (a pandas category's own order; otherwise the sorted distinct values); afterwards,
        from the model, value by value (unseen or missing: NaN)."""
        from . import _category_key, _codes

        is_polars = hasattr(X, "select") and not hasattr(X, "loc")
        if not (is_polars or hasattr(X, "dtypes") and hasattr(X, "loc")):
            return X, {}
        import pandas as pd

        if is_polars:
            import polars as pl

            kinds = {name: dt for name, dt in X.schema.items()}
            cat_cols = [n for n, dt in kinds.items()
                        if dt in (pl.Categorical, pl.Utf8) or isinstance(dt, (pl.Categorical, pl.Enum))]
            # Column by column (no pyarrow needed): categories as Python values.
            frame = pd.DataFrame({
                n: (X.get_column(n).to_list() if n in cat_cols else X.get_column(n).cast(pl.Float64).to_numpy())
                for n in X.columns
            })
        else:
            frame = X
            cat_cols = [str(c) for c in X.columns
                        if isinstance(X[c].dtype, pd.CategoricalDtype) or X[c].dtype == object
                        or pd.api.types.is_string_dtype(X[c].dtype)]
        known: dict[str, list[Any]] = {} if fitting else dict(getattr(self, "model_", None).categories
                                                               if hasattr(self, "model_") else {})
        if not cat_cols and not known:
            return X, {}
        out = frame.copy()
        found: dict[str, list[Any]] = {}
        for c in [*cat_cols, *[k for k in known if k not in cat_cols]]:
            if c not in out.columns:
                continue
            col = out[c]
            if fitting:
                if isinstance(col.dtype, pd.CategoricalDtype):
                    values = list(col.cat.categories)
                else:
                    values = sorted({v for v in col.tolist() if _category_key(v) is not None}, key=str)
                found[c] = [v.item() if hasattr(v, "item") else v for v in values]
            elif c not in known:
                continue
            numeric = pd.api.types.is_numeric_dtype(col.dtype) and not isinstance(col.dtype, pd.CategoricalDtype)
            out[c] = _codes(c, col.astype(object).tolist(), found.get(c) or known[c], numeric)
        return out, found

    def _class_weights(self, y: np.ndarray) -> np.ndarray | None:
        """Per-row weights from ``class_weight`` (None when unset)."""
        cw = self.class_weight
        if cw is None:
            return None
        if isinstance(cw, str):
            if cw != "balanced":
                raise ValueError(f"class_weight is {cw!r}; expected 'balanced', a dict or None")
            counts = {c: int((y == c).sum()) for c in self.classes_}
            table = {c: len(y) / (len(self.classes_) * counts[c]) for c in self.classes_}
        else:
            unknown = [c for c in cw if c not in set(self.classes_.tolist())]
            if unknown:
                raise ValueError(f"class_weight names classes not in y: {unknown}")
            table = {c: float(cw.get(c, 1.0)) for c in self.classes_}
        return np.array([table[v] for v in y], dtype=np.float64)

    def _labels(self, y: Any) -> np.ndarray:
        kind = type_of_target(y, input_name="y", raise_unknown=True)
        if kind not in ("binary", "unary"):
            raise ValueError(f"Only binary classification is supported: y is {kind}")
        return y

    def fit(self, X: Any, y: Any, sample_weight: Any = None, eval_set: Sequence[tuple[Any, Any]] | None = None,
            categorical_features: Sequence[int | str] | None = None) -> "GBDTClassifier":
        """Trains on ``X`` (numbers; NaN is missing) and the binary labels ``y``. DataFrame
        columns of categories (pandas ``category``, strings; polars ``Categorical``, ``Enum``,
        ``Utf8``) are split as categories and their values kept in the model
        (``model_.categories``), so any frame is scored by value later, however its own
        categories were inferred."""
        X, found = self._encode(X, fitting=True)
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
        cats += [c for c in found if c not in cats]
        for c in cats:
            if c not in names:
                raise ValueError(f"categorical feature {c!r} is not a column of X")
            col = X[:, names.index(c)]
            codes = col[~np.isnan(col)]
            if ((codes < 0) | (codes != np.floor(codes))).any():
                bad = codes[(codes < 0) | (codes != np.floor(codes))][0]
                raise ValueError(f"categorical feature {c!r} holds {bad!r}: category codes must be non-negative "
                                 "integers (NaN for missing); map categories to codes first")
        w = None
        if sample_weight is not None:
            w = np.ascontiguousarray(np.asarray(sample_weight, dtype=np.float64))
            if w.shape != (X.shape[0],):
                raise ValueError(f"sample_weight has shape {w.shape}; expected ({X.shape[0]},)")
            if not np.all(np.isfinite(w)) or (w < 0).any():
                raise ValueError("sample_weight must be finite and non-negative")
            if not (w > 0).any():
                raise ValueError("all sample weights are zero: nothing to train on")
        cw = self._class_weights(y)
        if cw is not None:
            w = cw if w is None else w * cw
        valid = None
        if eval_set:
            if len(eval_set) > 1:
                warnings.warn(f"only the first of the {len(eval_set)} eval sets is used (for early stopping "
                              "and evals_result_)", UserWarning, stacklevel=2)
            vx, vy = eval_set[0]
            vx, _ = self._encode(vx, fitting=False)
            vx = validate_data(self, vx, reset=False, dtype=np.float64, ensure_all_finite="allow-nan", order="C")
            valid = (np.ascontiguousarray(vx), (np.asarray(vy) == self.classes_[1]).astype(np.float64))
        native, best, importance, history = _fraudscore.train(
            np.ascontiguousarray(X), target, w, names, cats, self._params(names, valid is not None), valid,
            0 if self.n_jobs in (None, -1) else int(self.n_jobs), int(self.verbose or 0),
        )
        if found:
            import json

            native = native.with_categories(json.dumps(found))
        self.model_ = Model(native)
        self.best_iteration_ = best
        metric = "auc" if self.eval_metric in (None, "auc") else "binary_logloss"
        self.evals_result_ = {"valid_0": {metric: list(history)}} if valid is not None else {}
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

    def predict_proba(self, X: Any, iteration: int | None = None) -> np.ndarray:
        """Probabilities of each class, shape (rows, 2); with ``iteration=n``, of the model's
        first ``n`` rounds."""
        check_is_fitted(self)
        X, _ = self._encode(X, fitting=False)
        X = validate_data(self, X, reset=False, dtype=np.float64, ensure_all_finite="allow-nan", order="C")
        m = self.model_._m if iteration is None else self.model_._m.first_trees(int(iteration))
        p = m.predict(X)
        return np.column_stack([1.0 - p, p])

    def predict(self, X: Any) -> np.ndarray:
        """The more likely class of each row."""
        p = self.predict_proba(X)[:, 1]
        return self.classes_[(p > 0.5).astype(int)]

    def decision_function(self, X: Any) -> np.ndarray:
        """The margin (log-odds of the second class)."""
        check_is_fitted(self)
        X, _ = self._encode(X, fitting=False)
        X = validate_data(self, X, reset=False, dtype=np.float64, ensure_all_finite="allow-nan", order="C")
        return self.model_._m.predict_margin(X)
