"""`electra predict`: a fine-tuned model folder over a file of examples, one JSON line of prediction each.

Reads CSV/TSV/JSONL with named columns, plain text (one example a line) or, for question answering, SQuAD/MRQA
files; `Predictor` is the loaded model that `electra serve` and the ONNX export share their interface with.
"""

from __future__ import annotations

import json
import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from electra.errors import UserError
from electra.fileio import atomic_output, choose_output_file, open_text, require_file, write_text_atomic
from electra.finetune_data import Featurizer, TaskHead
from electra.metrics import regression_scores
from electra.qa import read_mrqa, read_squad, records_to_examples
from electra.task_model import decode_predictions, input_line, load_task_model, predict_features, read_model_vocab
from electra.tasks import (
    GLUE_TEXT_COLUMNS,
    TABLE_SUFFIXES,
    Example,
    cell_text,
    label_scores,
    read_jsonl_rows,
    read_table_rows,
)
from electra.tokenization import split_words
from electra.trainer import resolve_precision


def read_prediction_inputs(
    path: Path, head: TaskHead, spec: dict[str, Any], columns: dict[str, str | None], header: bool | None = None
) -> list[Example]:
    """Examples to predict from CSV/TSV/JSONL (named columns) or plain text (one example a line; for a model of
    pairs a tab separates the two texts; tagging splits the line into words: see split_words). A CSV/TSV file has a
    header line unless `header` is False or, left None, the model's task was read without one: its columns are then
    named by number from "0"."""
    require_file(path, "input file")
    suffix = path.suffix.lower()
    flags = {"text_column": "--text-column", "text_column_2": "--text-column-2", "label_column": "--label-column"}
    named = [flag for key, flag in flags.items() if columns.get(key)]
    if named and head.kind == "qa":
        raise UserError(
            f'{" and ".join(named)}: a question-answering model reads the "context" and "question" of JSONL, '
            'SQuAD or MRQA files, not columns; leave it out (fine-tune with "do_train": false to score answers)'
        )
    if head.kind == "qa":
        return read_questions(path)
    tagging = head.kind == "tagging"
    given = columns.get("text_column") or spec.get("text_column")
    glue_columns = GLUE_TEXT_COLUMNS.get(spec.get("name", ""))
    glue = None if given else glue_columns  # a GLUE model on GLUE's own files
    text_column = given or (glue[0] if glue else "tokens" if tagging else "text")
    text_column_2 = columns.get("text_column_2") or spec.get("text_column_2") or (glue[1] if glue else None)
    label_column = columns.get("label_column")
    # A model known to read one text: a single-sentence GLUE task, a user task without text_column_2.
    one_text = (glue_columns is not None and glue_columns[1] is None) or (
        "text_column" in spec and not spec.get("text_column_2")
    )
    if columns.get("text_column_2") and (one_text or tagging):
        raise UserError(
            f"--text-column-2 names a second text, and this model was fine-tuned on single texts (task "
            f"{spec.get('name', head.name)!r}): leave it out"
        )
    text_flags = [flag for flag in named if flag != "--label-column"]
    if text_flags and suffix not in TABLE_SUFFIXES:
        raise UserError(
            f"{' and '.join(text_flags)}: {path} is plain text, one example a line, without columns; leave it out, "
            "or give a .csv, .tsv or .jsonl file"
        )
    if label_column and (head.kind not in ("classification", "regression") or suffix not in TABLE_SUFFIXES):
        raise UserError(
            "--label-column scores classification and regression models on CSV/TSV/JSONL files; fine-tune with "
            '"do_train": false to evaluate taggers and question answering on their task folders'
        )
    examples = []
    if suffix in TABLE_SUFFIXES:
        if suffix == ".jsonl":
            rows = read_jsonl_rows(path)
        else:
            has_header = spec.get("header", True) if header is None else header
            rows = read_table_rows(path, has_header, literal_quotes=glue is not None and suffix == ".tsv")
        for number, row in rows:
            where = f"{path}:{number}"
            if text_column not in row or (text_column_2 and text_column_2 not in row):
                first_missing = text_column not in row
                missing, flag = (text_column, "--text-column") if first_missing else (text_column_2, "--text-column-2")
                unnamed = "; if line 1 is an example, not a header, pass --no-header and name columns by number from 0"
                table = suffix != ".jsonl"  # every row has the header's columns: the header lacks it
                raise UserError(
                    f"{f'{path}:1, the header' if table and has_header else where}: no column {missing!r} (columns: "
                    f"{', '.join(map(str, row))}); name it with {flag}"
                    + (unnamed if table and not missing.isdigit() else "")
                )
            value = row[text_column]
            if tagging:
                words = (
                    [cell_text(word, where, text_column, "word") for word in value]
                    if isinstance(value, list)
                    else split_words(cell_text(value, where, text_column))
                )
                examples.append(Example(len(examples), words=words, source=where))
            else:
                first = cell_text(value, where, text_column)
                second = cell_text(row[text_column_2], where, text_column_2) if text_column_2 else None
                examples.append(Example(len(examples), text_a=first, text_b=second, source=where))
            if label_column:
                examples[-1].label = gold_label(head, row, label_column, where)
        return examples
    # A model known to read one text takes a line's tab as a space; any other model, a tab separates a pair's two
    # texts, and one known to read pairs needs both.
    pairs = bool(spec.get("text_column_2")) or (glue_columns is not None and glue_columns[1] is not None)
    with open_text(path) as handle:
        for number, line in enumerate(handle, 1):
            line = line.rstrip("\n")
            if not line.strip():
                continue
            if tagging:
                examples.append(Example(len(examples), words=split_words(line), source=f"{path}:{number}"))
            else:
                texts = [line] if one_text else line.split("\t")
                if len(texts) > 2 or (pairs and len(texts) != 2):
                    raise UserError(
                        f"{path}:{number}: {len(texts) - 1} tab(s) in the line, where a model of pairs takes two texts "
                        "with one tab between them (a text holding a tab goes in a CSV, TSV or JSONL file)"
                    )
                second = texts[1] if len(texts) == 2 else None
                examples.append(
                    Example(len(examples), text_a=texts[0], text_b=second or None, source=f"{path}:{number}")
                )
    return examples


