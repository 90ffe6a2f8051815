"""Learning check: does pre-training help? Fine-tune a tiny pre-trained ELECTRA and the same model from random
weights on SST-2, CoLA, MRPC, SQuAD 1.1 and a Chinese review-sentiment set, with the same budget, and compare.

English: the model pre-trained by `pretrain_learning_check.py` (pass its --workdir and --model-name).
Chinese: a tiny model pre-trained here on ../shared/data/pretrain_zh (vocabulary, data, pre-training),
fine-tuned on waimai_10k (takeaway reviews; it barely overlaps the other Chinese sets), split 80/20
into train/dev with seed 0. SQuAD 1.1: its official dev set split by article (80/20, seed 0), as no
training split is shipped; max_seq_length 256 for the tiny model's budget. `--train-examples N` fine-tunes
on N training examples drawn with seed 0 (the same ones for both starting points; dev unchanged), where
pre-training should matter most; pair it with `--epochs` so the few examples get enough steps. Every run is
`electra finetune` with `--trials` seeds (1 by default; the table gives the median and, with several, the
range); prints a table and a final JSON line and appends nothing anywhere else (record it in experiments/RESULTS.md).
Random weights get the shape of the pre-trained model they are compared with (`--shape-hparams` overrides it);
`--zh-model` fine-tunes a Chinese model pre-trained elsewhere (a model folder of `electra pretrain`, e.g.
ELECTRA-Small on a GPU) instead of pre-training the tiny one here; `--parallel N` runs N fine-tuning runs at once
(on a GPU, where a small model's step is bound by kernel launches, not arithmetic; each run's output then goes to
<workdir>/logs/); `--shared-data` where the data is when it is not ../shared/data beside the repository;
`--report` runs nothing and prints the table of what the same command has finished so far (e.g. after it was
stopped at a deadline: a cell then holds the trials that finished, "-" where none did).
Usage: python experiments/finetune_learning_check.py --pretrain-workdir /tmp/lc/v8k --model-name b
       [--workdir /tmp/electra-finetune-check] [--zh-steps 1500 | --zh-model DIR]
       [--tasks sst,cola,mrpc,squadv1,waimai] [--trials 1] [--parallel 1]
       [--train-examples N --epochs E] [--finetune-hparams '{"layerwise_lr_decay": 1.0}']
       [--shape-hparams '{"model_size": "small"}'] [--shared-data DIR] [--report]
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import random
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from electra.config import COMPACT_SHAPE, inherited_shape
from electra.tasks import TASKS

HERE = Path(__file__).resolve().parent
BUDGET = {"learning_rate": 3e-4, "train_batch_size": 32, "eval_batch_size": 128, "log_every_steps": 100}
EPOCHS = {"sst": 1, "cola": 3, "mrpc": 3, "squadv1": 2, "waimai": 3}
SIDES = {"pretrained": True, "random": False}
HEADLINE = {"sst": "accuracy", "cola": "mcc", "mrpc": "accuracy", "squadv1": "f1", "waimai": "accuracy"}


def electra_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "electra.cli", *args]


def electra(*args: str) -> None:
    subprocess.run(electra_command(*args), check=True)


def link(target: Path, link_path: Path) -> None:
    link_path.parent.mkdir(parents=True, exist_ok=True)
    if not link_path.exists():
        link_path.symlink_to(target)


def link_model(source: Path, target: Path) -> None:
    """A model folder of its own whose pre-trained files are links to `source`'s: fine-tuning writes its trials
    and results inside the model folder, and runs on other data must not meet those of `source`."""
    target.mkdir(parents=True, exist_ok=True)
    for entry in source.resolve().iterdir():
        if entry.name not in ("finetuning_models", "results", "test_predictions") and not entry.name.startswith("."):
            link(entry, target / entry.name)


def split_waimai(shared: Path, folder: Path) -> None:
    """waimai_10k.csv (label,review) -> train.csv / dev.csv, 80/20 with a fixed seed."""
    if (folder / "dev.csv").exists():
        return
    with open(shared / "zh_cls" / "waimai_10k" / "waimai_10k.csv", encoding="utf-8-sig", newline="") as handle:
        rows = list(csv.DictReader(handle))
    random.Random(0).shuffle(rows)
    cut = int(0.8 * len(rows))
    folder.mkdir(parents=True, exist_ok=True)
    for name, part in (("train", rows[:cut]), ("dev", rows[cut:])):
        with open(folder / f"{name}.csv", "w", encoding="utf-8", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=["label", "review"])
            writer.writeheader()
            writer.writerows(part)


def split_squad(shared: Path, folder: Path) -> None:
    """SQuAD 1.1 dev -> train.json / dev.json with disjoint articles (80/20, seed 0)."""
    if (folder / "dev.json").exists():
        return
    dataset = json.loads((shared / "squadv1" / "dev.json").read_text())
    articles = list(dataset["data"])
    random.Random(0).shuffle(articles)
    cut = int(0.8 * len(articles))
    folder.mkdir(parents=True, exist_ok=True)
    for name, part in (("train", articles[:cut]), ("dev", articles[cut:])):
        (folder / f"{name}.json").write_text(json.dumps({"version": dataset.get("version", "1.1"), "data": part}))


def sample_training_set(source: Path, target: Path, task: str, count: int) -> None:
    """`count` training examples of `source`'s task folder drawn with seed 0 into `target`, other splits linked."""
    if target.exists():
        return
    train = source / ("train.csv" if task == "waimai" else "train.tsv")
    with open(train, encoding="utf-8-sig", newline="") as handle:
        lines = handle.read().splitlines(keepends=True)
    has_header = task == "waimai" or TASKS[task].columns.skip_header
    header, rows = (lines[:1], lines[1:]) if has_header else ([], lines)
    if count >= len(rows):
        sys.exit(f"--train-examples {count} is not below the {len(rows)} examples of {train}")
    target.mkdir(parents=True)
    with open(target / train.name, "w", encoding="utf-8", newline="") as handle:
        handle.writelines(header + random.Random(0).sample(rows, count))
    for split in source.iterdir():
        if split.name != train.name:
            (target / split.name).symlink_to(split.resolve())


