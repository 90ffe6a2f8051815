"""`electra finetune`: trials of training and evaluation, their results and test predictions, as the reference's
run_finetuning.py (the inputs: finetune_data.py; the model, its export and decoding: task_model.py; predict.py:
`electra predict`).

Layout under the pre-trained model's folder (`<data-dir>/models/<model-name>/`, as the reference):
  finetuning_models/<tasks>_model_<trial>/   checkpoints while training; `model/` when done: a Hugging Face
                                              folder (config.json, model.safetensors, vocab.txt) plus
                                              electra_task.json, one sub-folder per task when multi-task
  results/<tasks>_results.txt / .json          every trial's scores, then their median, mean and spread
  test_predictions/<tasks>_<trial>/            "write_test_outputs": GLUE submission files, JSONL otherwise
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import shutil
import statistics
import sys
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import torch

from electra.config import (
    FinetuningConfig,
    ModelConfig,
    build_finetuning_config,
    encoder_config,
    is_first_process,
    pretraining_objective,
    with_inherited_shape,
)
from electra.errors import UserError
from electra.fileio import folder_lock, read_json, write_text_atomic
from electra.finetune_data import Featurizer, FinetuningBatches, TaskHead
from electra.modeling import QAHeadConfig
from electra.pretrain import model_vocab_places, resolve_init_checkpoint
from electra.qa import QADecoding
from electra.task_model import (
    TASK_FILE,
    FinetuningModel,
    decode,
    decode_answers,
    export_task_model,
    input_line,
    layerwise_param_groups,
    load_encoder_weights,
    load_task_model,
    predict_features,
    read_task_spec,
)
from electra.tasks import Example, Task, get_task, spec_with_defaults
from electra.tokenization import normalization_settings, read_vocab
from electra.trainer import (
    Processes,
    Trainer,
    TrainSettings,
    checkpoint_dirs,
    setup_processes,
)

GLUE_SUBMISSION_NAMES = {
    "cola": "CoLA",
    "sst": "SST-2",
    "mrpc": "MRPC",
    "sts": "STS-B",
    "qqp": "QQP",
    "qnli": "QNLI",
    "rte": "RTE",
    "test_matched": "MNLI-m",
    "test_mismatched": "MNLI-mm",
    "diagnostic": "AX",
}
SCORES_FILE = "scores.json"  # a trial's dev scores, kept when keep_all_models false deletes its model
# Checksums in a trial's record of what it was trained from, by how an error names them.
RECORD_CHECKSUMS = {"train_data": "the training data", "init_weights": "the pre-trained weights"}
# Hparams that do not change what a trial trains, so a finished trial is reused when only they differ.
RUN_INDEPENDENT_HPARAMS = {
    "do_train",
    "do_eval",
    "num_trials",
    "keep_all_models",
    "write_test_outputs",
    "n_writes_test",
    "eval_batch_size",
    "predict_batch_size",
    "log_every_steps",
    "log_examples",
    "save_checkpoints_steps",  # a resumed run trains as one never stopped, wherever it stopped
    "use_tfrecords_if_existing",  # accepted from the reference's hparams; nothing is cached
}


# ----------------------------------------------------------------------------------------------- a run
@dataclass
class FinetuningRun:
    config: FinetuningConfig
    hparams: dict[str, Any]
    tasks: list[Task]
    model_dir: Path  # the pre-trained model's folder; everything fine-tuned goes under it
    vocab_file: Path
    vocab: list[str]
    init_checkpoint: Path | None
    finetuned_model: Path | None = None  # with "do_train": false, the exported model that init_checkpoint names

    @property
    def tasks_name(self) -> str:
        return ",".join(task.name for task in self.tasks)

    def trial_dir(self, trial: int) -> Path:
        return self.model_dir / "finetuning_models" / f"{self.tasks_name}_model_{trial}"


def _pretrained_encoder(model_dir: Path) -> Path | None:
    """The weights `electra pretrain` exported for fine-tuning: the discriminator, or for a model pre-trained
    as a plain masked LM ("electra_objective": false) the generator, which is then the whole model. A checkpoint
    newer than that export (pre-training was stopped before exporting, or goes on) is newer weights: it wins."""
    exported = None
    generator, record_file = model_dir / "generator" / "model.safetensors", model_dir / "pretrain_config.json"
    if (model_dir / "discriminator" / "model.safetensors").is_file():
        exported = model_dir / "discriminator" / "model.safetensors"
    elif generator.is_file() and record_file.is_file():
        exported = generator if pretraining_objective(read_json(record_file)) == "MLM" else None
    checkpoints = checkpoint_dirs(model_dir)
    newest = checkpoints[-1] / "model.safetensors" if checkpoints else None
    if newest is not None and (exported is None or newest.stat().st_mtime > exported.stat().st_mtime):
        if is_first_process():
            print(
                f"note: fine-tuning from {checkpoints[-1]}, the newest pre-training checkpoint: pre-training of "
                f"{model_dir.name} stopped before exporting it (or is still going on)",
                file=sys.stderr,
            )
        return newest
    return exported


def _inherited_normalization(folder: Path) -> dict[str, bool]:
    """How the weights in `folder` read text (do_lower_case, strip_accents), from the record of the run that trained
    them (pre-training, or fine-tuning for a fine-tuned model), else from a Hugging Face tokenizer_config.json. An
    exported discriminator/ of a pre-training run holds no record: the run's, beside it, counts (as for scoring)."""
    records = [
        folder / "pretrain_config.json",
        folder / TASK_FILE,
        *sorted(folder.glob(f"*/{TASK_FILE}")),
        folder / "tokenizer_config.json",
        folder / "discriminator" / "tokenizer_config.json",
        *([folder.parent / "pretrain_config.json"] if folder.name in ("discriminator", "generator") else []),
    ]
    found = next((path for path in records if path.is_file()), None)
    return normalization_settings(read_json(found)) if found else {}


