"""Fine-tuning tasks: where examples come from, what their labels are, and how predictions are scored.

Each task reads `<data-dir>/finetuning_data/<name>/<split>.<ext>`. The GLUE tasks and CoNLL-2000
chunking have the reference's names, file layouts and metrics; a user task is described by a small
spec (text and label columns of a CSV/TSV/JSONL file, or a CoNLL-style tagging file), and a new kind
of task is a subclass of `Task` registered with `@register_task("name")`.

A task is one of three kinds, which decide the head and the loss: "classification" (softmax over
`labels`), "regression" (one value, trained on targets scaled to [0, 1] by `value_range`) and
"tagging" (one label per word, predicted at its first word piece).
"""

from __future__ import annotations

import csv
import importlib
import importlib.util
import io
import json
import math
import re
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from electra.errors import UserError
from electra.fileio import open_text
from electra.metrics import bioes_tags, classification_scores, regression_scores, tagging_scores

KINDS = ("classification", "regression", "tagging")  # user tasks; "qa" is built in (see QATask)
TABLE_SUFFIXES = (".tsv", ".csv", ".jsonl")
DEBUG_MAX_EXAMPLES = 100  # "debug": true reads this many examples per split, as the reference


@dataclass
class Example:
    eid: int
    text_a: str = ""
    text_b: str | None = None
    words: list[str] | None = None  # tagging
    label: Any = None  # a label name, a float, or (tagging) one tag per word; None where a test set has none
    source: str = ""  # "file:line", for error messages


