"""`electra finetune`: features, the multi-task model, training, evaluation, export (predict.py: `predict`).

Layout under the pre-trained model's folder (`<data-dir>/models/<model-name>/`, as the reference):
  finetuning_models/<tasks>_model_<trial>/   checkpoints while training; `model/` when done: a Hugging Face
                                              folder (config.json, model.safetensors, vocab.txt) plus
                                              electra_task.json, one sub-folder per task when multi-task
  results/<tasks>_results.txt / .json          every trial's scores, then their median, mean and spread
  test_predictions/<tasks>_<trial>/            "write_test_outputs": GLUE submission files, JSONL otherwise

Examples are featurised once with the Rust tokenizer and padded per batch (dynamic padding); training
batches group examples of similar length (length bucketing), which changes which examples share a
batch but not what the model computes for each of them.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import re
import shutil
import statistics
import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from torch import nn
from tqdm import tqdm

from electra.config import (
    FinetuningConfig,
    ModelConfig,
    build_finetuning_config,
    encoder_config,
    pretraining_objective,
    with_inherited_shape,
)
from electra.errors import UserError
from electra.fileio import (
    atomic_directory,
    folder_lock,
    read_json,
    read_weights,
    write_text_atomic,
)
from electra.metrics import iob2_tags
from electra.modeling import (
    ElectraClassificationHead,
    ElectraModel,
    ElectraQuestionAnsweringHead,
    ElectraTokenClassificationHead,
    QAHeadConfig,
    init_weights,
)
from electra.pretrain import hf_config, model_vocab_places, resolve_init_checkpoint
from electra.qa import QADecoding, QAFeaturizer, best_answer
from electra.tasks import (
    Example,
    Task,
    get_task,
    spec_with_defaults,
)
from electra.tokenization import (
    CLS,
    PAD,
    SEP,
    build_tokenizer,
    normalization_settings,
    read_vocab,
    write_vocab,
)
from electra.trainer import (
    NO_DECAY_MARKERS,
    Processes,
    Trainer,
    TrainSettings,
    checkpoint_dirs,
    is_first_process,
    resolve_precision,
    setup_processes,
    to_device,
)

IGNORE_INDEX = -100  # token label of positions that are not the first piece of a word
BUCKET_BATCHES = 50  # length bucketing sorts this many batches' worth of shuffled examples at a time
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
TASK_FILE = "electra_task.json"
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
}


# ----------------------------------------------------------------------------------------------- task heads
@dataclass
class TaskHead:
    """What the model needs to know about a task: its kind and label set."""

    name: str
    kind: str
    labels: list[str]  # class names or tags; empty for regression
    value_range: tuple[float, float] = (0.0, 1.0)
    span_labels: bool = True
    qa: QAHeadConfig = field(default_factory=QAHeadConfig)  # question answering: which head

    @property
    def num_outputs(self) -> int:
        return {"regression": 1, "qa": 2}.get(self.kind, len(self.labels))

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "kind": self.kind,
            "labels": self.labels,
            "value_range": list(self.value_range),
            "span_labels": self.span_labels,
            **({"qa": asdict(self.qa)} if self.kind == "qa" else {}),
        }

    @classmethod
    def from_dict(cls, spec: dict[str, Any]) -> TaskHead:
        """A head saved by `to_dict`; QA models saved before the reference's head existed have the plain one."""
        qa = QAHeadConfig(**spec.get("qa", {}))
        return cls(spec["name"], spec["kind"], spec["labels"], tuple(spec["value_range"]), spec["span_labels"], qa)


