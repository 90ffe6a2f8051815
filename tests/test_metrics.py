"""The task metrics against values worked out by hand (the counts are in the comments)."""

from __future__ import annotations

import pytest

from electra.metrics import bioes_tags, classification_scores, iob2_tags, regression_scores, spans, tagging_scores


def test_classification_scores_by_hand() -> None:
    labels = [1, 1, 0, 0, 1]
    predictions = [1, 0, 0, 1, 1]
    # label 1: TP 2, FP 1, FN 1 -> F1 4/6; label 0: TP 1, FP 1, FN 1 -> F1 1/2
    # MCC = (TP*TN - FP*FN) / sqrt((TP+FP)(TP+FN)(TN+FP)(TN+FN)) = (2*1 - 1*1) / sqrt(3*3*2*2) = 1/6
    scores = classification_scores(labels, predictions, ["accuracy", "f1", "macro_f1", "mcc"])
    assert scores == pytest.approx({"accuracy": 60.0, "f1": 400 / 6, "macro_f1": (400 / 6 + 50) / 2, "mcc": 100 / 6})


def test_f1_is_of_label_one_as_glue_scores_mrpc_and_qqp() -> None:
    # label 1: TP 1, FP 0, FN 2 -> F1 2/4; label 0 would give TP 2, FP 2, FN 0 -> 4/6
    scores = classification_scores([1, 1, 1, 0, 0], [1, 0, 0, 0, 0], ["f1"])
    assert scores["f1"] == pytest.approx(50.0)


def test_regression_scores_by_hand_and_for_a_constant_prediction() -> None:
    # deviations t: (-1, 0, 1), p: (-4/3, -1/3, 5/3); covariance sum 3; r = 3 / sqrt(2 * 42/9)
    scores = regression_scores([1.0, 2.0, 3.0], [1.0, 2.0, 4.0])
    assert scores["pearson"] == pytest.approx(100 * 3 / (2 * 42 / 9) ** 0.5)
    assert scores["spearman"] == pytest.approx(100.0)  # the same order
    assert regression_scores([1.0, 2.0, 3.0], [3.0, 2.0, 1.0])["spearman"] == pytest.approx(-100.0)
    assert regression_scores([1.0, 2.0, 3.0], [0.5, 0.5, 0.5]) == {"pearson": 0.0, "spearman": 0.0}


def test_chunk_scores_count_spans_as_conlleval() -> None:
    gold = [["B-NP", "I-NP", "O", "B-VP", "B-NP"], ["B-NP", "I-NP", "I-NP"]]
    predicted = [["B-NP", "I-NP", "O", "O", "B-NP"], ["B-NP", "I-NP", "O"]]
    # gold chunks: NP 0-1, VP 3, NP 4 | NP 0-2 (4); predicted: NP 0-1, NP 4 | NP 0-1 (3); right: 2
    # precision 2/3, recall 2/4, F1 2PR/(P+R) = 4/7; tokens equal as BIOES: 4 of 5, 1 of 3 (B-NP only)
    scores = tagging_scores(gold, predicted)
    assert scores == pytest.approx({"precision": 200 / 3, "recall": 50.0, "f1": 400 / 7, "accuracy": 62.5})


def test_chunks_are_read_as_conlleval_reads_iob1_iob2_and_bioes() -> None:
    assert spans(["I-NP", "I-NP", "B-NP", "O", "I-VP"]) == [("NP", 0, 1), ("NP", 2, 2), ("VP", 4, 4)]  # IOB1
    assert spans(["B-NP", "I-VP", "I-VP"]) == [("NP", 0, 0), ("VP", 1, 2)]  # a type change ends a chunk
    assert spans(["B-NP", "E-NP", "S-PP", "B-VP", "I-VP", "E-VP"]) == [("NP", 0, 1), ("PP", 2, 2), ("VP", 3, 5)]
    # the same chunks in two encodings score as equal
    assert tagging_scores([["B-NP", "I-NP", "B-VP"]], [["B-NP", "E-NP", "S-VP"]])["f1"] == pytest.approx(100.0)


def test_bioes_and_iob2_encode_the_same_chunks() -> None:
    tags = ["I-NP", "I-NP", "B-NP", "O", "I-VP", "I-VP", "I-VP"]
    assert bioes_tags(tags) == ["B-NP", "E-NP", "S-NP", "O", "B-VP", "I-VP", "E-VP"]
    assert iob2_tags(tags) == ["B-NP", "I-NP", "B-NP", "O", "B-VP", "I-VP", "I-VP"]
    assert iob2_tags(bioes_tags(tags)) == iob2_tags(tags) and spans(bioes_tags(tags)) == spans(tags)