class Task:
    """A fine-tuning task. Subclasses set `kind` (and `labels` where fixed) and implement `read_split`."""

    kind = "classification"
    labels: Sequence[str] | None = None  # None: discovered from the training file (sorted)
    metrics: tuple[str, ...] = ("accuracy",)
    value_range: tuple[float, float] = (0.0, 1.0)  # regression targets are scaled by it for training
    span_labels = True  # tagging: train on BIOES-encoded chunks (the reference's encoding) rather than raw tags

    def __init__(self, name: str, folder: Path, debug: bool = False, double_unordered: bool = True):
        self.name = name
        self.folder = folder
        self.debug = debug
        self.double_unordered = double_unordered  # pair tasks whose order does not matter: train on both orders

    # -- reading ---------------------------------------------------------------------------------
    def read_split(self, split: str) -> list[Example]:
        raise NotImplementedError

    def split_file(self, split: str, suffixes: Sequence[str]) -> Path:
        found = [path for path in (self.folder / f"{split}{suffix}" for suffix in suffixes) if path.is_file()]
        if len(found) > 1:
            raise UserError(
                f"task {self.name!r}: {self.folder} holds {' and '.join(path.name for path in found)}: keep one "
                f"{split} file (move the other out of the folder)"
            )
        if found:
            return found[0]
        expected = " or ".join(f"{split}{suffix}" for suffix in suffixes)
        raise UserError(
            f"task {self.name!r}: {self.folder / expected} not found. Put the {split} split of {self.name} "
            f"in {self.folder}/ as {expected} (the layout of the reference: <data-dir>/finetuning_data/<task>/)"
        )

    def has_split(self, split: str) -> bool:
        return any((self.folder / f"{split}{suffix}").is_file() for suffix in (*TABLE_SUFFIXES, ".txt", ".json"))

    def examples(self, split: str) -> list[Example]:
        examples = self.read_split(split)
        if self.debug:
            examples = examples[:DEBUG_MAX_EXAMPLES]
        if not examples:
            raise UserError(f"task {self.name!r}: the {split} split in {self.folder} holds no examples")
        return examples

    def eval_splits(self) -> list[str]:
        return ["dev"]

    def test_splits(self) -> list[str]:
        return ["test"]

    # -- labels ----------------------------------------------------------------------------------
    def label_list(self, train: list[Example] | None = None) -> list[str]:
        """Class names (classification) or tags (tagging, BIOES-encoded when `span_labels`), in id order."""
        if self.labels is not None:
            if self.kind == "tagging" and self.span_labels:  # the spec names the corpus's tags; the model learns BIOES
                return sorted({"O"} | {f"{edge}-{kind}" for kind in span_types(self.labels) for edge in "BIES"})
            return list(self.labels)
        train = train if train is not None else self.examples("train")
        if self.kind == "tagging":  # as the reference's tagging tasks: the tags of every labelled split
            others = [split for split in [*self.eval_splits(), *self.test_splits()] if self.has_split(split)]
            sentences = train + [example for split in others for example in self.examples(split)]
            return sorted(
                {tag for example in sentences if example.label is not None for tag in self.training_tags(example.label)}
            )
        labels = sorted({str(example.label) for example in train})
        numbers: dict[float, str] = {}
        for label in labels:
            try:
                number = float(label)
            except ValueError:
                continue
            if number in numbers:
                raise UserError(
                    f"task {self.name!r}: the training labels {numbers[number]!r} and {label!r} are one number written "
                    "two ways, and would be two classes: write each label one way (or list both in the task spec's "
                    '"labels" to keep them apart)'
                )
            numbers[number] = label
        return labels

    def training_tags(self, tags: list[str]) -> list[str]:
        return bioes_tags(tags) if self.span_labels else list(tags)

    def check_labels(
        self,
        examples: list[Example],
        labels: list[str],
        split: str,
        origin: str = "the labels learned from the training file",
    ) -> None:
        # Span tags are compared by chunk type, so that a message names a tag of the file, not its BIOES form.
        spans = self.kind == "tagging" and self.span_labels
        known = span_types(labels) if spans else set(labels)
        shown = ("chunk types " + ", ".join(sorted(known)[:20])) if spans else ", ".join(labels[:20])
        for example in examples:
            if example.label is None or self.kind == "regression":
                continue
            if spans:
                unknown = [tag for tag in example.label if tag != "O" and tag[2:] not in known]
            else:
                found = example.label if self.kind == "tagging" else [str(example.label)]
                unknown = [tag for tag in found if tag not in known]
            if unknown:
                raise UserError(
                    f"{example.source}: label {unknown[0]!r} of the {split} split of task {self.name!r} is not "
                    f'among {origin} ({shown}): fix the row, or list every label in the task spec\'s "labels"'
                )

    # -- scoring ---------------------------------------------------------------------------------
    def score(self, examples: list[Example], predictions: list[Any], labels: list[str]) -> dict[str, float]:
        """Metrics of predictions (label names, values, or tag lists) against the examples' labels."""
        if self.kind == "regression":
            return regression_scores([float(example.label) for example in examples], predictions)
        if self.kind == "tagging":
            if self.span_labels:
                return tagging_scores([example.label for example in examples], predictions)
            pairs = [
                (g, p)
                for example, tags in zip(examples, predictions, strict=True)
                for g, p in zip(example.label, tags, strict=True)
            ]
            return {"accuracy": 100.0 * sum(g == p for g, p in pairs) / max(len(pairs), 1)}
        return label_scores([str(example.label) for example in examples], predictions, labels, self.metrics)


def label_scores(gold: list[str], predicted: list[str], labels: list[str], metrics: Sequence[str]) -> dict[str, float]:
    """`classification_scores` of label names, numbered by their place in `labels`."""
    index = {label: i for i, label in enumerate(labels)}
    return classification_scores([index[label] for label in gold], [index[label] for label in predicted], metrics)


# ----------------------------------------------------------------------------------------------- registry
TASKS: dict[str, Callable[..., Task]] = {}


def register_task(name: str) -> Callable:
    """Class decorator: `@register_task("my_task")` makes "task_names": ["my_task"] use the class."""

    def register(cls: type[Task]) -> type[Task]:
        TASKS[name] = cls
        return cls

    return register


def import_task_module(source: str) -> None:
    """Run a Python file (or import a module by its dotted name) whose `@register_task` classes then join the
    registry: how `electra finetune --task-module` sees task types written in Python."""
    path = Path(source)
    try:
        if source.endswith(".py") or path.is_file():
            if not path.is_file():
                raise UserError(f"--task-module {source}: no such file")
            spec = importlib.util.spec_from_file_location(f"electra_user_tasks_{path.stem}", path)
            module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
            sys.modules[spec.name] = module  # type: ignore[union-attr]
            spec.loader.exec_module(module)  # type: ignore[union-attr]
        else:
            importlib.import_module(source)
    except UserError:
        raise
    except Exception as error:  # the user's code: any failure is theirs to fix, named with its place
        raise UserError(f"--task-module {source} failed to load: {type(error).__name__}: {error}") from None


