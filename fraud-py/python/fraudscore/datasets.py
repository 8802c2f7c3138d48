"""Data for fraud models: the transaction simulator (six labelled fraud scenarios, delayed
labels) and loaders mapping public data sets (ULB creditcard.csv, PaySim, Sparkov) into the
project's columns. Both return pandas DataFrames (pandas is required for this module)."""

from __future__ import annotations

import io
import json
import os
from typing import TYPE_CHECKING, Any, Literal, Sequence, overload

from . import _fraudscore

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["generate", "load", "SCENARIOS"]

SCENARIOS = (
    "amount_over_threshold",
    "compromised_terminal",
    "compromised_card",
    "card_testing",
    "account_takeover",
    "impossible_travel",
)


def _pandas() -> Any:
    try:
        import pandas as pd
    except ImportError:  # pragma: no cover - depends on the environment
        raise ImportError("fraudscore.datasets needs pandas: pip install 'fraudscore[pandas]'") from None
    return pd


def _frame(data: bytes) -> pd.DataFrame:
    pd = _pandas()
    return pd.read_csv(io.BytesIO(data), dtype={"transaction_id": str, "mcc": str, "customer_id": str, "merchant_id": str, "terminal_id": str}, keep_default_na=True)


@overload
def generate(customers: int = ..., days: int = ..., seed: int = ..., *, terminals: int | None = ...,
             start: str | None = ..., scenarios: Sequence[str] | None = ..., label_delay_days: float = ...,
             return_summary: Literal[False] = ...) -> pd.DataFrame: ...


@overload
def generate(customers: int = ..., days: int = ..., seed: int = ..., *, terminals: int | None = ...,
             start: str | None = ..., scenarios: Sequence[str] | None = ..., label_delay_days: float = ...,
             return_summary: Literal[True]) -> tuple[pd.DataFrame, dict[str, Any]]: ...


def generate(
    customers: int = 5000,
    days: int = 183,
    seed: int = 0,
    *,
    terminals: int | None = None,
    start: str | None = None,
    scenarios: Sequence[str] | None = None,
    label_delay_days: float = 3.0,
    return_summary: bool = False,
) -> pd.DataFrame | tuple[pd.DataFrame, dict[str, Any]]:
    """Simulated card transactions, as ``fraud generate`` writes them: one row per
    transaction with the transaction JSON columns plus ``is_fraud``, ``fraud_reported_at``
    and ``fraud_scenario`` (0 genuine, 1-6 as :data:`SCENARIOS`). Deterministic by ``seed``.
    With ``return_summary``, also the counts per scenario (a dict)."""
    data, summary = _fraudscore.generate_csv(
        int(customers), int(days), int(seed), terminals, start,
        None if scenarios is None else list(scenarios), float(label_delay_days),
    )
    df = _frame(data)
    return (df, json.loads(summary)) if return_summary else df


def load(format: str, path: str | os.PathLike[str], *, legit_weight: float = 1.0,
         currency: str = "USD", key: bytes | None = None) -> pd.DataFrame:
    """Reads a public data set into the project's columns: ``format`` is ``"ulb"``
    (creditcard.csv: a feature table), ``"paysim"`` or ``"sparkov"`` (transactions; Sparkov
    card numbers are tokenized with ``key``, 32 bytes or more, and never returned).
    Files may be gzip-compressed."""
    data = _fraudscore.convert_csv(format, os.fspath(path), float(legit_weight), currency,
                                   None if key is None else bytes(key))
    return _frame(data)
