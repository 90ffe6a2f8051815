"""Few labels: dev macro-F1 of the ticket router against the number of labelled tickets per class.

Compares, on the same fixed-seed splits of online_shopping_10_cats (10 categories as routing queues):
  electra  the compact ELECTRA that run.sh pre-trained (<workdir>/models/zh-compact)
  mlm      the same size pre-trained as a plain masked LM, same data, steps, batch and learning rate
  random   the same size from random weights
  tfidf    character 1-2-gram TF-IDF + logistic regression (scikit-learn): what a team would try first
Every fine-tuning is `electra finetune` with the same hparams; every split is `electra split`, one per seed
(the seed draws the dev set and the labelled subset) and size. Results go to <workdir>/study/results.jsonl
as they come (re-running skips what is done), then a table (RESULTS.md) and a plot (few_labels.png) there.

Usage: python examples/zh_ticket_routing/study.py --workdir OUT [--sizes 10,50,200,1000,all] [--seeds 0,1,2]
       [--methods electra,mlm,random,tfidf] [--seeds-for-all 1] [--finetune-hparams '{"learning_rate": 3e-4}']
--finetune-hparams overrides the fine-tuning hparams below; every row records its overrides and --min-steps, and
the table and plot show the rows of this run's settings only.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REVIEWS = Path("zh_cls") / "online_shopping_10_cats" / "online_shopping_10_cats.csv"
PRETRAINED = "zh-compact"
MLM = "zh-compact-mlm"
RANDOM = "zh-compact-random-init"
METHODS = {"electra": "pre-trained ELECTRA", "mlm": "pre-trained MLM", "random": "random init", "tfidf": "TF-IDF + LR"}
DEFAULT_SETTINGS = {"finetune_hparams": {}, "min_steps": 300}
SPEC = {"type": "classification", "text_column": "review", "label_column": "cat"}


def finetune_hparams(train_examples: int, min_steps: int, batch_size: int) -> dict[str, Any]:
    """The router's fine-tuning budget: at least `min_steps` updates, at least 3 epochs (few labels need many
    passes; a tiny data set in 3 epochs is a handful of steps)."""
    epochs = max(3, math.ceil(min_steps * batch_size / train_examples))
    return {
        "max_seq_length": 128,
        "train_batch_size": batch_size,
        "learning_rate": 1e-3,
        "num_train_epochs": epochs,
        "eval_batch_size": 256,
        "log_every_steps": 1000,
    }


def electra(*args: str) -> None:
    done = subprocess.run(["electra", *args], capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"electra {args[0]} failed (exit status {done.returncode}):\n{done.stderr[-3000:]}")


def split(workdir: Path, reviews: Path, seed: int, size: str) -> str:
    task = f"study-s{seed}-n{size}"
    folder = workdir / "finetuning_data" / task
    if not (folder / "split.json").is_file():
        per_class = [] if size == "all" else ["--train-per-class", size]
        electra(
            "split",
            "--input",
            str(reviews),
            "--output-dir",
            str(folder),
            "--label-column",
            "cat",
            "--text-column",
            "review",
            "--seed",
            str(seed),
            "--dev",
            "0.1",
            "--test",
            "0.1",
            *per_class,
        )
    return task


def pretrain_mlm(workdir: Path, recorded: dict[str, Any]) -> None:
    """The MLM twin of run.sh's model: its recorded ELECTRA hparams with the masked-LM objective."""
    if (workdir / "models" / MLM / "generator" / "model.safetensors").is_file():
        return
    keep = (
        "model_size",
        "model_hparam_overrides",
        "embedding_size",
        "learning_rate",
        "num_train_steps",
        "num_warmup_steps",
        "train_batch_size",
        "max_seq_length",
        "mask_prob",
        "seed",
    )
    hparams = {key: recorded[key] for key in keep} | {"electra_objective": False, "save_checkpoints_steps": 500}
    started = time.perf_counter()
    electra("pretrain", "--data-dir", str(workdir), "--model-name", MLM, "--hparams", json.dumps(hparams))
    print(f"pre-trained {MLM} in {(time.perf_counter() - started) / 60:.1f} min", flush=True)