def get_task(
    name: str, finetuning_data: Path, specs: dict[str, Any], debug: bool = False, double_unordered: bool = True
) -> Task:
    folder = finetuning_data / name
    if name in specs:
        return TableTask(name, folder, debug, specs[name])
    if name in TASKS:
        return TASKS[name](name, folder, debug, double_unordered)
    import difflib

    close = difflib.get_close_matches(name, sorted(TASKS), n=1)
    raise UserError(
        f"unknown task {name!r}{f' (did you mean {close[0]!r}?)' if close else ''}: built-in tasks are "
        f"{', '.join(sorted(TASKS))}; for your own data add a spec, e.g. "
        f'"tasks": {{"{name}": {{"type": "classification", "text_column": "text", "label_column": "label"}}}}, '
        "or load a task written in Python with --task-module FILE"
    )


# ----------------------------------------------------------------------------------------------- GLUE
def read_tsv_rows(path: Path) -> list[tuple[int, list[str]]]:
    """(line number, fields) of a tab-separated file, quotes taken literally as the reference's reader."""
    with open_text(path, newline="") as handle:
        return [
            (number, row) for number, row in enumerate(csv.reader(handle, delimiter="\t", quoting=csv.QUOTE_NONE), 1)
        ]


@dataclass(frozen=True)
class Columns:
    text_a: int
    text_b: int | None
    label: int | None
    skip_header: bool = True


class GlueTask(Task):
    """A GLUE task in the layout of `download_glue_data.py`, read as the reference reads it: malformed rows
    (the official QQP and MNLI files have a few) are skipped with a warning naming them; a label outside the task's
    (or an STS score outside 0-5) is an error naming its row."""

    columns: Columns
    test_columns: Columns
    swap_in_training = False  # with double_unordered, also train on (text_b, text_a)

    def split_path(self, split: str) -> Path:
        return self.split_file(split, (".tsv",))

    def split_columns(self, split: str) -> Columns:
        return self.test_columns if split.startswith("test") else self.columns

    def read_split(self, split: str) -> list[Example]:
        path = self.split_path(split)
        columns = self.split_columns(split)
        examples, skipped = [], []
        for number, row in read_tsv_rows(path):
            if number == 1 and columns.skip_header:
                continue
            try:
                label = row[columns.label] if columns.label is not None else None
                if label is not None and self.kind == "regression":
                    label = float(label)
                example = Example(
                    eid=number - 1 - int(columns.skip_header),  # the row's index in the file, as GLUE's
                    text_a=row[columns.text_a],
                    text_b=row[columns.text_b] if columns.text_b is not None else None,
                    label=label,
                    source=f"{path}:{number}",
                )
            except (IndexError, ValueError):
                skipped.append(number)
                continue
            self.check_glue_label(label, path, number)
            examples.append(example)
        if skipped:
            lines = ", ".join(str(number) for number in skipped[:5]) + (" ..." if len(skipped) > 5 else "")
            print(f"warning: {path}: skipped {len(skipped)} malformed row(s), line(s) {lines}", file=sys.stderr)
        if split == "train" and self.swap_in_training and self.double_unordered:
            after = examples[-1].eid + 1 if examples else 0
            examples += [
                Example(after + i, e.text_b or "", e.text_a, label=e.label, source=e.source)
                for i, e in enumerate(examples)
            ]
        return examples

    def check_glue_label(self, label: Any, path: Path, number: int) -> None:
        """A label the task cannot have would be trained on (or scored) as something else: refused, as the
        reference refuses it (with a KeyError or an assertion)."""
        if label is None:
            return
        if self.labels is not None and label not in self.labels:
            raise UserError(
                f"{path}:{number}: label {label!r} is not one of {self.name}'s labels ({', '.join(self.labels)}); "
                "correct or remove that row"
            )
        low, high = self.value_range
        if self.kind == "regression" and not low <= label <= high:
            raise UserError(
                f"{path}:{number}: score {label:g} is outside {self.name}'s range {low:g} to {high:g}; "
                "correct or remove that row"
            )


