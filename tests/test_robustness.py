"""Interrupted, concurrent and misdirected runs (an audit's findings): work is resumed or refused, never lost or
mixed, and the file system's refusals read as one line."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import torch

from electra.cli import main
from electra.errors import UserError
from electra.fileio import atomic_directory, folder_lock
from electra.tokenization import SPECIAL_TOKENS, write_vocab
from tests.test_finetune import TINY_MODEL, WORDS, sentiment_rows, write_user_task


@pytest.fixture
def vocab_file(tmp_path: Path) -> Path:
    path = tmp_path / "vocab.txt"
    write_vocab([*SPECIAL_TOKENS, *WORDS], path)
    return path


def two_tasks(root: Path, vocab_file: Path) -> dict:
    for name in ("first", "second"):
        write_user_task(root, {"train": sentiment_rows(64, 0), "dev": sentiment_rows(16, 1)}, name)
    tasks = {"first": {}, "second": {}}
    return {**TINY_MODEL, "task_names": ["first", "second"], "tasks": tasks, "vocab_file": str(vocab_file)}


def test_multitask_run_stopped_while_exporting_finishes_on_the_next_run(
    tmp_path: Path, vocab_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import electra.finetune as finetune

    hparams = {**two_tasks(tmp_path, vocab_file), "num_train_epochs": 1}
    export = finetune.export_task_model
    exported: list[str] = []

    def stopped_after_one(model, head, *args, **kwargs):  # Ctrl-C between the two tasks' exports
        if exported:
            raise KeyboardInterrupt
        exported.append(head.name)
        return export(model, head, *args, **kwargs)

    monkeypatch.setattr(finetune, "export_task_model", stopped_after_one)
    with pytest.raises(KeyboardInterrupt):
        finetune.run_finetuning(tmp_path, "m", hparams)
    monkeypatch.setattr(finetune, "export_task_model", export)
    trial = tmp_path / "models" / "m" / "finetuning_models" / "first,second_model_1"
    assert (trial / "model" / "first" / "config.json").is_file() and not (trial / "model" / "second").exists()
    outcome = finetune.run_finetuning(tmp_path, "m", hparams)  # resumes at the final checkpoint, exports both
    assert set(outcome["trials"][0]["scores"]) == {"first/dev", "second/dev"}
    assert (trial / "model" / "second" / "config.json").is_file() and not (trial / "checkpoints").exists()


def test_a_second_run_on_the_same_output_stops_at_once(tmp_path: Path, vocab_file: Path) -> None:
    from electra.finetune import run_finetuning
    from electra.pretrain_data import build_pretraining_data
    from tests.conftest import ENGLISH_DOCUMENTS, write_corpus

    hparams = {**two_tasks(tmp_path, vocab_file), "task_names": ["first"], "num_train_epochs": 1}
    with folder_lock(tmp_path / "models" / "m" / "finetuning_models", "electra finetune", ".first.lock"):
        with pytest.raises(UserError, match="in use by another electra finetune"):
            run_finetuning(tmp_path, "m", hparams)
        assert run_finetuning(tmp_path, "m", {**hparams, "task_names": ["second"]})["trials"]  # other tasks: fine
    corpus = write_corpus(tmp_path / "corpus", ENGLISH_DOCUMENTS)
    lock = folder_lock(tmp_path / "data", "electra build-data")
    with lock, pytest.raises(UserError, match="in use by another electra build-data"):
        build_pretraining_data(corpus, vocab_file, tmp_path / "data", show_progress=False)


def test_outputs_never_replace_inputs_or_a_users_files(tmp_path: Path, finetuned_classifier: Path) -> None:
    from electra.datasplit import SplitSettings, split_table
    from electra.predict import run_prediction
    from electra.tf_checkpoint import convert_tf_checkpoint
    from tests.test_tf_checkpoint import FIXTURE

    texts = tmp_path / "texts.tsv"
    texts.write_text("a good film\n")
    with pytest.raises(UserError, match="is the input"):
        run_prediction(finetuned_classifier, texts, texts, show_progress=False)
    assert texts.read_text() == "a good film\n"
    with pytest.raises(UserError, match="is a folder"):
        run_prediction(finetuned_classifier, texts, tmp_path, show_progress=False)

    table = tmp_path / "reviews.csv"
    table.write_text("label,text\n" + "".join(f"{'ab'[i % 2]},review {i}\n" for i in range(40)))
    settings = SplitSettings("label", "text", dev_share=0.2, test_share=0.0, seed=0)
    split_table(table, tmp_path / "task", settings)
    (tmp_path / "task" / "my_notes.txt").write_text("mine")
    with pytest.raises(UserError, match=r"also holds my_notes\.txt"):
        split_table(table, tmp_path / "task", settings)
    assert (tmp_path / "task" / "my_notes.txt").read_text() == "mine"

    with pytest.raises(UserError, match="is a file, where the output folder would go"):
        convert_tf_checkpoint(FIXTURE, texts)
    converted = convert_tf_checkpoint(FIXTURE, tmp_path / "released")
    convert_tf_checkpoint(FIXTURE, converted)  # an earlier conversion is replaced
    (converted / "checkpoints" / "step-00000002").mkdir(parents=True)  # ... until it is trained
    with pytest.raises(UserError, match="holds a pre-trained model"):
        convert_tf_checkpoint(FIXTURE, converted)


def test_fine_tuning_takes_a_checkpoint_newer_than_the_export(tmp_path: Path, capsys, monkeypatch) -> None:
    """Continued pre-training stopped (or still running) past the last export: its newest checkpoint wins."""
    from electra.finetune import _pretrained_encoder

    model_dir = tmp_path / "models" / "m"
    export = model_dir / "discriminator" / "model.safetensors"
    checkpoint = model_dir / "checkpoints" / "step-00000120" / "model.safetensors"
    for path in (export, checkpoint):
        path.parent.mkdir(parents=True)
        path.write_bytes(b"weights")
    os.utime(export, (1_000_000, 1_000_000))
    assert _pretrained_encoder(model_dir) == checkpoint
    assert "newest pre-training checkpoint" in capsys.readouterr().err
    monkeypatch.setenv("RANK", "1")  # the other processes of a torchrun say it once, through the first
    assert _pretrained_encoder(model_dir) == checkpoint
    assert capsys.readouterr().err == ""
    os.utime(checkpoint, (500_000, 500_000))  # a finished run exports after its final checkpoint
    assert _pretrained_encoder(model_dir) == export


def test_file_system_refusals_and_bad_plot_names_are_one_line(tmp_path: Path, capsys) -> None:
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    (corpus / "a.txt").write_text("some text here\n" * 20)
    (tmp_path / "afile").write_text("x")
    assert main(["vocab", "--corpus-dir", str(corpus), "--output", str(tmp_path / "afile" / "v.txt")]) == 2
    error = capsys.readouterr().err
    assert error.startswith("electra: error: ") and "afile" in error and "Traceback" not in error
    assert error.count("\n") == 1
    assert main(["vocab", "--corpus-dir", str(corpus), "--output", str(corpus / "vocab.txt")]) == 2
    assert "inside --corpus-dir" in capsys.readouterr().err

    log = tmp_path / "model" / "logs" / "metrics.jsonl"
    log.parent.mkdir(parents=True)
    log.write_text("".join(json.dumps({"step": s, "loss": 1.0 / s}) + "\n" for s in (1, 2)))
    assert main(["plot", str(tmp_path / "model"), "--output", str(tmp_path / "mycurves")]) == 0
    assert (tmp_path / "mycurves.png").read_bytes().startswith(b"\x89PNG")
    assert "mycurves.png" in capsys.readouterr().out
    assert main(["plot", str(tmp_path / "model"), "--output", str(tmp_path / "c.xyz")]) == 2
    assert "end the name with one of" in capsys.readouterr().err
    assert not list(tmp_path.glob(".*tmp-*"))
    for stray in ("[1, 2]", '{"loss": 2.0}'):  # a line that is JSON but no logged step
        log.write_text(json.dumps({"step": 1, "loss": 1.0}) + "\n" + stray + "\n")
        assert main(["plot", str(tmp_path / "model")]) == 2
        assert "metrics.jsonl, line 2: not a logged step" in capsys.readouterr().err


def test_other_bad_inputs_are_one_line_errors(tmp_path: Path) -> None:
    """Inputs that used to pass silently or fail deep inside: an unpaired surrogate escape in JSONL, a first-pass
    score that is not finite, a task named twice."""
    from electra.finetune import prepare_finetuning
    from electra.scoring import read_nbest
    from electra.tasks import read_jsonl_rows

    rows = tmp_path / "texts.jsonl"
    rows.write_text('{"text": "caf\\u00e9"}\n{"text": "x\\ud800"}\n')
    with pytest.raises(UserError, match=r"texts\.jsonl:2: an escape such as \\ud800 stands for no character"):
        read_jsonl_rows(rows)
    rows.write_text('{"text": "\\ud83d\\ude00 a pair is a character"}\n')
    assert read_jsonl_rows(rows)[0][1]["text"].startswith("\U0001f600")
    nbest = tmp_path / "nbest.jsonl"
    nbest.write_text('{"id": "u1", "hypotheses": [{"text": "a", "score": NaN}, {"text": "b", "score": 1}]}\n')
    with pytest.raises(UserError, match='hypothesis 1 needs a "text" string and a finite numeric "score"'):
        read_nbest(nbest)
    write_vocab([*SPECIAL_TOKENS, "fine"], tmp_path / "vocab.txt")
    with pytest.raises(UserError, match="task_names names sst more than once"):
        prepare_finetuning(tmp_path, "m", {"task_names": ["sst", "sst"], "init_checkpoint": None})


def test_resuming_survives_a_cut_off_log_line_and_a_failed_checkpoint_write(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from electra.trainer import MetricsLog, checkpoint_dirs, save_checkpoint

    log = tmp_path / "logs" / "metrics.jsonl"
    log.parent.mkdir()
    log.write_text('{"step": 1, "loss": 2.0}\n{"step": 2, "loss": 1.5}\n{"step": 3, "lo')  # disk full mid-line
    MetricsLog(log.parent, resume_step=2, enabled=True).close()
    assert [json.loads(line)["step"] for line in log.read_text().splitlines()] == [1, 2]

    model = torch.nn.Linear(2, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    earlier = save_checkpoint(tmp_path, 1, model, optimizer, {}, keep=3)

    def disk_full(*args, **kwargs):
        raise RuntimeError("[enforce fail at inline_container.cc:664] . unexpected pos 128 vs 64")

    monkeypatch.setattr(torch, "save", disk_full)
    with pytest.raises(UserError, match=r"could not write checkpoint .* earlier checkpoints are intact"):
        save_checkpoint(tmp_path, 2, model, optimizer, {}, keep=3)
    assert (earlier / "trainer_state.pt").is_file() and not (tmp_path / "checkpoints" / "step-00000002").exists()
    # safetensors reports a full disk with its own error type (it escaped as a traceback).
    from safetensors import SafetensorError

    import electra.trainer

    def weights_disk_full(*args, **kwargs):
        raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")

    monkeypatch.setattr(electra.trainer, "save_model", weights_disk_full)
    with pytest.raises(UserError, match=r"could not write checkpoint .*No space left.* earlier checkpoints are intact"):
        save_checkpoint(tmp_path, 2, model, optimizer, {}, keep=3)
    # A copy beside the checkpoints (step-N.bak) is no checkpoint; it made every listing fail on int("N.bak").
    shutil.copytree(earlier, earlier.with_name(f"{earlier.name}.bak"))
    assert [path.name for path in checkpoint_dirs(tmp_path)] == [earlier.name]
    # A log that is not UTF-8 where it was cut off (a bad copy) is read, the damaged line dropped.
    log.write_bytes(b'{"step": 1, "loss": 2.0}\n\xff\xfe\n')
    MetricsLog(log.parent, resume_step=2, enabled=True).close()
    assert [json.loads(line)["step"] for line in log.read_text().splitlines()] == [1]


def test_a_failed_folder_replacement_keeps_the_earlier_output(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The earlier folder was deleted in place before the new one was renamed in: a deletion or rename that failed
    half-way left neither."""
    target = tmp_path / "split"
    with atomic_directory(target) as tmp:
        for name in ("train.csv", "dev.csv", "split.json"):
            (tmp / name).write_text("old")
    real_replace = os.replace

    def refuse_the_new_folder(source, destination):
        if Path(source).name.startswith(".split.tmp-"):
            raise OSError(39, "Directory not empty", str(source), str(destination))
        real_replace(source, destination)

    monkeypatch.setattr(os, "replace", refuse_the_new_folder)
    with pytest.raises(OSError), atomic_directory(target) as tmp:
        (tmp / "train.csv").write_text("new")
    monkeypatch.undo()
    assert sorted(path.name for path in target.iterdir()) == ["dev.csv", "split.json", "train.csv"]
    assert (target / "train.csv").read_text() == "old" and [path.name for path in tmp_path.iterdir()] == ["split"]
    with atomic_directory(target) as tmp:
        (tmp / "train.csv").write_text("new")
    assert [path.name for path in target.iterdir()] == ["train.csv"] and [p.name for p in tmp_path.iterdir()] == [
        "split"
    ]


