from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import time
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
    assert f"keeping {data_dir / 'vocab.txt'} (3,000 tokens;" in again and "nothing to do" in again
    assert "is already pre-trained for 3 steps: nothing to train" in again  # not "pre-training ... for 3 steps"
    # Fewer steps evaluates what is there, more goes on: both were refused for another warm-up than the run's.
    assert main(["quickstart", "--data-dir", str(data_dir), "--train-steps", "2"]) == 0
    assert "[5/5] held-out evaluation" in capsys.readouterr().out
    assert main(["quickstart", "--data-dir", str(data_dir), "--train-steps", "5"]) == 0
    assert "pre-training a tiny ELECTRA for 5 steps" in capsys.readouterr().out
    model_dir = data_dir / "models" / "electra_tiny"
    assert max(path.name for path in (model_dir / "checkpoints").iterdir()) == "step-00000005"
    # A folder name that is not UTF-8 is refused before anything is written (TensorBoard's writer crashed on it).
    undecodable = os.fsdecode(bytes(tmp_path) + b"/d\xe9")
    assert main(["quickstart", "--data-dir", undecodable]) == 2
    assert "is not valid UTF-8, which the training logs (TensorBoard) need" in capsys.readouterr().err
    assert not os.path.exists(undecodable)


FAULTS_OF_REPEATED_BUFFERS = """
import resource, sys
import torch
from electra.cli import retain_freed_memory
if sys.argv[1] == "retain":
    assert retain_freed_memory()
for round in range(12):  # as training steps: the same large tensors made, filled and freed again
    if round == 2:
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    buffers = [torch.ones(2 << 20 << i) for i in range(4)]  # 8 to 64 MiB of float32
    del buffers
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's allocator")
def test_commands_keep_freed_memory_for_the_next_step(tmp_path: Path) -> None:
    """glibc unmaps large freed blocks, so each training step faulted its activations in again (about 240,000 page
    faults a step of ELECTRA-Small); `electra` keeps them, and a step's buffers come back without faults."""
    script = tmp_path / "faults.py"
    script.write_text(FAULTS_OF_REPEATED_BUFFERS)
    runs = {
        mode: subprocess.run([sys.executable, str(script), mode], capture_output=True, text=True, check=True)
        for mode in ("glibc", "retain")
    }
    faults = {mode: int(done.stdout) for mode, done in runs.items()}
    pages = 10 * (120 << 20) // 4096  # ten rounds of 120 MiB
    assert faults["glibc"] > pages / 2
    assert faults["retain"] < pages / 8  # at most one round of growth


def _children(pid: int) -> list[int]:
    return [int(child) for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


def _running(pid: int) -> bool:
    """Alive and not a zombie (an orphan's exit status may wait for an init that does not collect it)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return False
    return "\nState:\tZ" not in status


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="reads child processes from Linux's /proc")
def test_sigterm_stops_a_parallel_build_like_ctrl_c(tmp_path: Path) -> None:
    """`kill` or a scheduler's time limit (SIGTERM) stopped build-data at once, and its workers lived on, each
    printing a broken-pipe traceback; now the command stops as for Ctrl-C, workers included."""
    import random

    words = [f"w{i}" for i in range(300)]
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    rng = random.Random(0)
    for part in range(8):  # enough text that the build outlasts the workers' start
        lines = (" ".join(rng.choices(words, k=12)) for _ in range(25_000))
        (corpus / f"part{part}.txt").write_text("\n".join(lines) + "\n")
    vocab = tmp_path / "vocab.txt"
    vocab.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *words]) + "\n")
    output = tmp_path / "out"
    command = ["build-data", "--corpus-dir", str(corpus), "--vocab-file", str(vocab), "--output-dir", str(output)]
    process = subprocess.Popen(
        [sys.executable, "-m", "electra.cli", *command, "--num-processes", "2"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 60
    while len(_children(process.pid)) < 3 and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)  # the resource tracker and two workers
    workers = _children(process.pid)
    assert len(workers) >= 3, "the build finished or stalled before its workers started"
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=60)
    assert process.returncode == 143
    assert "electra: terminated; finished files are complete" in err and "Traceback" not in err
    time.sleep(1)
    assert not [pid for pid in workers if _running(pid)], "no worker outlives the command"
    assert not (output / "pretrain_data.json").exists()
    assert main(command) == 0 and (output / "pretrain_data.json").is_file()  # the same command redoes it


def test_a_full_disk_while_writing_weights_is_one_line(monkeypatch, tmp_path: Path, capsys) -> None:
    """safetensors reports a failed write with its own error type, which escaped as a traceback."""
    from safetensors import SafetensorError

    import electra.cli

    def disk_full(args: argparse.Namespace) -> None:
        raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")

    monkeypatch.setattr(electra.cli, "_run_plot", disk_full)
    assert main(["plot", str(tmp_path)]) == 2
    error = capsys.readouterr().err
    assert error.startswith("electra: error: Error while serializing: I/O error: No space left on device")
    assert "free some space" in error


def test_output_read_by_a_reader_that_leaves_is_not_an_error(tmp_path: Path) -> None:
    """`electra vocab ... | true`: the vocabulary was written, then printing to the closed pipe was reported as
    "Broken pipe; check the path and the disk" with exit status 2. Now it stops quietly, as shell tools do."""
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    (corpus / "text.txt").write_text("\n".join(f"line {i} of some text to count" for i in range(200)) + "\n")
    vocab = tmp_path / "vocab.txt"
    command = [sys.executable, "-m", "electra.cli", "vocab", "--corpus-dir", str(corpus), "--output", str(vocab)]
    process = subprocess.Popen([*command, "--vocab-size", "60"], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    process.stdout.close()  # long before the command prints: its start-up alone takes a second
    _, err = process.communicate(timeout=120)
    assert process.returncode == 128 + signal.SIGPIPE, err
    assert err == b""
    assert len(read_vocab(vocab)) == 60


def test_a_broken_pipe_elsewhere_is_still_reported(monkeypatch, tmp_path: Path, capsys) -> None:
    import electra.cli

    def pipe_to_a_dead_worker(args: argparse.Namespace) -> None:
        raise BrokenPipeError(32, "Broken pipe")

    monkeypatch.setattr(electra.cli, "_run_plot", pipe_to_a_dead_worker)
    assert main(["plot", str(tmp_path)]) == 2
    assert capsys.readouterr().err.startswith("electra: error: Broken pipe")


def test_ctrl_c_ends_with_130_and_says_what_was_kept(monkeypatch, tmp_path: Path, capsys) -> None:
    import electra.cli

    def interrupted(args: argparse.Namespace) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(electra.cli, "_run_plot", interrupted)
    assert main(["plot", str(tmp_path)]) == 130
    err = capsys.readouterr().err
    assert "electra: interrupted; finished files are complete, unfinished ones were discarded" in err


def test_vocab_names_the_file_and_line_of_text_that_is_not_utf8(tmp_path: Path, capsys) -> None:
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    (corpus / "good.txt").write_text("plain english text here\n" * 50, encoding="utf-8")
    (corpus / "latin.txt").write_bytes(b"fine line\n" * 3 + "caf\xe9 cr\xe8me\n".encode("latin-1") + b"more\n" * 50)
    assert main(["vocab", "--corpus-dir", str(corpus), "--output", str(tmp_path / "vocab.txt")]) == 0
    err = capsys.readouterr().err
    assert f"{corpus / 'latin.txt'}: 2 invalid UTF-8 byte sequence(s)" in err and "(first at line 4)" in err
    assert "good.txt" not in err