def _glue(
    name: str, labels: tuple[str, ...] | None, columns: Columns, test_columns: Columns, **attributes: Any
) -> None:
    cls = type(name.upper(), (GlueTask,), {"labels": labels, "columns": columns, "test_columns": test_columns})
    for key, value in attributes.items():
        setattr(cls, key, value)
    register_task(name)(cls)


# The header names of the text columns in GLUE's dev and test files (CoLA's dev file has no header), so that
# `electra predict` runs a GLUE model over them without being told.
GLUE_TEXT_COLUMNS = {
    "cola": ("sentence", None),
    "sst": ("sentence", None),
    "mrpc": ("#1 String", "#2 String"),
    "qqp": ("question1", "question2"),
    "rte": ("sentence1", "sentence2"),
    "qnli": ("question", "sentence"),
    "sts": ("sentence1", "sentence2"),
    "mnli": ("sentence1", "sentence2"),
}
BINARY = ("0", "1")
ENTAILMENT = ("entailment", "not_entailment")
_glue("cola", BINARY, Columns(3, None, 1, skip_header=False), Columns(1, None, None), metrics=("mcc", "accuracy"))
_glue("sst", BINARY, Columns(0, None, 1), Columns(1, None, None))
_glue("mrpc", BINARY, Columns(3, 4, 0), Columns(3, 4, None), metrics=("accuracy", "f1"), swap_in_training=True)
_glue("qqp", BINARY, Columns(3, 4, 5), Columns(1, 2, None), metrics=("accuracy", "f1"))
_glue("rte", ENTAILMENT, Columns(1, 2, 3), Columns(1, 2, None))
_glue("qnli", ENTAILMENT, Columns(1, 2, 3), Columns(1, 2, None))
_glue(
    "sts",
    None,
    Columns(-3, -2, -1),
    Columns(-2, -1, None),
    kind="regression",
    metrics=("spearman", "pearson"),
    value_range=(0.0, 5.0),
    swap_in_training=True,
)


@register_task("mnli")
class MNLI(GlueTask):
    labels = ("contradiction", "entailment", "neutral")
    columns = Columns(8, 9, -1)
    test_columns = Columns(8, 9, None)

    def split_path(self, split: str) -> Path:
        return self.split_file("dev_matched" if split == "dev" else split, (".tsv",))

    def eval_splits(self) -> list[str]:
        return ["dev"] + (["dev_mismatched"] if self.has_split("dev_mismatched") else [])

    def split_columns(self, split: str) -> Columns:
        # GLUE's diagnostic set (AX), kept in mnli/ and predicted by the MNLI model: index, premise, hypothesis
        return Columns(1, 2, None) if split == "diagnostic" else super().split_columns(split)

    def test_splits(self) -> list[str]:
        return ["test_matched", "test_mismatched", "diagnostic"]


# ----------------------------------------------------------------------------------------------- tagging
def read_conll(path: Path) -> list[Example]:
    """Sentences of a CoNLL file: one `word ... tag` line per token (first and last fields), blank lines between."""
    examples: list[Example] = []
    words: list[str] = []
    tags: list[str] = []
    start = 1
    width = None  # fields of the file's first token line; a line with another count lost a field (the tag?)
    with open_text(path) as handle:
        for number, line in enumerate(handle, 1):
            fields = line.split()
            if fields and fields[0] != "-DOCSTART-":
                width = width or (len(fields), number)
                if len(fields) != width[0]:
                    raise UserError(
                        f"{path}:{number}: {len(fields)} field(s) where line {width[1]} has {width[0]} (word ... tag): "
                        f"{line.strip()!r}"
                    )
            if not fields or fields[0] == "-DOCSTART-":
                if words:
                    examples.append(Example(len(examples), words=words, label=tags, source=f"{path}:{start}"))
                words, tags = [], []
                continue
            if len(fields) < 2:
                raise UserError(
                    f"{path}:{number}: expected a word and its tag separated by whitespace, got {line.strip()!r}"
                )
            if not words:
                start = number
            words.append(fields[0])
            tags.append(fields[-1])
    if words:
        examples.append(Example(len(examples), words=words, label=tags, source=f"{path}:{start}"))
    return examples


