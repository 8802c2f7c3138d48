"""Charts for analysts (matplotlib, an optional extra: ``pip install 'fraudscore[plot]'``):
ROC and precision-recall curves, score distributions by class, feature importance, and a
SHAP summary of one transaction. Each function draws on ``ax`` (a new figure when None) and
returns the Axes."""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

__all__ = ["roc_curve", "precision_recall_curve", "score_distribution", "feature_importance", "shap_summary"]


def _axes(ax: Any) -> Any:
    if ax is not None:
        return ax
    try:
        import matplotlib.pyplot as plt
    except ImportError:  # pragma: no cover - depends on the environment
        raise ImportError("fraudscore.plot needs matplotlib: pip install 'fraudscore[plot]'") from None
    _, ax = plt.subplots(figsize=(6, 4.5))
    return ax


def _sorted(y_true: Any, y_score: Any) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(y_true, dtype=np.float64).ravel()
    s = np.asarray(y_score, dtype=np.float64).ravel()
    if y.shape != s.shape:
        raise ValueError(f"y_true has {y.size} values and y_score {s.size}")
    if not np.isin(y, (0.0, 1.0)).all():
        raise ValueError("y_true must hold 0 and 1 only")
    if y.sum() == 0 or y.sum() == y.size:
        raise ValueError("y_true needs both classes")
    order = np.argsort(-s, kind="stable")
    return y[order], s[order]


def roc_curve(y_true: Any, y_score: Any, ax: Any = None, label: str = "model") -> Any:
    """The ROC curve, with the AUC in the legend."""
    from .metrics import roc_auc

    y, s = _sorted(y_true, y_score)
    last = np.r_[s[1:] != s[:-1], True]
    tpr = np.r_[0, np.cumsum(y)[last] / y.sum()]
    fpr = np.r_[0, np.cumsum(1 - y)[last] / (1 - y).sum()]
    ax = _axes(ax)
    ax.plot(fpr, tpr, label=f"{label} (AUC {roc_auc(y_true, y_score):.4f})")
    ax.plot([0, 1], [0, 1], "--", color="grey", label="random")
    ax.set(xlabel="false-positive rate", ylabel="true-positive rate (recall)", title="ROC curve")
    ax.legend(loc="lower right")
    return ax


def precision_recall_curve(y_true: Any, y_score: Any, ax: Any = None, label: str = "model") -> Any:
    """The precision-recall curve, with the average precision and the fraud rate."""
    from .metrics import average_precision

    y, s = _sorted(y_true, y_score)
    last = np.r_[s[1:] != s[:-1], True]
    tp = np.cumsum(y)[last]
    k = np.arange(1, y.size + 1)[last]
    ax = _axes(ax)
    ax.plot(tp / y.sum(), tp / k, label=f"{label} (AP {average_precision(y_true, y_score):.4f})")
    ax.axhline(y.mean(), linestyle="--", color="grey", label="fraud rate")
    ax.set(xlabel="recall", ylabel="precision", title="Precision-recall curve")
    ax.legend(loc="upper right")
    return ax


def score_distribution(y_true: Any, y_score: Any, ax: Any = None, bins: int = 50) -> Any:
    """Histogram of scores for each class (share of the class, log scale)."""
    y = np.asarray(y_true).ravel()
    s = np.asarray(y_score, dtype=np.float64).ravel()
    if y.shape != s.shape:
        raise ValueError(f"y_true has {y.size} values and y_score {s.size}")
    ax = _axes(ax)
    edges = np.linspace(0, 1, bins + 1)
    for cls, name in ((0, "genuine"), (1, "fraud")):
        part = s[y == cls]
        if part.size:
            ax.hist(part, bins=edges, weights=np.full(part.size, 1 / part.size), histtype="step", linewidth=2, label=name)
    ax.set_yscale("log")
    ax.set(xlabel="score", ylabel="share of the class", title="Score distribution by class")
    ax.legend()
    return ax


def feature_importance(names: Sequence[str], values: Any, ax: Any = None, top: int = 20) -> Any:
    """Horizontal bars of the ``top`` largest importances (e.g. ``clf.feature_importances_``)."""
    v = np.asarray(values, dtype=np.float64).ravel()
    if len(names) != v.size:
        raise ValueError(f"{len(names)} names for {v.size} values")
    order = np.argsort(-v, kind="stable")[:top][::-1]
    ax = _axes(ax)
    ax.barh([names[i] for i in order], v[order])
    ax.set(xlabel="importance", title="Feature importance")
    return ax


