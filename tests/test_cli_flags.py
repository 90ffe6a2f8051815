"""Numeric flags out of their range stop at argparse (exit status 2, the flag named), and the help texts say
what the commands do."""

from __future__ import annotations

from pathlib import Path

import pytest

from electra.cli import build_parser, main
from electra.errors import UserError

from .conftest import CHINESE_DOCUMENTS, ENGLISH_DOCUMENTS, write_corpus


def bad_flag_cases(tmp: Path) -> list[tuple[list[str], str, str]]:
    """(arguments, the flag, the value): paths point into `tmp`, so a check that let a value through fails the
    test without writing anywhere else."""
    vocab = ["vocab", "--corpus-dir", str(tmp / "corpus"), "--output", str(tmp / "vocab.txt")]
    split = ["split", "--input", str(tmp / "t.csv"), "--output-dir", str(tmp / "split")]
    split += ["--label-column", "label", "--text-column", "text"]
    serve = ["serve", "--model-dir", str(tmp / "model"), "--port", "1"]
    rerank = ["rerank", "--model-dir", str(tmp / "model"), "--nbest", str(tmp / "nbest.jsonl")]
    quickstart = ["quickstart", "--data-dir", str(tmp / "qs"), "--corpus-dir", str(tmp / "corpus")]
    return [
        (vocab, "--min-frequency", "-1"),
        (vocab, "--limit-alphabet", "0"),
        (vocab, "--limit-alphabet", "-5"),
        (vocab, "--vocab-size", "5"),
        (vocab, "--vocab-size", "-1"),
        (quickstart, "--vocab-size", "0"),
        (serve, "--batch-wait-ms", "-5"),
        (serve, "--batch-wait-ms", "nan"),
        (serve, "--batch-wait-ms", "inf"),
        (rerank, "--weight", "nan"),
        (rerank, "--weight", "inf"),
        (split, "--seed", "-1"),
        (split, "--train-per-class", "0"),
        (split, "--dev", "-0.1"),
        (split, "--test", "nan"),
        (split, "--dev", "1.5"),
        (split, "--test", "1"),
    ]


CASE_IDS = [f"{arguments[0]} {flag} {value}" for arguments, flag, value in bad_flag_cases(Path("."))]


@pytest.mark.parametrize("case", range(len(CASE_IDS)), ids=CASE_IDS)
def test_out_of_range_flag_is_an_argparse_error_naming_it(tmp_path: Path, capsys, case: int):
    arguments, flag, value = bad_flag_cases(tmp_path)[case]
    with pytest.raises(SystemExit) as exit_info:
        main([*arguments, flag, value])
    assert exit_info.value.code == 2
    error = capsys.readouterr().err
    assert f"electra {arguments[0]}: error: argument {flag}: " in error
    assert value in error.splitlines()[-1]
    assert "Traceback" not in error
    assert sorted(path.name for path in tmp_path.iterdir()) == []  # stopped before anything was written


@pytest.mark.parametrize("command", [["vocab", "--corpus-dir", "c", "--output", "v"], ["plot", "m"]])
def test_an_unknown_flag_is_reported_with_the_commands_usage(capsys, command: list[str]):
    with pytest.raises(SystemExit) as exit_info:
        main([*command, "--bogus", "1"])
    assert exit_info.value.code == 2
    error = capsys.readouterr().err
    assert error.startswith(f"usage: electra {command[0]} ")
    assert error.splitlines()[-1] == f"electra {command[0]}: error: unrecognized arguments: --bogus 1"


SPLIT = ["split", "--input", "i", "--output-dir", "o", "--label-column", "l", "--text-column", "t"]


@pytest.mark.parametrize(
    ("arguments", "attribute", "expected"),
    [
        (["vocab", "--corpus-dir", "c", "--output", "v", "--min-frequency", "0"], "min_frequency", 0),
        (["vocab", "--corpus-dir", "c", "--output", "v", "--limit-alphabet", "1"], "limit_alphabet", 1),
        (["vocab", "--corpus-dir", "c", "--output", "v", "--vocab-size", "6"], "vocab_size", 6),
        (["serve", "--model-dir", "m", "--batch-wait-ms", "0"], "batch_wait_ms", 0.0),
        (["serve", "--model-dir", "m", "--batch-wait-ms", "2.5"], "batch_wait_ms", 2.5),
        (["rerank", "--model-dir", "m", "--nbest", "n", "--weight", "-0.5"], "weight", -0.5),
        ([*SPLIT, "--seed", "0"], "seed", 0),
        ([*SPLIT, "--dev", "0"], "dev", 0.0),
        ([*SPLIT, "--test", "0.99"], "test", 0.99),
    ],
)
def test_values_at_the_edge_of_the_range_are_accepted(arguments: list[str], attribute: str, expected: float):
    assert getattr(build_parser().parse_args(arguments), attribute) == expected