# ----------------------------------------------------------------------------------------------- features
@dataclass
class Features:
    input_ids: np.ndarray  # [length] int32, with [CLS] and [SEP]
    token_type_ids: np.ndarray  # [length] int8
    task_id: int
    label: float = 0.0  # class id, scaled regression target, or (question answering) 1.0 for "no answer"
    token_labels: np.ndarray | None = None  # tagging: [length] label id at each word's first piece, else -100
    word_starts: np.ndarray | None = None  # tagging: token position of each word's first piece, -1 if cut off
    span: tuple[int, int] = (0, 0)  # question answering: the answer's first and last token ([CLS] if none)
    window: Any = None  # question answering: the QAFeature, to map predictions back to the context


def truncated_pair_lengths(length_a: int, length_b: int, budget: int) -> tuple[int, int]:
    """The reference's _truncate_seq_pair in closed form: pop the longer side's last token, `b` on ties."""
    excess = length_a + length_b - budget
    if excess <= 0:
        return length_a, length_b
    gap = min(abs(length_a - length_b), excess)
    if length_a > length_b:
        length_a -= gap
    else:
        length_b -= gap
    excess -= gap
    return length_a - excess // 2, length_b - (excess + 1) // 2


class Featurizer:
    """Turns examples into token ids with the reference's layout: [CLS] a [SEP] (b [SEP])."""

    def __init__(
        self,
        vocab: list[str],
        max_seq_length: int,
        do_lower_case: bool = True,
        max_query_length: int = 64,
        doc_stride: int = 128,
        strip_accents: bool = True,
    ):
        self.vocab = vocab
        self.tokenizer = build_tokenizer(vocab, do_lower_case, strip_accents)
        self.qa = QAFeaturizer(vocab, max_seq_length, max_query_length, doc_stride, tokenizer=self.tokenizer)
        index = self.qa.index
        self.cls_id, self.sep_id, self.pad_id = index[CLS], index[SEP], index[PAD]
        self.max_seq_length = max_seq_length

    @classmethod
    def for_model(cls, vocab: list[str], spec: dict[str, Any]) -> Featurizer:
        """The featurizer a fine-tuned model was trained with, from its electra_task.json."""
        return cls(
            vocab,
            spec.get("max_seq_length", 128),
            max_query_length=spec.get("max_query_length", 64),
            doc_stride=spec.get("doc_stride", 128),
            **normalization_settings(spec),
        )

    def _pieces(self, texts: list[str]) -> list[list[int]]:
        return [encoding.ids for encoding in self.tokenizer.encode_batch(texts, add_special_tokens=False)]

    def features(self, examples: list[Example], head: TaskHead, task_id: int) -> list[Features]:
        if head.kind == "tagging":
            return self._tagging_features(examples, head, task_id)
        if head.kind == "qa":
            return [
                Features(
                    np.asarray(window.input_ids, dtype=np.int32),
                    np.asarray(window.token_type_ids, dtype=np.int8),
                    task_id,
                    label=float(examples[window.example_index].is_impossible),  # type: ignore[attr-defined]
                    span=(window.start_position, window.end_position),
                    window=window,
                )
                for window in self.qa.features(examples)  # type: ignore[arg-type]
            ]
        firsts = self._pieces([example.text_a for example in examples])
        second_pieces = iter(self._pieces([example.text_b for example in examples if example.text_b]))
        seconds = [next(second_pieces) if example.text_b else [] for example in examples]
        paired = [bool(second) for second in seconds]  # a second text without tokens: one segment, as the reference
        label_ids = {label: i for i, label in enumerate(head.labels)}
        low, high = head.value_range
        features = []
        for example, first, second, pair in zip(examples, firsts, seconds, paired, strict=True):
            if pair:
                length_a, length_b = truncated_pair_lengths(len(first), len(second), self.max_seq_length - 3)
                ids = [self.cls_id, *first[:length_a], self.sep_id, *second[:length_b], self.sep_id]
                types = [0] * (length_a + 2) + [1] * (length_b + 1)
            else:
                ids = [self.cls_id, *first[: self.max_seq_length - 2], self.sep_id]
                types = [0] * len(ids)
            if example.label is None:
                label = 0.0
            elif head.kind == "regression":
                label = (float(example.label) - low) / (high - low)
            else:
                label = float(label_ids[str(example.label)])
            features.append(Features(np.asarray(ids, dtype=np.int32), np.asarray(types, dtype=np.int8), task_id, label))
        return features

    def _tagging_features(self, examples: list[Example], head: TaskHead, task_id: int) -> list[Features]:
        from electra.metrics import bioes_tags

        label_ids = {label: i for i, label in enumerate(head.labels)}
        encodings = self.tokenizer.encode_batch(
            [example.words for example in examples], is_pretokenized=True, add_special_tokens=False
        )
        budget = self.max_seq_length - 2
        features = []
        for example, encoding in zip(examples, encodings, strict=True):
            word_ids = encoding.word_ids
            # Keep whole words only: cut before the first word whose pieces do not all fit.
            kept = len(word_ids)
            if kept > budget:
                kept = budget
                while kept > 0 and word_ids[kept] == word_ids[kept - 1]:
                    kept -= 1
            ids = [self.cls_id, *encoding.ids[:kept], self.sep_id]
            starts = np.full(len(example.words), -1, dtype=np.int64)
            token_labels = np.full(len(ids), IGNORE_INDEX, dtype=np.int64)
            tags = None
            if example.label is not None:
                tags = bioes_tags(example.label) if head.span_labels else example.label
            for position in range(kept):
                word = word_ids[position]
                if starts[word] < 0:
                    starts[word] = position + 1
                    if tags is not None:
                        token_labels[position + 1] = label_ids.get(tags[word], IGNORE_INDEX)
            features.append(
                Features(
                    np.asarray(ids, dtype=np.int32),
                    np.zeros(len(ids), dtype=np.int8),
                    task_id,
                    token_labels=token_labels,
                    word_starts=starts,
                )
            )
        return features