def finetune(
    workdir: Path, method: str, task: str, train_examples: int, recorded: dict[str, Any], args: argparse.Namespace
) -> dict:
    """Fine-tune one model on one split; `recorded` is run.sh's pretrain_config.json (the random model's shape)."""
    hparams = finetune_hparams(train_examples, args.min_steps, args.batch_size) | args.finetune_hparams
    hparams |= {"task_names": [task], "tasks": {task: SPEC}, "seed": args.finetune_seed}
    model = {"electra": PRETRAINED, "mlm": MLM, "random": RANDOM}[method]
    if method == "random":
        shape = {key: recorded[key] for key in ("model_size", "model_hparam_overrides", "embedding_size")}
        hparams |= {"init_checkpoint": None, **shape}
    electra("finetune", "--data-dir", str(workdir), "--model-name", model, "--hparams", json.dumps(hparams))
    results = workdir / "models" / model / "results" / f"{task}_results.json"
    scores = json.loads(results.read_text())["trials"][0][f"{task}/dev"]
    shutil.rmtree(workdir / "models" / model / "finetuning_models" / f"{task}_model_1", ignore_errors=True)
    return {"accuracy": scores["accuracy"], "macro_f1": scores["macro_f1"], "epochs": hparams["num_train_epochs"]}


def tfidf(folder: Path) -> dict:
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import accuracy_score, f1_score

    def read(name: str) -> tuple[list[str], list[str]]:
        with open(folder / f"{name}.csv", encoding="utf-8", newline="") as handle:
            rows = list(csv.DictReader(handle))
        return [row["review"] for row in rows], [row["cat"] for row in rows]

    (train_texts, train_labels), (dev_texts, dev_labels) = read("train"), read("dev")
    vectorizer = TfidfVectorizer(analyzer="char", ngram_range=(1, 2), sublinear_tf=True)
    classifier = LogisticRegression(C=10.0, max_iter=2000)
    classifier.fit(vectorizer.fit_transform(train_texts), train_labels)
    predicted = classifier.predict(vectorizer.transform(dev_texts))
    return {
        "accuracy": 100 * accuracy_score(dev_labels, predicted),
        "macro_f1": 100 * f1_score(dev_labels, predicted, average="macro"),
    }


def run_study(args: argparse.Namespace) -> list[dict]:
    workdir: Path = args.workdir
    study = workdir / "study"
    study.mkdir(parents=True, exist_ok=True)
    log = study / "results.jsonl"
    rows = [json.loads(line) for line in log.read_text().splitlines()] if log.is_file() else []
    # Rows of the first runs, before these two were recorded, used the defaults.
    settings = {"finetune_hparams": args.finetune_hparams, "min_steps": args.min_steps}
    rows = [row for row in rows if {key: row.get(key, value) for key, value in DEFAULT_SETTINGS.items()} == settings]
    done = {(row["method"], row["seed"], row["size"]) for row in rows}
    recorded = json.loads((workdir / "models" / PRETRAINED / "pretrain_config.json").read_text())
    if "mlm" in args.methods:
        pretrain_mlm(workdir, recorded)
    for size in args.sizes:
        for seed in args.seeds if size != "all" else args.seeds[: args.seeds_for_all]:
            task = split(workdir, args.shared_data / REVIEWS, seed, size)
            record = json.loads((workdir / "finetuning_data" / task / "split.json").read_text())
            train_examples = sum(record["counts"]["train"].values())
            for method in args.methods:
                if (method, seed, size) in done:
                    continue
                started = time.perf_counter()
                if method == "tfidf":
                    scores = tfidf(workdir / "finetuning_data" / task)
                else:
                    scores = finetune(workdir, method, task, train_examples, recorded, args)
                row = {
                    "method": method,
                    "seed": seed,
                    "size": size,
                    "train_examples": train_examples,
                    **settings,
                    **scores,
                    "seconds": round(time.perf_counter() - started, 1),
                }
                rows.append(row)
                with open(log, "a", encoding="utf-8") as handle:
                    handle.write(json.dumps(row) + "\n")
                print(json.dumps(row), flush=True)
    return rows


def summarise(rows: list[dict], sizes: list[str], methods: list[str]) -> dict[tuple[str, str], dict]:
    cells = {}
    for method in methods:
        for size in sizes:
            matching = [row for row in rows if row["method"] == method and row["size"] == size]
            if matching:
                values = [row["macro_f1"] for row in matching]
                cells[(method, size)] = {
                    "median": statistics.median(values),
                    "low": min(values),
                    "high": max(values),
                    "seeds": len(values),
                    "accuracy": statistics.median(row["accuracy"] for row in matching),
                }
    return cells