def prepare_finetuning(data_dir: str | Path, model_name: str, hparams: dict[str, Any]) -> FinetuningRun:
    """Resolve hparams, paths, vocabulary and tasks as the reference's configure_finetuning does.

    Unless the hparams give a shape, the model's shape is the one of the weights it starts from (our
    pretrain_config.json or a Hugging Face config.json), so nothing needs repeating.
    """
    data_dir = Path(data_dir)
    model_dir = data_dir / "models" / model_name
    if "init_checkpoint" in hparams:
        init = Path(hparams["init_checkpoint"]) if hparams["init_checkpoint"] else None
    else:
        init = None if hparams.get("debug") else model_dir
    finetuned = None
    if init is not None and hparams.get("do_train") is False:
        # The reference evaluates a fine-tuned model this way: init_checkpoint names its finetuning_models/ folder.
        # (Any other init_checkpoint, e.g. the training run's own hparams reused, leaves the trials' models to it.)
        candidate = init / "model" if (init / "model").is_dir() else init
        if (candidate / TASK_FILE).is_file() or any(candidate.glob(f"*/{TASK_FILE}")):
            finetuned = init = candidate
    # A weights file's folder holds its record, config and vocabulary, as a folder named itself does.
    init_folder = init.parent if init is not None and init.is_file() else init
    if init_folder is not None:
        hparams = {**_inherited_normalization(init_folder), **with_inherited_shape(hparams, init_folder)}
    config = build_finetuning_config(hparams)
    repeated = sorted({name for name in config.task_names if config.task_names.count(name) > 1})
    if repeated:
        raise UserError(f"task_names names {', '.join(repeated)} more than once: list each task once")
    unnamed = next((name for name in config.task_names if Path(name).name != name or name in ("", ".", "..")), None)
    if unnamed is not None:
        raise UserError(
            f"task_names: {unnamed!r} is not a task name: name the task's folder under finetuning_data/ "
            "(one folder, no path)"
        )
    dotted = next((name for name in config.task_names if "." in name), None)
    if dotted is not None:  # each task's head is a layer named after it, and PyTorch's layer names have no dots
        raise UserError(
            f"task_names: {dotted!r} holds a '.', which a task name cannot: rename its folder under finetuning_data/ "
            f"(e.g. {dotted.replace('.', '_')!r}) and its task spec"
        )
    if config.vocab_file:
        vocab_file = Path(config.vocab_file)
    else:
        candidates = model_vocab_places(model_dir, data_dir)
        if init_folder is not None and init_folder.is_dir() and init_folder != model_dir:
            own = [init_folder / "vocab.txt", init_folder / "tokenizer.json"]
            if (init_folder / "config.json").is_file() and not any(path.is_file() for path in own):
                raise UserError(
                    f"{init_folder} holds no vocab.txt or tokenizer.json: its token ids mean nothing without them. "
                    'Give its vocabulary with "vocab_file"'
                )
            candidates[:0] = own
        vocab_file = next((path for path in candidates if path.is_file()), candidates[-1])
    vocab = read_vocab(vocab_file)
    if config.vocab_size is not None and config.vocab_size != len(vocab):
        raise UserError(f"vocab_size {config.vocab_size} does not match the {len(vocab):,} tokens of {vocab_file}")
    init_checkpoint = None
    if init is not None and finetuned is None:
        if init == model_dir and (pretrained := _pretrained_encoder(model_dir)) is not None:
            init_checkpoint = pretrained
        elif not init.exists():
            raise UserError(
                f"no pre-trained model at {init}: pre-train one with `electra pretrain --data-dir {data_dir} "
                f'--model-name {model_name}`, point init_checkpoint at one, or set "init_checkpoint": null '
                "to fine-tune from random weights"
            )
        else:
            init_checkpoint = resolve_init_checkpoint(str(init))
    discriminator = init_checkpoint.parent.parent / "discriminator" if init_checkpoint else None
    if discriminator and init_checkpoint.parent.name == "generator" and discriminator.is_dir() and is_first_process():
        print(
            f"note: fine-tuning the generator in {init_checkpoint.parent}, the smaller network of an ELECTRA pair; "
            f"the reference fine-tunes the discriminator: init_checkpoint {discriminator}",
            file=sys.stderr,
        )
    finetuning_data = data_dir / "finetuning_data"
    tasks = [
        get_task(name, finetuning_data, config.tasks, config.debug, config.double_unordered)
        for name in config.task_names
    ]
    return FinetuningRun(config, hparams, tasks, model_dir, vocab_file, vocab, init_checkpoint, finetuned)