def pretrain_chinese(shared: Path, workdir: Path, steps: int) -> None:
    zh = workdir / "zh"
    if (zh / "models" / "zh_pretrained" / "discriminator").exists():
        return
    zh.mkdir(parents=True, exist_ok=True)
    corpus = shared / "pretrain_zh"
    if not (zh / "vocab.txt").exists():
        electra("vocab", "--corpus-dir", str(corpus), "--output", str(zh / "vocab.txt"), "--vocab-size", "8000")
    electra(
        "build-data",
        "--corpus-dir",
        str(corpus),
        "--vocab-file",
        str(zh / "vocab.txt"),
        "--output-dir",
        str(zh / "pretrain_data"),
        "--split-sentences",  # the corpus has a paragraph a line: the reference's cut per line drops 76% of it
    )
    hparams = {
        **COMPACT_SHAPE,
        "train_batch_size": 32,
        "num_train_steps": steps,
        "num_warmup_steps": steps // 10,
        # pretrain_learning_check.py's recipe: at temperature 1 a model this small collapses within this budget
        "learning_rate": 2e-4,
        "temperature": 2.0,
        "save_checkpoints_steps": 500,
        "log_every_steps": 50,
        "do_eval": True,
        "num_eval_steps": 10,
        "eval_batch_size": 64,
    }
    electra("pretrain", "--data-dir", str(zh), "--model-name", "zh_pretrained", "--hparams", json.dumps(hparams))