def test_temporaries_of_killed_runs_are_cleared(tmp_path: Path) -> None:
    target = tmp_path / "export"
    dead = tmp_path / ".export.tmp-999999999"  # no such process
    alive = tmp_path / f".export.tmp-{os.getppid()}"  # a running process: perhaps another run's
    for folder in (dead, alive):
        folder.mkdir()
        (folder / "model.safetensors").write_bytes(b"copy")
    with atomic_directory(target) as tmp:
        (tmp / "file").write_text("done")
    assert not dead.exists() and alive.exists() and (target / "file").read_text() == "done"
    shutil.rmtree(alive)


def test_damaged_files_give_one_line_errors(
    finetuned_classifier: Path, pretrain_data_dir: Path, tmp_path: Path
) -> None:
    """Files cut off or overwritten inside a model or data folder (a bad copy, a full disk elsewhere) are named, with
    what to do; they used to fail deep inside json, safetensors or numpy."""
    from electra.export import export_hf
    from electra.predict import run_prediction
    from electra.pretrain import run_pretraining
    from electra.pretrain_data import PretrainingData
    from electra.tf_checkpoint import export_tf_checkpoint

    model = tmp_path / "model"
    shutil.copytree(finetuned_classifier, model)
    texts = tmp_path / "in.txt"
    texts.write_text("good film\n")
    spec = model / "electra_task.json"
    spec.write_text('{"name": "tickets", "kind"')
    with pytest.raises(UserError, match=r"electra_task\.json is damaged: not valid JSON \(.* line 1 column 27\)"):
        run_prediction(model, texts, show_progress=False)
    spec.write_text('{"kind": "classification"}')
    with pytest.raises(UserError, match=r"electra_task\.json is damaged \(KeyError"):
        run_prediction(model, texts, show_progress=False)
    shutil.copyfile(finetuned_classifier / "electra_task.json", spec)
    weights = model / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    with pytest.raises(UserError, match=r"cannot read weights from .*model\.safetensors"):
        run_prediction(model, texts, show_progress=False)
    with pytest.raises(UserError, match=r"cannot read weights from .*model\.safetensors"):
        export_hf(model, tmp_path / "hf")  # refused, not copied on
    assert not (tmp_path / "hf").exists()
    with pytest.raises(UserError, match="is a fine-tuned model: --format tf writes pre-trained models"):
        export_tf_checkpoint(finetuned_classifier, tmp_path / "tf")

    data = tmp_path / "data"
    shutil.copytree(pretrain_data_dir, data)
    hparams = {"debug": True, "num_train_steps": 2, "save_checkpoints_steps": 2, "precision": "fp32"}
    run_pretraining(data, "m", hparams)
    state = next((data / "models" / "m" / "checkpoints").glob("step-*")) / "trainer_state.pt"
    state.write_bytes(state.read_bytes()[:100])
    with pytest.raises(UserError, match=r"checkpoint .*step-00000002 is damaged .*delete that folder"):
        run_pretraining(data, "m", {**hparams, "num_train_steps": 4})
    shard = sorted((data / "pretrain_data").glob("*.npy"))[0]
    shard.write_bytes(shard.read_bytes()[:100])
    with pytest.raises(UserError, match=r"shard .* is damaged .*rebuild the data"):
        PretrainingData(data / "pretrain_data")
    (data / "pretrain_data" / "pretrain_data.json").write_text("{")
    with pytest.raises(UserError, match=r"pretrain_data\.json is damaged"):
        PretrainingData(data / "pretrain_data")


