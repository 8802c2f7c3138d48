"""fraudscore: the fraud scoring engine from Python.

The same compiled tree models, exact TreeSHAP explanations, metrics and simulated data as the
``fraud`` service and command line, with numpy and pandas in and out.

>>> import fraudscore
>>> model = fraudscore.Model.load("model.fgb")
>>> proba = model.predict(df)            # numpy array, pandas or polars DataFrame
>>> contributions = model.explain(df)    # one column per feature, then the bias

Also :class:`GBDTClassifier` (a scikit-learn estimator on the engine's trainer),
:func:`fraudscore.features.replay` (the service's features, offline),
:func:`fraudscore.backtest` (a model and a policy replayed on a history) and
:mod:`fraudscore.plot` (charts; matplotlib is an optional extra). Modules:
:mod:`fraudscore.metrics` (ROC-AUC, average precision, recall at a false-positive
rate, precision at k, card precision at k per day, population stability index) and
:mod:`fraudscore.datasets` (the transaction simulator and public-format loaders).
"""

from __future__ import annotations

import json
import os
from typing import TYPE_CHECKING, Any

import numpy as np

from . import _fraudscore
from . import datasets, decision, features, metrics
from .decision import Policy, Scorer, backtest

if TYPE_CHECKING:  # at run time imported on first use (it needs scikit-learn)
    from .sklearn import GBDTClassifier

__all__ = ["Model", "Policy", "Scorer", "backtest", "GBDTClassifier", "from_xgboost", "from_lightgbm", "default_spec", "metrics", "datasets",
           "features", "decision", "__version__"]


def __getattr__(name: str) -> Any:
    # The estimator needs scikit-learn: imported on first use.
    if name == "GBDTClassifier":
        from .sklearn import GBDTClassifier

        return GBDTClassifier
    raise AttributeError(f"module 'fraudscore' has no attribute {name!r}")
__version__: str = _fraudscore.__version__
default_spec = features.default_spec


def _columns(x: Any) -> list[str] | None:
    """Column names of a pandas or polars DataFrame, else None."""
    cols = getattr(x, "columns", None)
    if cols is None or isinstance(x, np.ndarray):
        return None
    return [str(c) for c in cols]


def _category_key(v: Any) -> str | None:
    """The text a category is matched by (as the engine's ``category_key``): strings as they
    are, numbers (or strings holding one) in their shortest decimal form; None for missing."""
    if v is None:
        return None
    if isinstance(v, float) and np.isnan(v):
        return None
    if isinstance(v, (bool, np.bool_)):
        return "true" if v else "false"
    if isinstance(v, (int, np.integer, float, np.floating)):
        x = float(v)
        return str(int(x)) if x.is_integer() and abs(x) < 1e15 else repr(x)
    s = str(v)
    t = s.strip()
    if t and all(c.isdigit() or c in "+-.eE" for c in t):
        try:
            x = float(t)
        except ValueError:
            return s
        if np.isfinite(x):
            return str(int(x)) if x.is_integer() and abs(x) < 1e15 else repr(x)
    return s


def _codes(name: str, values: list[Any], categories: list[Any], numeric_input: bool) -> np.ndarray:
    """``values`` of feature ``name`` mapped to their codes among ``categories`` (unseen or
    missing: NaN). Numbers where the categories are strings are refused: they would be codes
    of some other encoding (``.cat.codes`` of another frame), silently wrong."""
    keys = [_category_key(c) for c in categories]
    if numeric_input and keys and not any(k is not None and k.lstrip("+-").replace(".", "", 1).isdigit() for k in keys):
        raise TypeError(f"column {name!r} holds numbers, but the model's categories for it are values such as "
                        f"{categories[:3]!r}: pass the category values (e.g. the pandas category column itself), "
                        "not codes")
    table = {k: float(i) for i, k in enumerate(keys) if k is not None}
    out = np.empty(len(values), dtype=np.float64)
    for i, v in enumerate(values):
        k = _category_key(v)
        out[i] = np.nan if k is None else table.get(k, np.nan)
    return out


