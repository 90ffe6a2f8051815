"""Pre-training on real text: how much `length_groups` saves over padding every row to max_seq_length.

Builds a vocabulary and pre-training data from a real corpus with the public commands (`electra vocab`,
`electra build-data --split-sentences`), then times `electra pretrain` itself, one process per variant:
`groups-1` pads every batch to its longest row, which on real data is almost always max_seq_length, as the
reference and the usual PyTorch ports do (the peer); `groups-N` sorts each batch by length and runs it as N
pieces, each padded to its own longest row (the same examples, masks and loss: tests/test_pretrain.py).
Throughput counts real tokens only, the median over logging windows after the first.
The default corpus is the Chinese use case's (examples/zh_ticket_routing): the articles of
../shared/data/pretrain_zh plus every review of online_shopping_10_cats as a document of its own, short texts
like the tickets a team would pre-train on. Prints a table, then one JSON line.
Usage: python benchmarks/pretrain_padding.py [--corpus DIR | --data-dir BUILT] [--shape compact|small]
       [--batch 128] [--steps 40] [--groups 1,2,4,8] [--threads 2] [--shared-data ../shared/data] [--work DIR]
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
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "electra-pretrain-padding")
    args = parser.parse_args()
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "TQDM_DISABLE": "1"}
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

    import torch

    print(
        f"data {name}: real tokens {share:.1%} of 128-token rows; shape {args.shape}, batch "
        f"{args.batch}, {args.steps} steps, {args.threads} threads, torch {torch.__version__}"
    )
    print("| variant | real tokens/s | vs groups-1 | loss at the last step |")
    print("| --- | --- | --- | --- |")
    base = results[groups[0]]["tokens_per_second"]
    for count, row in results.items():
        rate = row["tokens_per_second"]
        print(f"| groups-{count} | {rate:,.0f} | {rate / base:.2f}x | {row['final_loss']:.4f} |")
    best = max(results, key=lambda count: results[count]["tokens_per_second"])
    print(
        json.dumps(
            {
                "ours_tok_s": round(results[best]["tokens_per_second"]),
                "ours_variant": f"groups-{best}",
                "peer_tok_s": round(base),
                "peer_variant": f"groups-{groups[0]}",
                "ratio": round(results[best]["tokens_per_second"] / base, 2),
                "real_token_share": round(share, 3),
            }
        )
    )


if __name__ == "__main__":
    main()