@dataclass
class Run:
    """One `electra finetune` of the comparison: a task from pre-trained or from random weights."""

    task: str
    pretrained: bool
    data_dir: Path
    model_name: str
    hparams: dict[str, Any]
    minutes: float = 0.0

    @property
    def label(self) -> str:
        return f"{self.task}-{self.model_name}"  # the model's name tells runs of split trials apart

    def execute(self, log_dir: Path | None, threads: int) -> None:
        """Fine-tune; with `log_dir` (runs side by side) the output goes to a log file of its own and the run gets
        `threads` of the CPU's cores."""
        hparams = json.dumps(self.hparams)
        command = electra_command("finetune", "--data-dir", str(self.data_dir), "--model-name", self.model_name)
        command += ["--hparams", hparams]
        started = time.time()
        if log_dir is None:
            subprocess.run(command, check=True)
        else:
            log = log_dir / f"{self.label}.log"
            environment = {**os.environ, "OMP_NUM_THREADS": str(threads)}
            with open(log, "w", encoding="utf-8") as handle:
                done = subprocess.run(command, stdout=handle, stderr=subprocess.STDOUT, env=environment)
            if done.returncode:
                sys.exit(f"{self.label} failed (exit {done.returncode}): see {log}")
        self.minutes = (time.time() - started) / 60

    def trial_scores(self) -> list[float]:
        """The headline score of each trial; none where the run has not finished."""
        results = self.data_dir / "models" / self.model_name / "results" / f"{self.task}_results.json"
        if not results.is_file():
            return []
        trials = json.loads(results.read_text())["trials"]
        return [trial[f"{self.task}/dev"][HEADLINE[self.task]] for trial in trials]


def plan_runs(
    data_dir: Path, model_name: str, task: str, pretrained: bool, shape: dict[str, Any], args: argparse.Namespace
) -> list[Run]:
    """One run of `args.trials` trials, or with --split-trials one run a trial (seeds 0, 1, ...: the same seeds as
    the trials of one run), each in a model folder of its own, so that they can run side by side."""
    hparams = {
        **BUDGET,
        "num_trials": args.trials,
        "task_names": [task],
        "num_train_epochs": args.epochs or EPOCHS[task],
        **shape,
        **args.finetune_hparams,
    }
    if task == "waimai":
        hparams["tasks"] = {"waimai": {"type": "classification", "text_column": "review"}}
    if task == "squadv1":
        hparams["max_seq_length"] = 256
    if not pretrained:
        hparams["init_checkpoint"] = None
    if not args.split_trials:
        return [Run(task, pretrained, data_dir, model_name, hparams)]
    runs = []
    for seed in range(args.trials):
        name = f"{model_name}_seed{seed}"
        if pretrained:
            link_model(data_dir / "models" / model_name, data_dir / "models" / name)
        runs.append(Run(task, pretrained, data_dir, name, {**hparams, "num_trials": 1, "seed": seed}))
    return runs


