"""`electra split`: a labelled table into train/dev/test files for `electra finetune`, with a fixed seed.

Many public labelled sets come without splits (the Chinese review sets among them). The split here is
stratified by label, so every class keeps its share in dev and test; exact duplicate texts are kept
once, so a text never sits in two splits (several review sets repeat reviews); `--train-per-class N`
keeps N training examples per class for few-label studies, with dev and test unchanged for every N and
each smaller training set inside the larger ones. `split.json` records the source's checksum, the seed,
the settings and the counts, so a result can name the exact split it used.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import sys
from collections import Counter, defaultdict
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from electra.errors import UserError
from electra.fileio import atomic_directory, check_replaceable, require_file
from electra.tasks import read_jsonl_rows, read_table_rows

SPLITS = ("train", "dev", "test")
SPLIT_RECORD = "split.json"
# More classes than this, and more than one for every two rows: the label column holds text (swapped columns).
MAX_PLAUSIBLE_CLASSES = 100
SHOWN_LINES = 5  # dropped rows named by line, of each reason


@dataclass
class SplitSettings:
    label_column: str
    text_column: str
    dev_share: float = 0.1
    test_share: float = 0.1
    seed: int = 0
    train_per_class: int | None = None

    def check(self) -> None:
        for name, share in (("--dev", self.dev_share), ("--test", self.test_share)):
            if not 0 <= share < 1:
                raise UserError(f"{name} {share} is not a share between 0 and 1")
        if self.dev_share + self.test_share >= 1:
            raise UserError(f"--dev {self.dev_share} and --test {self.test_share} leave nothing to train on")
        if self.train_per_class is not None and self.train_per_class < 1:
            raise UserError(f"--train-per-class {self.train_per_class} must be at least 1")


def _read_rows(path: Path) -> tuple[list[str], list[tuple[int, dict[str, Any]]]]:
    require_file(path, "input file")
    suffix = path.suffix.lower()
    if suffix not in (".csv", ".tsv", ".jsonl"):
        raise UserError(f"{path}: give a .csv or .tsv file with a header line, or .jsonl")
    rows = read_jsonl_rows(path) if suffix == ".jsonl" else read_table_rows(path, header=True)
    if not rows:
        raise UserError(f"{path} holds no rows to split" + ("" if suffix == ".jsonl" else " below its header"))
    return list(dict.fromkeys(key for _, row in rows for key in row)), rows


def _write_rows(path: Path, columns: list[str], rows: list[dict[str, Any]]) -> None:
    if path.suffix == ".jsonl":
        path.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows), encoding="utf-8")
        return
    buffer = io.StringIO()
    writer = csv.writer(buffer, delimiter="\t" if path.suffix == ".tsv" else ",", lineterminator="\n")
    writer.writerow(columns)
    writer.writerows([row[column] for column in columns] for row in rows)
    path.write_text(buffer.getvalue(), encoding="utf-8")


def _cell(row: dict[str, Any], column: str) -> str:
    """A cell as text; JSON null (or a missing key) is empty, not the text "None"."""
    value = row.get(column)
    return "" if value is None else str(value)


def split_table(source: str | Path, output_dir: str | Path, settings: SplitSettings) -> dict[str, Any]:
    """Writes train/dev/test files (the source's format) and split.json to `output_dir`; returns the record."""
    settings.check()
    path, target = Path(source), Path(output_dir)
    columns, rows = _read_rows(path)
    for column in (settings.label_column, settings.text_column):
        if column not in columns:
            raise UserError(f"{path} has no column {column!r} (columns: {', '.join(columns)})")
    by_label: dict[str, list[tuple[int, dict[str, Any]]]] = defaultdict(list)
    seen: dict[str, str] = {}
    dropped = Counter()
    dropped_lines: dict[str, list[int]] = defaultdict(list)  # the first few of each reason, for the user to look at
    labels: set[str] = set()  # of every row with one, duplicates included
    for number, row in rows:
        # A stray byte-order mark (some reviews start with one) must not make a repeated text look new.
        text = _cell(row, settings.text_column).replace("\ufeff", "").strip()
        label = _cell(row, settings.label_column).strip()
        if label:
            labels.add(label)
        if not text or not label:
            why = "empty"
        elif text in seen:
            why = "duplicate" if seen[text] == label else "duplicate_with_other_label"
        else:
            seen[text] = label
            by_label[label].append((number, row))
            continue
        dropped[why] += 1
        if len(dropped_lines[why]) < SHOWN_LINES:
            dropped_lines[why].append(number)
    if not by_label:
        raise UserError(f"{path} holds no rows with both a {settings.text_column!r} and a {settings.label_column!r}")
    labelled = len(rows) - dropped["empty"]
    if len(labels) > max(MAX_PLAUSIBLE_CLASSES, labelled // 2):
        raise UserError(
            f"column {settings.label_column!r} of {path} holds {len(labels):,} different labels in {labelled:,} rows: "
            "it looks like text, not labels; check --label-column and --text-column"
        )
    if len(by_label) == 1:
        raise UserError(
            f"every row of {path} has the label {next(iter(by_label))!r} in column {settings.label_column!r}: a "
            "classifier needs two or more, so check --label-column"
        )

    rng = np.random.default_rng(settings.seed)
    chosen: dict[str, list[tuple[int, dict[str, Any]]]] = {split: [] for split in SPLITS}
    for label in sorted(by_label):
        group = by_label[label]
        order = rng.permutation(len(group))
        dev_count = round(len(group) * settings.dev_share)
        test_count = round(len(group) * settings.test_share)
        dev, test, train = np.split(order, [dev_count, dev_count + test_count])
        if settings.train_per_class is not None:
            train = train[: settings.train_per_class]
        for split, picked in zip(SPLITS, (train, dev, test), strict=True):
            chosen[split].extend(group[index] for index in picked)

    suffix = path.suffix.lower()
    counts = {
        split: dict(sorted(Counter(_cell(row, settings.label_column).strip() for _, row in chosen[split]).items()))
        for split in SPLITS
    }
    for split, share in (("dev", settings.dev_share), ("test", settings.test_share)):
        if share and not chosen[split]:
            raise UserError(
                f"{split} would be empty: {share:.0%} of the {max(map(len, by_label.values())):,} rows of the largest "
                f"class rounds to none. Give more rows, or a larger --{split} share"
            )
        missing = sorted(set(by_label) - set(counts[split]))
        if share and missing:
            print(
                f"warning: {split} has no example of {len(missing)} class(es) ({', '.join(missing[:5])}): too few rows "
                f"of them for a {share:.0%} share, so {split} scores will not cover them",
                file=sys.stderr,
            )
    record = {
        "source": str(path),
        "source_sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
        **asdict(settings),
        "rows_read": len(rows),
        "dropped": dict(dropped),
        "dropped_lines": dict(dropped_lines),
        "counts": counts,
        "files": {split: f"{split}{suffix}" for split in SPLITS if chosen[split]},
    }
    check_replaceable(target, SPLIT_RECORD, [path], [f"{split}.*" for split in SPLITS] + [SPLIT_RECORD])
    with atomic_directory(target) as tmp:
        for split in SPLITS:
            if chosen[split]:
                _write_rows(
                    tmp / f"{split}{suffix}",
                    columns,
                    [row for _, row in sorted(chosen[split], key=lambda item: item[0])],
                )
        (tmp / SPLIT_RECORD).write_text(json.dumps(record, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return record


def describe_split(record: dict[str, Any], output_dir: str | Path) -> str:
    sizes = ", ".join(f"{split} {sum(record['counts'][split].values()):,}" for split in SPLITS)
    lines = [f"split {record['rows_read']:,} rows of {record['source']} (seed {record['seed']}): {sizes}"]
    if record["dropped"]:
        where = record.get("dropped_lines", {})
        lines.append(
            "dropped: "
            + ", ".join(
                f"{count:,} {why.replace('_', ' ')} (line{'s' if count > 1 else ''} "
                f"{', '.join(map(str, where.get(why, [])))}{', ...' if count > SHOWN_LINES else ''})"
                for why, count in record["dropped"].items()
            )
        )
    classes = record["counts"]["train"]
    lines.append(
        f"{len(classes)} classes in train: " + ", ".join(f"{label} {count:,}" for label, count in classes.items())
    )
    lines.append(f"wrote {Path(output_dir)}/ ({', '.join(record['files'].values())}, {SPLIT_RECORD})")
    return "\n".join(lines)