def qa_head_config(run: FinetuningRun, task: Task) -> QAHeadConfig:
    """The reference's QA head unless turned off; its answerability classifier only where questions may have no
    answer (SQuAD 2.0): elsewhere it would learn a constant that decoding never reads."""
    config = run.config
    return QAHeadConfig(
        joint_prediction=config.joint_prediction,
        answerable_classifier=config.answerable_classifier and getattr(task, "v2", False),
        answerable_uses_start_logits=config.answerable_uses_start_logits,
        answerable_weight=config.answerable_weight,
        beam_size=config.beam_size,
    )


@dataclass
class TaskData:
    task: Task
    head: TaskHead
    train: list[Example]
    evaluation: dict[str, list[Example]]  # each evaluation split and test split to predict, read once for all trials


def load_task_data(run: FinetuningRun, need_train: bool) -> list[TaskData]:
    """Each task's training examples and label set; dev/test labels are checked against the training ones.
    Without training, the label set is the evaluated model's (see with_saved_head): no training file is read."""
    loaded = []
    for task in run.tasks:
        train = task.examples("train") if need_train else []
        labels = task.label_list(train) if need_train and task.kind != "regression" else []
        if need_train and task.kind == "classification" and len(labels) == 1:
            if task.labels is not None:
                raise UserError(
                    f'task {task.name!r}: the task spec\'s "labels" lists one label, and a classifier '
                    "needs two or more: list every label"
                )
            raise UserError(
                f"task {task.name!r}: every training row has the label {labels[0]!r}, and a classifier needs two or "
                'more: check the label column, or list the labels in the task spec\'s "labels"'
            )
        if need_train and task.kind == "classification" and "f1" in task.metrics and len(labels) != 2:
            raise UserError(
                f'task {task.name!r}: metric "f1" is the F1 of the second of two labels (as GLUE\'s MRPC), and this '
                f'task has {len(labels)} ({", ".join(labels[:10])}): use "macro_f1"'
            )
        splits = [*(task.eval_splits() if run.config.do_eval else [])]
        if run.config.write_test_outputs:  # read now, so that a malformed test file stops the run before training
            splits += [split for split in task.test_splits() if task.has_split(split)]
        evaluation = {split: task.examples(split) for split in splits}
        # Training too: with the task spec's "labels", a training row may name another.
        for split, examples in {"train": train, **evaluation}.items() if need_train else ():
            task.check_labels(examples, labels, split)
        # Evaluating without training: the saved head brings its own range (see with_saved_head).
        value_range = task.value_range if task.kind == "regression" and need_train else (0.0, 1.0)
        head = TaskHead(task.name, task.kind, labels, tuple(value_range), task.span_labels, qa_head_config(run, task))
        loaded.append(TaskData(task, head, train, evaluation))
    return loaded


