"""Fraud-team metrics, the same code as ``fraud evaluate``: ROC-AUC, average precision,
recall at a false-positive rate, precision at k, card precision at k per day (the Fraud
Detection Handbook's measure), population stability index."""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from . import _fraudscore

__all__ = [
    "roc_auc",
    "average_precision",
    "recall_at_fpr",
    "precision_at_k",
    "card_precision_at_k",
    "population_stability_index",
]


def _arr(x: Any, name: str) -> np.ndarray:
    a = np.ascontiguousarray(np.asarray(x, dtype=np.float64))
    if a.ndim != 1:
        raise ValueError(f"{name} must be 1-D; got shape {a.shape}")
    return a


def roc_auc(y_true: Any, y_score: Any, sample_weight: Any = None) -> float:
    """Area under the ROC curve (ties count half), as scikit-learn's ``roc_auc_score``."""
    w = None if sample_weight is None else _arr(sample_weight, "sample_weight")
    return _fraudscore.roc_auc(_arr(y_score, "y_score"), _arr(y_true, "y_true"), w)


def average_precision(y_true: Any, y_score: Any, sample_weight: Any = None) -> float:
    """Average precision, as scikit-learn's ``average_precision_score``."""
    w = None if sample_weight is None else _arr(sample_weight, "sample_weight")
    return _fraudscore.average_precision(_arr(y_score, "y_score"), _arr(y_true, "y_true"), w)


def recall_at_fpr(y_true: Any, y_score: Any, fpr: float = 0.01, sample_weight: Any = None) -> float:
    """Share of frauds caught when at most ``fpr`` of genuine transactions are flagged.
    ``fpr`` is a rate strictly between 0 and 1 (``0.05`` for 5%); anything else raises
    ``ValueError``."""
    fpr = float(fpr)
    if not 0.0 < fpr < 1.0:
        raise ValueError(f"fpr is {fpr}; it must be a rate strictly between 0 and 1 (0.05 for 5%)")
    w = None if sample_weight is None else _arr(sample_weight, "sample_weight")
    return _fraudscore.recall_at_fpr(_arr(y_score, "y_score"), _arr(y_true, "y_true"), fpr, w)


def precision_at_k(y_true: Any, y_score: Any, k: int = 100) -> float:
    """Precision among the ``k`` highest scores."""
    return _fraudscore.precision_at_k(_arr(y_score, "y_score"), _arr(y_true, "y_true"), int(k))


def _day_numbers(days: Any) -> list[int]:
    """Day numbers from integers, or from dates and times of any usual kind (pandas
    ``Timestamp``/datetime64 series, ``datetime``, ``date``, ISO strings): days since
    1970-01-01 (UTC for aware times)."""
    values = list(days) if not isinstance(days, (list, tuple)) else days
    if all(isinstance(d, (int, np.integer)) and not isinstance(d, bool) for d in values):
        return [int(d) for d in values]
    import pandas as pd

    try:
        stamps = pd.to_datetime(pd.Series(list(values)), utc=True)
    except (TypeError, ValueError) as e:
        raise ValueError(f"days must be day numbers or dates/times: {e}") from None
    if stamps.isna().any():
        raise ValueError(f"days has a missing value at position {int(stamps.isna().to_numpy().argmax())}")
    return [int(d) for d in (stamps.dt.tz_convert(None).dt.normalize() - pd.Timestamp(0)).dt.days]


def card_precision_at_k(
    y_true: Any, y_score: Any, cards: Sequence[Any], days: Sequence[Any], k: int = 100,
    remove_detected: bool = True,
) -> tuple[float, list[tuple[int, float]]]:
    """Card precision at top-k per day, the Fraud Detection Handbook's definition: days in
    order; each day every card gets its highest score and is compromised if any of its
    transactions is fraud; cards detected on an earlier day (among its top ``k``) are left
    out; the share of compromised cards among the ``k`` highest. ``days`` are day numbers or
    dates/times (pandas ``Timestamp``s included). ``remove_detected=False`` keeps detected
    cards in later days' rankings (not the Handbook's measure; it reads higher). Returns
    (mean over days, [(day, precision), ...])."""
    return _fraudscore.card_precision_at_k(
        _arr(y_score, "y_score"), _arr(y_true, "y_true"), [str(c) for c in cards],
        _day_numbers(days), int(k), bool(remove_detected),
    )


def population_stability_index(expected: Any, actual: Any) -> float:
    """PSI of ``actual`` against ``expected`` (ten quantile bins of ``expected`` plus
    missing values). Under 0.1: stable; over 0.25: shifted."""
    return _fraudscore.population_stability_index(_arr(expected, "expected"), _arr(actual, "actual"))
