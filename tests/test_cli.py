from __future__ import annotations

import argparse
import shutil
import subprocess
from pathlib import Path

import pytest

from electra.cli import build_parser, main
from electra.default_corpus import stdlib_documents, write_stdlib_corpus
from electra.pretrain_data import PretrainingData
from electra.tokenization import read_vocab


def subcommands() -> list[str]:
    parser = build_parser()
    (commands,) = [action for action in parser._actions if isinstance(action, argparse._SubParsersAction)]
    return sorted(commands.choices)


def test_console_script_has_help_for_every_subcommand():
    electra = shutil.which("electra")
    assert electra, "the `electra` console script is installed by `pip install -e .`"
    assert {"vocab", "build-data", "pretrain", "plot", "quickstart"} <= set(subcommands())
    top = subprocess.run([electra, "--help"], capture_output=True, text=True, check=True).stdout
    for command in subcommands():
        assert command in top
        page = subprocess.run([electra, command, "--help"], capture_output=True, text=True, check=True).stdout
        assert page.startswith(f"usage: electra {command}")


def test_reference_flags_are_accepted():
    args = build_parser().parse_args(
        [
            "build-data",
            "--corpus-dir",
            "c",
            "--vocab-file",
            "v",
            "--output-dir",
            "o",
            "--no-lower-case",
            "--no-blanks-separate-docs",
            "--no-strip-accents",
            "--max-seq-length",
            "256",
            "--num-processes",
            "4",
        ]
    )
    assert (args.do_lower_case, args.blanks_separate_docs, args.strip_accents) == (False, False, False)
    assert (args.max_seq_length, args.num_processes) == (256, 4)
    defaults = build_parser().parse_args(["build-data", "--corpus-dir", "c", "--vocab-file", "v", "--output-dir", "o"])
    assert (defaults.do_lower_case, defaults.blanks_separate_docs, defaults.max_seq_length) == (True, True, 128)
    with pytest.raises(SystemExit):
        build_parser().parse_args(["build-data", "--do-lower-case", "--no-lower-case"])
    # The reference's scripts declare --blanks-separate-docs with a value (type=bool): accepted, and read right.
    base = ["build-data", "--corpus-dir", "c", "--vocab-file", "v", "--output-dir", "o"]
    for value, expected in (("False", False), ("true", True), ("0", False)):
        assert build_parser().parse_args([*base, "--blanks-separate-docs", value]).blanks_separate_docs is expected
    with pytest.raises(SystemExit):
        build_parser().parse_args([*base, "--blanks-separate-docs", "maybe"])
    # Counts that cannot work are refused by the parser, not by a traceback later.
    for arguments in (
        ["predict", "--model-dir", "m", "--input", "i", "--batch-size", "0"],
        ["score", "--model-dir", "m", "--input", "i", "--max-seq-length", "2"],
        [*base, "--num-processes", "0"],
    ):
        with pytest.raises(SystemExit):
            build_parser().parse_args(arguments)


def test_default_corpus_is_real_documentation_text(tmp_path: Path):
    documents = list(stdlib_documents())
    assert len(documents) > 200
    words = " ".join(" ".join(doc) for doc in documents).split()
    assert len(words) > 100_000
    assert "Return" in words or "Returns" in words
    path = write_stdlib_corpus(tmp_path)
    assert path.read_text(encoding="utf-8").count("\n\n") == len(documents) - 1


def test_quickstart_runs_end_to_end_and_again_without_redoing_work(tmp_path: Path, capsys):
    data_dir = tmp_path / "qs"
    assert main(["quickstart", "--data-dir", str(data_dir), "--vocab-size", "3000", "--train-steps", "3"]) == 0
    output = capsys.readouterr().out
    assert "[3/5] pre-training data: built" in output
    assert "[5/5] held-out evaluation of the discriminator" in output and "AUC" in output
    assert (data_dir / "models" / "electra_tiny" / "logs" / "curves.png").stat().st_size > 1000
    assert (data_dir / "models" / "electra_tiny" / "discriminator" / "model.safetensors").exists()
    vocab = read_vocab(data_dir / "vocab.txt")
    assert len(vocab) == 3000
    data = PretrainingData(data_dir / "pretrain_data", vocab)
    assert len(data) > 1000
    assert main(["quickstart", "--data-dir", str(data_dir), "--train-steps", "3"]) == 0
    again = capsys.readouterr().out
    assert "keeping" in again and "nothing to do" in again