def training_data_fingerprint(examples: list[Any]) -> str:
    """A checksum of what a task trains on (texts, words, labels, answers; not where they were read from), so a
    trial is not reused once its training file changed, e.g. after another `electra split`."""
    digest = hashlib.sha256()
    for example in examples:
        fields = {key: value for key, value in asdict(example).items() if key not in ("eid", "source")}
        digest.update(json.dumps(fields, sort_keys=True, ensure_ascii=False, default=str).encode())
    return digest.hexdigest()[:16]


def evaluation_fingerprint(run: FinetuningRun, data: list[TaskData]) -> str:
    """What a trial's dev scores were computed on (none without do_eval): the scores kept for a trial whose model
    keep_all_models deleted are reused only for the same evaluation data."""
    splits = [(item, split) for item in data for split in (item.task.eval_splits() if run.config.do_eval else [])]
    return ",".join(
        f"{item.task.name}/{split}:{training_data_fingerprint(item.evaluation[split])}" for item, split in splits
    )


def _check_trial_record(trial_dir: Path, record: dict[str, Any]) -> None:
    """Refuse to resume or reuse a trial that was trained with other hparams or other training data."""
    path = trial_dir / "finetune_config.json"
    if not path.is_file():
        return
    previous, record = _comparable(read_json(path)), _comparable(record)
    changed = sorted(
        key
        for key in set(previous) | set(record)
        if key not in RUN_INDEPENDENT_HPARAMS
        and previous.get(key) != record.get(key)
        and (key not in RECORD_CHECKSUMS or key in previous)  # trials recorded before the checksum existed
        and key in record  # a setting since removed (iterations_per_loop) changed nothing
    )
    if changed:
        raise UserError(
            f"{trial_dir} holds a run with other settings "
            f"({', '.join(RECORD_CHECKSUMS.get(key, key) for key in changed[:6])} differ): "
            "delete that folder to start again, or restore the settings to resume it"
        )


def _comparable(record: dict[str, Any]) -> dict[str, Any]:
    """A trial record whose task specs say only what they mean: those of the tasks trained, each with its defaults
    (a spec that adds "type": "classification", or one for a task not trained, changes nothing)."""
    trained = record.get("task_names") or []
    specs = {name: spec for name, spec in (record.get("tasks") or {}).items() if name in trained}
    return {**record, "tasks": {name: spec_with_defaults(spec) for name, spec in specs.items()}}


@functools.cache
def _file_checksum(path: str, size: int, modified_ns: int) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 24), b""):
            digest.update(block)
    return digest.hexdigest()[:16]


def weights_fingerprint(path: Path) -> str:
    """A checksum of a weights file (computed once a run): a trial is not reused once what it started from has
    changed, e.g. after pre-training went on."""
    status = path.stat()
    return _file_checksum(str(path.resolve()), status.st_size, status.st_mtime_ns)


def trial_record(run: FinetuningRun, data: list[TaskData], trial: int) -> dict[str, Any]:
    """What a trial is trained from (written to its finetune_config.json): a trial is reused only if it matches."""
    return {
        **run.config.to_dict(),
        "seed": run.config.seed + trial - 1,
        "labels": {item.head.name: item.head.labels for item in data},
        "train_data": {item.head.name: training_data_fingerprint(item.train) for item in data},
        "init_weights": weights_fingerprint(run.init_checkpoint) if run.init_checkpoint is not None else None,
    }