@register_task("chunk")
class Chunking(Task):
    """CoNLL-2000 text chunking: `word POS chunk` lines, chunk F1 as conlleval."""

    kind = "tagging"
    metrics = ("f1", "precision", "recall", "accuracy")

    def read_split(self, split: str) -> list[Example]:
        return read_conll(self.split_file(split, (".txt",)))


# ----------------------------------------------------------------------------------------------- question answering
class QATask(Task):
    """Extractive question answering: SQuAD (`<split>.json`) or MRQA (`<split>.jsonl`), scored as their official
    scripts. Training splits carry answer positions; answers not found at their offsets are skipped with a count."""

    kind = "qa"
    labels = ()
    squad_format = False
    v2 = False
    metrics = ("exact_match", "f1")

    def read_split(self, split: str) -> list[Any]:
        from electra.qa import read_mrqa, read_squad

        training = split == "train"  # the others are scored against their gold answers
        if self.squad_format:
            return read_squad(self.split_file(split, (".json",)), training, self.v2, scored=not training)
        return read_mrqa(self.split_file(split, (".jsonl",)), training, scored=not training)

    def check_labels(self, examples: list[Any], labels: list[str], split: str, origin: str = "") -> None:
        return None  # answers are spans of the context, not labels

    def test_splits(self) -> list[str]:
        return []  # the official test sets are hidden; dev predictions are written as the reference does

    def score(
        self, examples: list[Any], predictions: list[Any], labels: list[str], no_answer_threshold: float = 1.0
    ) -> dict[str, float]:
        """`predictions`: {"answer", "no_answer_odds", "best_span" (SQuAD 2.0)} per example. SQuAD 2.0 is scored
        as the reference does: the best spans, "" where the odds exceed `no_answer_threshold` (qa_na_threshold)."""
        from electra.qa_metrics import mrqa_scores, squad_v2_scores

        if not self.v2:
            answers = {example.qas_id: entry["answer"] for example, entry in zip(examples, predictions, strict=True)}
            return mrqa_scores({example.qas_id: example.gold_answers for example in examples}, answers)
        answers = {
            example.qas_id: entry.get("best_span", entry["answer"])
            for example, entry in zip(examples, predictions, strict=True)
        }
        questions = [
            {"id": example.qas_id, "answers": [{"text": text} for text in example.gold_answers]} for example in examples
        ]
        dataset = {"data": [{"paragraphs": [{"qas": questions}]}]}
        odds = {example.qas_id: entry["no_answer_odds"] for example, entry in zip(examples, predictions, strict=True)}
        return squad_v2_scores(dataset, answers, odds, no_answer_threshold)


def _qa(name: str, **attributes: Any) -> None:
    register_task(name)(type(name.upper(), (QATask,), attributes))


_qa("squadv1", squad_format=True)
_qa("squad", squad_format=True, v2=True)
for _mrqa_name in ("newsqa", "naturalqs", "triviaqa", "searchqa", "hotpotqa"):
    _qa(_mrqa_name)


# ----------------------------------------------------------------------------------------------- user tasks
SPEC_TYPES: dict[str, type] = {  # every key a task spec may have, and the JSON type of its value
    "type": str,
    "text_column": str,
    "text_column_2": str,
    "label_column": str,
    "labels": list,
    "metrics": list,
    "header": bool,
    "span_labels": bool,
}


def spec_with_defaults(spec: dict[str, Any]) -> dict[str, Any]:
    """A user task's spec with every key it leaves out set to what the task then assumes, so that two specs which
    mean the same task compare equal."""
    tagging = spec.get("type") == "tagging"
    defaults = {
        "type": "classification",
        "text_column": "tokens" if tagging else "text",
        "text_column_2": None,
        "label_column": "tags" if tagging else "label",
        "labels": None,
        "metrics": None,
        "header": True,
        "span_labels": True,
    }
    return {**defaults, **spec}


