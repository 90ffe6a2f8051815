"""Pre-training on real text: how much `length_groups` saves over padding every row to max_seq_length.

Builds a vocabulary and pre-training data from a real corpus with the public commands (`electra vocab`,
`electra build-data --split-sentences`), then times `electra pretrain` itself, one process per variant:
`groups-1` pads every batch to its longest row, which on real data is almost always max_seq_length, as the
reference and the usual PyTorch ports do (the peer); `groups-N` sorts each batch by length and runs it as N
pieces, each padded to its own longest row (the same examples, masks and loss: tests/test_pretrain.py).
Throughput counts real tokens only, the median over logging windows after the first. `peer` is the outside peer of
`pretrain_step.py` (`transformers`' ElectraForMaskedLM + ElectraForPreTraining, torch AdamW) of the same shape, in
the precision `electra pretrain` picks here, on the same data's rows padded to max_seq_length as the reference's
data are, timed the same way in its own process.
The default corpus is the Chinese use case's (examples/zh_ticket_routing): the articles of
../shared/data/pretrain_zh plus every review of online_shopping_10_cats as a document of its own, short texts
like the tickets a team would pre-train on. Prints a table, then one JSON line.
Usage: python benchmarks/pretrain_padding.py [--corpus DIR | --data-dir BUILT] [--shape compact|small]
       [--batch 128] [--steps 40] [--groups 1,2,4,8] [--no-peer] [--threads 2] [--shared-data ../shared/data]
       [--work DIR]
On a GPU the same command times `electra pretrain` there (it picks CUDA by itself).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

from electra.config import COMPACT_SHAPE
from electra.pretrain_data import METADATA_FILE, PretrainingData

ROOT = Path(__file__).resolve().parent.parent
SHAPES = {"compact": COMPACT_SHAPE, "small": {"model_size": "small"}}  # the router's shape and ELECTRA-Small
LOG_EVERY = 5


def electra(*args: str, env: dict[str, str]) -> None:
    done = subprocess.run([sys.executable, "-m", "electra.cli", *args], capture_output=True, text=True, env=env)
    if done.returncode:
        sys.exit(f"electra {args[0]} failed:\n{done.stderr[-3000:]}")


def prepare_data(corpus: Path, data_dir: Path, env: dict[str, str]) -> None:
    if (data_dir / "pretrain_data" / METADATA_FILE).exists():  # built by an earlier run
        return
    data_dir.mkdir(parents=True, exist_ok=True)
    vocab = str(data_dir / "vocab.txt")
    electra("vocab", "--corpus-dir", str(corpus), "--output", vocab, "--vocab-size", "8000", env=env)
    electra(
        "build-data",
        "--corpus-dir",
        str(corpus),
        "--vocab-file",
        vocab,
        "--output-dir",
        str(data_dir / "pretrain_data"),
        "--max-seq-length",
        "128",
        "--split-sentences",
        env=env,
    )


def ticket_corpus(shared: Path, folder: Path) -> Path:
    """pretrain_zh's articles and the reviews of online_shopping_10_cats, one review a document."""
    articles, reviews = shared / "pretrain_zh", shared / "zh_cls" / "online_shopping_10_cats"
    if not articles.is_dir() or not reviews.is_dir():
        sys.exit(f"{articles} or {reviews} is missing: pass --shared-data, or --corpus DIR (a folder of .txt files)")
    folder.mkdir(parents=True, exist_ok=True)
    for article_file in sorted(articles.glob("*.txt")):
        shutil.copyfile(article_file, folder / article_file.name)
    with open(reviews / "online_shopping_10_cats.csv", encoding="utf-8-sig", newline="") as handle:
        texts = [row["review"].strip() for row in csv.DictReader(handle)]
    (folder / "reviews.txt").write_text("\n\n".join(text for text in texts if text) + "\n", encoding="utf-8")
    return folder


def real_token_share(data_dir: Path) -> float:
    data = PretrainingData(data_dir / "pretrain_data")
    return float(data.real_lengths(np.arange(len(data))).mean() / data.max_seq_length)


def run_variant(data_dir: Path, groups: int, args: argparse.Namespace, env: dict[str, str]) -> dict[str, float]:
    name = f"groups-{groups}"
    hparams = {
        **SHAPES[args.shape],
        "train_batch_size": args.batch,
        "num_train_steps": args.steps,
        "num_warmup_steps": args.steps // 10,
        "learning_rate": 2e-4,
        "save_checkpoints_steps": args.steps,
        "log_every_steps": LOG_EVERY,
        "length_groups": groups,
        "model_dir": str(args.work / "models" / name),  # never inside a --data-dir given by the user
    }
    model_dir = args.work / "models" / name
    shutil.rmtree(model_dir, ignore_errors=True)
    electra("pretrain", "--data-dir", str(data_dir), "--model-name", name, "--hparams", json.dumps(hparams), env=env)
    rows = [json.loads(line) for line in (model_dir / "logs" / "metrics.jsonl").read_text().splitlines()]
    rates = [row["tokens_per_second"] for row in rows[1:]]
    return {"tokens_per_second": statistics.median(rates), "final_loss": rows[-1]["loss"]}