def train_trial(
    run: FinetuningRun, data: list[TaskData], trial: int, featurizer: Featurizer, processes: Processes
) -> FinetuningModel:
    """Train one trial (resuming it if it was interrupted), export it, and return the trained model."""
    config = run.config
    trial_dir = run.trial_dir(trial)
    record = trial_record(run, data, trial)
    seed = record["seed"]
    _check_trial_record(trial_dir, record)
    torch.manual_seed(seed)
    model_config = encoder_config(config, len(run.vocab), featurizer.pad_id)
    model = FinetuningModel(model_config, [item.head for item in data])
    exported = trial_dir / "model"
    if all((task_model_dir(exported, data, item) / "config.json").is_file() for item in data):
        _load_exported(model, exported, data)
        if processes.is_main:  # left behind by an interruption between the export and its removal
            shutil.rmtree(trial_dir / "checkpoints", ignore_errors=True)
        return model  # finished; an export cut short is redone from the final checkpoint, which is removed last
    if run.init_checkpoint is not None:
        load_encoder_weights(model, run.init_checkpoint)
    features = [
        feature for task_id, item in enumerate(data) for feature in featurizer.features(item.train, item.head, task_id)
    ]
    if config.log_examples and processes.is_main:
        for feature in features[:3]:
            tokens = " ".join(run.vocab[i] for i in feature.input_ids)
            print(f"example of task {data[feature.task_id].head.name}: {tokens} (label {feature.label:g})")
    steps = int(config.num_train_epochs * len(features) / config.train_batch_size)
    if steps < 1:
        raise UserError(
            f"{len(features)} training examples make no full batch of {config.train_batch_size}: "
            "lower train_batch_size or add examples"
        )
    if processes.is_main:
        trial_dir.mkdir(parents=True, exist_ok=True)
        write_text_atomic(trial_dir / "finetune_config.json", json.dumps(record, indent=2, ensure_ascii=False) + "\n")
    settings = TrainSettings.from_config(
        config,
        batch_size=config.train_batch_size,
        num_train_steps=steps,
        num_warmup_steps=int(config.warmup_proportion * steps),
        seed=seed,
    )
    batches = FinetuningBatches(features, config.train_batch_size, seed, config.length_bucketing, featurizer.pad_id)
    # The reference's objective is the sum of the examples' losses over the batch, not their mean: the same
    # direction, but gradient clipping at max_grad_norm then acts on batch-size times larger gradients.
    model.loss_weights = {"task_loss": float(config.train_batch_size)}
    groups = layerwise_param_groups(model, config.weight_decay_rate, config.layerwise_lr_decay)
    trainer = Trainer(model, batches, settings, trial_dir, processes, groups, f"{run.tasks_name} trial {trial}")
    trainer.train()
    if processes.is_main:
        extra = {
            "max_seq_length": config.max_seq_length,
            "do_lower_case": config.do_lower_case,
            "strip_accents": config.strip_accents,
            "max_query_length": config.max_query_length,
            "doc_stride": config.doc_stride,
        }
        for item in data:
            decoding = QADecoding.from_config(config, getattr(item.task, "v2", False))
            task_extra = {**extra, **_task_columns(item.task), **decoding.record()}
            export_task_model(model, item.head, task_model_dir(exported, data, item), run.vocab, task_extra)
        shutil.rmtree(trial_dir / "checkpoints", ignore_errors=True)  # the exported model is the result
    processes.barrier()
    return model


def _task_columns(task: Task) -> dict[str, Any]:
    """Column names of a user task, and whether its files have a header line, so `electra predict` reads files of
    the same layout."""
    names = ("text_column", "text_column_2")
    layout = {name: getattr(task, name) for name in names if getattr(task, name, None)}
    return {**layout, "header": False} if getattr(task, "header", True) is False else layout


def task_model_dir(exported: Path, data: list[TaskData], item: TaskData) -> Path:
    """A task's exported model: the folder itself for one task, a sub-folder per task when multi-task."""
    return exported if len(data) == 1 else exported / item.head.name


def with_saved_head(item: TaskData, folder: Path) -> TaskData:
    """Evaluating a saved model: its head as it was trained (labels in its output order, value range, QA head) is
    the one to decode and score with, whatever the training file holds now (a class added or renamed there would
    shift every id). It may have been trained under another task's name, e.g. on one review set and evaluated on
    another, but not for another kind of task."""
    saved, _ = read_task_spec(folder)
    if saved.kind != item.head.kind:
        raise UserError(
            f"{folder} holds a {saved.kind} model (fine-tuned for task {saved.name!r}), and task "
            f"{item.head.name!r} is {item.head.kind}: evaluate it on a {saved.kind} task, or name a "
            f"{item.head.kind} model with init_checkpoint"
        )
    for split, examples in item.evaluation.items():
        item.task.check_labels(examples, saved.labels, split, f"the labels of the model in {folder}")
    return replace(item, head=replace(saved, name=item.head.name))