class TableTask(Task):
    """A user task from a spec: CSV/TSV/JSONL rows with named text and label columns (classification,
    regression), or tagging from CoNLL-style `.txt` files or JSONL rows with a list of tokens and of tags."""

    def __init__(self, name: str, folder: Path, debug: bool, spec: dict[str, Any]):
        super().__init__(name, folder, debug)
        if not isinstance(spec, dict):
            raise UserError(f'the spec of task {name!r} must be a JSON object such as {{"type": "classification"}}')
        unknown = set(spec) - set(SPEC_TYPES)
        if unknown:
            raise UserError(f"task {name!r}: unknown spec key(s) {sorted(unknown)}; known: {sorted(SPEC_TYPES)}")
        _check_spec_types(name, spec)
        spec = spec_with_defaults(spec)
        self.kind = spec["type"]
        if self.kind not in KINDS:
            raise UserError(f"task {name!r}: type {self.kind!r} is not one of {', '.join(KINDS)}")
        self.text_column = spec["text_column"]
        self.text_column_2 = spec["text_column_2"]
        self.label_column = spec["label_column"]
        if self.label_column in (self.text_column, self.text_column_2):
            raise UserError(
                f"task {name!r}: column {self.label_column!r} is named as both text and label: name the label column "
                'with "label_column" and the text with "text_column"'
            )
        self.header = spec["header"]
        self.span_labels = spec["span_labels"]
        if spec["labels"] is not None:
            self.labels = [str(label) for label in spec["labels"]]
        if spec.get("metrics") is not None and self.kind != "classification":
            raise UserError(
                f'task {name!r}: "metrics" chooses among classification scores; a {self.kind} task reports '
                f"{'Pearson and Spearman correlation' if self.kind == 'regression' else 'span F1, precision, recall'}"
            )
        unknown_metrics = [metric for metric in spec.get("metrics") or [] if metric not in CLASSIFICATION_METRICS]
        if unknown_metrics:
            raise UserError(
                f"task {name!r}: unknown metric(s) {', '.join(map(repr, unknown_metrics))}; "
                f"known: {', '.join(CLASSIFICATION_METRICS)}"
            )
        self.metrics = tuple(spec.get("metrics") or ("accuracy", "macro_f1"))
        if self.kind == "tagging" and not self.span_labels:
            self.metrics = ("accuracy",)
        self._value_range: tuple[float, float] | None = None

    def check_labels(self, examples: list[Example], labels: list[str], split: str, origin: str = "") -> None:
        learned = "the task spec's labels" if self.labels is not None else "the labels learned from the training file"
        super().check_labels(examples, labels, split, origin or learned)

    @property
    def value_range(self) -> tuple[float, float]:  # type: ignore[override]
        if self._value_range is None:
            values = [float(example.label) for example in self.examples("train")]
            low, high = min(values), max(values)
            self._value_range = (low, high if high > low else low + 1.0)
        return self._value_range

    def read_split(self, split: str) -> list[Example]:
        suffixes = (".txt", ".jsonl") if self.kind == "tagging" else TABLE_SUFFIXES
        path = self.split_file(split, suffixes)
        labelled = split not in self.test_splits()  # training and evaluation need every label; test may lack them
        if path.suffix == ".txt":
            examples = read_conll(path)
        else:
            rows = read_jsonl_rows(path) if path.suffix == ".jsonl" else read_table_rows(path, self.header)
            examples = [self._example(index, path, number, row, labelled) for index, (number, row) in enumerate(rows)]
        if self.kind == "tagging" and self.span_labels:
            for example in examples:
                wrong = next((tag for tag in example.label or [] if not SPAN_TAG.fullmatch(tag)), None)
                if wrong is not None:
                    raise UserError(
                        f"{example.source}: tag {wrong!r} is neither O nor B-, I-, E- or S- and a type, as span "
                        'labels (chunks) need: fix it, or set "span_labels": false to learn tags as plain labels'
                    )
        return examples

    def _field(self, path: Path, number: int, row: dict[str, Any], column: str, what: str = "text") -> Any:
        """A text or label cell: present, not empty, and a string or number (a list for tagging)."""
        value = row.get(column)
        if value is None or value == "":
            available = ", ".join(map(str, row)) or "none"
            raise UserError(
                f"{path}:{number}: no {what} in column {column!r} (columns: {available}); set the task spec's "
                '"text_column" / "label_column" to the right names, or fill the cell'
            )
        where = f"{path}:{number}"
        if self.kind != "tagging":
            return cell_text(value, where, column, what)
        if not isinstance(value, list):
            raise UserError(f"{where}: the {what} in column {column!r} must be a list, not {value!r:.60}")
        return [cell_text(item, where, column, f"item of the {what}") for item in value]

    def _example(self, index: int, path: Path, number: int, row: dict[str, Any], labelled: bool) -> Example:
        source = f"{path}:{number}"
        present = row.get(self.label_column) not in (None, "")
        label = self._field(path, number, row, self.label_column, "label") if labelled or present else None
        if self.kind == "tagging":
            words, tags = self._field(path, number, row, self.text_column), label
            if tags is not None and len(tags) != len(words):
                raise UserError(
                    f"{source}: {self.text_column!r} has {len(words)} words and {self.label_column!r} "
                    f"{len(tags)} tags: give one tag per word"
                )
            return Example(index, words=words, label=tags, source=source)
        if self.kind == "regression" and label is not None:
            try:
                label = float(label)
            except (TypeError, ValueError):
                label = math.nan
            if not math.isfinite(label):
                raise UserError(
                    f"{source}: label {row[self.label_column]!r} is not a finite number, as a regression task needs"
                )
        text_b = self._field(path, number, row, self.text_column_2) if self.text_column_2 else None
        return Example(
            index,
            text_a=self._field(path, number, row, self.text_column),
            text_b=text_b,
            # "good, pos" in a CSV file is the label " pos": the same class as "pos" to whoever wrote it
            label=label if label is None or self.kind == "regression" else label.strip(),
            source=source,
        )