@dataclass
class FinetuningBatch:
    input_ids: torch.Tensor  # [batch, seq]
    attention_mask: torch.Tensor  # [batch, seq]
    token_type_ids: torch.Tensor  # [batch, seq]
    task_ids: torch.Tensor  # [batch]
    labels: torch.Tensor  # [batch] float: class id or scaled target
    token_labels: torch.Tensor  # [batch, seq] long, IGNORE_INDEX where unlabelled
    spans: torch.Tensor  # [batch, 2] long: question answering's answer start and end


def collate(features: list[Features], pad_id: int, device: torch.device, pad_to: int | None = None) -> FinetuningBatch:
    """Pad to the longest example of the batch (or to `pad_to`)."""
    length = pad_to or max(len(item.input_ids) for item in features)
    size = len(features)
    input_ids = np.full((size, length), pad_id, dtype=np.int64)
    attention_mask = np.zeros((size, length), dtype=np.int64)
    token_type_ids = np.zeros((size, length), dtype=np.int64)
    token_labels = np.full((size, length), IGNORE_INDEX, dtype=np.int64)
    for row, item in enumerate(features):
        n = len(item.input_ids)
        input_ids[row, :n] = item.input_ids
        attention_mask[row, :n] = 1
        token_type_ids[row, :n] = item.token_type_ids
        if item.token_labels is not None:
            token_labels[row, :n] = item.token_labels
    return FinetuningBatch(
        *(to_device(array, device) for array in (input_ids, attention_mask, token_type_ids)),
        task_ids=to_device(np.array([item.task_id for item in features], dtype=np.int64), device),
        labels=to_device(np.array([item.label for item in features], dtype=np.float32), device),
        token_labels=to_device(token_labels, device),
        spans=to_device(np.array([item.span for item in features], dtype=np.int64).reshape(size, 2), device),
    )