def _load_exported(model: FinetuningModel, exported: Path, data: list[TaskData]) -> None:
    for item in data:
        trained, head, _ = load_task_model(task_model_dir(exported, data, item))
        model.electra.load_state_dict(trained.electra.state_dict())
        model.heads[item.head.name].load_state_dict(trained.heads[head.name].state_dict())


def evaluate_task(
    model: FinetuningModel,
    item: TaskData,
    task_id: int,
    split: str,
    featurizer: Featurizer,
    run: FinetuningRun,
    device: torch.device,
) -> tuple[dict[str, float], list[Any], list[dict[str, Any]]]:
    """Scores of one split (empty for unlabelled test splits), its examples and their decoded predictions."""
    examples = item.evaluation[split] if split in item.evaluation else item.task.examples(split)
    features = featurizer.features(examples, item.head, task_id)
    outputs = predict_features(
        model, features, task_id, run.config.eval_batch_size, device, featurizer.pad_id, run.config.precision
    )
    if item.head.kind == "qa":
        decoding = QADecoding.from_config(run.config, getattr(item.task, "v2", False))
        decoded = decode_answers(examples, features, outputs, featurizer, item.head.qa, decoding)
        write_qa_files(run, item.task.name, split, decoded)
        scores = item.task.score(examples, decoded, [], no_answer_threshold=decoding.no_answer_threshold)
        return scores, examples, decoded
    decoded = [decode(item.head, output, feature) for output, feature in zip(outputs, features, strict=True)]
    if any(example.label is None for example in examples):
        return {}, examples, decoded
    key = {"classification": "label", "regression": "value", "tagging": "tags"}[item.head.kind]
    return item.task.score(examples, [entry[key] for entry in decoded], item.head.labels), examples, decoded


def write_qa_files(run: FinetuningRun, task_name: str, split: str, decoded: list[dict]) -> None:
    """predictions and null odds as the reference writes them, so the official scripts can score them again."""
    folder = run.model_dir / "results" / f"{run.tasks_name}_qa"
    folder.mkdir(parents=True, exist_ok=True)
    suffix = "" if split == "dev" else f"_{split}"
    # SQuAD 2.0: the best span even where the odds say "no answer", as the reference; the official script
    # applies the threshold to the odds file
    answers = {entry["id"]: entry.get("best_span", entry["answer"]) for entry in decoded}
    odds = {entry["id"]: entry["no_answer_odds"] for entry in decoded}
    write_text_atomic(folder / f"{task_name}{suffix}_preds.json", json.dumps(answers, indent=1, ensure_ascii=False))
    write_text_atomic(folder / f"{task_name}{suffix}_null_odds.json", json.dumps(odds, indent=1))


def write_test_outputs(
    run: FinetuningRun, item: TaskData, split: str, trial: int, examples: list[Any], decoded: list[dict]
) -> Path:
    folder = run.model_dir / "test_predictions" / f"{run.tasks_name}_{trial}"
    folder.mkdir(parents=True, exist_ok=True)
    glue_name = GLUE_SUBMISSION_NAMES.get(split) or GLUE_SUBMISSION_NAMES.get(item.task.name)
    if glue_name and item.head.kind != "tagging":
        path = folder / f"{glue_name}.tsv"
        key = "value" if item.head.kind == "regression" else "label"
        # GLUE's index is the row's place in the test file (a skipped malformed row keeps the others in theirs)
        rows = zip(examples, decoded, strict=True)
        text = "index\tprediction\n" + "".join(f"{example.eid}\t{entry[key]}\n" for example, entry in rows)
    else:
        path = folder / f"{item.task.name}_{split}.jsonl"
        entries = [{**input_line(example), **entry} for example, entry in zip(examples, decoded, strict=True)]
        text = "".join(json.dumps(entry, ensure_ascii=False) + "\n" for entry in entries)
    write_text_atomic(path, text)
    return path