SPAN_TAG = re.compile(r"O|[BIES]-.+")


def span_types(tags: Sequence[str]) -> set[str]:
    """The chunk types of span tags: {"NP", "VP"} of B-NP, I-NP, S-VP, O."""
    return {tag[2:] for tag in tags if tag != "O"}


CLASSIFICATION_METRICS = ("accuracy", "f1", "macro_f1", "mcc")


def _check_spec_types(name: str, spec: dict[str, Any]) -> None:
    for key, value in spec.items():
        if value is not None and not isinstance(value, SPEC_TYPES[key]):
            shown = {str: "a string", list: "a list", bool: "true or false"}[SPEC_TYPES[key]]
            raise UserError(f"task {name!r}: spec key {key!r} must be {shown}, not {value!r:.60}")


def read_table_rows(path: Path, header: bool, literal_quotes: bool = False) -> list[tuple[int, dict[str, Any]]]:
    """Rows of a CSV or TSV file as dicts keyed by the header (or by column number, from "0"), each with the line
    it starts on. `literal_quotes` reads quote characters as text, as GLUE's files need (the reference reads them
    so). A TSV file is read with CSV quoting (as `csv` and pandas write fields holding tabs, quotes or line breaks)
    unless that joins lines which, quotes read as text, are each a whole row, and the file is not what `csv` writes
    for the joined rows: a hand-made file whose text merely starts with a quote mark."""
    tsv = path.suffix.lower() == ".tsv"
    delimiter = "\t" if tsv else ","
    quoted = not literal_quotes
    if not tsv or literal_quotes:
        lines = _parse_table(path, delimiter, literal_quotes)
    else:
        try:
            lines = _parse_table(path, delimiter, literal=False)
            doubtful = any(end > start for start, end, _ in lines) or not _even(lines)
        except UserError:
            lines, doubtful = [], True
        if doubtful and lines and _written_by_csv(path, lines, delimiter):
            doubtful = False
        if doubtful:
            literal = _parse_table(path, delimiter, literal=True)
            if not lines or _even(literal):
                lines, quoted = literal, False
    if not lines:
        raise UserError(f"{path} is empty")
    first = lines[0][2]
    names = [name.strip() for name in first] if header else [str(i) for i in range(len(first))]
    repeated = next((name for name in names if names.count(name) > 1), None)
    if repeated is not None:
        raise UserError(
            f"{path}:{lines[0][0]}: the header names column {repeated!r} twice: give each column its own name"
        )
    # A quote left open runs its field to the end of the file, swallowing the rows after it; csv says nothing.
    last_start, last_end, _ = lines[-1]
    open_at_end = quoted and last_end > last_start and _quote_left_open(path, delimiter)
    rows = []
    for number, end, row in lines[1:] if header else lines:
        if not row:
            continue
        runs_to_end = open_at_end and number == last_start
        if (len(row) < len(names) or runs_to_end) and any("\n" in field for field in row):
            raise UserError(
                f"{path}:{number}: a quote mark opened on this line is not closed before the row ends (the field runs "
                f"{'to the end of the file' if runs_to_end or end <= number else f'to line {end}'}): close it, and "
                'write a quote mark inside quoted text as two ("")'
            )
        if len(row) != len(names):
            raise UserError(
                f"{path}:{number}: {len(row)} field(s) where the header has {len(names)}; quote fields that contain "
                f"{'tabs' if tsv else 'commas'}"
            )
        rows.append((number, dict(zip(names, row, strict=True))))
    return rows


