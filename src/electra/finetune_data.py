"""Fine-tuning inputs: a task's head (its kind and labels), features in the reference's layout, and batches.

Examples are featurised once with the Rust tokenizer and padded per batch (dynamic padding); training batches
group examples of similar length (length bucketing), which changes which examples share a batch but not what
the model computes for each of them.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch

from electra.metrics import bioes_tags
from electra.modeling import QAHeadConfig
from electra.qa import QAFeaturizer
from electra.tasks import Example
from electra.tokenization import CLS, PAD, SEP, UNK, build_tokenizer, normalization_settings
from electra.trainer import to_device

IGNORE_INDEX = -100  # token label of positions that are not the first piece of a word
BUCKET_BATCHES = 50  # length bucketing sorts this many batches' worth of shuffled examples at a time
UNKNOWN_NOTE_SHARE = 0.05  # [UNK] share of an input's word pieces above which fine-tuning and predict say so


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
    cut_tokens: int = 0  # classification and regression: word pieces past max_seq_length, which the model never reads
    cut_words: int = 0  # tagging: words past max_seq_length, tagged "O" without the model seeing them


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

    def unknown_note(self, examples: list[Any], where: str) -> str | None:
        """A note when over UNKNOWN_NOTE_SHARE of the examples' word pieces are [UNK], naming some of what they stand
        for: another script (traditional characters with a simplified-Chinese vocabulary), full-width letters,
        emoji. The model reads each as one unknown token, and nothing else says so."""
        texts = [getattr(example, name, None) for example in examples for name in ("text_a", "text_b")]
        texts += [" ".join(example.words) for example in examples if getattr(example, "words", None)]
        texts = [text for text in texts if text]
        unknown_id = self.qa.index[UNK]
        total, unknown, spans = 0, 0, {}
        for text, encoding in zip(texts, self.tokenizer.encode_batch(texts, add_special_tokens=False), strict=True):
            total += len(encoding.ids)
            for token_id, (start, end) in zip(encoding.ids, encoding.offsets, strict=True):
                if token_id == unknown_id:
                    unknown += 1
                    if len(spans) < 6:
                        spans.setdefault(text[start:end], None)
        if not total or unknown <= UNKNOWN_NOTE_SHARE * total:
            return None
        return (
            f"note: {unknown / total:.0%} of the word pieces of {where} are [UNK] (e.g. {' '.join(spans)}): the "
            "model's vocabulary does not know them and reads each as one unknown token; a vocabulary built from text "
            "like this would"
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
                length_a, length_b = min(len(first), self.max_seq_length - 2), 0
                ids = [self.cls_id, *first[:length_a], self.sep_id]
                types = [0] * len(ids)
            cut = len(first) + len(second) - length_a - length_b
            if example.label is None:
                label = 0.0
            elif head.kind == "regression":
                label = (float(example.label) - low) / (high - low)
            else:
                label = float(label_ids[str(example.label)])
            ids_array, types_array = np.asarray(ids, dtype=np.int32), np.asarray(types, dtype=np.int8)
            features.append(Features(ids_array, types_array, task_id, label, cut_tokens=cut))
        return features

    def _tagging_features(self, examples: list[Example], head: TaskHead, task_id: int) -> list[Features]:
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
                    # counted from the first word cut: a word without pieces (a lone control character) is no sign
                    cut_words=len(example.words) - word_ids[kept] if kept < len(word_ids) else 0,
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
