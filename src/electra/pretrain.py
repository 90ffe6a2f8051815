"""`electra pretrain`: wiring data, model, objective and trainer together; evaluation; export.

Model folder (`<data-dir>/models/<model-name>/`, as the reference):
  pretrain_config.json     the resolved hparams and the train/eval split
  checkpoints/step-00000020/  model.safetensors (all weights), trainer_state.pt (optimizer, step), step.json
  discriminator/           config.json + model.safetensors + vocab.txt, Hugging Face ElectraForPreTraining names
  generator/               the same for ElectraForMaskedLM (the whole model when training plain MLM)
  logs/                    metrics.jsonl, and TensorBoard event files where tensorboard is installed
  results/                 unsup_results.txt / .json from "do_eval"
"""

from __future__ import annotations

import contextlib
import json
import shutil
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import save_model
from torch import nn

from electra.config import (
    GENERATOR_SHAPE_HPARAMS,
    SHAPE_HPARAMS,
    ModelConfig,
    PretrainingConfig,
    build_pretraining_config,
    with_inherited_shape,
)
from electra.errors import UserError
from electra.fileio import atomic_directory, folder_lock, read_json, read_weights, write_text_atomic
from electra.objectives import MaskedBatch, PretrainingModel, mask_batch
from electra.pretrain_data import PretrainingData
from electra.tokenization import CLS, MASK, PAD, SEP, normalization_settings, read_vocab, vocab_checksum
from electra.trainer import (
    Processes,
    Trainer,
    TrainSettings,
    checkpoint_dirs,
    checkpoint_step,
    load_checkpoint,
    load_weights,
    setup_processes,
    to_device,
)

# Batches are padded to their longest example rounded up to this: few distinct shapes for torch.compile,
# and widths that suit tensor cores.
PAD_WIDTH_MULTIPLE = 8


@dataclass
class PretrainingRun:
    config: PretrainingConfig
    model_dir: Path
    vocab_file: Path
    data: PretrainingData
    train_range: range
    eval_range: range
    # A downloaded model under --model-name (a converted TF checkpoint) goes on from the step it was trained to, as
    # the reference's Estimator does: its README continues ELECTRA-Small, trained for 4 M steps, with
    # "num_train_steps": 4010000 for 10,000 more. Weights from another folder (the reference's init_from_checkpoint)
    # and Hugging Face pairs, which hold no step, start at 0.
    start_step: int = 0


