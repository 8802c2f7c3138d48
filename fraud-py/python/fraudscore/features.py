"""The feature pipeline offline: :func:`replay` computes, for every transaction of a history,
the features the service would have computed at its time (point in time correct: only
earlier transactions, and labels only once known), with the same code as the service."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any, overload

import numpy as np

from . import _fraudscore

if TYPE_CHECKING:
    import pandas as pd
    import polars as pl

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


def _offset_seconds(tz: str | int | None) -> int | None:
    """``UTC`` / ``Z`` / ``+HH:MM`` / ``-HH:MM`` (or seconds east of UTC) as seconds."""
    if tz is None or isinstance(tz, int):
        return tz
    t = tz.strip()
    if t.upper() in ("UTC", "Z"):
        return 0
    if len(t) == 6 and t[0] in "+-" and t[3] == ":" and t[1:3].isdigit() and t[4:].isdigit():
        h, m = int(t[1:3]), int(t[4:])
        if h <= 18 and m < 60:
            return (1 if t[0] == "+" else -1) * (h * 3600 + m * 60)
    raise ValueError(f"tz {tz!r}: expected 'UTC' or an offset such as '+02:00'")


def _micros(at: Any) -> int | None:
    """A label's ``reported_at`` (datetime, pandas Timestamp, numpy datetime64 or RFC 3339
    text; naive means UTC) as microseconds since the epoch; None when missing."""
    import datetime as dt

    if at is None or (isinstance(at, float) and np.isnan(at)) or at != at:  # NaN, NaT
        return None
    if isinstance(at, np.datetime64):
        return int(at.astype("datetime64[us]").astype(np.int64))
    if isinstance(at, str):
        text = at.strip()
        if not text:
            return None
        at = dt.datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00"))
    if isinstance(at, dt.datetime):
        if at.tzinfo is None:
            at = at.replace(tzinfo=dt.timezone.utc)
        delta = at - dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc)
        return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds
    raise TypeError(f"reported_at value {at!r} is not a time")


def _label_list(labels: Any) -> list[tuple[str, bool, int | None]]:
    """(transaction id, fraud, reported at) of a pandas or polars labels frame."""
    columns = [str(c) for c in labels.columns]
    missing = {"transaction_id", "is_fraud"} - set(columns)
    if missing:
        raise KeyError(f"labels has no column {sorted(missing)[0]!r}")
    ids = list(labels["transaction_id"])
    frauds = list(labels["is_fraud"])
    when = list(labels["reported_at"]) if "reported_at" in columns else [None] * len(ids)
    return [(str(t), bool(int(f)), _micros(a)) for t, f, a in zip(ids, frauds, when)]


def _arrow_stream(transactions: Any) -> Any | None:
    """The object to hand over through the Arrow C stream interface, or None when the frame
    cannot give one (pandas without pyarrow)."""
    if not hasattr(transactions, "__arrow_c_stream__"):
        return None
    mod = type(transactions).__module__
    if mod.startswith("pandas"):
        try:
            import pyarrow as pa
        except ImportError:
            return None
        # Columns only: pandas' index is not part of the transactions.
        return pa.Table.from_pandas(transactions, preserve_index=False)
    return transactions


@overload
def replay(transactions: pl.DataFrame | pl.LazyFrame, spec: str | os.PathLike[str] | None = None,
           labels: Any = None, *, tz: str | int | None = None, round_amounts: bool = False,
           card_from: str | None = None) -> pl.DataFrame: ...


@overload
def replay(transactions: Any, spec: str | os.PathLike[str] | None = None, labels: Any = None, *,
           tz: str | int | None = None, round_amounts: bool = False,
           card_from: str | None = None) -> pd.DataFrame: ...


def replay(transactions: Any, spec: str | os.PathLike[str] | None = None, labels: Any = None, *,
           tz: str | int | None = None, round_amounts: bool = False,
           card_from: str | None = None) -> Any:
    """Features of every transaction of ``transactions``: a pandas DataFrame, a polars
    DataFrame or LazyFrame, or an Arrow table (pyarrow ``Table`` / ``RecordBatchReader``,
    anything with ``__arrow_c_stream__``), whose columns are the transaction's JSON field
    names (``transaction_id``, ``timestamp``, ``amount``, ``currency``, ``card_number`` or
    ``card_token``, ...). Frames go to the engine column by column through Arrow (pandas
    needs pyarrow for that; without it, through CSV text); each cell is validated as the
    service validates a request.

    ``spec``: a feature spec TOML file or its text (the default spec when None).
    ``labels``: a pandas or polars DataFrame with ``transaction_id``, ``is_fraud`` and
    optionally ``reported_at`` (when the label became known; naive times are UTC); without
    it the history's own ``is_fraud`` / ``fraud_reported_at`` are used.
    ``tz``: the offset of naive timestamps (``"UTC"``, ``"+02:00"``); without it they are
    refused. ``round_amounts``: round amounts with float noise to the currency's minor unit
    (refused otherwise). ``card_from``: a column (e.g. ``customer_id``) standing in for the
    card when a row has neither ``card_number`` nor ``card_token``.

    Returns one column per feature: a polars DataFrame for polars input, else a pandas
    DataFrame (indexed like ``transactions`` when it is one)."""
    text = None if spec is None else spec_text(spec)
    label_list = None if labels is None else _label_list(labels)
    offset = _offset_seconds(tz)
    mod = type(transactions).__module__
    is_polars = mod.startswith("polars")
    if is_polars and hasattr(transactions, "collect") and not hasattr(transactions, "__arrow_c_stream__"):
        transactions = transactions.collect()  # a LazyFrame
    stream = _arrow_stream(transactions)
    if stream is not None:
        names, values = _fraudscore.replay(stream, text, label_list, offset, round_amounts, card_from)
    elif mod.startswith("pandas") and hasattr(transactions, "to_csv"):
        csv = transactions.to_csv(index=False).encode("utf-8")
        names, values = _fraudscore.replay(csv, text, label_list, offset, round_amounts, card_from)
    else:
        raise TypeError(
            "transactions must be a pandas or polars DataFrame, a polars LazyFrame or an Arrow table "
            f"(with __arrow_c_stream__), not {type(transactions).__name__}")
    if is_polars:
        import polars as pl

        return pl.DataFrame(values, schema=names, orient="row") if len(values) else pl.DataFrame(
            schema={n: pl.Float64 for n in names})
    import pandas as pd

    index = transactions.index if mod.startswith("pandas") else None
    return pd.DataFrame(values, columns=names, index=index)