def test_a_run_that_starts_over_drops_its_earlier_tensorboard_points(tmp_path: Path) -> None:
    """metrics.jsonl was trimmed to the checkpoint a run resumes from, but TensorBoard kept a restarted run's points."""
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from electra.trainer import MetricsLog

    for values in ([1.0, 2.0, 3.0], [9.0, 8.0]):  # interrupted before its first checkpoint, then run again
        log = MetricsLog(tmp_path, resume_step=0, enabled=True)
        for step, value in enumerate(values, 1):
            log.write(step, {"loss": value})
        log.close()
    events = EventAccumulator(str(tmp_path))
    events.Reload()
    assert [(event.step, event.value) for event in events.Scalars("loss")] == [(1, 9.0), (2, 8.0)]


def test_plot_names_a_log_line_that_is_not_text(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    from electra.plotting import plot_training_curves

    (tmp_path / "logs").mkdir()
    (tmp_path / "logs" / "metrics.jsonl").write_bytes(b'{"step": 10, "loss": 1.0}\n\xff\xfe\n')
    with pytest.raises(UserError, match=r"metrics\.jsonl, line 2: not a logged step"):  # was a UnicodeDecodeError
        plot_training_curves(tmp_path)


def test_a_file_write_that_fails_half_way_leaves_the_earlier_file(tmp_path: Path) -> None:
    from electra.fileio import atomic_output, write_text_atomic

    target = tmp_path / "results.json"
    target.write_text("earlier\n")
    with pytest.raises(RuntimeError, match="stopped"), atomic_output(target) as partial:
        partial.write_text("half of the new")
        raise RuntimeError("stopped")
    assert target.read_text() == "earlier\n"
    with pytest.raises(UnicodeEncodeError):  # a lone surrogate fails part-way through encoding
        write_text_atomic(target, "x" * 100_000 + "\ud800")
    assert target.read_text() == "earlier\n"
    assert [path.name for path in tmp_path.iterdir()] == ["results.json"], "no temporary is left behind"
    write_text_atomic(target, "new\n")
    assert target.read_text() == "new\n"
