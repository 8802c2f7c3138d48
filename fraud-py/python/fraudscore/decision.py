"""The service's decision, from Python: :class:`Policy` (thresholds, CEL rules, allow / block
lists: the ``[thresholds]``, ``[[rules]]`` and ``[lists]`` sections of the service's TOML
configuration) and :class:`Scorer` (a model, a policy, the feature spec and fresh entity
state), which turns a transaction into the answer ``POST /v1/score`` gives, with the same
code (fraud-core's ``decision`` module): decision, score, risk score, reasons, rules fired,
model version, card mask.

>>> policy = Policy.from_toml("fraud.toml")          # or Policy(review=0.3, decline=0.7, rules=[...])
>>> scorer = Scorer(fraudscore.Model.load("model.fgb"), policy)
>>> scorer.score({"transaction_id": "t1", "timestamp": "2026-01-01T10:00:00Z", "amount": "12.50",
...               "currency": "EUR", "card_number": "4111111111111111"})["decision"]
'approve'
>>> answers = scorer.score_many(frame)               # one row per transaction, in order
"""

from __future__ import annotations

import datetime as _dt
import json
import math
import os
from typing import TYPE_CHECKING, Any, Mapping, Sequence

from . import _fraudscore

if TYPE_CHECKING:
    import pandas as pd

    from . import Model

__all__ = ["Policy", "Scorer", "backtest"]

_LIST_FIELDS = ("card_tokens", "customers", "devices", "ips", "emails")


def _toml_string(s: str) -> str:
    # A JSON string is a TOML basic string (same escapes).
    return json.dumps(str(s), ensure_ascii=False)


class Policy:
    """Thresholds on the score, rules and lists. Build one from TOML (:meth:`from_toml`: a
    service configuration file or its policy sections) or from values::

        Policy(review=0.3, decline=0.7,
               rules=[{"name": "big_night", "when": "tx.amount > 500.0 && features.night == 1.0",
                       "action": "review"}],
               block={"customers": ["C9"]}, allow={"card_tokens": ["tok_..."]})

    Settings are checked at once (probabilities, review <= decline, rule actions); rules
    are compiled against a model's features when a :class:`Scorer` is built."""

    __slots__ = ("_toml",)

    def __init__(self, review: float = 0.3, decline: float = 0.7,
                 rules: Sequence[Mapping[str, str]] | None = None,
                 allow: Mapping[str, Sequence[str]] | None = None,
                 block: Mapping[str, Sequence[str]] | None = None) -> None:
        lines = ["[thresholds]", f"review = {float(review)!r}", f"decline = {float(decline)!r}"]
        for i, rule in enumerate(rules or []):
            missing = {"name", "when", "action"} - set(rule)
            if missing:
                raise KeyError(f"rules[{i}] has no {sorted(missing)[0]!r}")
            lines += ["[[rules]]"] + [f"{k} = {_toml_string(rule[k])}" for k in ("name", "when", "action")]
        for name, lists in (("allow", allow), ("block", block)):
            if not lists:
                continue
            lines.append(f"[lists.{name}]")
            for field, values in lists.items():
                if field not in _LIST_FIELDS:
                    raise KeyError(f"{name}: {field!r} is not one of {', '.join(_LIST_FIELDS)}")
                lines.append(f"{field} = [{', '.join(_toml_string(v) for v in values)}]")
        self._toml = "\n".join(lines) + "\n"
        _fraudscore._Scorer.check_policy(self._toml)

    @classmethod
    def from_toml(cls, source: str | os.PathLike[str]) -> Policy:
        """The policy sections of a TOML file (a path) or text; other sections are ignored."""
        text = os.fspath(source)
        if isinstance(source, os.PathLike) or ("\n" not in text and "=" not in text and "[" not in text):
            if not os.path.exists(text):
                raise FileNotFoundError(f"policy file {text!r} does not exist")
            with open(text, encoding="utf-8") as f:
                text = f.read()
        _fraudscore._Scorer.check_policy(text)
        p = cls.__new__(cls)
        p._toml = text
        return p

    def to_dict(self) -> dict[str, Any]:
        """The policy's settings: ``thresholds``, ``rules``, ``lists``."""
        out: dict[str, Any] = json.loads(_fraudscore._Scorer.check_policy(self._toml))
        return out

    @property
    def toml(self) -> str:
        """The policy as TOML (what :meth:`from_toml` reads)."""
        return self._toml

    def __repr__(self) -> str:
        d = self.to_dict()
        return f"Policy(review={d['thresholds']['review']}, decline={d['thresholds']['decline']}, rules={len(d['rules'])})"


def _json_value(v: Any) -> Any:
    if isinstance(v, (_dt.datetime, _dt.date)):
        return v.isoformat()
    if hasattr(v, "item"):  # numpy scalars
        return v.item()
    return str(v)


def _missing(v: Any) -> bool:
    return v is None or (isinstance(v, float) and math.isnan(v)) or v != v


def _request(tx: Mapping[str, Any]) -> str:
    body = {str(k): v for k, v in tx.items() if not _missing(v)}
    return json.dumps(body, default=_json_value)