def _encode_columns(X: Any, names: list[str], cats: dict[str, list[Any]], polars: bool) -> np.ndarray:
    """The model's columns of a DataFrame as float64, categorical ones mapped by value to
    their codes (unseen or missing values: NaN)."""
    out = np.empty((len(X), len(names)), dtype=np.float64)
    for j, name in enumerate(names):
        col = X.get_column(name) if polars else X[name]
        if name in cats:
            if polars:
                numeric = col.dtype.is_numeric()
                values = col.to_list()
            else:
                import pandas as pd

                numeric = pd.api.types.is_numeric_dtype(col.dtype) and not isinstance(col.dtype, pd.CategoricalDtype)
                values = col.astype(object).tolist()
            out[:, j] = _codes(name, values, cats[name], numeric)
        elif polars:
            out[:, j] = col.cast(float).to_numpy()
        else:
            out[:, j] = col.to_numpy(dtype=np.float64, na_value=np.nan)
    return out


class Model:
    """A gradient-boosted tree model, compiled for exact and fast prediction.

    Load one with :meth:`Model.load`, or import one with :func:`from_xgboost` /
    :func:`from_lightgbm`. ``X`` may be a 2-D numpy array (float64 or float32, C or Fortran
    order; C-ordered float64 is read in place), a pandas DataFrame or a polars DataFrame
    (columns matched to the model's features by name, extra columns ignored).
    """

    __slots__ = ("_m",)

    def __init__(self, native: Any) -> None:
        self._m = native

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> "Model":
        """Loads a model artifact (``.fgb``) written by ``fraud train``, ``fraud import`` or
        :meth:`save`. Raises FileNotFoundError if absent, ValueError if not a valid model."""
        return cls(_fraudscore._Model.load(os.fspath(path)))

    @classmethod
    def from_bytes(cls, data: bytes) -> "Model":
        """A model from the bytes of an artifact."""
        return cls(_fraudscore._Model.from_bytes(bytes(data)))

    def save(self, path: str | os.PathLike[str], feature_spec: str | os.PathLike[str] | None = None) -> None:
        """Writes the model artifact to ``path``. ``feature_spec`` (a spec file or its TOML
        text, e.g. :func:`fraudscore.default_spec`) is stored in the model, so that the
        service computes the features the model was trained on; every feature of the model
        must be one the spec produces."""
        m = self._m
        if feature_spec is not None:
            m = m.with_feature_spec(features.spec_text(feature_spec))
        m.save(os.fspath(path))

    def to_bytes(self) -> bytes:
        """The artifact's bytes."""
        return self._m.to_bytes()

    @property
    def feature_names(self) -> list[str]:
        """Feature names, in the model's column order."""
        return list(self._m.feature_names)

    @property
    def categorical_features(self) -> list[str]:
        """Features split as categories."""
        return list(self._m.categorical_features)

    @property
    def metadata(self) -> dict[str, Any]:
        """Source, creation time, training summary (parameters, importance, ...), feature
        spec."""
        return json.loads(self._m.metadata_json)

    @property
    def num_trees(self) -> int:
        """Number of trees."""
        return int(self._m.num_trees)

    @property
    def categories(self) -> dict[str, list[Any]]:
        """Categorical features scored by value: feature name -> categories in code order
        (from XGBoost's and LightGBM's model files, or the frame the model was trained on).
        A DataFrame column of such a feature holding categories (pandas ``category``,
        strings, polars ``Categorical``/``Enum``/``Utf8``) is mapped value by value; a value
        not among them scores as missing, as both libraries do."""
        return dict(self.metadata.get("categories") or {})

    def _matrix(self, X: Any) -> np.ndarray:
        if type(X) is np.ndarray and X.ndim == 2 and (X.dtype == np.float64 or X.dtype == np.float32):
            return X  # the common case, checked first: a single row is scored in microseconds
        names = _columns(X)
        if names is not None:
            missing = [f for f in self.feature_names if f not in names]
            if missing:
                raise KeyError(f"X has no column {missing[0]!r} (the model needs {len(self.feature_names)} features; missing: {missing[:5]})")
            cats = self.categories
            if hasattr(X, "select") and not hasattr(X, "loc"):  # polars
                if cats:
                    return _encode_columns(X, self.feature_names, cats, polars=True)
                X = X.select(self.feature_names).to_numpy()
            else:
                if cats:
                    return _encode_columns(X, self.feature_names, cats, polars=False)
                X = X[self.feature_names].to_numpy(dtype=np.float64, na_value=np.nan)
        arr = np.asarray(X)
        if arr.ndim == 1:
            raise ValueError(f"X must be 2-D (rows x {len(self.feature_names)} features); got a 1-D array (use X.reshape(1, -1) for one row)")
        if arr.ndim != 2:
            raise ValueError(f"X must be 2-D; got {arr.ndim} dimensions")
        if arr.dtype not in (np.float64, np.float32):
            try:
                arr = arr.astype(np.float64)
            except (TypeError, ValueError) as e:
                raise TypeError(f"X must hold numbers: {e}") from None
        return arr

    def predict(self, X: Any) -> np.ndarray:
        """Probability of fraud for each row (float64 array)."""
        return self._m.predict(self._matrix(X))

    def predict_margin(self, X: Any) -> np.ndarray:
        """Raw margin (log-odds) for each row."""
        return self._m.predict_margin(self._matrix(X))

    def explain(self, X: Any, output: str = "auto") -> Any:
        """Exact TreeSHAP contributions to the margin: one column per feature, then
        ``bias``; each row sums to its margin. ``output="auto"``: a pandas DataFrame for a
        pandas ``X`` (same index), a polars DataFrame for a polars ``X``, else a numpy array
        of shape (rows, features + 1); ``"numpy"``: always the array; ``"shap"``: a
        ``shap.Explanation`` (values, base values, the rows' feature values and names) for
        shap's own plots (needs the ``shap`` package)."""
        if output not in ("auto", "numpy", "shap"):
            raise ValueError(f"output is {output!r}; expected 'auto', 'numpy' or 'shap'")
        matrix = self._matrix(X)
        out = self._m.explain(matrix)
        names = [*self.feature_names, "bias"]
        if output == "shap":
            try:
                import shap
            except ImportError:
                raise ImportError("output='shap' needs the shap package (pip install shap)") from None
            return shap.Explanation(values=out[:, :-1], base_values=out[:, -1], data=np.asarray(matrix),
                                    feature_names=list(self.feature_names))
        if output == "numpy" or _columns(X) is None:
            return out
        if hasattr(X, "loc"):
            import pandas as pd

            return pd.DataFrame(out, columns=names, index=X.index)
        import polars as pl

        return pl.DataFrame(out, schema=names, orient="row")

    def __reduce__(self) -> tuple[Any, tuple[bytes]]:
        # Pickles as the artifact's bytes.
        return (Model.from_bytes, (self.to_bytes(),))

    def __repr__(self) -> str:
        return f"Model({self.num_trees} trees, {len(self.feature_names)} features, source={self.metadata.get('source')!r})"


