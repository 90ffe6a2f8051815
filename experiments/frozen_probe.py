"""Linear probe: do a pre-trained encoder's frozen states carry a classification task's labels better than random ones?

The fine-tuning learning check asks whether pre-training helps after fine-tuning, where an encoder from random
weights also learns, from the labels. This asks the narrower question before any fine-tuning: encode every training
and dev example once with the discriminator as it is (no gradient), take the final layer's [CLS] state, the mean of
its token states and the mean of its input word embeddings, and fit a logistic regression on each (scikit-learn,
features standardised on the training set). Its dev predictions are scored with the task's headline metric (CoLA's
MCC; accuracy for SST-2 and MRPC). The same for random weights of the same shape (the fine-tuning check's starting
point: seed 0, the model's initialisation). A probe no better from pre-trained states than from random ones says
that pre-training did not learn what the task needs, whatever the fine-tuning recipe.
Usage: python experiments/frozen_probe.py --model-dir DIR [--task sst] [--data ../shared/data] [--train-examples N]
       [--threads 2]   (DIR: an `electra pretrain` model folder, with discriminator/config.json and vocab.txt)
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression

from electra.config import ModelConfig
from electra.finetune_data import Features, Featurizer, TaskHead, collate
from electra.metrics import classification_scores
from electra.task_model import FinetuningModel, load_encoder_weights, run_in_length_order
from electra.tasks import get_task
from electra.tokenization import read_vocab
from electra.trainer import resolve_precision

HERE = Path(__file__).resolve().parent
CPU = torch.device("cpu")


@torch.no_grad()
def frozen_states(model: FinetuningModel, features: list[Features], pad_id: int, batch_size: int) -> np.ndarray:
    """[examples, 2 * hidden + embedding]: each example's final [CLS] state, the mean of its final token states, and
    the mean of its input word embeddings (a bag of words: what the encoder starts from, before any context)."""
    model.eval()
    dtype = resolve_precision("auto", CPU)

    def run_batch(chosen: list[Features]) -> np.ndarray:
        batch = collate(chosen, pad_id, CPU)
        with torch.autocast("cpu", dtype=dtype, enabled=dtype is not None):
            hidden = model.electra(batch.input_ids, batch.attention_mask, batch.token_type_ids).float()
        mask = batch.attention_mask.unsqueeze(-1).float()
        mean = (hidden * mask).sum(1) / mask.sum(1)
        words = (model.electra.embeddings.word_embeddings(batch.input_ids).float() * mask).sum(1) / mask.sum(1)
        return torch.cat([hidden[:, 0], mean, words], dim=1).numpy()

    return np.stack(run_in_length_order(features, batch_size, run_batch))


def probe_score(
    train: np.ndarray, train_labels: np.ndarray, dev: np.ndarray, dev_labels: np.ndarray, metric: str
) -> float:
    """The dev score of a logistic regression fitted on the training states."""
    centre, scale = train.mean(0), train.std(0) + 1e-6
    classifier = LogisticRegression(max_iter=2000).fit((train - centre) / scale, train_labels)
    predicted = classifier.predict((dev - centre) / scale)
    return classification_scores(dev_labels.astype(int), predicted.astype(int), [metric])[metric]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-dir", type=Path, required=True, help="an `electra pretrain` model folder")
    parser.add_argument("--task", default="sst", help="a classification task of the reference (sst, cola, mrpc, ...)")
    parser.add_argument("--data", type=Path, default=HERE.parents[1] / "shared" / "data", help="holds <task>/")
    parser.add_argument("--train-examples", type=int, help="probe on the first N training examples")
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    discriminator = args.model_dir / "discriminator"
    if not (discriminator / "config.json").is_file():
        sys.exit(f"{discriminator / 'config.json'} is missing: --model-dir takes a folder of `electra pretrain`")
    torch.set_num_threads(args.threads)
    task = get_task(args.task, args.data, {})
    if task.kind != "classification":
        sys.exit(f"task {args.task} is {task.kind}: the probe takes a classification task")
    train_examples = task.examples("train")[: args.train_examples]
    head = TaskHead(task.name, task.kind, task.label_list(train_examples))
    vocab = read_vocab(discriminator / "vocab.txt")
    featurizer = Featurizer(vocab, max_seq_length=128)
    train = featurizer.features(train_examples, head, 0)
    dev = featurizer.features(task.examples("dev"), head, 0)
    train_labels = np.array([item.label for item in train])
    dev_labels = np.array([item.label for item in dev])
    config = ModelConfig.from_dict(json.loads((discriminator / "config.json").read_text()))
    hidden = config.hidden_size
    metric = task.metrics[0]
    always = np.full(len(dev_labels), np.bincount(train_labels.astype(int)).argmax())
    majority = classification_scores(dev_labels.astype(int), always, [metric])[metric]
    print(
        f"{task.name}: {len(train):,} training and {len(dev):,} dev examples; dev {metric} of the majority class "
        f"{majority:.2f}"
    )
    print(f"{'encoder':<12} | {'[CLS] probe':>11} | {'mean probe':>10} | {'word bag':>8} | {'seconds':>7}")
    results = {}
    for side in ("pretrained", "random"):
        started = time.time()
        torch.manual_seed(0)
        model = FinetuningModel(config, [head])
        if side == "pretrained":
            load_encoder_weights(model, discriminator / "model.safetensors")
        train_states = frozen_states(model, train, featurizer.pad_id, args.batch)
        dev_states = frozen_states(model, dev, featurizer.pad_id, args.batch)
        results[side] = {
            pooling: round(probe_score(train_states[:, part], train_labels, dev_states[:, part], dev_labels, metric), 2)
            for pooling, part in (
                ("cls", slice(0, hidden)),
                ("mean", slice(hidden, 2 * hidden)),
                ("words", slice(2 * hidden, None)),
            )
        }
        found = results[side]
        print(
            f"{side:<12} | {found['cls']:11.2f} | {found['mean']:10.2f} | {found['words']:8.2f} | "
            f"{time.time() - started:7.0f}"
        )
    print(json.dumps({"task": task.name, "metric": metric, "majority": round(majority, 2), **results}))


if __name__ == "__main__":
    main()
