"""Scores of the fine-tuning tasks, as the reference's scorers compute them, on well-kept libraries.

Classification: accuracy, binary F1 of the positive class, Matthews correlation (scikit-learn).
Regression: Pearson and Spearman correlation (scipy). Tagging: chunk precision, recall and F1 as
conlleval counts them (seqeval's default mode), and token accuracy. Scores are percentages, as the
reference reports them.

One deliberate difference: the reference's chunk scorer reads predicted spans its own way (only B, S or O
end a span; a type change inside one does not split it), while conlleval, the task's official scorer, ends a
span at E and at a type change. The two agree on well-formed predictions and differ on broken ones: with 2% of
the gold tags of CoNLL-2000 dev replaced at random, F1 is 96.5 read the reference's way and 95.3 by conlleval; with
5%, 91.2 and 88.6 (measured in session 12).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def classification_scores(
    labels: Sequence[int], predictions: Sequence[int], metrics: Sequence[str]
) -> dict[str, float]:
    """`metrics` from "accuracy", "f1" (of label id 1, as GLUE's MRPC and QQP), "macro_f1" and "mcc"."""
    from sklearn.metrics import f1_score, matthews_corrcoef

    truth, guess = np.asarray(labels), np.asarray(predictions)
    compute = {
        "accuracy": lambda: float((truth == guess).mean()),
        "f1": lambda: float(f1_score(truth, guess, pos_label=1, average="binary", zero_division=0.0)),
        "macro_f1": lambda: float(f1_score(truth, guess, average="macro", zero_division=0.0)),
        "mcc": lambda: float(matthews_corrcoef(truth, guess)),
    }
    return {name: 100.0 * compute[name]() for name in metrics}


def regression_scores(targets: Sequence[float], predictions: Sequence[float]) -> dict[str, float]:
    from scipy.stats import pearsonr, spearmanr

    truth, guess = np.asarray(targets, dtype=np.float64), np.asarray(predictions, dtype=np.float64)
    if len(truth) < 2 or np.ptp(truth) == 0 or np.ptp(guess) == 0:
        return {"pearson": 0.0, "spearman": 0.0}  # correlation with a constant is undefined; score it as none
    return {
        "pearson": 100.0 * float(pearsonr(truth, guess)[0]),
        "spearman": 100.0 * float(spearmanr(truth, guess)[0]),
    }


def tagging_scores(gold: Sequence[Sequence[str]], predicted: Sequence[Sequence[str]]) -> dict[str, float]:
    """Chunk-level precision/recall/F1 as conlleval (IOB1, IOB2 and BIOES tags alike) and token accuracy
    (on both sequences re-encoded as BIOES, so that the two may use different encodings)."""
    from seqeval.metrics import f1_score, precision_score, recall_score

    gold_lists, predicted_lists = [list(tags) for tags in gold], [list(tags) for tags in predicted]
    tokens = sum(len(tags) for tags in gold_lists)
    same = sum(
        g == p
        for gold_tags, tags in zip(gold_lists, predicted_lists, strict=True)
        for g, p in zip(bioes_tags(gold_tags), bioes_tags(tags), strict=True)
    )
    return {
        "f1": 100.0 * float(f1_score(gold_lists, predicted_lists)),
        "precision": 100.0 * float(precision_score(gold_lists, predicted_lists)),
        "recall": 100.0 * float(recall_score(gold_lists, predicted_lists)),
        "accuracy": 100.0 * same / max(tokens, 1),
    }


def spans(tags: Sequence[str]) -> list[tuple[str, int, int]]:
    """(type, first, last) chunks of a tag sequence, read as conlleval reads it (any of IOB1/IOB2/BIOES)."""
    from seqeval.metrics.sequence_labeling import get_entities

    return [(kind, first, last) for kind, first, last in get_entities(list(tags))]


def bioes_tags(tags: Sequence[str]) -> list[str]:
    """The same chunks re-encoded as BIOES, the label encoding the reference trains taggers on."""
    encoded = ["O"] * len(tags)
    for kind, first, last in spans(tags):
        if first == last:
            encoded[first] = f"S-{kind}"
        else:
            encoded[first], encoded[last] = f"B-{kind}", f"E-{kind}"
            encoded[first + 1 : last] = [f"I-{kind}"] * (last - first - 1)
    return encoded


def iob2_tags(tags: Sequence[str]) -> list[str]:
    """The same chunks as IOB2 (B- opens every chunk), what tagged corpora usually use."""
    encoded = ["O"] * len(tags)
    for kind, first, last in spans(tags):
        encoded[first : last + 1] = [f"B-{kind}"] + [f"I-{kind}"] * (last - first)
    return encoded
