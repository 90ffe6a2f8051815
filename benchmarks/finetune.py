"""Fine-tuning speed on SST-2: ours vs a peer built from `transformers`' ElectraForSequenceClassification.

The peer does what the reference and popular ports do: every example padded to max_seq_length 128,
batches in random order, fp32, torch AdamW, the loss from `labels=`. Ours is `electra.finetune` as
`electra finetune` runs it: padded per batch (dynamic padding), training batches length-bucketed
(`FinetuningBatches`), the layer-wise AdamWeightDecay, gradient clipping at 1.0, in fp32 and in the
default precision ("auto": bf16 autocast on CPUs with fast bf16). Both start from random weights of the
same shape (ELECTRA-Small by default, a 30,522-row embedding table as the released models, whatever the
size of the vocabulary the text is tokenised with) and see the same real SST-2 examples. The peer also runs under
bf16 autocast (peer-bf16), as a PyTorch user would where bf16 is fast; each of our variants is compared with the peer
in its own precision ("auto" with peer-bf16 where "auto" is bf16), and the headline also with the fp32 peer.

Training examples/s counts whole steps (forward, backward, clipping, optimizer) over --train-steps after
2 warm-up steps; bucketed batches vary in length, so it is total examples over total time, not a
median step. Evaluation examples/s is one pass over the first --eval-examples dev examples without
gradients, after a warm-up pass over two batches. Ours is timed through `predict_features`, the
function `electra finetune` evaluates with (length-sorted batches padded per batch). The peer runs the
dev examples in input order, padded to 128. Each variant runs in its own process, so its peak memory is its own
(the process's resident memory on the CPU, the GPU's allocated peak on CUDA; timings wait for the GPU to finish).

Without --vocab, a WordPiece vocabulary is trained on the SST-2 training sentences (a few seconds).
Prints a table, then one JSON line of headline figures.
Usage: python benchmarks/finetune.py [--size small|tiny] [--batch 32] [--train-steps 20] [--eval-examples 872]
       [--threads 2] [--vocab VOCAB_TXT] [--data SST_FOLDER] [--device cpu|cuda]
       [--variants peer-fp32,peer-bf16,ours-fp32,ours-auto]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from isolated import auto_precision_name, peak_memory, run_variants, synchronize

if TYPE_CHECKING:
    from electra.finetune_data import Features, TaskHead

SEQ, MODEL_VOCAB, WARMUP_STEPS = 128, 30522, 2
SHAPES = {  # hidden, layers, heads, intermediate, embedding
    "small": (256, 12, 4, 1024, 128),
    "tiny": (128, 4, 2, 512, 128),
}
DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "sst"
PRECISIONS = {"ours": ("fp32", "bf16", "auto"), "peer": ("fp32", "bf16")}  # a variant is NAME-PRECISION


def load_sst(data: Path, vocab_file: Path) -> tuple[list[Features], list[Features], TaskHead, int]:
    """Train and dev features, the SST head and the [PAD] id."""
    from electra.finetune_data import Featurizer, TaskHead
    from electra.tasks import get_task
    from electra.tokenization import read_vocab

    vocab = read_vocab(vocab_file)
    featurizer = Featurizer(vocab, max_seq_length=SEQ)
    head = TaskHead("sst", "classification", ["0", "1"])
    task = get_task("sst", data.parent, {})
    train = featurizer.features(task.examples("train"), head, 0)
    dev = featurizer.features(task.examples("dev"), head, 0)
    return train, dev, head, featurizer.pad_id


def model_shape(size: str, vocab_file: Path, pad_id: int) -> dict:
    """The configuration both models share (ElectraConfig's names, which ours follows)."""
    hidden, layers, heads, intermediate, embedding = SHAPES[size]
    return {
        "vocab_size": model_vocab_size(vocab_file),
        "embedding_size": embedding,
        "hidden_size": hidden,
        "num_hidden_layers": layers,
        "num_attention_heads": heads,
        "intermediate_size": intermediate,
        "max_position_embeddings": 512,
        "pad_token_id": pad_id,
    }


def model_vocab_size(vocab_file: Path) -> int:
    from electra.tokenization import read_vocab

    return max(MODEL_VOCAB, len(read_vocab(vocab_file)))


def ours(
    size: str, precision: str, vocab_file: Path, data: Path, batch: int, device: torch.device, steps: int
) -> tuple[Callable, Callable]:
    from electra.config import ModelConfig
    from electra.finetune_data import FinetuningBatches
    from electra.task_model import FinetuningModel, layerwise_param_groups, predict_features
    from electra.trainer import AdamWeightDecay, resolve_precision

    train, dev, head, pad_id = load_sst(data, vocab_file)
    config = ModelConfig(**model_shape(size, vocab_file, pad_id))
    model = FinetuningModel(config, [head]).to(device)
    optimizer = AdamWeightDecay(layerwise_param_groups(model, 0.01, 0.8), lr=1e-4)
    params = [param for group in optimizer.param_groups for param in group["params"]]
    batches = FinetuningBatches(train, batch, seed=0, bucketing=True, pad_id=pad_id)
    dtype = resolve_precision(precision, device)
    # A bucketed batch costs what its longest example does: the timed batches are the epoch's at evenly spaced
    # quantiles of that length (the first few of the epoch were shorter than its average, which flattered ours).
    epoch = [batches.batch_indices(step) for step in range(len(train) // batch)]
    by_length = sorted(range(len(epoch)), key=lambda step: batches.example_lengths(epoch[step]).max())
    chosen = [by_length[round(place)] for place in np.linspace(0, len(epoch) - 1, steps)]
    order = np.random.default_rng(0).permutation(steps)  # warm-up and timed steps drawn from the whole range

    def train_step(step: int) -> int:
        model.train()
        inputs = batches.make_batch(epoch[chosen[order[step]]], np.arange(batch), batch, 0, device)
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            sums = model(inputs)
        (sums["task_loss"] / batch).backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        for group in optimizer.param_groups:
            group["lr"] = 1e-4
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return inputs.input_ids.shape[1]

    def evaluate(count: int) -> None:
        predict_features(model, dev[:count], 0, batch, device, pad_id, precision)

    return train_step, evaluate


def peer(
    size: str, precision: str, vocab_file: Path, data: Path, batch: int, device: torch.device, steps: int
) -> tuple[Callable, Callable]:
    import transformers

    from electra.finetune_data import collate

    train, dev, _, pad_id = load_sst(data, vocab_file)
    config = transformers.ElectraConfig(**model_shape(size, vocab_file, pad_id), num_labels=2)
    model = transformers.ElectraForSequenceClassification(config).to(device)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16")
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.01)
    order = np.random.default_rng(0).permutation(len(train))

    def train_step(step: int) -> int:
        model.train()
        chosen = order[(step * batch + np.arange(batch)) % len(train)]
        inputs = collate([train[i] for i in chosen], pad_id, device, pad_to=SEQ)
        with autocast:
            output = model(
                input_ids=inputs.input_ids,
                attention_mask=inputs.attention_mask,
                token_type_ids=inputs.token_type_ids,
                labels=inputs.labels.long(),
            )
        output.loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return SEQ

    @torch.no_grad()
    def evaluate(count: int) -> None:
        model.eval()
        for start in range(0, count, batch):
            inputs = collate(dev[start : min(start + batch, count)], pad_id, device, pad_to=SEQ)
            with autocast:
                model(
                    input_ids=inputs.input_ids,
                    attention_mask=inputs.attention_mask,
                    token_type_ids=inputs.token_type_ids,
                )

    return train_step, evaluate


def measure(variant: str, args: argparse.Namespace) -> dict:
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    name, precision = variant.split("-")
    device = torch.device(args.device)
    train_step, evaluate = (ours if name == "ours" else peer)(
        args.size, precision, args.vocab, args.data, args.batch, device, WARMUP_STEPS + args.train_steps
    )
    for step in range(WARMUP_STEPS):
        train_step(step)
    synchronize(device)
    started = time.perf_counter()
    padded = [train_step(step) for step in range(WARMUP_STEPS, WARMUP_STEPS + args.train_steps)]
    synchronize(device)
    train_seconds = time.perf_counter() - started
    evaluate(2 * args.batch)
    synchronize(device)
    started = time.perf_counter()
    evaluate(args.eval_examples)
    synchronize(device)
    eval_seconds = time.perf_counter() - started
    return {
        "train_ex_s": args.train_steps * args.batch / train_seconds,
        "eval_ex_s": args.eval_examples / eval_seconds,
        "train_padded_len": float(np.mean(padded)),
        "peak_gb": peak_memory(device),
    }


def train_sst_vocab(data: Path, folder: Path) -> Path:
    from electra.tasks import get_task
    from electra.tokenization import train_vocab, write_vocab

    sentences = folder / "sst_train.txt"
    sentences.write_text(
        "".join(f"{example.text_a}\n" for example in get_task("sst", data.parent, {}).examples("train"))
    )
    vocab_file = folder / "vocab.txt"
    write_vocab(train_vocab([sentences], vocab_size=MODEL_VOCAB, show_progress=False), vocab_file)
    return vocab_file


def report(args: argparse.Namespace, rows: dict[str, dict]) -> None:
    from electra.trainer import resolve_precision

    train, dev, _, _ = load_sst(args.data, args.vocab)
    train_tokens = np.mean([len(item.input_ids) for item in train])
    dev_tokens = np.mean([len(item.input_ids) for item in dev[: args.eval_examples]])
    device = torch.device(args.device)
    auto = resolve_precision("auto", device)
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {args.threads} threads"
    print(
        f"ELECTRA-{args.size} on SST-2, batch {args.batch}, {args.train_steps} timed steps, "
        f"{args.eval_examples} dev examples, {where}, torch {torch.__version__}; "
        f'"auto" = {auto or "fp32"}'
    )
    print(
        f"real tokens per example, [CLS] and [SEP] included: train {train_tokens:.1f}, dev {dev_tokens:.1f}; "
        f"the peer pads to {SEQ}"
    )
    for variant, row in rows.items():
        if variant.startswith("ours"):
            print(f"{variant}: timed training batches padded to {row['train_padded_len']:.1f} tokens on average")
    memory = "peak GPU GiB" if device.type == "cuda" else "peak RSS GB"
    same = "bf16" if auto == torch.bfloat16 else "fp32"  # the precision "auto" runs in here

    def peer_of(variant: str) -> str:
        """The peer in the same precision: ratios compare like with like."""
        precision = variant.split("-")[1]
        return f"peer-{same if precision == 'auto' else precision}"

    def ratio(variant: str, key: str, against: str | None = None) -> float | None:
        against = against or peer_of(variant)
        return round(rows[variant][key] / rows[against][key], 2) if variant in rows and against in rows else None

    print(
        f"{'variant':<10} | {'train ex/s':>10} | {'eval ex/s':>10} | {memory:>11} | "
        f"{'train vs peer':>13} | {'eval vs peer':>12} | same-precision peer"
    )
    for variant, row in rows.items():
        train_ratio, eval_ratio = (
            f"{found:.2f}x" if (found := ratio(variant, key)) else "-" for key in ("train_ex_s", "eval_ex_s")
        )
        print(
            f"{variant:<10} | {row['train_ex_s']:10,.1f} | {row['eval_ex_s']:10,.1f} | {row['peak_gb']:11.2f} | "
            f"{train_ratio:>13} | {eval_ratio:>12} | {peer_of(variant) if variant.startswith('ours') else ''}"
        )

    def figure(variant: str, key: str) -> float | None:
        return round(rows[variant][key], 1) if variant in rows else None

    default = "ours-auto" if "ours-auto" in rows else "ours-fp32"  # see main: auto may be fp32 here
    headline = {
        "ours_precision": same,
        "ours_train_ex_s": figure(default, "train_ex_s"),
        "peer_train_ex_s": figure(peer_of(default), "train_ex_s"),
        "train_ratio": ratio(default, "train_ex_s"),
        "ours_eval_ex_s": figure(default, "eval_ex_s"),
        "peer_eval_ex_s": figure(peer_of(default), "eval_ex_s"),
        "eval_ratio": ratio(default, "eval_ex_s"),
        "train_ratio_vs_peer_fp32": ratio(default, "train_ex_s", "peer-fp32"),
        "eval_ratio_vs_peer_fp32": ratio(default, "eval_ex_s", "peer-fp32"),
        "ours_fp32_train_ex_s": figure("ours-fp32", "train_ex_s"),
        "ours_fp32_train_ratio": ratio("ours-fp32", "train_ex_s"),
        "ours_fp32_eval_ex_s": figure("ours-fp32", "eval_ex_s"),
        "ours_fp32_eval_ratio": ratio("ours-fp32", "eval_ex_s"),
        "peer_fp32_train_ex_s": figure("peer-fp32", "train_ex_s"),
        "peer_fp32_eval_ex_s": figure("peer-fp32", "eval_ex_s"),
        "mean_train_tokens": round(float(train_tokens), 1),
        "mean_dev_tokens": round(float(dev_tokens), 1),
    }
    print(json.dumps(headline))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=SHAPES, default="small")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--train-steps", type=int, default=20)
    parser.add_argument("--eval-examples", type=int, default=872, help="the first N dev examples (SST-2 has 872)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--vocab", type=Path, default=None, help="vocab.txt; default: trained on SST-2 train")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="folder holding SST-2 train.tsv, dev.tsv")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--variants", default="peer-fp32,peer-bf16,ours-fp32,ours-auto")
    parser.add_argument("--run-one", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.run_one:
        print(json.dumps(measure(args.run_one, args)))
        return
    missing = [name for name in ("train.tsv", "dev.tsv") if not (args.data / name).is_file()]
    if missing:
        sys.exit(f"SST-2 not found: {', '.join(str(args.data / name) for name in missing)} missing (see --data)")
    from electra.tasks import get_task

    variants = args.variants.split(",")
    for variant in variants:
        name, _, precision = variant.partition("-")
        if precision not in PRECISIONS.get(name, ()):
            known = ", ".join(f"{name}-{precision}" for name, options in PRECISIONS.items() for precision in options)
            sys.exit(f"--variants: unknown variant {variant!r}; known: {known}")
    cpu_auto_is_fp32 = args.device == "cpu" and auto_precision_name() == "fp32"
    if cpu_auto_is_fp32 and "ours-fp32" in variants and "ours-auto" in variants:
        variants.remove("ours-auto")  # the same run twice on CPUs without fast bf16
        print('"auto" is fp32 on this CPU: ours-auto is ours-fp32', flush=True)
    if cpu_auto_is_fp32 and "peer-bf16" in variants and "ours-bf16" not in variants:
        variants.remove("peer-bf16")  # emulated bf16, compared with nothing of ours
    args.eval_examples = min(args.eval_examples, len(get_task("sst", args.data.parent, {}).examples("dev")))
    with tempfile.TemporaryDirectory() as folder:
        if args.vocab is None:
            args.vocab = train_sst_vocab(args.data, Path(folder))
        flags = ("vocab", "data", "size", "batch", "train_steps", "eval_examples", "threads", "device")
        rows = run_variants(__file__, variants, args, flags)
        torch.set_num_threads(args.threads)
        report(args, rows)


if __name__ == "__main__":
    main()