def shap_summary(contributions: Any, names: Sequence[str] | None = None, ax: Any = None, top: int = 10) -> Any:
    """The largest TreeSHAP contributions of one transaction (a row of ``Model.explain``,
    with or without its bias), red when they raise the score and blue when they lower it."""
    c = contributions
    if hasattr(c, "to_numpy"):
        if names is None:
            names = [str(n) for n in (c.index if c.ndim == 1 else c.columns)]
        c = c.to_numpy()
    c = np.asarray(c, dtype=np.float64)
    if c.ndim == 2:
        if c.shape[0] != 1:
            raise ValueError("shap_summary shows one transaction: pass one row")
        c = c[0]
    if names is None:
        names = [f"f{i}" for i in range(c.size)]
    names = list(names)
    if len(names) == c.size and names[-1] == "bias":
        names, c = names[:-1], c[:-1]
    if len(names) != c.size:
        raise ValueError(f"{len(names)} names for {c.size} contributions")
    order = np.argsort(-np.abs(c), kind="stable")[:top][::-1]
    ax = _axes(ax)
    ax.barh([names[i] for i in order], c[order], color=["#c0392b" if c[i] > 0 else "#2e6da4" for i in order])
    ax.axvline(0, color="black", linewidth=0.8)
    ax.set(xlabel="contribution to the margin (log-odds)", title="Why this score")
    return ax


def shap_global(contributions: Any, X: Any = None, names: Sequence[str] | None = None, ax: Any = None,
                top: int = 20) -> Any:
    """The global TreeSHAP summary (shap's "beeswarm"): for the ``top`` features with the
    largest mean absolute contribution over many rows of ``Model.explain``, one dot per row
    at its contribution, coloured by the feature's value in ``X`` (its rank among the rows:
    blue low, red high; grey when missing or when ``X`` is not given)."""
    c = contributions
    if hasattr(c, "to_numpy"):
        if names is None:
            names = [str(n) for n in c.columns]
        c = c.to_numpy()
    c = np.asarray(c, dtype=np.float64)
    if c.ndim != 2:
        raise ValueError("shap_global needs one row of contributions per transaction (2-D)")
    if names is None:
        names = [f"f{i}" for i in range(c.shape[1])]
    names = list(names)
    if len(names) == c.shape[1] and names[-1] == "bias":
        names, c = names[:-1], c[:, :-1]
    if len(names) != c.shape[1]:
        raise ValueError(f"{len(names)} names for {c.shape[1]} contributions per row")
    values = None
    if X is not None:
        if hasattr(X, "select") and not hasattr(X, "loc"):
            values = np.column_stack([X.get_column(n).cast(float).to_numpy() for n in names])
        elif hasattr(X, "loc"):
            values = np.column_stack([X[n].to_numpy(dtype=np.float64, na_value=np.nan) for n in names])
        else:
            values = np.asarray(X, dtype=np.float64)
        if values.shape != c.shape:
            raise ValueError(f"X has shape {values.shape}; the contributions {c.shape}")
    order = np.argsort(-np.abs(c).mean(axis=0), kind="stable")[:top][::-1]
    ax = _axes(ax)
    rng = np.random.default_rng(0)  # vertical jitter only; the same picture every time
    for row, f in enumerate(order):
        y = row + rng.uniform(-0.3, 0.3, c.shape[0])
        if values is None:
            colour: Any = "#7f7f7f"
        else:
            v = values[:, f]
            rank = np.full(v.shape, np.nan)
            ok = ~np.isnan(v)
            if ok.any():
                rank[ok] = (np.argsort(np.argsort(v[ok], kind="stable"), kind="stable") /
                            max(ok.sum() - 1, 1))
            colour = [(0.5, 0.5, 0.5) if np.isnan(r) else (r, 0.2, 1.0 - r) for r in rank]
        ax.scatter(c[:, f], y, s=6, c=colour, alpha=0.6, linewidths=0)
    ax.set_yticks(range(len(order)))
    ax.set_yticklabels([names[f] for f in order])
    ax.axvline(0, color="black", linewidth=0.8)
    ax.set(xlabel="contribution to the margin (log-odds)", title="What drives the scores")
    return ax