class FinetuningBatches:
    """Training batches as a function of the step: a seeded shuffle per epoch, optionally length-bucketed."""

    def __init__(self, features: list[Features], batch_size: int, seed: int, bucketing: bool, pad_id: int):
        self.features = features
        self.batch_size = batch_size
        self.seed = seed
        self.bucketing = bucketing
        self.pad_id = pad_id
        self.lengths = np.array([len(item.input_ids) for item in features])
        self._orders: dict[int, np.ndarray] = {}

    def _order(self, epoch: int) -> np.ndarray:
        if epoch not in self._orders:
            rng = np.random.default_rng([self.seed, epoch])
            order = rng.permutation(len(self.features))
            if self.bucketing:
                chunk = self.batch_size * BUCKET_BATCHES
                pieces = [
                    order[start : start + chunk][np.argsort(self.lengths[order[start : start + chunk]], kind="stable")]
                    for start in range(0, len(order), chunk)
                ]
                order = np.concatenate(pieces)
                full = len(order) // self.batch_size
                batches = order[: full * self.batch_size].reshape(full, self.batch_size)[rng.permutation(full)]
                order = np.concatenate([batches.reshape(-1), order[full * self.batch_size :]])
            self._orders = {epoch: order}
        return self._orders[epoch]

    def batch_indices(self, step: int) -> np.ndarray:
        count = len(self.features)
        positions = step * self.batch_size + np.arange(self.batch_size)
        chosen = np.empty(self.batch_size, dtype=np.int64)
        for epoch in np.unique(positions // count):
            here = positions // count == epoch
            chosen[here] = self._order(int(epoch))[positions[here] % count]
        return chosen

    def example_lengths(self, indices: np.ndarray) -> np.ndarray:
        return self.lengths[indices]

    def make_batch(
        self, indices: np.ndarray, rows: np.ndarray, total_rows: int, noise_seed: int, device: torch.device
    ) -> FinetuningBatch:
        return collate([self.features[i] for i in indices[rows]], self.pad_id, device)


# ----------------------------------------------------------------------------------------------- the model
class FinetuningModel(nn.Module):
    """An ELECTRA encoder with one head per task (`heads.<task>`), trained on mixed batches as the reference."""

    def __init__(self, config: ModelConfig, heads: list[TaskHead]):
        super().__init__()
        self.config = config
        self.task_heads = heads
        self.electra = ElectraModel(config)
        self.heads = nn.ModuleDict(
            {
                head.name: (
                    ElectraQuestionAnsweringHead(config, head.qa)
                    if head.kind == "qa"
                    else ElectraTokenClassificationHead(config, head.num_outputs)
                    if head.kind == "tagging"
                    else ElectraClassificationHead(config, head.num_outputs)
                )
                for head in heads
            }
        )
        init_weights(self, config.initializer_range)
        self.normalizers = {"task_loss": "examples"}  # the trainer divides each sum by its global count
        self.loss_weights = {"task_loss": 1.0}

    @staticmethod
    def counts(batch: FinetuningBatch) -> dict[str, torch.Tensor]:
        return {
            "examples": torch.tensor(float(len(batch.task_ids)), device=batch.task_ids.device),
            "tokens": batch.attention_mask.sum().to(torch.float32),
        }

    def outputs(self, batch: FinetuningBatch, task_id: int) -> torch.Tensor:
        """Head outputs of every row for one task: logits [b, labels], values [b] or tag logits [b, seq, labels]."""
        hidden = self.electra(batch.input_ids, batch.attention_mask, batch.token_type_ids)
        return self.head_outputs(hidden, task_id, batch.attention_mask, batch.token_type_ids)

    def head_outputs(
        self, hidden: torch.Tensor, task_id: int, attention_mask: torch.Tensor, token_type_ids: torch.Tensor
    ) -> torch.Tensor:
        """One task's head on encoder states; question answering also needs the masks (see its head)."""
        head = self.task_heads[task_id]
        if head.kind == "qa":
            return self.heads[head.name](hidden, attention_mask, token_type_ids)
        out = self.heads[head.name](hidden)
        return out.squeeze(-1) if head.kind == "regression" else out

    def forward(self, batch: FinetuningBatch) -> dict[str, torch.Tensor]:
        """Sum over the batch of each example's loss for its own task (tagging: summed over its words)."""
        hidden = self.electra(batch.input_ids, batch.attention_mask, batch.token_type_ids)
        total = hidden.new_zeros((), dtype=torch.float32)
        for task_id, head in enumerate(self.task_heads):
            rows: slice | torch.Tensor = slice(None)  # one task: every row, without a gather
            if len(self.task_heads) > 1:
                # A head runs even on no rows, when the batch holds none of its task: its gradient is then zero,
                # not absent, as in the reference (every head on every example, the other tasks' losses masked
                # out). So Adam moves it as the reference's does, and every process of a distributed run reduces
                # the same gradients.
                rows = (batch.task_ids == task_id).nonzero().squeeze(-1)
            if head.kind == "qa":
                total = total + self.heads[head.name].loss(
                    hidden[rows],
                    batch.attention_mask[rows],
                    batch.token_type_ids[rows],
                    batch.spans[rows],
                    batch.labels[rows],
                )
                continue
            out = self.head_outputs(
                hidden[rows], task_id, batch.attention_mask[rows], batch.token_type_ids[rows]
            ).float()
            if head.kind == "classification":
                total = total + F.cross_entropy(out, batch.labels[rows].long(), reduction="sum")
            elif head.kind == "regression":
                total = total + ((out - batch.labels[rows]) ** 2).sum()
            else:
                total = total + F.cross_entropy(
                    out.transpose(1, 2), batch.token_labels[rows], ignore_index=IGNORE_INDEX, reduction="sum"
                )
        return {"task_loss": total}


def layerwise_param_groups(model: FinetuningModel, weight_decay: float, layer_decay: float) -> list[dict]:
    """The reference's layer-wise learning rates: depth 0 for the embeddings, l + 1 for layer l, n + 2 for the
    heads, and a scale of decay^(n + 2 - depth) (so the top layer gets decay^2, as in the reference)."""
    layers = model.config.num_hidden_layers
    groups: dict[tuple[float, float], list[nn.Parameter]] = {}
    for name, param in model.named_parameters():
        if name.startswith("electra.embeddings"):  # also embeddings_project
            depth = 0
        elif match := re.match(r"electra\.encoder\.layer\.(\d+)\.", name):
            depth = int(match.group(1)) + 1
        else:
            depth = layers + 2
        scale = layer_decay ** (layers + 2 - depth) if layer_decay > 0 else 1.0
        decay = 0.0 if any(marker in name for marker in NO_DECAY_MARKERS) else weight_decay
        groups.setdefault((scale, decay), []).append(param)
    return [{"params": params, "lr_scale": scale, "weight_decay": decay} for (scale, decay), params in groups.items()]


# ----------------------------------------------------------------------------------------------- weights
ENCODER_PREFIXES = ("electra.", "discriminator.electra.", "generator.electra.", "")


def load_encoder_weights(model: FinetuningModel, path: Path) -> None:
    """The encoder weights of a pre-trained or fine-tuned model (ours or Hugging Face's) into `model.electra`."""
    state = read_weights(path)
    for prefix in ENCODER_PREFIXES:
        encoder = {key[len(prefix) :]: value for key, value in state.items() if key.startswith(prefix)}
        if "embeddings.word_embeddings.weight" in encoder:
            break
    else:
        raise UserError(f"{path} holds no ELECTRA encoder weights (no electra.embeddings.word_embeddings.weight)")
    own = model.electra.state_dict()
    mismatched = [
        f"{key}: checkpoint {tuple(encoder[key].shape)}, model {tuple(value.shape)}"
        for key, value in own.items()
        if key in encoder and encoder[key].shape != value.shape
    ]
    missing = [key for key in own if key not in encoder]
    # The two mismatches a user makes most, said in their own terms: another vocabulary, too long a max_seq_length.
    words, positions = "embeddings.word_embeddings.weight", "embeddings.position_embeddings.weight"
    reasons = {}
    if words in encoder and encoder[words].shape != own[words].shape:
        reasons[words] = (
            f"its vocabulary has {len(encoder[words]):,} tokens and this one {len(own[words]):,}: fine-tune with the "
            "vocab.txt it was pre-trained with (vocab_file)"
        )
    if positions in encoder and len(encoder[positions]) < len(own[positions]):
        reasons[positions] = (
            f"it has {len(encoder[positions])} positions: use max_seq_length {len(encoder[positions])} or less"
        )
    if reasons and not missing and all(item.split(":")[0] in reasons for item in mismatched):
        raise UserError(f"the weights in {path} do not fit: {'; '.join(reasons.values())}")
    if mismatched or missing:
        listed = "; ".join(mismatched[:6] + [f"{key}: missing" for key in missing[:6]])
        raise UserError(
            f"the weights in {path} do not fit a {model.config.num_hidden_layers}-layer model of hidden size "
            f"{model.config.hidden_size} ({len(mismatched)} tensor(s) of another shape, {len(missing)} missing: "
            f"{listed}): set model_size / model_hparam_overrides / embedding_size to those it was trained with, "
            "or leave them out of --hparams to take its own (from its pretrain_config.json or config.json)"
        )
    model.electra.load_state_dict({key: encoder[key] for key in own})


def hf_head_prefix(head: TaskHead) -> str:
    """Where Hugging Face keeps this kind of head: `classifier.dense`/`out_proj` for sequence classification,
    `classifier` / `qa_outputs` at the top for token classification and question answering."""
    return "" if head.kind in ("tagging", "qa") else "classifier."


def export_task_model(model: FinetuningModel, head: TaskHead, folder: Path, vocab: list[str], extra: dict) -> None:
    """One task's model as a Hugging Face folder: ElectraForSequenceClassification or ...TokenClassification."""
    prefix = f"heads.{head.name}."
    target = hf_head_prefix(head)
    state = {}
    for key, value in model.state_dict().items():
        if key.startswith("electra."):
            state[key] = value
        elif key.startswith(prefix):
            state[target + key[len(prefix) :]] = value
    architecture = {
        "tagging": "ElectraForTokenClassification",
        # transformers has no class for the reference's QA head: its encoder loads as an ElectraModel
        "qa": "ElectraForQuestionAnswering" if head.qa.plain else "ElectraModel",
    }.get(head.kind, "ElectraForSequenceClassification")
    config = hf_config(model.config, architecture)
    if head.kind == "regression":
        config.update(num_labels=1, problem_type="regression")
    elif head.kind == "qa":
        config.update(num_labels=2)
    else:
        config.update(
            id2label={str(i): label for i, label in enumerate(head.labels)},
            label2id={label: i for i, label in enumerate(head.labels)},
        )
        if head.kind == "classification":
            config["problem_type"] = "single_label_classification"
    with atomic_directory(folder) as tmp:
        save_file(
            {key: value.detach().cpu().contiguous() for key, value in state.items()}, str(tmp / "model.safetensors")
        )
        (tmp / "config.json").write_text(json.dumps(config, indent=2) + "\n")
        write_task_spec(tmp, {**head.to_dict(), **extra})
        write_vocab(vocab, tmp / "vocab.txt")  # as vocab.txt, whatever file it was read from


def write_task_spec(folder: Path, spec: dict[str, Any]) -> None:
    """electra_task.json: the head (`TaskHead.to_dict`) and what prediction needs to read inputs like training."""
    (folder / TASK_FILE).write_text(json.dumps(spec, indent=2) + "\n")


def read_task_spec(folder: Path) -> tuple[TaskHead, dict[str, Any]]:
    """The task head and spec (electra_task.json) of a fine-tuned model folder."""
    spec_file = folder / TASK_FILE
    if not spec_file.is_file():
        inside = sorted(path.parent.name for path in folder.glob(f"*/{TASK_FILE}"))
        hint = f"; it holds one per task: {', '.join(str(folder / name) for name in inside)}" if inside else ""
        raise UserError(f"{folder} is not a fine-tuned model folder (no {TASK_FILE}){hint}")
    spec = read_json(spec_file)
    try:
        return TaskHead.from_dict(spec), spec
    except (KeyError, TypeError, AttributeError) as error:
        raise UserError(
            f"{spec_file} is damaged ({type(error).__name__}: {error}): restore it, or export the model again"
        ) from None


def load_task_model(folder: Path) -> tuple[FinetuningModel, TaskHead, dict[str, Any]]:
    """A model written by `export_task_model`, for prediction."""
    head, spec = read_task_spec(folder)
    config = ModelConfig.from_dict(read_json(folder / "config.json"))
    model = FinetuningModel(config, [head])
    state = read_weights(folder / "model.safetensors")
    source = hf_head_prefix(head)
    renamed = {
        (key if key.startswith("electra.") else f"heads.{head.name}.{key[len(source) :]}"): value
        for key, value in state.items()
    }
    try:
        model.load_state_dict(renamed)
    except RuntimeError as error:
        detail = " ".join(line.strip() for line in str(error).splitlines()[1:3])
        raise UserError(f"{folder / 'model.safetensors'} does not fit its config.json ({detail[:300]})") from None
    return model, head, spec


# ----------------------------------------------------------------------------------------------- prediction
def run_in_length_order(
    features: list[Features],
    batch_size: int,
    run_batch: Callable[[list[Features]], np.ndarray],
    show_progress: bool = False,
) -> list[np.ndarray]:
    """`run_batch` over batches of similar length (little padding); each example's output, unpadded, in order."""
    order = np.argsort([len(item.input_ids) for item in features], kind="stable")
    outputs: list[np.ndarray | None] = [None] * len(features)
    starts = range(0, len(order), batch_size)
    for start in tqdm(starts, desc="predict", unit="batch", disable=None if show_progress else True, file=sys.stderr):
        chosen = order[start : start + batch_size]
        out = run_batch([features[i] for i in chosen])
        for row, index in enumerate(chosen):
            outputs[index] = out[row, : len(features[index].input_ids)] if out.ndim == 3 else out[row]
    return outputs  # type: ignore[return-value]


@torch.no_grad()
def predict_features(
    model: FinetuningModel,
    features: list[Features],
    task_id: int,
    batch_size: int,
    device: torch.device,
    pad_id: int,
    precision: str = "auto",
    show_progress: bool = False,
) -> list[np.ndarray]:
    """Each example's head output (float32, unpadded), computed in batches of similar length."""
    if model.training:
        model.eval()
    autocast_dtype = resolve_precision(precision, device)

    def run_batch(chosen: list[Features]) -> np.ndarray:
        batch = collate(chosen, pad_id, device)
        with torch.autocast(device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
            return model.outputs(batch, task_id).float().cpu().numpy()

    return run_in_length_order(features, batch_size, run_batch, show_progress)


def input_line(example: Any) -> dict[str, int]:
    """{"line": N}: where an example was read (its source, "file:line"), so that an output maps back to its row."""
    source = getattr(example, "source", "")
    return {"line": int(source.rsplit(":", 1)[1])} if source else {}


def decode_predictions(
    head: TaskHead,
    spec: dict[str, Any],
    examples: list[Any],
    features: list[Features],
    outputs: list[np.ndarray],
    featurizer: Featurizer,
) -> list[dict[str, Any]]:
    """What a fine-tuned model folder predicts for each example: answers (QA) or one `decode` per feature."""
    if head.kind == "qa":
        return decode_answers(
            examples,
            features,
            outputs,
            featurizer,
            head.qa,
            QADecoding.from_record(spec),
        )
    decoded = [decode(head, output, feature) for output, feature in zip(outputs, features, strict=True)]
    if head.kind == "tagging":  # what each tag belongs to: the words as split (Chinese: characters)
        decoded = [{"words": example.words, **tags} for example, tags in zip(examples, decoded, strict=True)]
    return decoded


def decode(head: TaskHead, output: np.ndarray, item: Features) -> dict[str, Any]:
    """A prediction as the user sees it: label and probabilities, a value, or one tag per word."""
    if head.kind == "regression":
        low, high = head.value_range
        return {"value": float(output) * (high - low) + low}
    if head.kind == "classification":
        probabilities = np.exp(output - output.max())
        probabilities /= probabilities.sum()
        best = int(probabilities.argmax())
        return {
            "label": head.labels[best],
            "probability": float(probabilities[best]),
            "probabilities": {label: float(p) for label, p in zip(head.labels, probabilities, strict=True)},
        }
    tags = ["O" if start < 0 else head.labels[int(output[start].argmax())] for start in item.word_starts]
    decoded: dict[str, Any] = {"tags": iob2_tags(tags) if head.span_labels else tags}  # BIOES -> IOB2, as corpora
    tagged = np.flatnonzero(item.word_starts >= 0)
    untagged = len(tags) - (int(tagged[-1]) + 1 if len(tagged) else 0)
    if untagged:  # the words past max_seq_length: "O" without the model having seen them
        decoded["untagged_words"] = untagged
    return decoded


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
    if init is not None:
        hparams = {**_inherited_normalization(init), **with_inherited_shape(hparams, init)}
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
    if config.vocab_file:
        vocab_file = Path(config.vocab_file)
    else:
        candidates = model_vocab_places(model_dir, data_dir)
        if init is not None and init.is_dir() and init != model_dir:
            own = [init / "vocab.txt", init / "tokenizer.json"]
            if (init / "config.json").is_file() and not any(path.is_file() for path in own):
                raise UserError(
                    f"{init} holds no vocab.txt or tokenizer.json: its token ids mean nothing without them. "
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
        write_text_atomic(trial_dir / "finetune_config.json", json.dumps(record, indent=2) + "\n")
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


def decode_answers(
    examples: list[Any],
    features: list[Features],
    outputs: list[np.ndarray],
    featurizer: Featurizer,
    head: QAHeadConfig,
    decoding: QADecoding,
) -> list[dict[str, Any]]:
    """Each question's answer (text, character offsets, score, no-answer odds) from its windows' head outputs."""
    windows: dict[int, list] = {}
    for feature, output in zip(features, outputs, strict=True):
        windows.setdefault(feature.window.example_index, []).append((feature.window, output))
    return [
        {
            "id": example.qas_id,
            **best_answer(
                example,
                windows.get(index, []),
                featurizer.vocab,
                featurizer.tokenizer,
                head,
                decoding,
            ),
        }
        for index, example in enumerate(examples)
    ]


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
    for key in scores[0]:
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
    write_text_atomic(base.with_suffix(".json"), json.dumps(payload, indent=2) + "\n")
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
    scores: list[dict[str, dict[str, float]]] = []
    outcome: dict[str, Any] = {"model_dir": run.model_dir, "trials": []}
    for trial in range(1, config.num_trials + 1):
        trial_dir = run.trial_dir(trial)
        exported = run.finetuned_model or trial_dir / "model"
        kept_scores = trial_dir / SCORES_FILE
        if config.do_train and not config.keep_all_models and kept_scores.is_file() and not exported.exists():
            _check_trial_record(trial_dir, trial_record(run, data, trial))
            scores.append(read_json(kept_scores))
            outcome["trials"].append({"dir": trial_dir, "model": exported, "scores": scores[-1]})
            continue
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
            write_text_atomic(kept_scores, json.dumps(trial_scores, indent=2) + "\n")
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
