"""The feature pipeline offline: :func:`replay` computes, for every transaction of a history,
the features the service would have computed at its time (point in time correct: only
earlier transactions, and labels only once known), with the same code as the service."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

import numpy as np

from . import _fraudscore

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["replay"]


def default_spec() -> str:
    """The default feature spec (TOML): what the service computes when neither its config
    nor its model names another. Edit it and pass it to :func:`replay`, ``fraud features
    --spec`` or ``Model.save(..., feature_spec=...)``."""
    return _fraudscore.DEFAULT_SPEC


def spec_text(spec: str | os.PathLike[str]) -> str:
    """A feature spec's TOML: read from a file (a path object, or a string that names a
    file), or the text itself. A path that does not exist is an error saying so (it is not
    read as TOML)."""
    if isinstance(spec, os.PathLike):
        path = os.fspath(spec)
    elif "\n" not in spec and "=" not in spec and "[" not in spec:
        path = spec
    else:
        return spec
    if not os.path.exists(path):
        raise FileNotFoundError(f"feature spec file {path!r} does not exist")
    with open(path, encoding="utf-8") as f:
        return f.read()


def replay(transactions: Any, spec: str | os.PathLike[str] | None = None, labels: Any = None) -> pd.DataFrame:
    """Features of every transaction of ``transactions`` (a pandas DataFrame whose columns
    are the transaction's JSON field names: ``transaction_id``, ``timestamp``, ``amount``,
    ``currency``, ``card_number`` or ``card_token``, ...). ``spec``: a feature spec TOML file
    or its text (the default spec when None). ``labels``: a DataFrame with
    ``transaction_id``, ``is_fraud`` and optionally ``reported_at`` (when the label became
    known); without it the history's own ``is_fraud`` / ``fraud_reported_at`` are used.
    Returns a DataFrame with one column per feature, indexed like ``transactions``."""
    import pandas as pd

    if not isinstance(transactions, pd.DataFrame):
        raise TypeError("transactions must be a pandas DataFrame")
    text = None if spec is None else spec_text(spec)
    label_list = None
    if labels is not None:
        missing = {"transaction_id", "is_fraud"} - set(labels.columns)
        if missing:
            raise KeyError(f"labels has no column {sorted(missing)[0]!r}")
        when = labels["reported_at"] if "reported_at" in labels.columns else pd.Series([None] * len(labels), index=labels.index)
        label_list = []
        for tid, fraud, at in zip(labels["transaction_id"], labels["is_fraud"], when):
            us = None
            if at is not None and not (isinstance(at, float) and np.isnan(at)):
                us = int(pd.Timestamp(at).tz_localize("UTC").value // 1000) if pd.Timestamp(at).tzinfo is None else int(pd.Timestamp(at).value // 1000)
            label_list.append((str(tid), bool(int(fraud)), us))
    csv = transactions.to_csv(index=False).encode("utf-8")
    names, values = _fraudscore.replay(csv, text, label_list)
    return pd.DataFrame(values, columns=names, index=transactions.index)