def _written_by_csv(path: Path, records: list[tuple[int, int, list[str]]], delimiter: str) -> bool:
    """Whether the file is, byte for byte, what Python's csv (and pandas) write for `records` (with either line
    ending): then its quote marks are quoting, not text."""
    with open_text(path, newline="") as handle:
        text = handle.read()
    for ending in ("\n", "\r\n"):
        written = io.StringIO()
        csv.writer(written, delimiter=delimiter, lineterminator=ending).writerows(row for _, _, row in records)
        if text in (written.getvalue(), written.getvalue()[: -len(ending)]):
            return True
    return False


def _quote_left_open(path: Path, delimiter: str) -> bool:
    """Whether the file ends inside a quoted field (csv's strict reading says so; the lenient one ends the field)."""
    with open_text(path, newline="") as handle:
        try:
            for _ in csv.reader(handle, delimiter=delimiter, strict=True):
                pass
        except csv.Error as error:
            return "unexpected end of data" in str(error)
    return False


def _even(records: list[tuple[int, int, list[str]]]) -> bool:
    """Whether every non-blank record has the same number of fields."""
    return len({len(row) for _, _, row in records if row}) <= 1


def _parse_table(path: Path, delimiter: str, literal: bool) -> list[tuple[int, int, list[str]]]:
    """(first line, last line, fields) of each record."""
    csv.field_size_limit(2**31 - 1)  # a whole document in a cell is text too (csv stops at 128 KiB by default)
    with open_text(path, newline="") as handle:
        reader = csv.reader(handle, delimiter=delimiter, quoting=csv.QUOTE_NONE if literal else csv.QUOTE_MINIMAL)
        records = []
        try:
            while True:
                start = reader.line_num + 1
                row = next(reader, None)
                if row is None:
                    return records
                records.append((start, reader.line_num, row))
        except csv.Error as error:
            raise UserError(f"{path}:{start}: {error}") from None


def cell_text(value: Any, where: str, column: str, what: str = "text") -> str:
    """A text or label cell as a string. JSONL cells can hold any JSON value; only strings and numbers are text
    (true and false are not numbers here). A whole number reads the same however JSON wrote it: 1 and 1.0 are
    one class, "1"."""
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise UserError(f"{where}: the {what} in column {column!r} must be a string or number, not {value!r:.60}")
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def encodable(text: str) -> bool:
    """Whether `text` can be written as UTF-8, as the tokenizer needs: JSON escapes such as "\\ud800" decode to lone
    surrogates, which cannot."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def read_jsonl_rows(path: Path) -> list[tuple[int, dict[str, Any]]]:
    rows = []
    with open_text(path) as handle:
        for number, line in enumerate(handle, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line.rstrip("\r\n"))  # an error then points into the line, not past its end
            except json.JSONDecodeError as error:
                raise UserError(f"{path}:{number}: not valid JSON ({error.msg} at column {error.colno})") from None
            if not isinstance(row, dict):
                raise UserError(f"{path}:{number}: each line must be a JSON object, got {type(row).__name__}")
            # an escaped half of a UTF-16 pair, alone: only lines with such an escape are checked
            if "\\ud" in line.lower() and not encodable(json.dumps(row, ensure_ascii=False)):
                raise UserError(f"{path}:{number}: an escape such as \\ud800 stands for no character: fix the text")
            rows.append((number, row))
    return rows