def summarise_trials(scores: list[dict[str, dict[str, float]]]) -> dict[str, dict[str, float]]:
    """Per "task/split metric": the median, mean, standard deviation, min and max over trials."""
    summary = {}
    for key in dict.fromkeys(key for trial in scores for key in trial):  # a reused trial may lack a task's scores
        values = [trial[key] for trial in scores if key in trial]
        for metric in values[0]:
            series = [value[metric] for value in values]
            summary[f"{key} {metric}"] = {
                "median": statistics.median(series),
                "mean": statistics.fmean(series),
                "std": statistics.pstdev(series) if len(series) > 1 else 0.0,
                "min": min(series),
                "max": max(series),
            }
    return summary


def write_results(run: FinetuningRun, scores: list[dict[str, dict[str, float]]]) -> Path:
    folder = run.model_dir / "results"
    folder.mkdir(parents=True, exist_ok=True)
    summary = summarise_trials(scores)
    lines = []
    for trial, trial_scores in enumerate(scores, 1):
        for key, metrics in trial_scores.items():
            values = " - ".join(f"{metric}: {value:.2f}" for metric, value in metrics.items())
            lines.append(f"trial {trial} {key}: {values}")
    for key, stats in summary.items():
        lines.append(f"{key} over {len(scores)} trial(s): " + ", ".join(f"{k} {v:.2f}" for k, v in stats.items()))
    base = folder / f"{run.tasks_name}_results"
    if run.finetuned_model is not None:  # one named model evaluated: beside, not over, its training run's results
        named = run.finetuned_model.parent if run.finetuned_model.name == "model" else run.finetuned_model
        base = folder / f"{run.tasks_name}_results_of_{named.name}"
    write_text_atomic(base.with_suffix(".txt"), "\n".join(lines) + "\n")
    payload = {"trials": scores, "summary": summary, "hparams": run.hparams}
    write_text_atomic(base.with_suffix(".json"), json.dumps(payload, indent=2, ensure_ascii=False) + "\n")
    return base.with_suffix(".txt")


def run_finetuning(
    data_dir: str | Path, model_name: str, hparams: dict[str, Any], processes: Processes | None = None
) -> dict[str, Any]:
    """Train and/or evaluate `num_trials` times as `electra finetune` does; returns what it did."""
    run = prepare_finetuning(data_dir, model_name, hparams)
    config = run.config
    if not (config.do_train or config.do_eval):
        raise UserError("both do_train and do_eval are false: nothing to do")
    processes = processes or setup_processes()
    # One run per task set and model at a time: two would write the same trials (other task sets may run beside).
    lock = folder_lock(run.model_dir / "finetuning_models", "electra finetune", f".{run.tasks_name}.lock")
    with lock if processes.is_main else contextlib.nullcontext():
        return _run_trials(run, processes)


