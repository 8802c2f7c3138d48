"""fraudscore.Scorer and Policy give the service's answers: the committed sample sent in order
to `fraud serve` (with a policy of thresholds, a rule and a block list) and scored in Python."""

from __future__ import annotations

import json
import os

import numpy as np
import pandas as pd
import pytest
from conftest import ROOT, serve

import fraudscore
from fraudscore import Policy, Scorer

POLICY = """
[thresholds]
review = 0.05
decline = 0.5

[[rules]]
name = "large"
when = "tx.amount > 150.0"
action = "review"

[lists.block]
customers = ["C32"]
"""


def sample(n: int) -> list[dict]:
    frame = pd.read_csv(os.path.join(ROOT, "datasets", "samples", "transactions.csv"), dtype=str,
                        keep_default_na=False).head(n)
    rows = []
    for r in frame.to_dict("records"):
        body = {k: v for k, v in r.items() if v != "" and k not in ("is_fraud", "fraud_reported_at", "fraud_scenario")}
        for k in ("latitude", "longitude"):
            if k in body:
                body[k] = float(body[k])
        rows.append(body)
    return rows


def untimed(answer: dict) -> dict:
    return {k: v for k, v in answer.items() if k != "elapsed_us"}


def test_the_python_scorer_gives_the_services_answers(tmp_path):
    rows = sample(500)
    with serve(str(tmp_path / "data"), config=POLICY) as service:
        served = [untimed(service.call("/v1/score", r)) for r in rows]
    model = fraudscore.Model.load(os.path.join(ROOT, "datasets", "demo", "model.fgb"))
    scorer = Scorer(model, Policy.from_toml(POLICY))
    one_by_one = [untimed(scorer.score(r)) for r in rows]
    assert one_by_one == served
    # A batch, from a DataFrame, on fresh state: the same answers, in order.
    batch = Scorer(model, Policy.from_toml(POLICY)).score_many(pd.DataFrame(rows))
    assert list(batch["decision"]) == [a["decision"] for a in served]
    np.testing.assert_array_equal(batch["score"].to_numpy(), [a["score"] for a in served])
    assert list(batch["rules_fired"]) == [a["rules_fired"] for a in served]
    assert batch["error"].isna().all()
    fired = json.dumps([a["rules_fired"] for a in served])
    assert "block_list:customer" in fired and "large" in fired
    assert {a["decision"] for a in served} >= {"approve", "review"}


def test_policies_are_checked_and_built_from_values(tmp_path):
    p = Policy(review=0.2, decline=0.9, rules=[{"name": "r", "when": "score > 0.5", "action": "decline"}],
               block={"emails": ["a@example.com"]})
    d = p.to_dict()
    assert d["thresholds"] == {"review": 0.2, "decline": 0.9}
    assert d["rules"][0]["action"] == "decline" and d["lists"]["block"]["emails"] == ["a@example.com"]
    assert Policy.from_toml(p.toml).to_dict() == d
    path = tmp_path / "fraud.toml"
    path.write_text("bind = \"127.0.0.1:1\"\n" + POLICY)
    assert Policy.from_toml(path).to_dict()["rules"][0]["name"] == "large"
    with pytest.raises(ValueError, match="review"):
        Policy(review=0.9, decline=0.1)
    with pytest.raises(ValueError, match="maybe"):
        Policy(rules=[{"name": "r", "when": "true", "action": "maybe"}])
    with pytest.raises(KeyError):
        Policy(block={"phones": ["1"]})
    with pytest.raises(FileNotFoundError):
        Policy.from_toml("missing-policy.toml")
    model = fraudscore.Model.load(os.path.join(ROOT, "datasets", "demo", "model.fgb"))
    # A rule naming a feature the spec does not produce is refused when the scorer is built.
    with pytest.raises(ValueError, match="rules\\[0\\]"):
        Scorer(model, Policy(rules=[{"name": "r", "when": "features.nope > 1.0", "action": "review"}]))
    scorer = Scorer(model)
    with pytest.raises(ValueError, match="amount"):
        scorer.score({"transaction_id": "t", "timestamp": "2026-01-01T00:00:00Z", "amount": "-1",
                      "currency": "EUR", "card_token": "tok_" + "0" * 32})
    # A card number never comes back, in an answer or an error.
    answer = scorer.score({"transaction_id": "t2", "timestamp": "2026-01-01T00:00:00Z", "amount": "10.00",
                           "currency": "EUR", "card_number": "4111111111111111"})
    assert answer["card_mask"] == "411111******1111" and "4111111111111111" not in json.dumps(answer)
    bad = scorer.score_many([{"transaction_id": "t3", "card_number": "4111111111111111"}])
    assert bad["error"][0] and "4111111111111111" not in bad["error"][0]


def test_backtest_gives_the_scorers_answers_and_counts_them(tmp_path):
    # The sample without labels: the backtest replays it as a fresh scorer answers it in order.
    rows = sample(1500)
    frame = pd.DataFrame(rows)
    model = fraudscore.Model.load(os.path.join(ROOT, "datasets", "demo", "model.fgb"))
    policy = Policy.from_toml(POLICY)
    answers = Scorer(model, policy).score_many(frame)
    decisions, summary = fraudscore.backtest(frame, model, policy)
    assert list(decisions.index) == list(frame.index)
    assert list(decisions["transaction_id"]) == list(answers["transaction_id"])
    assert list(decisions["decision"]) == list(answers["decision"])
    np.testing.assert_array_equal(decisions["score"].to_numpy(), answers["score"].to_numpy())
    assert list(decisions["rules_fired"]) == list(answers["rules_fired"])
    assert summary["transactions"] == len(rows)
    for d in ("approve", "review", "decline"):
        assert summary["decisions"][d] == int((answers["decision"] == d).sum())
    assert summary["rules"]["large"]["fired"] == sum("large" in r for r in answers["rules_fired"])
    assert "labels" not in summary
    # With the sample's labels and a stricter baseline: outcomes and changes.
    full = pd.read_csv(os.path.join(ROOT, "datasets", "samples", "transactions.csv"), dtype=str,
                       keep_default_na=False)
    labels = pd.DataFrame({"transaction_id": full["transaction_id"], "is_fraud": full["is_fraud"].astype(int),
                           "reported_at": pd.to_datetime(full["fraud_reported_at"].replace("", None), utc=True)})
    strict = Policy(review=0.01, decline=0.05)
    decisions, summary = fraudscore.backtest(frame, model, strict, baseline_policy=policy,
                                             labels=labels.head(1500))
    assert "baseline_decision" in decisions.columns
    changed = int((decisions["decision"] != decisions["baseline_decision"]).sum())
    assert sum(summary["baseline"]["changes"].values()) == changed > 0
    assert summary["labels"]["labelled"] == 1500
    with pytest.raises(ValueError, match="nope"):
        fraudscore.backtest(frame, model, Policy(rules=[{"name": "x", "when": "features.nope > 1.0",
                                                          "action": "review"}]))