def gold_label(head: TaskHead, row: dict[str, Any], column: str, where: str) -> str | float:
    """The true label of a row given to `electra predict --label-column`, checked against what the model knows."""
    if column not in row or row[column] in (None, ""):
        raise UserError(f"{where}: no {column!r} value (columns: {', '.join(map(str, row))}); see --label-column")
    value = cell_text(row[column], where, column, "label").strip()
    if head.kind == "regression":
        try:
            number = float(value)
        except ValueError:
            number = math.nan
        if not math.isfinite(number):
            raise UserError(f"{where}: {column} {value!r} is not a finite number")
        return number
    if value not in head.labels:
        raise UserError(f"{where}: label {value!r} is not one the model was trained on ({', '.join(head.labels)})")
    return value


def prediction_scores(head: TaskHead, examples: list[Example], predictions: list[dict]) -> dict[str, float]:
    """How the predictions compare with the examples' labels: the metrics the reference reports for the kind
    (accuracy, macro-F1 and MCC, plus F1 of the second label for two classes; Pearson and Spearman)."""
    if head.kind == "regression":
        return regression_scores([e.label for e in examples], [p["value"] for p in predictions])
    metrics = ["accuracy", "macro_f1", "mcc"] + (["f1"] if len(head.labels) == 2 else [])
    return label_scores([e.label for e in examples], [p["label"] for p in predictions], head.labels, metrics)


class Predictor:
    """A fine-tuned model folder ready to predict: model, task head, featurizer, on the best device."""

    def __init__(self, model_dir: str | Path, precision: str = "auto", device: torch.device | None = None):
        self.folder = Path(model_dir)
        self.model, self.head, self.spec = load_task_model(self.folder)
        self.featurizer = Featurizer.for_model(read_model_vocab(self.folder), self.spec)
        cuda = torch.cuda.is_available()
        self.device = device or (torch.device("cuda") if cuda else torch.device("cpu"))
        self.model.to(self.device).eval()
        self.precision = precision
        if resolve_precision(precision, self.device) == torch.bfloat16:
            # Autocast would convert each weight to bf16 on every call; converting the linear layers once
            # is ~1.5x faster for a single request and gives the same outputs (LayerNorm stays float32).
            for module in self.model.modules():
                if isinstance(module, nn.Linear):
                    module.to(torch.bfloat16)

    @property
    def runtime(self) -> str:
        """What computes the predictions, for /health: e.g. "pytorch cpu fp32"."""
        dtype = resolve_precision(self.precision, self.device)
        return f"pytorch {self.device.type} {str(dtype or 'fp32').removeprefix('torch.')}"

    def predict(self, examples: list[Example], batch_size: int = 32, show_progress: bool = False) -> list[dict]:
        """Decoded predictions (see `decode`), in the order of `examples`."""
        features = self.featurizer.features(examples, self.head, 0)
        outputs = predict_features(
            self.model, features, 0, batch_size, self.device, self.featurizer.pad_id, self.precision, show_progress
        )
        return decode_predictions(self.head, self.spec, examples, features, outputs, self.featurizer)