def _run_trials(run: FinetuningRun, processes: Processes) -> dict[str, Any]:
    config = run.config
    data = load_task_data(run, need_train=config.do_train)
    featurizer = Featurizer(
        run.vocab,
        config.max_seq_length,
        config.do_lower_case,
        config.max_query_length,
        config.doc_stride,
        config.strip_accents,
    )
    if processes.is_main:
        for item in data:
            where = f"task {item.head.name}'s training data"
            if item.head.kind != "qa" and (note := featurizer.unknown_note(item.train, where)):
                print(note, file=sys.stderr)
    scores: list[dict[str, dict[str, float]]] = []
    outcome: dict[str, Any] = {"model_dir": run.model_dir, "trials": []}
    evaluated = evaluation_fingerprint(run, data)
    for trial in range(1, config.num_trials + 1):
        trial_dir = run.trial_dir(trial)
        exported = run.finetuned_model or trial_dir / "model"
        kept_scores = trial_dir / SCORES_FILE
        if config.do_train and not config.keep_all_models and kept_scores.is_file() and not exported.exists():
            _check_trial_record(trial_dir, trial_record(run, data, trial))
            kept = read_json(kept_scores)
            if kept.get("evaluated") == evaluated:
                scores.append(kept["scores"])
                outcome["trials"].append({"dir": trial_dir, "model": exported, "scores": scores[-1]})
                continue
            if processes.is_main:
                print(
                    f"note: trial {trial}'s model was not kept (keep_all_models) and its scores are of other dev data "
                    "or none: training it again",
                    file=sys.stderr,
                )
        if config.do_train:
            model = train_trial(run, data, trial, featurizer, processes)
        else:
            config_file = task_model_dir(exported, data, data[0]) / "config.json"
            if not config_file.is_file():
                raise UserError(_no_model_message(exported, kept_scores, data))
            data = [with_saved_head(item, task_model_dir(exported, data, item)) for item in data]
            # The shape the model was saved with, whatever the hparams of this evaluation say.
            model = FinetuningModel(ModelConfig.from_dict(read_json(config_file)), [item.head for item in data])
            _load_exported(model, exported, data)
        model.to(processes.device)
        trial_scores: dict[str, dict[str, float]] = {}
        if processes.is_main:
            for task_id, item in enumerate(data):
                for split in item.task.eval_splits() if config.do_eval else []:
                    found, _, _ = evaluate_task(model, item, task_id, split, featurizer, run, processes.device)
                    trial_scores[f"{item.task.name}/{split}"] = found
                if config.write_test_outputs and trial <= config.n_writes_test:
                    for split in item.task.test_splits():
                        if item.task.has_split(split):
                            _, examples, decoded = evaluate_task(
                                model, item, task_id, split, featurizer, run, processes.device
                            )
                            outcome.setdefault("test_outputs", []).append(
                                write_test_outputs(run, item, split, trial, examples, decoded)
                            )
                        else:
                            print(
                                f"note: write_test_outputs: {item.task.folder} holds no {split} file, so there are "
                                f"no {split} predictions of {item.task.name}",
                                file=sys.stderr,
                            )
        if config.do_train and not config.keep_all_models and trial < config.num_trials and processes.is_main:
            # The model goes, its record and scores stay: a re-run (or one resumed after an interruption in a
            # later trial) reuses them instead of training this trial again.
            kept = {"scores": trial_scores, "evaluated": evaluated}
            write_text_atomic(kept_scores, json.dumps(kept, indent=2, ensure_ascii=False) + "\n")
            shutil.rmtree(exported, ignore_errors=True)
        scores.append(trial_scores)
        outcome["trials"].append({"dir": trial_dir, "model": exported, "scores": trial_scores})
    if config.do_eval and processes.is_main:
        outcome["results_file"] = write_results(run, scores)
        outcome["summary"] = summarise_trials(scores)
    return outcome


def _no_model_message(exported: Path, kept_scores: Path, data: list[TaskData]) -> str:
    """Why there is nothing to evaluate in `exported`, and what to do."""
    per_task = sorted(path.parent.name for path in exported.glob(f"*/{TASK_FILE}"))
    if per_task and len(data) == 1:
        wanted = data[0].head.name
        return (
            f"{exported} holds a multi-task model, a folder per task ({', '.join(per_task)}): name the folder of "
            f"task {wanted!r} with init_checkpoint, e.g. {exported / (wanted if wanted in per_task else per_task[0])}"
        )
    if kept_scores.is_file():
        return (
            f'{exported} was deleted after training ("keep_all_models": false keeps the last trial\'s model only); '
            f'its dev scores are in {kept_scores}. Train with "keep_all_models": true to evaluate every trial again'
        )
    return (
        f'{exported} holds no fine-tuned model: train first ("do_train": true), or name a fine-tuned model with '
        "init_checkpoint"
    )


def describe_finetuning(outcome: dict[str, Any]) -> str:
    lines = []
    for trial, entry in enumerate(outcome["trials"], 1):
        where = f"model in {entry['model']}" if Path(entry["model"]).exists() else "model not kept (keep_all_models)"
        lines.append(f"trial {trial}: {where}")
        for key, metrics in entry["scores"].items():
            lines.append(f"  {key}: " + ", ".join(f"{metric} {value:.2f}" for metric, value in metrics.items()))
    if len(outcome["trials"]) > 1 and "summary" in outcome:
        lines.append("over all trials (median / mean / std):")
        for key, stats in outcome["summary"].items():
            lines.append(f"  {key}: {stats['median']:.2f} / {stats['mean']:.2f} / {stats['std']:.2f}")
    lines += [f"test predictions written to {path}" for path in outcome.get("test_outputs", [])]
    if "results_file" in outcome:
        lines.append(f"results written to {outcome['results_file']}")
    return "\n".join(lines)