class Scorer:
    """The service's decision on each transaction: features with entity state (fresh, in
    memory: transactions are remembered in the order they are scored), the model, TreeSHAP
    reasons and the policy. ``spec``: a feature spec file or TOML text (default: the
    model's own, else the default spec); ``reasons``: reasons per answer (5, as the
    service)."""

    __slots__ = ("_s", "model", "policy")

    def __init__(self, model: Model, policy: Policy | None = None,
                 spec: str | os.PathLike[str] | None = None, reasons: int = 5) -> None:
        from .features import spec_text

        self.model = model
        self.policy = policy if policy is not None else Policy()
        text = None if spec is None else spec_text(spec)
        self._s = _fraudscore._Scorer(model._m, self.policy.toml, text, reasons)

    def score(self, tx: Mapping[str, Any] | str) -> dict[str, Any]:
        """Scores one transaction (a dict of the request's fields, or its JSON text): the
        answer as a dict. An invalid transaction raises ValueError naming the field."""
        request = tx if isinstance(tx, str) else _request(tx)
        answer: dict[str, Any] = json.loads(self._s.score(request))
        return answer

    def score_many(self, transactions: Any) -> pd.DataFrame:
        """Scores every row of a pandas or polars DataFrame (or a list of dicts), in order:
        a pandas DataFrame with one row per transaction (``transaction_id``, ``decision``,
        ``score``, ``risk_score``, ``rules_fired``, ``reasons``, ``model_version``,
        ``card_mask``, and ``error`` for a row that is not a valid transaction)."""
        import pandas as pd

        if hasattr(transactions, "to_dicts"):
            rows = transactions.to_dicts()
        elif hasattr(transactions, "to_dict"):
            rows = transactions.to_dict("records")
        else:
            rows = list(transactions)
        lines = "\n".join(_request(r) for r in rows)
        answers = [json.loads(line) for line in self._s.score_lines(lines).splitlines() if line]
        columns = ["transaction_id", "decision", "score", "risk_score", "rules_fired", "reasons",
                   "model_version", "card_mask", "error"]
        frame = pd.DataFrame([{c: a.get(c) for c in columns} for a in answers], columns=columns)
        if isinstance(transactions, pd.DataFrame):
            frame.index = transactions.index
        return frame


def _policy_toml(policy: Policy | str | os.PathLike[str] | None) -> str | None:
    if policy is None:
        return None
    if isinstance(policy, Policy):
        return policy.toml
    return Policy.from_toml(policy).toml


def backtest(transactions: Any, model: Model, policy: Policy | str | os.PathLike[str] | None = None, *,
             baseline_model: Model | None = None,
             baseline_policy: Policy | str | os.PathLike[str] | None = None,
             labels: Any = None, spec: str | os.PathLike[str] | None = None,
             tz: str | int | None = None, round_amounts: bool = False,
             card_from: str | None = None) -> tuple[pd.DataFrame, dict[str, Any]]:
    """What ``model`` and ``policy`` would have decided on a past history (a pandas or polars
    DataFrame, or an Arrow table, with the transaction's columns, as
    :func:`fraudscore.features.replay` takes), replayed as ``fraud backtest`` replays it:
    point-in-time features (labels count from the time they were reported), the model and
    the policy's thresholds, rules and lists, each transaction answered as the service
    would have.

    ``policy`` and ``baseline_policy``: a :class:`Policy`, or a TOML file or text (the
    service's defaults when None). With ``baseline_model`` and / or ``baseline_policy`` (each
    defaulting to the backtested one), the summary compares the two. ``labels``: as
    :func:`fraudscore.features.replay` (else the history's ``is_fraud`` /
    ``fraud_reported_at``).

    Returns the decisions (a pandas DataFrame, one row per transaction in the input's order
    and index: ``transaction_id``, ``decision``, ``score``, ``rules_fired`` (a list), and
    ``baseline_decision`` with a baseline) and the summary (a dict: the fields of
    ``fraud backtest``'s JSON output)."""
    import pandas as pd

    from .features import _arrow_stream, _label_list, _offset_seconds, spec_text

    text = None if spec is None else spec_text(spec)
    label_list = None if labels is None else _label_list(labels)
    offset = _offset_seconds(tz)
    mod = type(transactions).__module__
    if mod.startswith("polars") and hasattr(transactions, "collect") and not hasattr(transactions, "__arrow_c_stream__"):
        transactions = transactions.collect()  # a LazyFrame
    stream = _arrow_stream(transactions)
    if stream is not None:
        source: Any = stream
    elif mod.startswith("pandas") and hasattr(transactions, "to_csv"):
        source = transactions.to_csv(index=False).encode("utf-8")
    else:
        raise TypeError(
            "transactions must be a pandas or polars DataFrame, a polars LazyFrame or an Arrow table "
            f"(with __arrow_c_stream__), not {type(transactions).__name__}")
    base_policy = _policy_toml(baseline_policy)
    ids, decisions, scores, fired, baseline, summary = _fraudscore.backtest(
        source, model._m, _policy_toml(policy), None if baseline_model is None else baseline_model._m,
        base_policy, text, label_list, offset, round_amounts, card_from)
    frame = pd.DataFrame({
        "transaction_id": ids,
        "decision": decisions,
        "score": scores,
        "rules_fired": [f.split(";") if f else [] for f in fired],
    })
    if baseline is not None:
        frame["baseline_decision"] = baseline
    if isinstance(transactions, pd.DataFrame):
        frame.index = transactions.index
    result: dict[str, Any] = json.loads(summary)
    return frame, result