def read_questions(path: Path) -> list[Any]:
    """Questions to answer: a SQuAD/MRQA file, or JSONL with "context" and "question" (and an optional "id")."""
    if path.suffix.lower() not in (".json", ".jsonl"):
        raise UserError(
            f'{path}: a question-answering model reads JSONL, one {{"context": ..., "question": ...}} a line, or a '
            "SQuAD (.json) or MRQA (.jsonl) file"
        )
    if path.suffix.lower() == ".json":
        return read_squad(path, training=False, v2=False)
    rows = read_jsonl_rows(path)
    if any("qas" in row for _, row in rows):  # MRQA: its first line is a header
        return read_mrqa(path, training=False, rows=rows)
    return records_to_examples(path, rows)


def run_prediction(
    model_dir: str | Path,
    input_file: str | Path,
    output_file: str | Path | None = None,
    batch_size: int = 32,
    columns: dict[str, str | None] | None = None,
    show_progress: bool = True,
    precision: str = "auto",
    header: bool | None = None,
) -> PredictionRun:
    """`electra predict`: a fine-tuned model over a file, one JSON line per example; with
    `columns["label_column"]`, also the scores against that column (written beside as .scores.json). `header`:
    see read_prediction_inputs."""
    from electra.export import open_predictor  # ONNX folders too; export.py builds on this module

    source = Path(input_file)
    target = choose_output_file(output_file, source.with_name(f"{source.stem}.predictions.jsonl"), source)
    predictor = open_predictor(model_dir, precision)
    examples = read_prediction_inputs(source, predictor.head, predictor.spec, columns or {}, header)
    if not examples:
        raise UserError(f"{source} holds no examples to predict")
    if predictor.head.kind != "qa" and (note := predictor.featurizer.unknown_note(examples, str(source))):
        print(note, file=sys.stderr)
    if predictor.head.kind in ("classification", "regression"):
        blank = [e.source for e in examples if not (e.text_a or "").strip() and not (e.text_b or "").strip()]
        if blank:
            print(
                f"note: {len(blank):,} of {len(examples):,} inputs have no text (e.g. {', '.join(blank[:3])}): the "
                "model predicts from [CLS] and [SEP] alone there, which says nothing about a text",
                file=sys.stderr,
            )
    predictions = predictor.predict(examples, batch_size, show_progress)
    limit = predictor.spec.get("max_seq_length", 128)
    past_the_limit = {  # what a row past max_seq_length carries, and what that means
        "untagged_words": 'their last words were not tagged ("O"); split such sentences to tag them',
        "cut_tokens": "the model read only their beginning",
    }
    for key, meaning in past_the_limit.items():
        count = sum(key in prediction for prediction in predictions)
        if count:
            print(
                f"note: {count:,} of {len(predictions):,} inputs were longer than the model's max_seq_length {limit}: "
                f'{meaning} (counted as "{key}" in their rows)',
                file=sys.stderr,
            )
    with atomic_output(target) as tmp, open(tmp, "w", encoding="utf-8") as handle:
        for example, prediction in zip(examples, predictions, strict=True):
            handle.write(json.dumps({**input_line(example), **prediction}, ensure_ascii=False) + "\n")
    scores = None
    if (columns or {}).get("label_column"):
        scores = prediction_scores(predictor.head, examples, predictions)
        write_text_atomic(target.with_suffix(".scores.json"), json.dumps(scores, indent=2) + "\n")
    return PredictionRun(target, len(examples), scores)


@dataclass
class PredictionRun:
    path: Path
    count: int
    scores: dict[str, float] | None = None  # against --label-column