def from_xgboost(booster_or_path: Any, iteration_range: tuple[int, int] | None = None) -> Model:
    """Imports an XGBoost model: an ``xgboost.Booster`` (or sklearn wrapper) or the path of
    a JSON model file. Predictions are identical to XGBoost's ``predict_proba``: a model
    trained with early stopping is imported up to its ``best_iteration``, as XGBoost predicts
    with it. ``iteration_range=(begin, end)`` imports those iterations instead, as XGBoost's
    own ``iteration_range`` (``(0, 0)``: every iteration). ``Model.metadata["attributes"]``
    says which were imported."""
    if isinstance(booster_or_path, (str, os.PathLike)):
        with open(booster_or_path, "rb") as f:
            data = f.read()
    else:
        booster = booster_or_path.get_booster() if hasattr(booster_or_path, "get_booster") else booster_or_path
        data = bytes(booster.save_raw("json"))
    return Model(_fraudscore._Model.from_xgboost_json(data, iteration_range))


def from_lightgbm(booster_or_path: Any) -> Model:
    """Imports a LightGBM model: a ``lightgbm.Booster`` (or sklearn wrapper) or the path of a
    text model file. Predictions are identical to LightGBM's."""
    if isinstance(booster_or_path, (str, os.PathLike)):
        with open(booster_or_path, encoding="utf-8") as f:
            text = f.read()
    else:
        booster = booster_or_path.booster_ if hasattr(booster_or_path, "booster_") else booster_or_path
        text = booster.model_to_string()
    return Model(_fraudscore._Model.from_lightgbm_text(text))