def run_peer(data_dir: Path, args: argparse.Namespace) -> dict[str, float]:
    """The outside peer's step (see the module's docstring) on the data's rows, in this process."""
    import time

    import torch
    import transformers
    from isolated import synchronize
    from pretrain_step import peer_training_step

    from electra.cli import retain_freed_memory
    from electra.config import build_pretraining_config
    from electra.pretrain import hf_config
    from electra.tokenization import PAD, read_vocab
    from electra.trainer import resolve_precision

    retain_freed_memory()  # as `electra pretrain` does
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    vocab = read_vocab(data_dir / "vocab.txt")
    pad = vocab.index(PAD)
    config = build_pretraining_config({**SHAPES[args.shape], "train_batch_size": args.batch})
    discriminator = config.discriminator_config(len(vocab), pad)
    shapes = [
        transformers.ElectraConfig(**hf_config(part, architecture))
        for part, architecture in (
            (discriminator, "ElectraForPreTraining"),
            (config.generator_config(discriminator), "ElectraForMaskedLM"),
        )
    ]
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")  # where `electra pretrain` runs
    precision = "bf16" if resolve_precision("auto", device) == torch.bfloat16 else "fp32"  # as `electra pretrain`
    step = peer_training_step(*shapes, precision, device, pad_id=pad)
    data = PretrainingData(data_dir / "pretrain_data")
    order = np.random.default_rng(0).permutation(len(data))
    rates, tokens, started = [], 0, time.perf_counter()
    for index in range(args.steps):
        rows = order[(index * args.batch + np.arange(args.batch)) % len(data)]
        ids = torch.from_numpy(data.input_ids(rows).astype(np.int64))
        tokens += int((ids != pad).sum())
        step(ids.to(device), index)
        if (index + 1) % LOG_EVERY == 0:  # a logging window, as the trainer's tokens_per_second counts them
            synchronize(device)
            now = time.perf_counter()
            rates.append(tokens / (now - started))
            tokens, started = 0, now
    return {"tokens_per_second": statistics.median(rates[1:] or rates), "final_loss": float("nan")}


def peer_in_own_process(data_dir: Path, args: argparse.Namespace, env: dict[str, str]) -> dict[str, float]:
    command = [sys.executable, __file__, "--run-peer", str(data_dir), "--shape", args.shape, "--batch", str(args.batch)]
    command += ["--steps", str(args.steps), "--threads", str(args.threads)]
    done = subprocess.run(command, capture_output=True, text=True, env=env)
    if done.returncode:
        sys.exit(f"the peer failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--corpus", type=Path, help="a folder of .txt files (default: the ticket corpus above)")
    parser.add_argument("--shared-data", type=Path, default=ROOT.parent / "shared" / "data")
    parser.add_argument("--data-dir", type=Path, help="a data dir already built (vocab.txt, pretrain_data/)")
    parser.add_argument("--shape", choices=sorted(SHAPES), default="compact")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--groups", default="1,2,4,8")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--no-peer", action="store_true", help="leave out the transformers peer")
    parser.add_argument("--run-peer", type=Path, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "electra-pretrain-padding")
    args = parser.parse_args()
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "TQDM_DISABLE": "1"}
    if args.run_peer:
        print(json.dumps(run_peer(args.run_peer, args)))
        return
    if args.data_dir:  # already built: vocab.txt and pretrain_data/ (e.g. a GPU machine's staged copy)
        data_dir, name = args.data_dir, args.data_dir.name
    else:
        if args.corpus and not args.corpus.is_dir():
            sys.exit(f"no corpus folder at {args.corpus}: pass --corpus DIR (a folder of .txt files)")
        corpus = args.corpus or ticket_corpus(args.shared_data, args.work / "tickets-corpus")
        data_dir, name = args.work / f"data-{corpus.name}", corpus.name
        prepare_data(corpus, data_dir, env)
    share = real_token_share(data_dir)
    groups = [int(value) for value in args.groups.split(",")]
    results = {count: run_variant(data_dir, count, args, env) for count in groups}
    peer = None if args.no_peer else peer_in_own_process(data_dir, args, env)

    import torch

    print(
        f"data {name}: real tokens {share:.1%} of 128-token rows; shape {args.shape}, batch "
        f"{args.batch}, {args.steps} steps, {args.threads} threads, torch {torch.__version__}"
    )
    base = results[groups[0]]["tokens_per_second"]
    outside = peer["tokens_per_second"] if peer else None
    print(f"| variant | real tokens/s | vs groups-{groups[0]} | vs peer | loss at the last step |")
    print("| --- | --- | --- | --- | --- |")
    for count, row in results.items():
        rate = row["tokens_per_second"]
        versus = f"{rate / outside:.2f}x" if outside else "-"
        print(f"| groups-{count} | {rate:,.0f} | {rate / base:.2f}x | {versus} | {row['final_loss']:.4f} |")
    if outside:
        print(f"| peer (transformers, rows padded to 128) | {outside:,.0f} | {outside / base:.2f}x | 1.00x | - |")
    best = max(results, key=lambda count: results[count]["tokens_per_second"])
    headline = {
        "ours_tok_s": round(results[best]["tokens_per_second"]),
        "ours_variant": f"groups-{best}",
        "groups_1_tok_s": round(base),
        "ratio_vs_groups_1": round(results[best]["tokens_per_second"] / base, 2),
        "real_token_share": round(share, 3),
    }
    if outside:
        headline |= {"peer_tok_s": round(outside), "ratio": round(results[best]["tokens_per_second"] / outside, 2)}
    print(json.dumps(headline))


if __name__ == "__main__":
    main()