def help_text(capsys, *command: str) -> str:
    with pytest.raises(SystemExit) as exit_info:
        main([*command, "--help"])
    assert exit_info.value.code == 0
    return " ".join(capsys.readouterr().out.split())  # argparse wraps lines at the terminal's width


@pytest.mark.parametrize("command", ["score", "rerank"])
def test_scoring_help_says_long_texts_are_scored_in_windows(capsys, command: str):
    page = help_text(capsys, command)
    assert "scored in windows of this length overlapping by half" in page
    assert "cut" not in page


@pytest.mark.parametrize(
    ("command", "example"),
    [
        ("predict", "reviews.csv giving reviews.predictions.jsonl"),
        ("score", "texts.txt giving texts.scores.jsonl"),
        ("rerank", "nbest.jsonl giving nbest.reranked.jsonl"),
    ],
)
def test_default_output_names_replace_the_extension(capsys, command: str, example: str):
    assert example in help_text(capsys, command)


def test_serve_help_names_every_request_body(capsys):
    page = help_text(capsys, "serve")
    for body in ('"texts"', '"pairs"', '"tokens"', '"questions"'):
        assert body in page
    assert "0 or more" in page  # --batch-wait-ms


def test_export_help_says_tf_takes_every_pre_training_objective(capsys):
    assert "tf: a pre-trained model (ELECTRA, masked LM or Electric)" in help_text(capsys, "export")


def test_plot_help_lists_the_panels(capsys):
    page = help_text(capsys, "plot")
    for panel in ("total", "generator (MLM)", "discriminator", "accuracies", "learning rate", "throughput"):
        assert panel in page


def prepare_quickstart(tmp_path: Path, monkeypatch) -> tuple[Path, Path]:
    """A data-dir whose vocabulary and pre-training data quickstart's step 3 finds already built; pre-training
    (step 4) stops with a UserError so the tests see steps 1-3 only."""
    from electra.pretrain_data import build_pretraining_data

    corpus = write_corpus(tmp_path / "corpus", ENGLISH_DOCUMENTS * 20)
    data_dir = tmp_path / "qs"
    data_dir.mkdir()
    assert (
        main(["vocab", "--corpus-dir", str(corpus), "--output", str(data_dir / "vocab.txt"), "--vocab-size", "200"])
        == 0
    )
    build_pretraining_data(corpus, data_dir / "vocab.txt", data_dir / "pretrain_data")

    def stop(*args, **kwargs):
        raise UserError("pre-training skipped by the test")

    monkeypatch.setattr("electra.pretrain.run_pretraining", stop)
    return corpus, data_dir


def test_quickstart_rerun_keeps_its_data_without_naming_flags_it_lacks(tmp_path: Path, capsys, monkeypatch):
    corpus, data_dir = prepare_quickstart(tmp_path, monkeypatch)
    capsys.readouterr()
    assert main(["quickstart", "--data-dir", str(data_dir), "--corpus-dir", str(corpus)]) == 2
    captured = capsys.readouterr()
    assert f"[3/5] pre-training data: keeping {data_dir / 'pretrain_data'}" in captured.out
    assert "nothing to do (delete it to build it again)" in captured.out
    assert "--overwrite" not in captured.out + captured.err
    assert captured.err == "electra: error: pre-training skipped by the test\n"


def test_quickstart_on_another_corpus_says_what_to_delete(tmp_path: Path, capsys, monkeypatch):
    _, data_dir = prepare_quickstart(tmp_path, monkeypatch)
    other = write_corpus(tmp_path / "other", CHINESE_DOCUMENTS * 20)
    capsys.readouterr()
    assert main(["quickstart", "--data-dir", str(data_dir), "--corpus-dir", str(other)]) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and error.startswith("electra: error: ")
    assert "built with other settings (differing: the corpus files (corpus.txt " in error
    assert f"delete {data_dir / 'pretrain_data'} to build it again (and {data_dir / 'vocab.txt'} to train" in error
    assert "--overwrite" not in error and "--output-dir" not in error
