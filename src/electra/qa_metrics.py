"""Question-answering scores exactly as the official SQuAD 1.1, SQuAD 2.0 and MRQA evaluation scripts compute them.

All three normalise answers the same way (lower-case, drop punctuation, the articles a/an/the and
extra whitespace) and score a prediction by its best match among the gold answers: exact match,
and F1 over the normalised tokens. They differ in what counts:
- SQuAD 1.1 and MRQA: every question, a missing prediction scoring 0 (MRQA as the reference calls it,
  `skip_no_answer`, leaves questions without a prediction out instead).
- SQuAD 2.0: unanswerable questions have the empty string as their only gold answer (an empty
  prediction scores 1 on them); questions without a prediction are left out; a question whose
  no-answer probability exceeds `na_prob_thresh` counts as answered "no answer"; scores are broken
  down into HasAns and NoAns; with probabilities given, the best threshold and its scores are found.
"""

from __future__ import annotations

import re
import string
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

PUNCTUATION = set(string.punctuation)
ARTICLES = re.compile(r"\b(a|an|the)\b", re.UNICODE)


def normalize_answer(text: str) -> str:
    text = "".join(character for character in text.lower() if character not in PUNCTUATION)
    return " ".join(ARTICLES.sub(" ", text).split())


def exact_match(prediction: str, gold: str) -> float:
    return float(normalize_answer(prediction) == normalize_answer(gold))


def f1_v1(prediction: str, gold: str) -> float:
    """SQuAD 1.1 / MRQA F1: 0 when nothing is shared (so two empty answers score 0)."""
    predicted, expected = normalize_answer(prediction).split(), normalize_answer(gold).split()
    same = sum((Counter(predicted) & Counter(expected)).values())
    if same == 0:
        return 0.0
    precision, recall = same / len(predicted), same / len(expected)
    return 2 * precision * recall / (precision + recall)


def f1_v2(prediction: str, gold: str) -> float:
    """SQuAD 2.0 F1: an empty answer matches only an empty answer."""
    predicted, expected = normalize_answer(prediction).split(), normalize_answer(gold).split()
    if not predicted or not expected:
        return float(predicted == expected)
    return f1_v1(prediction, gold)


def squad_questions(dataset: Mapping[str, Any] | list) -> Iterator[dict[str, Any]]:
    """The question entries of a SQuAD JSON (its "data" list or the whole file)."""
    articles = dataset["data"] if isinstance(dataset, Mapping) else dataset
    for article in articles:
        for paragraph in article["paragraphs"]:
            yield from paragraph["qas"]


def squad_v1_scores(dataset: Mapping[str, Any] | list, predictions: Mapping[str, str]) -> dict[str, float]:
    answers = {qa["id"]: [answer["text"] for answer in qa["answers"]] for qa in squad_questions(dataset)}
    return mrqa_scores(answers, predictions)


def mrqa_scores(
    answers: Mapping[str, list[str]], predictions: Mapping[str, str], skip_no_answer: bool = False
) -> dict[str, float]:
    """{"exact_match", "f1"} in percent over the questions of `answers` (id -> gold answer texts)."""
    exact = f1 = 0.0
    total = 0
    for qid, golds in answers.items():
        if qid not in predictions:
            total += 0 if skip_no_answer else 1
            continue
        total += 1
        exact += max(exact_match(predictions[qid], gold) for gold in golds)
        f1 += max(f1_v1(predictions[qid], gold) for gold in golds)
    return {"exact_match": 100.0 * exact / max(total, 1), "f1": 100.0 * f1 / max(total, 1)}


def mrqa_answers(lines: Iterable[dict[str, Any]]) -> dict[str, list[str]]:
    """Question id -> gold answers of MRQA jsonl records (a header record is skipped)."""
    return {qa["qid"]: qa["answers"] for record in lines if "header" not in record for qa in record["qas"]}


def squad_v2_scores(
    dataset: Mapping[str, Any] | list,
    predictions: Mapping[str, str],
    na_probs: Mapping[str, float] | None = None,
    na_prob_thresh: float = 1.0,
) -> dict[str, float]:
    """The official SQuAD 2.0 evaluation's output dictionary (percentages; totals as counts)."""
    has_answer: dict[str, bool] = {}
    exact_raw: dict[str, float] = {}
    f1_raw: dict[str, float] = {}
    for qa in squad_questions(dataset):
        qid = qa["id"]
        has_answer[qid] = bool(qa["answers"])
        golds = [answer["text"] for answer in qa["answers"] if normalize_answer(answer["text"])] or [""]
        if qid not in predictions:
            continue
        exact_raw[qid] = max(exact_match(predictions[qid], gold) for gold in golds)
        f1_raw[qid] = max(f1_v2(predictions[qid], gold) for gold in golds)
    probabilities = dict(na_probs) if na_probs is not None else {qid: 0.0 for qid in predictions}

    def thresholded(raw: dict[str, float]) -> dict[str, float]:
        return {
            qid: float(not has_answer[qid]) if probabilities[qid] > na_prob_thresh else score
            for qid, score in raw.items()
        }

    exact, f1 = thresholded(exact_raw), thresholded(f1_raw)

    def summary(qids: list[str]) -> dict[str, float]:
        return {
            "exact": 100.0 * sum(exact[qid] for qid in qids) / len(qids),
            "f1": 100.0 * sum(f1[qid] for qid in qids) / len(qids),
            "total": float(len(qids)),
        }

    results = summary(list(exact)) if exact else {"exact": 0.0, "f1": 0.0, "total": 0.0}
    for name, wanted in (("HasAns", True), ("NoAns", False)):
        qids = [qid for qid in exact if has_answer[qid] == wanted]
        if qids:
            results.update({f"{name}_{key}": value for key, value in summary(qids).items()})
    if na_probs is not None:
        for name, raw in (("exact", exact_raw), ("f1", f1_raw)):
            best, threshold = best_threshold(predictions, raw, probabilities, has_answer)
            results[f"best_{name}"], results[f"best_{name}_thresh"] = best, threshold
    return results


def best_threshold(
    predictions: Mapping[str, str],
    scores: Mapping[str, float],
    na_probs: Mapping[str, float],
    has_answer: Mapping[str, bool],
) -> tuple[float, float]:
    """The no-answer threshold that maximises the score, as the official script searches it: start from
    answering "no answer" everywhere and, in order of rising no-answer probability, answer one more."""
    score = best = float(sum(1 for qid in has_answer if not has_answer[qid]))
    threshold = 0.0
    for qid in sorted(na_probs, key=lambda key: na_probs[key]):
        if qid not in scores:
            continue
        if has_answer[qid]:
            score += scores[qid]
        elif predictions[qid]:
            score -= 1
        if score > best:
            best, threshold = score, na_probs[qid]
    return 100.0 * best / len(scores), threshold