def run_all(runs: list[Run], parallel: int, log_dir: Path) -> None:
    cores = os.cpu_count() or 1
    if parallel == 1:
        for run in runs:
            run.execute(None, cores)
        return
    log_dir.mkdir(parents=True, exist_ok=True)
    with ThreadPoolExecutor(parallel) as pool:  # spinning OpenMP threads stall when runs share cores: split them
        list(pool.map(lambda run: run.execute(log_dir, max(1, cores // parallel)), runs))


def cell(scores: list[float]) -> str:
    """The median of a cell's trials, and their range where they differ."""
    if not scores:
        return "-"
    if min(scores) == max(scores):
        return f"{scores[0]:.2f}"
    return f"{statistics.median(scores):.2f} ({min(scores):.2f}-{max(scores):.2f})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pretrain-workdir", required=True, help="--workdir of pretrain_learning_check.py")
    parser.add_argument("--model-name", required=True, help="--model-name of pretrain_learning_check.py")
    parser.add_argument("--workdir", default="/tmp/electra-finetune-check")
    parser.add_argument("--zh-steps", type=int, default=1500)
    parser.add_argument("--zh-model", type=Path, help="a pre-trained Chinese model folder, instead of --zh-steps here")
    parser.add_argument("--tasks", default="sst,cola,mrpc,waimai")
    parser.add_argument("--trials", type=int, default=1, help="fine-tuning seeds per cell (num_trials)")
    parser.add_argument("--parallel", type=int, default=1, help="fine-tuning runs at once")
    parser.add_argument(
        "--split-trials", action="store_true", help="each trial a run of its own, so that --parallel runs them at once"
    )
    parser.add_argument("--train-examples", type=int, help="fine-tune on this many training examples (seed 0)")
    parser.add_argument("--epochs", type=float, help="instead of each task's default epochs")
    parser.add_argument("--finetune-hparams", type=json.loads, default={}, help="JSON: overrides for both runs")
    parser.add_argument(
        "--shape-hparams", type=json.loads, help="JSON: the model's shape (default: the pre-trained model's)"
    )
    parser.add_argument("--shared-data", type=Path, default=HERE.parents[1] / "shared" / "data")
    parser.add_argument("--report", action="store_true", help="run nothing: the table of the runs finished so far")
    args = parser.parse_args()
    shared = args.shared_data.resolve()  # the task folders are linked to it: a relative link would dangle
    if not shared.exists():
        sys.exit(f"{shared} is absent")
    workdir = Path(args.workdir)
    english = workdir / "en"
    source = Path(args.pretrain_workdir).resolve()
    link(source / "vocab.txt", english / "vocab.txt")
    link_model(source / "models" / args.model_name, english / "models" / "en_pretrained")
    for task in ("sst", "cola", "mrpc"):
        link(shared / task, english / "finetuning_data" / task)
    tasks = args.tasks.split(",")
    if "squadv1" in tasks:
        split_squad(shared, english / "finetuning_data" / "squadv1")
    if "waimai" in tasks:
        if args.zh_model:
            link((args.zh_model / "discriminator" / "vocab.txt").resolve(), workdir / "zh" / "vocab.txt")
            link_model(args.zh_model, workdir / "zh" / "models" / "zh_pretrained")
        elif not args.report:
            pretrain_chinese(shared, workdir, args.zh_steps)
        split_waimai(shared, workdir / "zh" / "finetuning_data" / "waimai")
    if args.train_examples and "squadv1" in tasks:
        sys.exit("--train-examples samples classification sets; leave squadv1 out of --tasks")
    runs = []
    for task in tasks:
        data_dir, prefix = (workdir / "zh", "zh") if task == "waimai" else (english, "en")
        # Random weights take the shape of the model they are compared with.
        shape = args.shape_hparams or inherited_shape(data_dir / "models" / f"{prefix}_pretrained")
        if args.train_examples:
            full = data_dir
            data_dir = workdir / f"{prefix}-{args.train_examples}-examples"
            link((full / "vocab.txt").resolve(), data_dir / "vocab.txt")
            link_model(full / "models" / f"{prefix}_pretrained", data_dir / "models" / f"{prefix}_pretrained")
            source = (full / "finetuning_data" / task).resolve()
            sample_training_set(source, data_dir / "finetuning_data" / task, task, args.train_examples)
        for side, pretrained in SIDES.items():
            runs.extend(plan_runs(data_dir, f"{prefix}_{side}", task, pretrained, shape, args))
    if not args.report:
        run_all(runs, args.parallel, workdir / "logs")
    print(f"{'task':<8} | {'metric':<8} | {'pre-trained':>21} | {'random init':>21} | {'minutes (each)':>14}")
    medians = {}
    for task in tasks:
        scores, minutes = {}, {}
        for side, pretrained in SIDES.items():
            cell_runs = [run for run in runs if run.task == task and run.pretrained == pretrained]
            scores[side] = [score for run in cell_runs for score in run.trial_scores()]
            minutes[side] = "-" if args.report else f"{max(run.minutes for run in cell_runs):.1f}"
        print(
            f"{task:<8} | {HEADLINE[task]:<8} | {cell(scores['pretrained']):>21} | {cell(scores['random']):>21} | "
            f"{minutes['pretrained']:>6} / {minutes['random']:<6}"
        )
        medians[task] = {side: round(statistics.median(values), 2) for side, values in scores.items() if values}
    settings = {"trials": args.trials, "train_examples": args.train_examples or "all", **args.finetune_hparams}
    print(json.dumps({**settings, **medians}))


if __name__ == "__main__":
    main()
