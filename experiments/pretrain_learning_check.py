"""Learning check: does a tiny ELECTRA pre-trained on real text for a quarter of an hour on CPU learn?

Builds a vocabulary and pre-training data from ../shared/data/pretrain_en, pre-trains a tiny model
(4 layers, hidden 128, generator hidden 32) with the ELECTRA objective, evaluates on the held-out
split and compares with chance: the discriminator's AUC against 0.5, its accuracy against always
answering "original" and its precision against the share of replaced tokens (what guessing scores); the
generator's accuracy against the unigram baseline (always predicting the most frequent token of the held-out
masked positions). Prints a table, the verdict of each comparison and a final JSON line (the exit status is 1
when a comparison fails), and writes the training curves to experiments/pretrain_learning_check.png.
The defaults are the recipe that learns in this budget: the generator samples at temperature 2, where the
reference's 1 leaves a model this small at the discriminator's prior (experiments/RESULTS.md, sessions 3, 9, 12).
Usage: python experiments/pretrain_learning_check.py [--workdir DIR] [--steps 1600] [--batch 32]
       [--learning-rate 2e-4] [--warmup 200] [--temperature 2.0] [--vocab-size 8000] [--plot PNG]
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import torch

from electra.pretrain import eval_batches, prepare_run

HERE = Path(__file__).resolve().parent
CORPUS = HERE.parents[1] / "shared" / "data" / "pretrain_en"


def electra(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "electra.cli", *args], check=True)


def unigram_baseline(data_dir: Path, model_name: str, hparams: dict) -> float:
    """Accuracy of always guessing the most frequent token, on the held-out masked positions."""
    run = prepare_run(data_dir, model_name, hparams)
    targets = [batch.targets[batch.weights.bool()] for batch in eval_batches(run, torch.device("cpu"))]
    counts = torch.bincount(torch.cat(targets))
    return float(counts.max() / counts.sum())


def evaluate_checkpoints(data_dir: Path, model_name: str, hparams: dict) -> list[tuple[int, dict]]:
    """Held-out metrics of every checkpoint, to see the discriminator's AUC over training."""
    from electra.objectives import PretrainingModel
    from electra.pretrain import evaluate
    from electra.tokenization import PAD, read_vocab
    from electra.trainer import checkpoint_dirs, checkpoint_step, load_weights

    run = prepare_run(data_dir, model_name, hparams)
    vocab = read_vocab(run.vocab_file)
    model = PretrainingModel(run.config, len(vocab), vocab.index(PAD))
    found = []
    for folder in checkpoint_dirs(run.model_dir):
        load_weights(model, folder / "model.safetensors")
        found.append((checkpoint_step(folder), evaluate(model, run, torch.device("cpu"))))
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", default="/tmp/electra-learning-check")
    parser.add_argument("--steps", type=int, default=1600)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--learning-rate", type=float, default=2e-4)
    parser.add_argument("--warmup", type=int, default=200)
    parser.add_argument("--vocab-size", type=int, default=8000)
    parser.add_argument("--generator-hidden-size", type=float, default=0.25)
    parser.add_argument("--temperature", type=float, default=2.0, help="of the generator's sampling (reference: 1)")
    parser.add_argument(
        "--plot",
        default=str(HERE / "pretrain_learning_check.png"),
        help="where the curves go (the per-step metrics beside it)",
    )
    parser.add_argument("--model-name", default="tiny")
    parser.add_argument("--hidden-size", type=int, default=128)
    parser.add_argument("--checkpoint-every", type=int, default=200, help="steps between checkpoints (each evaluated)")
    args = parser.parse_args()
    if not CORPUS.exists():
        sys.exit(f"{CORPUS} is absent")
    data_dir = Path(args.workdir)
    data_dir.mkdir(parents=True, exist_ok=True)
    if not (data_dir / "vocab.txt").exists():
        electra(
            "vocab",
            "--corpus-dir",
            str(CORPUS),
            "--output",
            str(data_dir / "vocab.txt"),
            "--vocab-size",
            str(args.vocab_size),
        )
    electra(
        "build-data",
        "--corpus-dir",
        str(CORPUS),
        "--vocab-file",
        str(data_dir / "vocab.txt"),
        "--output-dir",
        str(data_dir / "pretrain_data"),
        "--num-processes",
        "2",
    )
    hparams = {
        "model_size": "small",
        "embedding_size": 128,
        "train_batch_size": args.batch,
        "eval_batch_size": 64,
        "num_train_steps": args.steps,
        "num_warmup_steps": args.warmup,
        "learning_rate": args.learning_rate,
        "generator_hidden_size": args.generator_hidden_size,
        "temperature": args.temperature,
        "num_eval_steps": 20,
        "save_checkpoints_steps": args.checkpoint_every,
        "keep_checkpoint_max": 0,  # all of them, to evaluate each
        "log_every_steps": 20,
        "model_hparam_overrides": {
            "hidden_size": args.hidden_size,
            "num_hidden_layers": 4,
            "num_attention_heads": max(2, args.hidden_size // 64),
            "intermediate_size": 4 * args.hidden_size,
        },
    }
    shutil.rmtree(data_dir / "models" / args.model_name, ignore_errors=True)  # a fresh run, not a resumed one
    started = time.time()
    electra(
        "pretrain",
        "--data-dir",
        str(data_dir),
        "--model-name",
        args.model_name,
        "--hparams",
        json.dumps({**hparams, "do_eval": True}),
    )
    minutes = (time.time() - started) / 60
    model_dir = data_dir / "models" / args.model_name
    results = json.loads((model_dir / "results" / "unsup_results.json").read_text())
    baseline = unigram_baseline(data_dir, args.model_name, hparams)
    per_checkpoint = evaluate_checkpoints(data_dir, args.model_name, hparams)
    electra("plot", str(model_dir), "--output", args.plot)
    log = [json.loads(line) for line in (model_dir / "logs" / "metrics.jsonl").read_text().splitlines()]
    print(f"{args.steps} steps of batch {args.batch} x 128 in {minutes:.1f} min")
    print(f"{'step':>6} | {'loss':>7} | {'mlm acc':>7} | {'disc acc':>8} | {'tok/s':>7}")
    for record in [*log[:: max(1, len(log) // 12)], log[-1]]:
        print(
            f"{record['step']:>6} | {record['loss']:7.3f} | {record['mlm_accuracy']:7.3f} | "
            f"{record['disc_accuracy']:8.3f} | {record['tokens_per_second']:7,.0f}"
        )
    print(f"{'checkpoint':>10} | {'disc AUC':>8} | {'disc acc':>8} | {'chance':>6} | {'gen acc':>7}")
    for step, found in per_checkpoint:
        print(
            f"{step:>10} | {found['disc_auc']:8.3f} | {found['disc_accuracy']:8.3f} | "
            f"{1 - found['replaced_share']:6.3f} | {found['masked_lm_accuracy']:7.3f}"
        )
    chance_accuracy = 1 - results["replaced_share"]
    print("held-out evaluation (chance in brackets):")
    print(
        f"  disc_auc {results['disc_auc']:.3f} (0.5), disc_accuracy {results['disc_accuracy']:.3f} "
        f"({chance_accuracy:.3f}), precision {results['disc_precision']:.3f} ({results['replaced_share']:.3f}), "
        f"recall {results['disc_recall']:.3f}"
    )
    print(
        f"  masked_lm_accuracy {results['masked_lm_accuracy']:.3f} (unigram {baseline:.3f}), "
        f"masked_lm_loss {results['masked_lm_loss']:.3f}"
    )
    checks = {  # "far above chance": the margins a model that learned nothing transferable would not reach
        "disc_auc above 0.7 (chance 0.5)": results["disc_auc"] > 0.7,
        "disc_accuracy above always answering 'original'": results["disc_accuracy"] > chance_accuracy,
        "disc_precision over 3x the replaced share": results["disc_precision"] > 3 * results["replaced_share"],
        "masked_lm_accuracy over 1.5x the unigram baseline": results["masked_lm_accuracy"] > 1.5 * baseline,
    }
    for claim, holds in checks.items():
        print(f"  {'PASS' if holds else 'FAIL'}: {claim}")
    print(
        json.dumps(
            {
                "minutes": round(minutes, 1),
                "steps": args.steps,
                **{k: round(v, 4) for k, v in results.items()},
                "disc_accuracy_chance": round(chance_accuracy, 4),
                "mlm_unigram_accuracy": round(baseline, 4),
                "passed": all(checks.values()),
            }
        )
    )
    shutil.copyfile(
        model_dir / "logs" / "metrics.jsonl", Path(args.plot).with_name(f"{Path(args.plot).stem}_metrics.jsonl")
    )
    if not all(checks.values()):
        sys.exit(1)


if __name__ == "__main__":
    main()
