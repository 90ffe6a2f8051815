"""The fine-tuned model: an ELECTRA encoder with one head per task, its layer-wise learning rates, loading
pre-trained weights into it, its export as a Hugging Face folder (plus electra_task.json) and back, and
prediction: head outputs in batches of similar length, decoded into labels, values, tags or answers.
"""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from torch import nn
from tqdm import tqdm

from electra.config import ModelConfig
from electra.errors import UserError
from electra.fileio import atomic_directory, read_json, read_weights
from electra.finetune_data import IGNORE_INDEX, Features, Featurizer, FinetuningBatch, TaskHead, collate
from electra.metrics import iob2_tags
from electra.modeling import (
    ElectraClassificationHead,
    ElectraModel,
    ElectraQuestionAnsweringHead,
    ElectraTokenClassificationHead,
    QAHeadConfig,
    init_weights,
)
from electra.pretrain import hf_config
from electra.qa import QADecoding, best_answer
from electra.tokenization import read_vocab, write_vocab
from electra.trainer import NO_DECAY_MARKERS, resolve_precision

TASK_FILE = "electra_task.json"


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
        # Readable labels (书籍, not \u4e66\u7c4d), as transformers reads any UTF-8 JSON
        (tmp / "config.json").write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        write_task_spec(tmp, {**head.to_dict(), **extra})
        write_vocab(vocab, tmp / "vocab.txt")  # as vocab.txt, whatever file it was read from


def write_task_spec(folder: Path, spec: dict[str, Any]) -> None:
    """electra_task.json: the head (`TaskHead.to_dict`) and what prediction needs to read inputs like training."""
    (folder / TASK_FILE).write_text(json.dumps(spec, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


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


def read_model_vocab(folder: Path) -> list[str]:
    """A fine-tuned model folder's vocab.txt, checked against its embeddings: another file of another size would
    feed ids past the table (an index error at prediction) or silently mean other words."""
    vocab = read_vocab(folder / "vocab.txt")
    size = read_json(folder / "config.json").get("vocab_size")
    if size is not None and size != len(vocab):
        raise UserError(
            f"{folder / 'vocab.txt'} has {len(vocab):,} tokens, and the model's embeddings ({folder / 'config.json'}) "
            f"{size:,}: put back the vocab.txt it was fine-tuned with"
        )
    return vocab


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
    cut = {"cut_tokens": item.cut_tokens} if item.cut_tokens else {}  # the text's end, which the model never read
    if head.kind == "regression":
        low, high = head.value_range
        return {"value": float(output) * (high - low) + low, **cut}
    if head.kind == "classification":
        probabilities = np.exp(output - output.max())
        probabilities /= probabilities.sum()
        best = int(probabilities.argmax())
        return {
            "label": head.labels[best],
            "probability": float(probabilities[best]),
            "probabilities": {label: float(p) for label, p in zip(head.labels, probabilities, strict=True)},
            **cut,
        }
    tags = ["O" if start < 0 else head.labels[int(output[start].argmax())] for start in item.word_starts]
    decoded: dict[str, Any] = {"tags": iob2_tags(tags) if head.span_labels else tags}  # BIOES -> IOB2, as corpora
    if item.cut_words:
        decoded["untagged_words"] = item.cut_words
    return decoded


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
