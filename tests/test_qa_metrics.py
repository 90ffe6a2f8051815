"""The official scripts' arithmetic on hand-made cases whose scores are worked out in the comments."""

from __future__ import annotations

import json

import pytest

from electra.qa_metrics import (
    f1_v1,
    f1_v2,
    mrqa_answers,
    mrqa_scores,
    normalize_answer,
    squad_v1_scores,
    squad_v2_scores,
)


def dataset(questions: list[tuple[str, list[str]]]) -> dict:
    qas = [
        {"id": qid, "question": "?", "answers": [{"text": t, "answer_start": 0} for t in golds]}
        for qid, golds in questions
    ]
    return {"version": "v2.0", "data": [{"title": "t", "paragraphs": [{"context": "c", "qas": qas}]}]}


def test_normalisation_and_token_f1() -> None:
    assert normalize_answer("The  Quick, brown FOX!") == "quick brown fox"
    assert normalize_answer("an apple a day") == "apple day"
    # pred "brown fox jumps": 2 of 3 tokens shared with gold "quick brown fox": P = R = 2/3, F1 = 2/3
    assert f1_v1("brown fox jumps", "the quick brown fox") == pytest.approx(2 / 3)
    # repeated tokens count once each: pred "fox fox" vs gold "fox": P = 1/2, R = 1, F1 = 2/3
    assert f1_v1("fox fox", "fox") == pytest.approx(2 / 3)
    assert f1_v1("", "") == 0.0 and f1_v2("", "") == 1.0 and f1_v2("fox", "") == 0.0


def test_squad_v1_counts_missing_predictions_as_zero() -> None:
    data = dataset([("q1", ["Denver Broncos", "The Broncos"]), ("q2", ["Santa Clara"]), ("q3", ["1990"])])
    predictions = {"q1": "broncos", "q2": "Santa Clara, California"}
    # q1: exact with "The Broncos" -> EM 1, F1 1; q2: EM 0, F1: P 2/3, R 1 -> 0.8; q3 missing: 0, 0
    scores = squad_v1_scores(data, predictions)
    assert scores["exact_match"] == pytest.approx(100 / 3)
    assert scores["f1"] == pytest.approx(100 * 1.8 / 3)


def test_mrqa_reads_jsonl_and_can_skip_unanswered() -> None:
    lines = [
        {"header": {"dataset": "NewsQA"}},
        {"context": "c", "qas": [{"qid": "a", "answers": ["x y"]}, {"qid": "b", "answers": ["z"]}]},
    ]
    answers = mrqa_answers(json.loads(json.dumps(line)) for line in lines)
    assert answers == {"a": ["x y"], "b": ["z"]}
    assert mrqa_scores(answers, {"a": "x"}) == {"exact_match": 0.0, "f1": pytest.approx(100 * (2 / 3) / 2)}
    assert mrqa_scores(answers, {"a": "x"}, skip_no_answer=True)["f1"] == pytest.approx(100 * 2 / 3)


def test_squad_v2_breakdown_threshold_and_best_threshold() -> None:
    data = dataset([("h1", ["Paris"]), ("h2", ["blue whale"]), ("n1", []), ("n2", [])])
    predictions = {"h1": "Paris", "h2": "whale", "n1": "", "n2": "London"}
    na_probs = {"h1": 0.1, "h2": 0.6, "n1": 0.9, "n2": 0.4}
    # raw: h1 EM 1 F1 1; h2 EM 0 F1 2/3 (P 1, R 1/2); n1 empty vs empty: 1, 1; n2: 0, 0
    plain = squad_v2_scores(data, predictions)
    assert plain["exact"] == pytest.approx(50.0) and plain["f1"] == pytest.approx(100 * (1 + 2 / 3 + 1) / 4)
    assert plain["HasAns_total"] == 2 and plain["HasAns_exact"] == 50.0 and plain["NoAns_f1"] == 50.0
    assert "best_f1" not in plain
    scored = squad_v2_scores(data, predictions, na_probs, na_prob_thresh=0.5)
    # above 0.5 (h2, n1) count as "no answer": h2 -> 0 (it has one), n1 -> 1: EM (1+0+1+0)/4, F1 (1+0+1+0)/4
    assert scored["exact"] == pytest.approx(50.0) and scored["f1"] == pytest.approx(50.0)
    # best threshold: start at 2 (no-answer everywhere is right on n1, n2); by rising probability:
    # h1 (0.1) +1 -> 3 (best, 0.1); n2 (0.4) answered "London" -1 -> 2; h2 (0.6) +0 / +2/3; n1 (0.9) "" +0
    assert scored["best_exact"] == pytest.approx(75.0) and scored["best_exact_thresh"] == 0.1
    assert scored["best_f1"] == pytest.approx(75.0) and scored["best_f1_thresh"] == 0.1


def test_squad_v2_official_dev_subset_with_gold_answers_scores_100() -> None:
    from tests.conftest import shared_data

    data = json.loads(shared_data("squad/dev.json").read_text())
    golds = {}
    for article in data["data"]:
        for paragraph in article["paragraphs"]:
            for qa in paragraph["qas"]:
                golds[qa["id"]] = qa["answers"][0]["text"] if qa["answers"] else ""
    scores = squad_v2_scores(data, golds)
    assert scores["exact"] == 100.0 and scores["f1"] == 100.0 and scores["total"] == 6078
    assert scores["NoAns_total"] == 3168