class PretrainingTask:
    """Batches of pre-training data: a seeded permutation per epoch, masked on the device."""

    def __init__(self, data: PretrainingData, config: PretrainingConfig, example_range: range):
        self.data = data
        self.config = config
        self.example_range = example_range
        special = data.metadata["special_token_ids"]
        self.special_ids = torch.tensor([special[token] for token in (CLS, SEP, MASK, PAD)])
        self.mask_id = special[MASK]
        self._permutations: dict[int, np.ndarray] = {}

    def _permutation(self, epoch: int) -> np.ndarray:
        if epoch not in self._permutations:
            self._permutations = {
                epoch: np.random.default_rng([self.config.seed, epoch]).permutation(len(self.example_range))
            }
        return self._permutations[epoch]

    def batch_indices(self, step: int) -> np.ndarray:
        size, count = self.config.train_batch_size, len(self.example_range)
        positions = step * size + np.arange(size)
        chosen = np.empty(size, dtype=np.int64)
        for epoch in np.unique(positions // count):
            here = positions // count == epoch
            chosen[here] = self._permutation(int(epoch))[positions[here] % count]
        return self.example_range.start + chosen

    def example_lengths(self, indices: np.ndarray) -> np.ndarray:
        return self.data.real_lengths(indices)

    def make_batch(
        self, indices: np.ndarray, rows: np.ndarray, total_rows: int, noise_seed: int, device: torch.device
    ) -> MaskedBatch:
        """The examples at `rows` of the global batch `indices`, padded only to the longest of them."""
        ids = self.data.input_ids(indices[rows])
        mask = self.data.attention_mask(ids)
        width = min(ids.shape[1], -(-int(mask.sum(1).max(initial=1)) // PAD_WIDTH_MULTIPLE) * PAD_WIDTH_MULTIPLE)
        segments = self.data.segment_ids(ids)
        tensors = [to_device(array[:, :width], device) for array in (ids, mask, segments)]
        noise = torch.Generator(device=device).manual_seed(noise_seed)
        if self.special_ids.device != device:
            self.special_ids = self.special_ids.to(device)
        return mask_batch(
            *tensors,
            special_ids=self.special_ids,
            mask_id=self.mask_id,
            mask_prob=self.config.mask_prob,
            max_predictions=self.config.max_predictions_per_seq,
            noise=noise,
            rows=rows,
            total_rows=total_rows,
            noise_length=self.data.max_seq_length,
        )


def default_length_groups(device: torch.device) -> int:
    """How many length-sorted pieces each micro-batch runs as when `length_groups` is 0 (automatic).

    Corpora of short documents leave much of a 128-token row as padding (more than half of the Chinese use
    case's); there four pieces trained 1.6x (compact) to 1.8x (ELECTRA-Small) faster on a CPU
    (benchmarks/pretrain_padding.py), and cost nothing measurable on long articles. On a GPU the step of
    a small model is bound by kernel launches, which more pieces multiply.
    """
    return 1 if device.type == "cuda" else 4


# What an evaluation of a trained model takes from this command, not from the run's record: where things are, what
# to do, what suits this machine, the shape (with_inherited_shape decides it: a shape given that differs from the
# recorded one is the user's, and loading the weights then says what does not fit) and what the data decides.
NOT_INHERITED_BY_EVALUATION = {
    *SHAPE_HPARAMS,
    *GENERATOR_SHAPE_HPARAMS,
    "debug",
    "max_seq_length",
    "do_lower_case",
    "strip_accents",
    "do_train",
    "do_eval",
    "pretrain_data",
    "vocab_file",
    "model_dir",
    "init_checkpoint",
    "precision",
    "compile",
    "gradient_accumulation_steps",
}


def prepare_run(data_dir: str | Path, model_name: str, hparams: dict[str, Any]) -> PretrainingRun:
    """Resolve hparams, paths, vocabulary and data as the reference's configure_pretraining does.

    Resuming a model, or continuing from a model folder (`init_checkpoint`), takes its shape unless the hparams
    give another. As in the reference, `--model-name` may name a downloaded model (a converted TF checkpoint or a
    Hugging Face pair under <data-dir>/models/): with no checkpoints of its own yet, it is where training starts.
    """
    data_dir = Path(data_dir)
    model_dir = Path(hparams["model_dir"]) if hparams.get("model_dir") else data_dir / "models" / model_name
    resuming = bool(checkpoint_dirs(model_dir))
    if "init_checkpoint" not in hparams and not resuming and holds_weights(model_dir):
        hparams = {**hparams, "init_checkpoint": str(model_dir)}
    record_file = model_dir / "pretrain_config.json"
    if resuming and hparams.get("do_train") is False and record_file.is_file():
        # Evaluating (the command training suggests gives little more than "do_train": false): what the run masked
        # and learned (objective, mask_prob, generator, seed, ...), unless this command says otherwise.
        recorded = {
            key: value
            for key, value in read_json(record_file).items()
            if key in PretrainingConfig.__dataclass_fields__ and key not in NOT_INHERITED_BY_EVALUATION
        }
        hparams = {**recorded, **hparams}
    init = Path(hparams["init_checkpoint"]) if hparams.get("init_checkpoint") else None
    if resuming:  # resuming or evaluating: the shape it was trained with
        hparams = with_inherited_shape(hparams, model_dir, generator=True)
    elif init is not None and init.is_dir():
        hparams = with_inherited_shape(hparams, init, generator=True)
    config = build_pretraining_config(hparams)
    if not data_dir.is_dir() and not (config.vocab_file and config.pretrain_data):
        raise UserError(
            f"--data-dir {data_dir} is not a folder: build its vocab.txt and pretrain_data/ first (`electra vocab`, "
            "`electra build-data`; see the README's data-dir layout), or give the data-dir they are in"
        )
    vocab_file = Path(config.vocab_file) if config.vocab_file else data_dir / "vocab.txt"
    vocab = read_vocab(vocab_file)
    if config.vocab_size is not None and config.vocab_size != len(vocab):
        raise UserError(
            f"vocab_size {config.vocab_size} does not match the {len(vocab):,} tokens of {vocab_file}: "
            "drop vocab_size from --hparams (it is read from the vocabulary) or fix it"
        )
    data_path = Path(config.pretrain_data) if config.pretrain_data else data_dir / "pretrain_data"
    data = PretrainingData(data_path, vocab)
    if data.max_seq_length != config.max_seq_length:
        if "max_seq_length" in hparams:
            raise UserError(
                f"max_seq_length {config.max_seq_length} differs from the {data.max_seq_length} the data "
                f"in {data_path} was built with: rebuild it with `electra build-data --max-seq-length "
                f"{config.max_seq_length}` or drop max_seq_length from --hparams"
            )
        config.max_seq_length = data.max_seq_length  # the data decides when the user did not
    flags = {
        "do_lower_case": ("--no-lower-case", "--do-lower-case"),
        "strip_accents": ("--no-strip-accents", "--do-strip-accents"),
    }
    for name, built in normalization_settings(data.metadata["settings"]).items():
        if getattr(config, name) != built and name in hparams:
            raise UserError(
                f"{name} {str(getattr(config, name)).lower()} differs from the data in {data_path}, built with "
                f"{name} {str(built).lower()}: rebuild it with `electra build-data "
                f"{flags[name][getattr(config, name)]}` or drop {name} from --hparams"
            )
        setattr(config, name, built)  # the text the model sees is the text the data was built from
    held_out = None
    first_run = read_json(record_file) if record_file.exists() else {}
    if first_run:  # keep the split of the first run, so evaluation stays held out
        held_out = first_run.get("eval_examples")  # absent from a converted TF checkpoint's record
        if first_run.get("vocab_sha256", data.metadata["vocab_sha256"]) != data.metadata["vocab_sha256"]:
            raise UserError(
                f"{model_dir} was trained with another vocabulary than {vocab_file}: its checkpoints would read "
                "the new token ids as the old ones. Use the vocabulary and data it was trained with, or another "
                "--model-name to start afresh"
            )
        if config.do_train and resuming:
            _refuse_other_settings(model_dir, first_run, config)
            if first_run.get("data_fingerprint", data.fingerprint) != data.fingerprint:  # older records: unknown
                raise UserError(
                    f"{model_dir} holds checkpoints of a run on other pre-training data than {data_path} (now "
                    f"{len(data):,} examples, then {first_run['eval_examples'] + first_run['train_examples']:,}): "
                    "resumed, its held-out examples would no longer be held out. Restore that data to resume, or "
                    f"continue on this data as a new --model-name with init_checkpoint {model_dir}"
                )
    fixed = held_out is not None
    if held_out is None:
        held_out = min(config.num_eval_steps * config.eval_batch_size, int(config.max_eval_share * len(data)))
    if config.do_eval and held_out == 0:  # found out after training, it had asked for more eval steps
        raise UserError(
            f"no held-out examples to evaluate on: {model_dir}'s split, fixed at its first run, holds none"
            if fixed
            else f"no held-out examples to evaluate on: max_eval_share {config.max_eval_share} of the "
            f"{len(data):,} examples in {data_path} is less than one; raise it, build more data, or leave do_eval out"
        )
    if config.do_train and len(data) - held_out < config.train_batch_size:
        raise UserError(
            f"{data_path} holds {len(data):,} examples: too few for train_batch_size "
            f"{config.train_batch_size} after holding out {held_out:,} for evaluation"
        )
    start_step = int(first_run.get("global_step", 0)) if init == model_dir and not resuming else 0
    train_range, eval_range = range(0, len(data) - held_out), range(len(data) - held_out, len(data))
    return PretrainingRun(config, model_dir, vocab_file, data, train_range, eval_range, start_step)


# What may differ between an interrupted run and its resumption: how long, how often to save, log and evaluate, where
# files are, and how each step is computed (precision, compiling, accumulation, length groups: the same loss).
RESUME_SAFE_HPARAMS = {
    "do_train",
    "do_eval",
    "num_train_steps",
    "num_eval_steps",
    "eval_batch_size",
    "save_checkpoints_steps",
    "keep_checkpoint_max",
    "log_every_steps",
    "max_nonfinite_steps",
    "precision",
    "compile",
    "gradient_accumulation_steps",
    "length_groups",
    "pretrain_data",
    "vocab_file",
    "model_dir",
    "init_checkpoint",
    "max_eval_share",
}
# A resumed run takes its shape from its checkpoints, and loading them says what differs.
SHAPE_KEYS = {*SHAPE_HPARAMS, *GENERATOR_SHAPE_HPARAMS, "vocab_size"}


def _refuse_other_settings(model_dir: Path, recorded: dict[str, Any], config: PretrainingConfig) -> None:
    """Resuming continues the recorded run: hparams that change what it trains would apply to its later steps only
    (and the record would claim them for all). Raising num_train_steps is how a run is continued; the hparams of
    RESUME_SAFE_HPARAMS change how it runs, not what it learns. Hparams the record predates count as unchanged."""
    current = json.loads(json.dumps(config.to_dict()))
    changed = [
        f"{key} {recorded[key]!r} -> {value!r}"
        for key, value in current.items()
        if key not in RESUME_SAFE_HPARAMS and key not in SHAPE_KEYS and key in recorded and recorded[key] != value
    ]
    # The shape hparams may be spelled otherwise and build the same network; compared is the network. Loading the
    # checkpoint refuses other tensor shapes, not other attention heads, dropout or initialisation (which the
    # generator takes from the discriminator's settings too).
    fields = set(PretrainingConfig.__dataclass_fields__)
    before = build_pretraining_config({key: value for key, value in recorded.items() if key in fields})
    old, new = before.discriminator_config(1, 0).to_dict(), config.discriminator_config(1, 0).to_dict()
    changed += [f"{key} {old[key]!r} -> {new[key]!r}" for key in old if old[key] != new[key]]
    if changed:
        raise UserError(
            f"{model_dir} holds checkpoints of a run with other settings ({', '.join(changed[:6])}): restore them to "
            f"resume it, or start a new --model-name (with init_checkpoint {model_dir} to start from its weights)"
        )


WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")  # ours and newer Hugging Face folders; older releases


def weights_file(folder: Path) -> Path | None:
    return next((folder / name for name in WEIGHT_FILES if (folder / name).is_file()), None)


def holds_weights(folder: Path) -> bool:
    """A model folder with weights of its own: ours, a converted TF checkpoint, or a Hugging Face pair."""
    return any(weights_file(path) for path in (folder, folder / "discriminator", folder / "generator"))


def resolve_init_checkpoint(path: str) -> Path:
    """A weights file: `path` itself, the one in the folder `path` (ours, a converted TF checkpoint or a Hugging
    Face model), its newest checkpoint, or its discriminator's (an exported or Hugging Face pair)."""
    candidate = Path(path)
    if candidate.is_file():
        return candidate
    checkpoints = checkpoint_dirs(candidate)
    newest = checkpoints[-1] / "model.safetensors" if checkpoints else None
    found = weights_file(candidate) or newest or weights_file(candidate / "discriminator")
    if found is None:
        raise UserError(
            f"init_checkpoint {path} is neither a weights file (.safetensors, pytorch_model.bin) nor a folder holding "
            "one, checkpoints/, or discriminator/"
        )
    return found


def _pretraining_sources(path: str) -> dict[str, dict[str, torch.Tensor]]:
    """The weights `init_checkpoint` points at, by part: "all" (ours or a converted TF checkpoint: every
    weight under our names), "discriminator" and/or "generator" (Hugging Face ElectraForPreTraining and
    ElectraForMaskedLM names, from one model or a folder holding discriminator/ and generator/)."""
    candidate = Path(path)
    if candidate.is_dir() and weights_file(candidate) is None and not checkpoint_dirs(candidate):
        pair = {part: weights_file(candidate / part) for part in ("discriminator", "generator")}
        if not any(pair.values()):
            resolve_init_checkpoint(path)  # raises the error that says what a folder must hold
        return {part: read_weights(file) for part, file in pair.items() if file is not None}
    state = read_weights(resolve_init_checkpoint(path))
    if any(key.startswith(("discriminator.", "generator.")) for key in state):
        return {"all": state}
    is_generator = any(key.startswith(("generator_lm_head.", "generator_predictions.")) for key in state)
    return {"generator" if is_generator else "discriminator": state}


def load_init_checkpoint(model: PretrainingModel, path: str) -> list[str]:
    """Start pre-training from the weights at `path` (see `_pretraining_sources`); returns the parts (e.g.
    "generator.electra") that start from random weights instead: the generator when only a discriminator is
    given, a masked LM's head when a discriminator starts plain MLM. The discriminator itself (or the masked LM)
    must be complete.

    Weights this model shares (the generator's embeddings, its output layer tied to the word embeddings) are set
    once, from the discriminator's copy when both parts carry one."""
    sources = _pretraining_sources(path)
    prefixes = {"all": "", "discriminator": "discriminator.", "generator": "generator."}
    if not model.has_discriminator:  # plain MLM: the whole model is `generator`; a discriminator gives its encoder
        prefixes["discriminator"] = "generator."
        encoder = {key: value for key, value in sources.get("discriminator", {}).items() if key.startswith("electra.")}
        sources["discriminator"] = encoder
    own = model.state_dict()
    provided: dict[int, tuple[str, torch.Tensor]] = {}  # by the storage of the model's tensor: shared ones once
    unexpected = []
    for part in ("all", "discriminator", "generator"):  # the discriminator's copy of a shared weight wins
        for key, value in sources.get(part, {}).items():
            name = prefixes[part] + key
            if name in own:
                provided.setdefault(own[name].data_ptr(), (name, value))
            elif not key.endswith(("position_ids", "token_type_ids")):  # buffers older transformers saved
                unexpected.append(name)
    mismatched = [
        f"{name} {tuple(value.shape)} (model {tuple(own[name].shape)})"
        for name, value in provided.values()
        if value.shape != own[name].shape
    ]
    if unexpected or mismatched:
        hint = (
            "the vocabulary differs: build the data with the checkpoint's vocab.txt"
            if any("word_embeddings" in item for item in mismatched)
            else "use the same objective and model settings as the checkpoint (model_size, model_hparam_overrides, "
            "embedding_size, generator_hidden_size, generator_layers)"
        )
        problems = [f"{len(mismatched)} of another shape: {', '.join(mismatched[:4])}"] if mismatched else []
        problems += [f"{len(unexpected)} unknown: {', '.join(sorted(unexpected)[:4])}"] if unexpected else []
        raise UserError(f"the weights in {path} do not fit this model ({'; '.join(problems)}): {hint}")
    fresh = sorted({name for name, value in own.items() if value.data_ptr() not in provided})
    # The discriminator (or a lone masked LM's encoder) must come from the checkpoint; heads and the generator may not.
    required = (
        ("",) if "all" in sources else ("discriminator.",) if model.has_discriminator else ("generator.electra.",)
    )
    essential = [name for name in fresh if name.startswith(required)]
    if essential:
        raise UserError(
            f"the weights in {path} do not fit this model: missing {essential[:5]}; use the same objective and "
            "model settings as the checkpoint"
        )
    model.load_state_dict({name: value for name, value in provided.values()}, strict=False)
    return sorted({".".join(name.split(".")[:2]) for name in fresh})


@dataclass
class SavedPretraining:
    """A pre-trained model folder as it stands: its newest checkpoint (weights, optimizer state, step) or, with no
    checkpoints, the weights it was given (a converted TF checkpoint, a Hugging Face pair)."""

    model: PretrainingModel
    step: int
    optimizer_state: dict[str, Any] | None
    vocab_file: Path
    do_lower_case: bool
    random_parts: list[str]  # parts the folder has no weights for (the generator beside a lone discriminator)


def model_vocab_places(model_dir: Path, data_dir: Path) -> list[Path]:
    """Where a model's vocabulary may be, in order: its own folder, its exported discriminator, the data dir."""
    return [model_dir / "vocab.txt", model_dir / "discriminator" / "vocab.txt", data_dir / "vocab.txt"]


def open_pretrained(folder: Path) -> SavedPretraining:
    record_file = folder / "pretrain_config.json"
    if record_file.is_file():  # the settings it was trained with, debug shape included
        record = read_json(record_file)
        hparams = {key: value for key, value in record.items() if key in PretrainingConfig.__dataclass_fields__}
    else:
        hparams = with_inherited_shape({}, folder, generator=True)
    config = build_pretraining_config(hparams)
    places = model_vocab_places(folder, folder.parent.parent)  # <data-dir>/models/<name>
    vocab_file = next((path for path in places if path.is_file()), None)
    if vocab_file is None:
        raise UserError(f"no vocabulary for {folder}: looked for {', '.join(str(path) for path in places)}")
    vocab = read_vocab(vocab_file)
    if record_file.is_file() and record.get("vocab_sha256", vocab_checksum(vocab)) != vocab_checksum(vocab):
        raise UserError(f"{folder} was trained with another vocabulary than {vocab_file}")
    model = PretrainingModel(config, len(vocab), vocab.index(PAD))
    checkpoints = checkpoint_dirs(folder)
    if checkpoints:
        state = load_checkpoint(model, checkpoints[-1], "cpu")
        return SavedPretraining(model, int(state["step"]), state["optimizer"], vocab_file, config.do_lower_case, [])
    if not holds_weights(folder):
        raise UserError(
            f"{folder} holds no pre-trained model: no checkpoints/, model.safetensors or discriminator/ (pre-train "
            "it with electra pretrain, or convert a TF checkpoint with electra convert-tf)"
        )
    random_parts = load_init_checkpoint(model, str(folder))
    step = int(record.get("global_step", 0)) if record_file.is_file() else 0  # a converted model's
    return SavedPretraining(model, step, None, vocab_file, config.do_lower_case, random_parts)


def hf_config(config: ModelConfig, architecture: str) -> dict[str, Any]:
    """A Hugging Face ElectraConfig as config.json, so `transformers` can load the folder."""
    return {
        "architectures": [architecture],
        "model_type": "electra",
        **config.to_dict(),
        "position_embedding_type": "absolute",
        "summary_type": "first",
        "summary_use_proj": True,
        "summary_activation": "gelu",
        "summary_last_dropout": 0.1,
    }


def export_part(module: nn.Module, config: ModelConfig, architecture: str, folder: Path, vocab_file: Path) -> None:
    with atomic_directory(folder) as tmp:
        save_model(module, str(tmp / "model.safetensors"))
        (tmp / "config.json").write_text(json.dumps(hf_config(config, architecture), indent=2) + "\n")
        shutil.copyfile(vocab_file, tmp / "vocab.txt")


def export_models(model: PretrainingModel, model_dir: Path, vocab_file: Path) -> list[Path]:
    written = []
    if model.has_discriminator:
        export_part(
            model.discriminator,
            model.discriminator_config,
            "ElectraForPreTraining",
            model_dir / "discriminator",
            vocab_file,
        )
        written.append(model_dir / "discriminator")
    if hasattr(model, "generator"):
        config = model.discriminator_config if not model.has_discriminator else model.generator.config
        export_part(model.generator, config, "ElectraForMaskedLM", model_dir / "generator", vocab_file)
        written.append(model_dir / "generator")
    return written


def eval_batches(run: PretrainingRun, device: torch.device) -> Iterator[MaskedBatch]:
    """The held-out examples in order, `num_eval_steps` batches at most, masked with fixed seeds."""
    task = PretrainingTask(run.data, run.config, run.eval_range)
    size = run.config.eval_batch_size
    starts = range(run.eval_range.start, run.eval_range.stop, size)
    for batch_index, start in enumerate(starts[: run.config.num_eval_steps]):
        indices = np.arange(start, min(run.eval_range.stop, start + size))
        yield task.make_batch(indices, np.arange(len(indices)), len(indices), batch_index, device)


def mean_token_cosine(hidden: torch.Tensor, attention_mask: torch.Tensor) -> float:
    """Mean cosine similarity between the final states of every two different real tokens of a batch. Random
    weights give about 0.3; an encoder whose states have collapsed onto one direction, near 1."""
    states = F.normalize(hidden[attention_mask.bool()].float(), dim=-1)
    count = len(states)
    if count < 2:
        return float("nan")
    return float((states.sum(0).square().sum() - count) / (count * (count - 1)))


@torch.no_grad()
def evaluate(model: PretrainingModel, run: PretrainingRun, device: torch.device) -> dict[str, float]:
    """The reference's unsupervised metrics on the held-out examples, and `token_cosine`: how alike the states
    of the encoder that fine-tuning starts from are across tokens of the original text (see mean_token_cosine)."""
    from sklearn.metrics import roc_auc_score

    config = run.config
    model.eval()
    totals: dict[str, float] = {}
    probabilities, labels, cosines = [], [], []
    for batch in eval_batches(run, device):
        details: dict[str, torch.Tensor] = {}
        sums = model(batch, details)
        hidden = model.finetuning_encoder(batch.input_ids, batch.attention_mask, batch.token_type_ids)
        cosines.append(mean_token_cosine(hidden, batch.attention_mask))
        for name, value in {**sums, **model.counts(batch)}.items():
            totals[name] = totals.get(name, 0.0) + float(value)
        if details:
            real = details["attention_mask"].bool()
            probabilities.append(torch.sigmoid(details["disc_logits"][real]).cpu())
            labels.append(details["labels"][real].cpu())
    if not totals:
        raise UserError(f"no held-out examples to evaluate on: the held-out split of {run.model_dir} is empty")
    results = {
        "masked_lm_accuracy": totals["mlm_correct"] / totals["masked"],
        "masked_lm_loss": totals["mlm_loss"] / totals["cloze" if config.two_tower_generator else "masked"],
        "eval_examples": float(min(len(run.eval_range), config.num_eval_steps * config.eval_batch_size)),
        "token_cosine": float(np.nanmean(cosines)),
    }
    if probabilities:
        probs, truth = torch.cat(probabilities).numpy(), torch.cat(labels).numpy()
        predicted = probs > 0.5
        results.update(
            {
                "sampled_masked_lm_accuracy": totals["sampled_correct"] / totals["masked"],
                "disc_loss": totals["disc_loss"] / totals["tokens"],
                "disc_accuracy": float((predicted == truth).mean()),
                "disc_precision": float((predicted & (truth == 1)).sum() / max(predicted.sum(), 1)),
                "disc_recall": float((predicted & (truth == 1)).sum() / max((truth == 1).sum(), 1)),
                "disc_auc": float(roc_auc_score(truth, probs)) if 0 < truth.sum() < len(truth) else float("nan"),
                "replaced_share": float(truth.mean()),
            }
        )
    return results


def write_results(results: dict[str, float], model_dir: Path) -> Path:
    folder = model_dir / "results"
    folder.mkdir(parents=True, exist_ok=True)
    write_text_atomic(folder / "unsup_results.json", json.dumps(results, indent=2, sort_keys=True) + "\n")
    text = "".join(f"{key} = {value:.6g}\n" for key, value in sorted(results.items()))
    write_text_atomic(folder / "unsup_results.txt", text)
    return folder / "unsup_results.txt"


def run_pretraining(
    data_dir: str | Path, model_name: str, hparams: dict[str, Any], processes: Processes | None = None
) -> dict[str, Any]:
    """Train and/or evaluate as `electra pretrain` does; returns what it did, for the caller to print."""
    run = prepare_run(data_dir, model_name, hparams)
    config = run.config
    if not (config.do_train or config.do_eval):
        raise UserError("both do_train and do_eval are false: nothing to do")
    processes = processes or setup_processes()
    with folder_lock(run.model_dir, "electra pretrain") if processes.is_main else contextlib.nullcontext():
        return _train_and_evaluate(run, model_name, processes)


def _note_other_vocabulary(init: Path, vocab: list[str], vocab_file: Path) -> None:
    """Say so when the weights to continue from came with another vocabulary of the same size (another size does not
    load): their embedding of an id is the embedding of their token. Not an error, as replacing a released
    vocabulary's [unused] entries with new words is a known way to extend it."""
    folder = init if init.is_dir() else init.parent
    own = next((path for path in model_vocab_places(folder, folder.parent.parent) if path.is_file()), None)
    if own is None or own.resolve() == vocab_file.resolve():
        return
    theirs = read_vocab(own)
    differing = [index for index, (old, new) in enumerate(zip(theirs, vocab, strict=False)) if old != new]
    if differing:
        first = differing[0]
        print(
            f"note: {vocab_file} and {own}, the vocabulary of the weights continued, differ in {len(differing):,} "
            f"of {len(vocab):,} tokens (first id {first}: {vocab[first]!r} here, {theirs[first]!r} there); those "
            "ids start from the embeddings of the other tokens. If that is not meant, build the data with "
            f"`electra build-data --vocab-file {own}`",
            file=sys.stderr,
        )


def _train_and_evaluate(run: PretrainingRun, model_name: str, processes: Processes) -> dict[str, Any]:
    config = run.config
    torch.manual_seed(config.seed)  # the initial weights
    vocab = read_vocab(run.vocab_file)
    model = PretrainingModel(config, len(vocab), vocab.index(PAD))
    # Weights first: a checkpoint or init_checkpoint that does not fit stops the run before anything is written.
    checkpoints = checkpoint_dirs(run.model_dir)
    if checkpoints:
        load_weights(model, checkpoints[-1] / "model.safetensors")  # training resumes from it
    elif config.init_checkpoint:
        random_parts = load_init_checkpoint(model, config.init_checkpoint)  # weights only, fresh optimizer
        if processes.is_main:
            _note_other_vocabulary(Path(config.init_checkpoint), vocab, run.vocab_file)
        if random_parts and processes.is_main:
            print(
                f"note: {config.init_checkpoint} has no weights for {', '.join(random_parts)}: "
                "starting them from random weights",
                file=sys.stderr,
            )
    elif not config.do_train:
        raise UserError(f"{run.model_dir} holds no checkpoint to evaluate: train first, or set init_checkpoint")
    trainer = None
    if config.do_train:  # before the record is written: a batch the processes cannot share is refused here
        settings = TrainSettings.from_config(
            config,
            batch_size=config.train_batch_size,
            length_groups=config.length_groups or default_length_groups(processes.device),
        )
        trainer = Trainer(
            model,
            PretrainingTask(run.data, config, run.train_range),
            settings,
            run.model_dir,
            processes,
            description=f"pretrain {model_name}",
            start_step=run.start_step,
        )
    record_file = run.model_dir / "pretrain_config.json"
    reached = checkpoint_step(checkpoints[-1]) if checkpoints else run.start_step
    if processes.is_main:
        run.model_dir.mkdir(parents=True, exist_ok=True)
    # An evaluation only keeps the record of the run it evaluates: its defaults (batch 128, 10,000 warm-up steps)
    # would otherwise stand in for the training settings, and resuming that run would be refused.
    if processes.is_main and (config.do_train or not record_file.exists()):
        earlier = read_json(record_file) if record_file.exists() else {}
        record = {
            **{key: earlier[key] for key in ("converted_from", "global_step") if key in earlier},
            **config.to_dict(),
            # A re-run asking for fewer steps than were trained trains none: the model holds the steps it reached.
            "num_train_steps": max(config.num_train_steps, reached),
            "vocab_size": len(vocab),
            "vocab_sha256": run.data.metadata["vocab_sha256"],
            "data_fingerprint": run.data.fingerprint,
            "eval_examples": len(run.eval_range),
            "train_examples": len(run.train_range),
            "processes": processes.world_size,
        }
        write_text_atomic(record_file, json.dumps(record, indent=2) + "\n")
    outcome: dict[str, Any] = {"model_dir": run.model_dir}
    if trainer is not None:
        result = trainer.train()
        outcome["train"] = result
        if processes.is_main:
            outcome["exported"] = export_models(model, run.model_dir, run.vocab_file)
    if config.do_eval and processes.is_main:
        results = evaluate(model.to(processes.device), run, processes.device)
        outcome["eval"] = results
        outcome["results_file"] = write_results(results, run.model_dir)
    return outcome


def describe(outcome: dict[str, Any]) -> str:
    lines = []
    if "train" in outcome:
        result = outcome["train"]
        metrics = ", ".join(f"{key} {value:.4g}" for key, value in sorted(result.last_metrics.items()))
        if metrics:
            lines.append(f"trained to step {result.step:,} ({result.skipped_steps} skipped): {metrics}")
        else:  # the same command again after it finished
            lines.append(f"already trained to step {result.step:,}: nothing left to train (raise num_train_steps)")
        lines += [f"exported {path}" for path in outcome.get("exported", [])]
    if "eval" in outcome:
        lines.append("evaluation on held-out data:")
        lines += [f"  {key} = {value:.4f}" for key, value in sorted(outcome["eval"].items())]
        lines.append(f"results written to {outcome['results_file']}")
    elif "train" in outcome:  # do_eval defaults to false, as in the reference's run_pretraining.py
        lines.append(
            'not evaluated on held-out data: the same command with --hparams \'{"do_train": false, '
            '"do_eval": true}\' does that (or add "do_eval": true to the training hparams)'
        )
    return "\n".join(lines) if lines else f"nothing to report for {outcome['model_dir']}"