def table(cells: dict, sizes: list[str], methods: list[str]) -> str:
    header = "| method | " + " | ".join(f"{size} / class" if size != "all" else "all" for size in sizes) + " |"
    lines = [header, "| --- |" + " --- |" * len(sizes)]
    for method in methods:
        entries = []
        for size in sizes:
            cell = cells.get((method, size))
            if cell is None:
                entries.append("-")
            elif cell["seeds"] > 1:
                entries.append(f"{cell['median']:.1f} ({cell['low']:.1f}-{cell['high']:.1f})")
            else:
                entries.append(f"{cell['median']:.1f}")
        lines.append(f"| {METHODS[method]} | " + " | ".join(entries) + " |")
    return "\n".join(lines)


def plot(cells: dict, sizes: list[str], methods: list[str], rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    per_class = {size: (int(size) if size != "all" else None) for size in sizes}
    full = [row["train_examples"] / 10 for row in rows if row["size"] == "all"]
    if full:
        per_class["all"] = round(statistics.median(full))
    figure, axes = plt.subplots(figsize=(6.4, 4.2))
    for method in methods:
        points = [(per_class[size], cells[(method, size)]) for size in sizes if (method, size) in cells]
        points = [(x, cell) for x, cell in points if x is not None]
        if not points:
            continue
        xs = [x for x, _ in points]
        medians = [cell["median"] for _, cell in points]
        errors = [
            [cell["median"] - cell["low"] for _, cell in points],
            [cell["high"] - cell["median"] for _, cell in points],
        ]
        axes.errorbar(xs, medians, yerr=errors, marker="o", capsize=3, label=METHODS[method])
    axes.set_xscale("log")
    rightmost = "; rightmost: all" if "all" in per_class else ""
    axes.set_xlabel(f"labelled training examples per class (log scale{rightmost})")
    axes.set_ylabel("dev macro-F1 (%)")
    axes.set_title("Ticket routing, 10 classes: median over seeds, bars min-max")
    axes.grid(alpha=0.3)
    axes.legend()
    figure.tight_layout()
    tmp = path.with_suffix(".tmp.png")
    figure.savefig(tmp, dpi=120)
    tmp.replace(path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", type=Path, required=True, help="run.sh's output folder (OUT)")
    parser.add_argument("--shared-data", type=Path, default=HERE.parents[2] / "shared" / "data")
    parser.add_argument("--sizes", default="10,50,200,1000,all")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--seeds-for-all", type=int, default=1, help="how many seeds the full training set gets")
    parser.add_argument("--methods", default="electra,mlm,random,tfidf")
    parser.add_argument("--min-steps", type=int, default=DEFAULT_SETTINGS["min_steps"])
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--finetune-seed", type=int, default=0)
    parser.add_argument("--finetune-hparams", type=json.loads, default={}, help="JSON: overrides for every fine-tuning")
    args = parser.parse_args()
    args.sizes = args.sizes.split(",")
    args.seeds = [int(seed) for seed in args.seeds.split(",")]
    args.methods = args.methods.split(",")
    unknown = set(args.methods) - set(METHODS)
    if unknown:
        sys.exit(f"unknown method(s) {sorted(unknown)}: choose from {', '.join(METHODS)}")
    if not (args.workdir / "models" / PRETRAINED / "pretrain_config.json").is_file():
        sys.exit(f"{args.workdir} holds no models/{PRETRAINED}: run examples/zh_ticket_routing/run.sh first")
    rows = run_study(args)
    # The report covers every result so far, also those of earlier runs with other --sizes or --methods.
    sizes = sorted({row["size"] for row in rows}, key=lambda size: math.inf if size == "all" else int(size))
    methods = [method for method in METHODS if any(row["method"] == method for row in rows)]
    cells = summarise(rows, sizes, methods)
    text = table(cells, sizes, methods)
    study = args.workdir / "study"
    (study / "RESULTS.md").write_text(f"Dev macro-F1 (%), median over seeds (min-max):\n\n{text}\n", encoding="utf-8")
    plot(cells, sizes, methods, rows, study / "few_labels.png")
    print(text)
    headline = {f"{method}_{size}": round(cell["median"], 2) for (method, size), cell in cells.items()}
    print(json.dumps(headline))


if __name__ == "__main__":
    main()
