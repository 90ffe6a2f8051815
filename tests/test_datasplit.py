from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from electra.cli import main
from electra.datasplit import SplitSettings, describe_split, split_table
from electra.errors import UserError
from tests.conftest import shared_data


def write_table(path: Path, rows: list[tuple[str, str]]) -> Path:
    with open(path, "w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["cat", "review"])
        writer.writerows(rows)
    return path


def read_split(folder: Path, split: str) -> list[tuple[str, str]]:
    with open(folder / f"{split}.csv", encoding="utf-8", newline="") as handle:
        return [(row["cat"], row["review"]) for row in csv.DictReader(handle)]


ROWS = [("书籍", f"书 评论 {i}") for i in range(40)] + [("手机", f"手机 评论, 第{i}条") for i in range(20)]


def test_split_is_stratified_disjoint_and_reproducible(tmp_path: Path) -> None:
    source = write_table(tmp_path / "reviews.csv", [*ROWS, ("书籍", "书 评论 3"), ("手机", "书 评论 4"), ("", "x")])
    settings = SplitSettings("cat", "review", dev_share=0.1, test_share=0.2, seed=7)
    record = split_table(source, tmp_path / "task", settings)
    splits = {split: read_split(tmp_path / "task", split) for split in ("train", "dev", "test")}
    assert record["counts"] == {
        "train": {"书籍": 28, "手机": 14},
        "dev": {"书籍": 4, "手机": 2},
        "test": {"书籍": 8, "手机": 4},
    }
    assert record["dropped"] == {"duplicate": 1, "duplicate_with_other_label": 1, "empty": 1}
    texts = [{text for _, text in rows} for rows in splits.values()]
    assert not (texts[0] & texts[1] or texts[0] & texts[2] or texts[1] & texts[2])
    assert set().union(*texts) == {text for _, text in ROWS}
    assert ("手机", "手机 评论, 第3条") in [row for rows in splits.values() for row in rows]  # quoted comma survives
    assert json.loads((tmp_path / "task" / "split.json").read_text())["seed"] == 7
    split_table(source, tmp_path / "again", settings)
    assert all(read_split(tmp_path / "again", split) == rows for split, rows in splits.items())
    split_table(source, tmp_path / "other", SplitSettings("cat", "review", 0.1, 0.2, seed=8))
    assert read_split(tmp_path / "other", "dev") != splits["dev"]
    # An earlier split is replaced; a folder with the user's own files, or the input itself, is never emptied.
    split_table(source, tmp_path / "other", settings)
    assert read_split(tmp_path / "other", "dev") == splits["dev"]
    with pytest.raises(UserError, match="holds the input"):
        split_table(source, tmp_path, settings)
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep")
    with pytest.raises(UserError, match=r"already holds other files \(notes.txt"):
        split_table(source, tmp_path / "mine", settings)
    assert source.exists() and (tmp_path / "mine" / "notes.txt").read_text() == "keep"


def test_few_label_training_sets_nest_and_keep_dev_and_test(tmp_path: Path) -> None:
    source = write_table(tmp_path / "reviews.csv", ROWS)
    full = split_table(source, tmp_path / "all", SplitSettings("cat", "review"))
    trains = {}
    for per_class in (2, 5):
        record = split_table(
            source, tmp_path / f"n{per_class}", SplitSettings("cat", "review", train_per_class=per_class)
        )
        assert record["counts"]["train"] == {"书籍": per_class, "手机": per_class}
        assert record["counts"]["dev"] == full["counts"]["dev"]
        assert read_split(tmp_path / f"n{per_class}", "dev") == read_split(tmp_path / "all", "dev")
        trains[per_class] = set(read_split(tmp_path / f"n{per_class}", "train"))
    assert trains[2] < trains[5] < set(read_split(tmp_path / "all", "train"))


def test_jsonl_in_jsonl_out_and_clear_errors(tmp_path: Path, capsys) -> None:
    source = tmp_path / "rows.jsonl"
    source.write_text(
        "".join(json.dumps({"label": label, "text": text}, ensure_ascii=False) + "\n" for label, text in ROWS)
    )
    argv = ["split", "--input", str(source), "--output-dir", str(tmp_path / "t"), "--label-column", "label"]
    assert main([*argv, "--text-column", "text", "--dev", "0.25", "--test", "0"]) == 0
    assert "train 45, dev 15, test 0" in capsys.readouterr().out
    rows = [json.loads(line) for line in (tmp_path / "t" / "train.jsonl").read_text().splitlines()]
    assert len(rows) == 45 and set(rows[0]) == {"label", "text"}
    assert not (tmp_path / "t" / "test.jsonl").exists()
    assert main([*argv, "--text-column", "review"]) == 2
    assert "has no column 'review' (columns: label, text)" in capsys.readouterr().err
    with pytest.raises(UserError, match="leave nothing to train on"):
        split_table(source, tmp_path / "u", SplitSettings("label", "text", dev_share=0.5, test_share=0.5))
    # A class too small for a share gets no dev or test example: said, since its scores will be missing.
    small = write_table(tmp_path / "small.csv", [*ROWS, ("电脑", "电脑 一"), ("电脑", "电脑 二")])
    split_table(small, tmp_path / "v", SplitSettings("cat", "review", dev_share=0.1, test_share=0.2))
    assert "warning: dev has no example of 1 class(es) (电脑)" in capsys.readouterr().err
    one_class = write_table(tmp_path / "one.csv", [("书籍", f"书 {number}") for number in range(20)])
    with pytest.raises(UserError, match=r"every row of .*one\.csv has the label '书籍' in column 'cat'"):
        split_table(one_class, tmp_path / "w", SplitSettings("cat", "review"))
    # Swapped columns: each review a "label" (it failed later, saying dev rounds to nothing).
    many = write_table(tmp_path / "many.csv", [("书籍", f"书 {number}") for number in range(300)] + ROWS)
    with pytest.raises(UserError, match=r"column 'review' of .* holds 360 different labels in 360 rows: it looks like"):
        split_table(many, tmp_path / "x", SplitSettings("review", "cat"))
    # JSON null is an empty cell (it was the text "None", a class of its own); an upper-case suffix is a table.
    with_nulls = tmp_path / "NULLS.JSONL"
    lines = [json.dumps({"label": label, "text": text}, ensure_ascii=False) for label, text in ROWS]
    with_nulls.write_text("\n".join([*lines, '{"label": null, "text": "x"}', '{"label": "书籍", "text": null}']))
    record = split_table(with_nulls, tmp_path / "y", SplitSettings("label", "text"))
    assert record["dropped"] == {"empty": 2} and "None" not in record["counts"]["train"]
    assert record["dropped_lines"] == {"empty": [61, 62]}  # the rows to look at, named
    assert "dropped: 2 empty (lines 61, 62)" in describe_split(record, tmp_path / "y")
    assert (tmp_path / "y" / "train.jsonl").is_file()


def test_online_shopping_reviews_split_into_ten_routing_classes(tmp_path: Path) -> None:
    source = shared_data("zh_cls/online_shopping_10_cats/online_shopping_10_cats.csv")
    record = split_table(source, tmp_path / "tickets", SplitSettings("cat", "review", train_per_class=50))
    assert record["rows_read"] == 62_774
    assert len(record["counts"]["dev"]) == 10 and set(record["counts"]["train"].values()) == {50}
    assert record["counts"]["dev"]["热水器"] == 57  # the smallest class, 575 rows less duplicates, keeps its share
    assert sum(record["dropped"].values()) > 0  # the source repeats some reviews
    header_only = tmp_path / "header.csv"
    header_only.write_text("cat,review\n")
    with pytest.raises(UserError, match=r"header\.csv holds no rows to split below its header"):
        split_table(header_only, tmp_path / "w", SplitSettings("cat", "review"))
    tiny = write_table(tmp_path / "tiny.csv", [("a", "x one"), ("a", "x two"), ("b", "y one"), ("b", "y two")])
    with pytest.raises(UserError, match="dev would be empty: 10% of the 2 rows of the largest class rounds to none"):
        split_table(tiny, tmp_path / "x", SplitSettings("cat", "review"))
    assert not (tmp_path / "x").exists()
